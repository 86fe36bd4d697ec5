"""Does an engine reproduce the PyTorch reference? One step and one trajectory.

Level 1, one step: eps of the engine vs the float32 PyTorch model at
t = 0..T-1 (a stride) and several batch sizes: max, mean and relative error.
Level 2, one trajectory: the full ancestral chain, both sides fed identical
noise (the canonical order of runtime.sampler): max |x_engine - x_ref| after
every step, and the final images' error. A chaotic 1000-step chain amplifies
FP16 rounding, so for FP16 engines the trajectory is reported, not gated:
the distribution level (issue 5: Frechet distance, classifier score) judges them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from runtime.contract import sha256_file

from .checkpoint import load_model
from .diffusion import GaussianDiffusion
from runtime.schedule import ScheduleConfig


@dataclass
class Thresholds:
    """Pass/fail limits (max abs differences); None: report only."""

    eps_fp32: float = 1e-4  # the export's own parity limit
    eps_fp16: float = 2e-2  # the FP16 export's limit (eps is ~unit scale)
    final_fp32: Optional[float] = 1e-3  # final images of the 1000-step chain, [-1, 1] scale
    final_fp16: Optional[float] = None  # chaotic chain: judged by the distribution instead


def one_step(engine, model, num_timesteps: int, t_stride: int = 50,
             batches: Sequence[int] = (1, 3, 8), seed: int = 0) -> List[Dict[str, Any]]:
    """Rows {t, batch, max_abs, mean_abs, rel} of eps_engine vs eps_pytorch."""
    rng = np.random.default_rng(seed)
    ts = sorted(set(range(0, num_timesteps, t_stride)) | {num_timesteps - 1})
    shape = tuple(engine.image_shape)
    rows = []
    for b in batches:
        for t in ts:
            x = rng.standard_normal((b,) + shape, dtype=np.float32)
            tt = np.full((b,), t, dtype=np.int32)
            got = engine(x, tt)
            with torch.no_grad():
                ref = model(torch.from_numpy(x), torch.from_numpy(tt).long()).numpy()
            d = np.abs(got.astype(np.float64) - ref)
            rows.append({"t": t, "batch": b, "max_abs": float(d.max()), "mean_abs": float(d.mean()),
                         "rel": float(d.max() / max(np.sqrt(np.mean(ref.astype(np.float64) ** 2)), 1e-12))})
    return rows


def trajectory(engine, model, schedule: ScheduleConfig, num: int = 4, seed: int = 0) -> Dict[str, Any]:
    """Drift of the engine's chain from the reference chain on identical noise."""
    shape = (num,) + tuple(engine.image_shape)
    got: Dict[int, np.ndarray] = {}
    res = engine.sample_float(num, seed=seed, batch=num,
                              callback=lambda i, t, x, x0: got.__setitem__(t, x.copy()))
    rng = np.random.default_rng(seed)  # canonical order: x_T, then z for t = T-1..1
    x_T = rng.standard_normal(shape, dtype=np.float32)
    T = schedule.num_timesteps
    z = {t: rng.standard_normal(shape, dtype=np.float32) for t in range(T - 1, 0, -1)}
    drift: Dict[int, float] = {}

    def on_step(t, x):
        drift[t] = float(np.abs(got[t].astype(np.float64) - x.numpy()).max())

    ref, _ = GaussianDiffusion(schedule).sample(model, shape, x_T=torch.from_numpy(x_T),
                                                noise=lambda t: torch.from_numpy(z[t]), callback=on_step)
    final = float(np.abs(res.images.astype(np.float64) - ref.numpy()).max())
    steps = sorted(drift, reverse=True)
    return {"num_images": num, "final_max_abs": final,
            "drift": [{"t": t, "max_abs": drift[t]} for t in steps],
            "first_step_above_1e-3": next((T - t for t in steps if drift[t] > 1e-3), None)}


def validate(checkpoint: str, engines: Sequence[str], thresholds: Thresholds = Thresholds(),
             t_stride: int = 50, batches: Sequence[int] = (1, 3, 8), trajectory_images: int = 4,
             seed: int = 0, force: bool = False) -> Dict[str, Any]:
    """Compare each engine with the checkpoint's PyTorch model; returns the report."""
    import runtime

    model, ckpt = load_model(checkpoint)
    schedule = ScheduleConfig.from_dict(ckpt["schedule_config"])
    ckpt_sha = sha256_file(checkpoint)
    report: Dict[str, Any] = {"checkpoint": str(checkpoint), "checkpoint_sha256": ckpt_sha,
                              "thresholds": asdict(thresholds), "engines": []}
    shapes = set()
    for path in engines:
        engine = runtime.load(path)
        m = engine.manifest
        shapes.add(tuple(m["image_shape"]))
        if len(shapes) > 1:
            raise ValueError(f"engines of different image shapes {sorted(shapes)}; validate them separately")
        if tuple(m["image_shape"]) != (model.config.in_channels, model.config.image_size, model.config.image_size):
            raise ValueError(f"{path}: image shape {m['image_shape']} is not the checkpoint's model's")
        source_sha = m.get("source", {}).get("checkpoint_sha256")
        if source_sha != ckpt_sha and not force:
            raise ValueError(
                f"{path} was not made from {checkpoint} (manifest checkpoint_sha256 "
                f"{str(source_sha)[:12]}..., file {ckpt_sha[:12]}...); pass the engine's own "
                f"checkpoint, or --force to compare anyway"
            )
        with engine:
            steps = one_step(engine, model, schedule.num_timesteps, t_stride, batches, seed)
            traj = trajectory(engine, model, schedule, trajectory_images, seed) if trajectory_images else None
        fp16 = m["precision"] == "fp16"
        eps_limit = thresholds.eps_fp16 if fp16 else thresholds.eps_fp32
        final_limit = thresholds.final_fp16 if fp16 else thresholds.final_fp32
        eps_max = max(r["max_abs"] for r in steps)
        checks = {"eps_max_abs": {"value": eps_max, "limit": eps_limit, "passed": eps_max <= eps_limit}}
        if traj is not None:
            checks["final_max_abs"] = {"value": traj["final_max_abs"], "limit": final_limit,
                                       "passed": None if final_limit is None else traj["final_max_abs"] <= final_limit}
        report["engines"].append({
            "engine": str(path), "precision": m["precision"], "backend": engine.runner.backend,
            "one_step": steps, "trajectory": traj, "checks": checks,
            "passed": all(c["passed"] is not False for c in checks.values()),
        })
    report["passed"] = all(e["passed"] for e in report["engines"])
    return report


def format_report(report: Dict[str, Any]) -> str:
    lines = ["| engine | precision | eps max abs (limit) | eps mean abs | final image max abs (limit) | result |",
             "|---|---|---|---|---|---|"]
    for e in report["engines"]:
        c = e["checks"]
        mean = float(np.mean([r["mean_abs"] for r in e["one_step"]]))
        fin = c.get("final_max_abs")
        fin_s = "-" if fin is None else f"{fin['value']:.2e} ({'report only' if fin['limit'] is None else format(fin['limit'], 'g')})"
        lines.append(f"| {e['engine']} | {e['precision']} | {c['eps_max_abs']['value']:.2e} "
                     f"({c['eps_max_abs']['limit']:g}) | {mean:.2e} | {fin_s} | {'PASS' if e['passed'] else 'FAIL'} |")
    return "\n".join(lines)
