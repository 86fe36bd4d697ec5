"""The pictures of a validate report (matplotlib, headless Agg backend).

* eps_error.png: one-step eps error vs t, one line per engine (worst batch);
* drift.png: max |x_engine - x_reference| along the 1000-step chain;
* samples.png: sample grids side by side (reference, then each engine);
* progressive.png: x0 predictions along the chain on identical noise, the
  reference's row above each engine's (the paper's Figure 6 layout).
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
    if artifacts.get("samples"):
        written.append(out / "samples.png")
        plot_samples(artifacts["samples"], written[-1])
    return written
