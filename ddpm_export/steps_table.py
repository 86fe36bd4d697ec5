"""DDIM vs DDPM: quality against sampling steps and wall time, through the runtime.

For each method and step count the engine draws the same number of samples
(same seed) with the NumPy runtime; quality is the digits Frechet distance to
held-out real digits (with the real-vs-real floor at the same count) and the
classifier's confident-label share. This is the trade-off a Jetson user picks
a step count from. Digits engines only (the feature extractor is the digits
classifier); other models: sample with ``sample-many`` and use ``fid``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import click

DEFAULT_STEPS = (10, 20, 50, 100, 1000)


def steps_table(engine_path: str, num: int = 450, steps: Sequence[int] = DEFAULT_STEPS,
                methods: Sequence[str] = ("ddim", "ddpm"), seed: int = 0, progress: bool = False,
                log: Callable[[str], None] = lambda s: None) -> Dict[str, Any]:
    import runtime

    from .digits_eval import FLOOR, digits_distribution, train_digits_classifier
    from .validate import DIGITS_SHAPE

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


def _int_list(ctx, param, value: str) -> List[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers like 10,20,50, got {value!r}")
    if not out or min(out) < 1:
        raise click.BadParameter(f"expected step counts >= 1, got {value!r}")
    return out


@click.command("steps-table")
@click.option("--engine", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A digits engine (.onnx or .plan).")
@click.option("--samples", "num", type=click.IntRange(min=10), default=450, show_default=True,
              help="Samples per row (450 = the held-out real set; fewer make the distance noisier).")
@click.option("--steps", default=",".join(map(str, DEFAULT_STEPS)), show_default=True, callback=_int_list,
              help="Comma-separated step counts.")
@click.option("--methods", type=click.Choice(["ddim", "ddpm", "both"]), default="both", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_out", default=None, help="Also write the table as JSON here.")
@click.option("--no-progress", is_flag=True)
def steps_table_command(engine, num, steps, methods, seed, json_out, no_progress):
    """DDIM vs DDPM on a digits engine: Frechet distance and wall time per step count."""
    from .checkpoint import atomic_write

    r = steps_table(engine, num, steps, ("ddim", "ddpm") if methods == "both" else (methods,), seed,
                    progress=not no_progress, log=lambda s: click.echo(s, err=True))
    if json_out:
        atomic_write(Path(json_out), lambda p: Path(p).write_text(json.dumps(r, indent=2) + "\n"))
    click.echo(format_steps_table(r))
