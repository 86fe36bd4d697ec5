"""Options that several commands share, defined once."""
from __future__ import annotations

import click

allow_host_code_option = click.option(
    "--allow-host-code", is_flag=True,
    help="TensorRT only: load a version-compatible plan, which embeds host code that runs in "
    "this process; only for a plan you trust (else such a plan is refused).")


def int_list(ctx, param, value):
    """click callback: "0,1,2" -> [0, 1, 2]; None stays None. Seeds (an option named seeds)
    may be 0, counts (steps, calls) must be >= 1."""
    if value is None:
        return None
    try:
        out = [int(v) for v in str(value).split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers like 10,20,50, got {value!r}")
    least = 0 if param.name == "seeds" else 1
    if not out or min(out) < least:
        raise click.BadParameter(f"expected integers >= {least}, got {value!r}")
    return out


def write_report(report_dir, rep, table: str):
    """validate's --report: DIR/report.json (the report) and DIR/report.md (the table); returns DIR."""
    from pathlib import Path

    from runtime.io import write_json, write_text

    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", rep, allow_nan=True)
    write_text(out / "report.md", table + "\n")
    return out
