"""The frontier's rows as paired differences to one reference row (seed by seed).

    PYTHONPATH=. python scripts/frontier_paired.py examples/frontier.json --against ddpm:1000

Reads a ``ddpm-export steps-table --json`` result and prints, per (method, engine calls),
the Frechet distance minus the reference row's at the same seed (mean +- std over seeds).
Rows at one seed share x_T, so this removes the part of the seed-to-seed spread that all
methods share; see ddpm_export.evaluation.steps_table.paired_differences.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ddpm_export.evaluation.steps_table import format_paired, paired_differences


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", help="a steps-table --json result")
    p.add_argument("--against", default="ddpm:1000", help="METHOD:CALLS of the reference row")
    a = p.parse_args()
    method, _, calls = a.against.rpartition(":")
    if not method or not calls.isdigit():
        raise SystemExit(f"--against {a.against!r}: expected METHOD:CALLS, e.g. ddpm:1000")
    r = json.loads(Path(a.json).read_text())
    try:
        print(format_paired(paired_differences(r, (method, int(calls))), (method, int(calls))))
    except ValueError as e:
        raise SystemExit(f"error: {e}")


if __name__ == "__main__":
    main()
