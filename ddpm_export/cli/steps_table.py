"""``ddpm-export steps-table``: the click command around :func:`ddpm_export.evaluation.steps_table.steps_table`."""
from __future__ import annotations

from typing import List

import click

from ddpm_export.evaluation.steps_table import DEFAULT_STEPS, format_steps_table, steps_table
from runtime.io import write_json


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
    r = steps_table(engine, num, steps, ("ddim", "ddpm") if methods == "both" else (methods,), seed,
                    progress=not no_progress, log=lambda s: click.echo(s, err=True))
    if json_out:
        write_json(json_out, r, allow_nan=True)
    click.echo(format_steps_table(r))
