"""The pictures of a validate report (matplotlib, headless Agg backend).

* eps_error.png: one-step eps error vs t, one line per engine (worst batch);
* drift.png: max |x_engine - x_reference| along the 1000-step chain;
* samples.png: sample grids side by side (reference, then each engine);
* progressive.png: x0 predictions along the chain on identical noise, the
  reference's row above each engine's (the paper's Figure 6 layout);
* likelihood.png: bits/dim per image of each engine and the reference on the same
  images and noise, and each engine's paired difference from the reference.

``plot_rate_distortion`` draws the paper's Figure 5 (rate and distortion against
reverse-process steps, distortion against rate) for ``ddpm-export nll``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from runtime.io import atomic_write, make_grid, to_uint8


def require_matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("validate's plots need matplotlib: pip install 'ddpm-export[eval]' "
                          "(or run without --report)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))


def _gray_or_rgb(grid: np.ndarray) -> Tuple[np.ndarray, Dict[str, Any]]:
    return (grid[..., 0], {"cmap": "gray", "vmin": 0, "vmax": 255}) if grid.shape[-1] == 1 else (grid, {})


def _finish_log_plot(plt, fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def plot_eps_error(report: Dict[str, Any], path: Path) -> None:
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for e in report["engines"]:
        by_t: Dict[int, float] = {}
        for r in e["one_step"]:
            by_t[r["t"]] = max(by_t.get(r["t"], 0.0), r["max_abs"])
        ts = sorted(by_t)
        ax.plot(ts, [by_t[t] for t in ts], marker="o", ms=3, label=f"{e['name']} ({e['precision']})")
        lim = e["checks"]["eps_max_abs"]["limit"]
        ax.axhline(lim, ls=":", lw=1, color=ax.lines[-1].get_color())
    _finish_log_plot(plt, fig, ax, path, "timestep t", "max |eps_engine - eps_pytorch|",
                     "one step: eps error vs t (worst batch; dotted: limit)")


def plot_drift(report: Dict[str, Any], path: Path) -> None:
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for e in report["engines"]:
        traj = e.get("trajectory")
        if not traj:
            continue
        T = traj["drift"][0]["t"] + 1
        ax.plot([T - d["t"] for d in traj["drift"]], [max(d["max_abs"], 1e-12) for d in traj["drift"]],
                label=f"{e['name']} ({e['precision']})")
    _finish_log_plot(plt, fig, ax, path, "sampling step (t = T-1 ... 0)", "max |x_engine - x_reference|",
                     "one trajectory on identical noise: drift along the chain")


def plot_samples(sets: Dict[str, np.ndarray], path: Path, num: int = 64) -> None:
    plt = require_matplotlib()
    fig, axes = plt.subplots(1, len(sets), figsize=(3.2 * len(sets), 3.5), squeeze=False)
    for ax, (name, x) in zip(axes[0], sets.items()):
        grid, kw = _gray_or_rgb(make_grid(to_uint8(x[:num])))
        ax.imshow(grid, interpolation="nearest", **kw)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"first {min(num, min(len(x) for x in sets.values()))} samples of each set")
    _save(fig, path)
    plt.close(fig)


def plot_progressive(frames: Dict[str, List[Tuple[int, np.ndarray]]], path: Path, images: int = 2) -> None:
    """Rows: for each of the first ``images`` chains, the reference then each engine; columns: t."""
    plt = require_matplotlib()
    names = list(frames)
    ts = [t for t, _ in frames["reference"]]
    rows = [(i, n) for i in range(images) for n in names]
    fig, axes = plt.subplots(len(rows), len(ts), figsize=(0.9 * len(ts) + 1.5, 0.95 * len(rows) + 0.6),
                             squeeze=False)
    for r, (i, name) in enumerate(rows):
        by_t = dict(frames[name])
        for c, t in enumerate(ts):
            ax = axes[r][c]
            ax.axis("off")
            if t in by_t and i < len(by_t[t]):
                img, kw = _gray_or_rgb(to_uint8(by_t[t][i:i + 1])[0])
                ax.imshow(img, interpolation="nearest", **kw)
            if r == 0:
                ax.set_title(f"t={t}", fontsize=8)
        axes[r][0].text(-0.15, 0.5, f"{name} #{i}", transform=axes[r][0].transAxes, ha="right",
                        va="center", fontsize=7)
    fig.suptitle("progressive generation: x0 predictions on identical noise", fontsize=9)
    _save(fig, path)
    plt.close(fig)


def plot_rate_distortion(curves: Dict[str, Dict[str, Any]], path: Path, title: str = "") -> None:
    """curves: name -> ``likelihood.rate_distortion`` output; three panels as in the paper's Figure 5."""
    plt = require_matplotlib()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for name, rd in curves.items():
        T = len(rd["t"])
        steps = T - np.asarray(rd["t"])  # reverse-process steps taken: 0 at x_T, T - 1 at x_1
        axes[0].plot(steps, rd["distortion_rmse"], label=name)
        axes[1].plot(steps, rd["rate_bpd"], label=name)
        axes[2].plot(rd["rate_bpd"], rd["distortion_rmse"], label=name)
    for ax, (xl, yl) in zip(axes, [("reverse process steps (T - t)", "distortion (RMSE, [0, 255])"),
                                   ("reverse process steps (T - t)", "rate (bits/dim)"),
                                   ("rate (bits/dim)", "distortion (RMSE, [0, 255])")]):
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(True, alpha=0.3)
    if len(curves) > 1:
        axes[2].legend(fontsize=8)
    fig.suptitle(title or "rate-distortion along the reverse process (x_t ~ q(x_t | x_0))", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_likelihood(level: Dict[str, Any], path: Path) -> None:
    """validate's likelihood level: bits/dim per image per set, and paired differences."""
    plt = require_matplotlib()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    sets = level["sets"]
    for i, (name, row) in enumerate(sets.items()):
        y = row["per_image_bpd"]
        a.plot(np.full(len(y), i) + np.linspace(-0.15, 0.15, len(y)), y, "o", ms=3)
    a.set_xticks(range(len(sets)))
    a.set_xticklabels(list(sets), fontsize=8)
    a.set_ylabel("bits/dim")
    a.set_title("bound per image (same images and noise)", fontsize=9)
    for name, row in sets.items():
        if "per_image_diff" in row:
            b.plot(np.abs(row["per_image_diff"]) + 1e-12, "o-", ms=3, label=name)
    lim = level.get("limit")
    if lim is not None:
        b.axhline(lim, ls=":", color="k", lw=1, label=f"limit on |mean difference| ({lim:g})")
    b.set_yscale("log")
    b.set_xlabel("image")
    b.set_ylabel("|engine - reference| (bits/dim)")
    b.set_title("paired difference from the PyTorch reference", fontsize=9)
    b.legend(fontsize=8)
    for ax in (a, b):
        ax.grid(True, alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def write_plots(report: Dict[str, Any], artifacts: Dict[str, Any], out: Path) -> List[Path]:
    """All plots the report's data allows; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "eps_error.png"]
    plot_eps_error(report, written[-1])
    if any(e.get("trajectory") for e in report["engines"]):
        written.append(out / "drift.png")
        plot_drift(report, written[-1])
    if artifacts.get("frames"):
        written.append(out / "progressive.png")
        plot_progressive(artifacts["frames"], written[-1])
    if (report.get("likelihood") or {}).get("sets"):
        written.append(out / "likelihood.png")
        plot_likelihood(report["likelihood"], written[-1])
    if artifacts.get("samples"):
        written.append(out / "samples.png")
        plot_samples(artifacts["samples"], written[-1])
    return written


def plot_frontier(result: Dict[str, Any], path: Path) -> None:
    """steps-table's frontier: Frechet distance vs engine calls per method (log x), error
    bars = the seed-to-seed std, the real-vs-real floor as a line; the full DDPM chain as a
    point with its own error bar when present."""
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    by_method: Dict[str, List[Dict[str, Any]]] = {}
    for row in result["rows"]:
        by_method.setdefault(row["method"], []).append(row)
    for method, rows in by_method.items():
        rows = sorted(rows, key=lambda r: r["engine_calls"])
        ax.errorbar([r["engine_calls"] for r in rows], [r["frechet_mean"] for r in rows],
                    yerr=[r["frechet_std"] for r in rows], marker="o", ms=4, capsize=3, label=method)
    ax.axhline(result["real_floor"], color="gray", ls="--", lw=1, label="real vs real (floor)")
    ax.set_xscale("log")
    seeds = result["seeds"]
    _finish_log_plot(plt, fig, ax, path, "engine calls per image",
                     "digits Frechet distance to real (lower is better)",
                     f"{result['num']} samples per run, mean +- std over {len(seeds)} seeds")


def plot_success_vs_calls(rows: List[Dict[str, Any]], path: Path) -> None:
    """The closed-loop table's plot: success rate (and mode balance) vs engine calls per chunk
    (log x), one line per method, error bars = the seed-to-seed std; the expert as a line."""
    plt = require_matplotlib()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    by_line: Dict[str, List[Dict[str, Any]]] = {}
    for row in rows:
        if row["engine"] is None:
            for ax, k in zip(axes, ("success_rate", "mode_balance")):
                ax.axhline(row[k], color="gray", ls="--", lw=1, label=row["label"])
            continue
        by_line.setdefault(row["line"], []).append(row)
    for line, rs in by_line.items():
        rs = sorted(rs, key=lambda r: r["engine_calls_per_chunk"])
        for ax, k in zip(axes, ("success_rate", "mode_balance")):
            ax.errorbar([r["engine_calls_per_chunk"] for r in rs], [r[k] for r in rs],
                        yerr=[r[k + "_std"] for r in rs], marker="o", ms=4, capsize=3, label=line)
    for ax, yl in zip(axes, ("success rate (closed loop)", "mode balance (0.5 = both sides alike)")):
        ax.set_xscale("log")
        ax.set_xlabel("engine calls per action chunk")
        ax.set_ylabel(yl)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    seeds = rows[0].get("seeds") or []
    fig.suptitle(f"obstacle task: {rows[0]['episodes'] // max(len(seeds), 1)} episodes per seed, mean +- std over "
                 f"{len(seeds)} seeds", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
