"""``ddpm-export steps-table``: the click command around :func:`ddpm_export.evaluation.steps_table.steps_table`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

import click

from ddpm_export.cli.options import allow_host_code_option, int_list
from ddpm_export.evaluation.steps_table import DEFAULT_STEPS, format_steps_table, steps_table
from runtime.io import write_json
from runtime.schedulers import METHODS


def _methods(ctx, param, value: str) -> List[str]:
    if value in ("all", "both"):  # "both": the old ddim+ddpm table
        return list(METHODS) if value == "all" else ["ddim", "ddpm"]
    out = [v.strip() for v in value.split(",") if v.strip()]
    bad = [m for m in out if m not in METHODS]
    if bad or not out:
        raise click.ClickException(f"--methods {value!r}: unknown method(s) {bad}; expected 'all' or a "
                                   f"comma-separated list of {', '.join(METHODS)}")
    return out


@click.command("steps-table")
@click.option("--engine", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A digits engine (.onnx or .plan).")
@click.option("--samples", "num", type=click.IntRange(min=10), default=450, show_default=True,
              help="Samples per run (450 = the held-out real set; fewer make the distance noisier).")
@click.option("--steps", default=",".join(map(str, DEFAULT_STEPS)), show_default=True, callback=int_list,
              help="Comma-separated step counts (= engine calls: one call per step for every method).")
@click.option("--methods", default="all", show_default=True, callback=_methods,
              help=f"'all' or a comma-separated subset of: {', '.join(METHODS)}.")
@click.option("--seeds", default="0", show_default=True, callback=int_list,
              help="Comma-separated seeds; rows report the mean and spread over them (use >= 3).")
@click.option("--full-ddpm/--no-full-ddpm", default=False, show_default=True,
              help="Also run DDPM over all T steps (the paper's chain; T engine calls per image).")
@click.option("--reference-samples", type=click.Path(exists=True, dir_okay=False), default=None,
              help="An .npz of DDPM samples over all T steps of this model (e.g. engines/digits_samples.npz): "
              "adds a 'ddpm-reference' row scored on disjoint slices of --samples, one per seed, "
              "without sampling (the full chain costs T engine calls per image).")
@click.option("--label", "labels", default=None,
              help="A class-conditional engine: the label(s) to sample, one or a comma-separated list "
              "cycled over the samples (default: every label 0..K-1 cycled). Recorded in the table.")
@click.option("--guidance", type=float, default=None,
              help="A conditional engine: the classifier-free guidance scale (default: the manifest's). "
              "Recorded in the table.")
@click.option("--json", "json_out", default=None, help="Write the table as JSON here (after every run).")
@click.option("--resume", is_flag=True,
              help="Reuse the runs already in --json (same engine and --samples) and sample only the rest.")
@click.option("--plot", "plot_out", default=None, help="Write a PNG: Frechet vs engine calls per method.")
@click.option("--no-progress", is_flag=True)
@allow_host_code_option
def steps_table_command(engine, num, steps, methods, seeds, full_ddpm, reference_samples, labels, guidance,
                        json_out, resume, plot_out, no_progress, allow_host_code):
    """Quality vs engine calls for every sampling method on a digits engine.

    \b
    Frechet distance (mean +- std over seeds), confident share and wall time per
    (method, engine calls), next to the real-vs-real floor, e.g.
      ddpm-export steps-table --engine engines/digits.onnx --seeds 0,1,2 --full-ddpm \\
          --json frontier.json --plot frontier.png
    Each method runs with its defaults (see runtime.schedulers). A class-conditional
    engine samples at --label (cycled) and --guidance, and adds the label accuracy.
    """
    label_list = None
    if labels is not None:
        from runtime.cli_args import _parse_labels

        try:
            label_list = _parse_labels(labels)
        except ValueError as e:
            raise click.ClickException(str(e)) from None
    done = []
    if resume:
        if not json_out or not Path(json_out).is_file():
            raise click.UsageError("--resume needs --json pointing at an earlier run's JSON")
        old = json.loads(Path(json_out).read_text())
        if old.get("num") != num or Path(old.get("engine", "")).name != Path(engine).name:
            raise click.ClickException(f"{json_out}: written for {old.get('engine')} with --samples "
                                       f"{old.get('num')}; resume with the same engine and --samples")
        done = old.get("runs", [])

    def save(r):
        if json_out:
            write_json(json_out, r, allow_nan=True)

    try:
        r = steps_table(engine, num, steps, methods, seeds, full_ddpm=full_ddpm, done=done,
                        reference_samples=reference_samples, allow_host_code=allow_host_code,
                        progress=not no_progress, log=lambda s: click.echo(s, err=True), on_run=save,
                        labels=label_list, guidance=guidance)
    except ValueError as e:
        raise click.ClickException(str(e).strip().splitlines()[0]) from None
    save(r)
    if plot_out:
        from ddpm_export.evaluation.plots import plot_frontier

        plot_frontier(r, Path(plot_out))
    click.echo(format_steps_table(r))
