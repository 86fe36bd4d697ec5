"""DDIM vs DDPM: quality against sampling steps and wall time, through the runtime.

For each method and step count the engine draws the same number of samples
(same seed) with the NumPy runtime; quality is the digits Frechet distance to
held-out real digits (with the real-vs-real floor at the same count) and the
classifier's confident-label share. This is the trade-off a Jetson user picks
a step count from. Digits engines only (the feature extractor is the digits
classifier); other models: sample with ``sample-many`` and use ``fid``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence



DEFAULT_STEPS = (10, 20, 50, 100, 1000)


def steps_table(engine_path: str, num: int = 450, steps: Sequence[int] = DEFAULT_STEPS,
                methods: Sequence[str] = ("ddim", "ddpm"), seed: int = 0, progress: bool = False,
                log: Callable[[str], None] = lambda s: None) -> Dict[str, Any]:
    import runtime

    from ddpm_export.evaluation.digits import (DIGITS_SHAPE, FLOOR, digits_distribution,
                                               train_digits_classifier)

    clf = train_digits_classifier()
    rows: List[Dict[str, Any]] = []
    with runtime.load(engine_path) as engine:
        if tuple(engine.image_shape) != DIGITS_SHAPE:
            raise ValueError(f"{engine_path}: images {list(engine.image_shape)}; the steps table scores "
                             f"with the digits classifier and needs the digits model's {list(DIGITS_SHAPE)}")
        for method in methods:
            for n_steps in steps:
                log(f"{method} {n_steps} steps: {num} samples")
                res = engine.sample_float(num, seed=seed, method=method, steps=n_steps, progress=progress)
                d = digits_distribution(clf, {"samples": res.images})
                row = d["sets"]["samples"]
                rows.append({"method": method, "steps": n_steps, "seconds": res.seconds,
                             "images_per_s": num / res.seconds, "frechet_to_real": row["frechet_to_real"],
                             "confident_share": row["confident_share"], "class_min_share": row["class_min_share"]})
                floor = d["sets"][FLOOR]["frechet_to_real"]
                log(f"  Frechet {row['frechet_to_real']:.2f} (floor {floor:.2f}), {res.seconds:.1f} s")
        batch = min(num, engine.runner.max_batch)
        backend = engine.runner.backend
    return {"engine": str(engine_path), "backend": backend, "num": num, "seed": seed, "batch": batch,
            "real_floor": floor, "real_reference_n": d["real_reference_n"], "rows": rows}


def format_steps_table(r: Dict[str, Any]) -> str:
    lines = [f"{r['num']} samples per row, batch {r['batch']}, {r['backend']}; Frechet distance to "
             f"{r['real_reference_n']} held-out real digits (real-vs-real floor {r['real_floor']:.2f})",
             "| method | steps | Frechet to real | confident share | wall time (s) | images/s |",
             "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['method']} | {row['steps']} | {row['frechet_to_real']:.2f} | "
                     f"{row['confident_share']:.3f} | {row['seconds']:.1f} | {row['images_per_s']:.1f} |")
    return "\n".join(lines)
