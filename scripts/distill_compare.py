"""The student's steps-table rows beside the teacher's frontier rows, paired by seed.

    PYTHONPATH=. python scripts/distill_compare.py examples/distilled.json examples/frontier.json \
        [--plot examples/frontier-student.png]

Both files are ``ddpm-export steps-table --json`` results with the same sample count and
seeds: the student (engines/digits-distilled.onnx) and the teacher (engines/digits.onnx)
start image i of seed s from the same x_T (runtime.seeding), so their Frechet distances
pair seed by seed. Prints the rows (student, UniPC-10, DPM-Solver++-10, DDPM-1000), the
Frechet differences to DDPM-1000 at the same seed, and whether each student row lies
within DDPM-1000's seed spread (mean + std for Frechet, mean - std for the confident share),
in both digits feature spaces (mlp and conv; the conv columns only when both files have them:
steps-table results written before the conv space have none).
``--plot``: steps-table's frontier plot of every teacher method with the student as one more line.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ddpm_export.evaluation.steps_table import format_paired, format_steps_table, paired_differences

TEACHER_ROWS = (("unipc", 10), ("dpmsolver++", 10), ("ddpm", 1000))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("student", help="steps-table --json of the student engine")
    p.add_argument("teacher", help="steps-table --json of the teacher engine (examples/frontier.json)")
    p.add_argument("--plot", default=None, help="also draw the teacher's whole frontier with the student's line")
    a = p.parse_args()
    s, t = (json.loads(Path(f).read_text()) for f in (a.student, a.teacher))
    for k in ("num", "seeds", "real_reference_n"):
        if s.get(k) != t.get(k):
            raise SystemExit(f"error: {k} differs ({s.get(k)} vs {t.get(k)}): the rows would not be comparable; "
                             f"run the student's steps-table with the teacher's --samples and --seeds")
    keep = lambda x: (x["method"], x.get("steps", x.get("engine_calls"))) in TEACHER_ROWS  # noqa: E731
    merged = dict(s, engine=f"{s['engine']} + {t['engine']}",
                  runs=s["runs"] + [x for x in t["runs"] if keep(x)],
                  rows=s["rows"] + [r for r in t["rows"] if (r["method"], r["engine_calls"]) in TEACHER_ROWS])
    print(format_steps_table(merged))
    print()
    ref = next(r for r in t["rows"] if (r["method"], r["engine_calls"]) == ("ddpm", 1000))
    spaces = [("mlp", "frechet_to_real", "frechet")]
    if ref.get("frechet_conv_mean") is not None and all(r.get("frechet_conv_mean") is not None for r in s["rows"]):
        spaces.append(("conv", "frechet_conv", "frechet_conv"))
    for space, key, _ in spaces:
        print(format_paired(paired_differences(merged, ("ddpm", 1000), key=key), ("ddpm", 1000), space=space))
    tops = {space: ref[f"{col}_mean"] + ref[f"{col}_std"] for space, _, col in spaces}
    conf_low = ref["confident_mean"] - ref["confident_std"]
    print("\nwithin DDPM-1000's seed spread (" + ", ".join(f"Frechet ({k}) <= {v:.2f}" for k, v in tops.items())
          + f", confident share >= {conf_low:.3f}):")
    for r in s["rows"]:
        cells = [f"Frechet ({space}) {r[f'{col}_mean']:.2f} {'yes' if r[f'{col}_mean'] <= tops[space] else 'no'}"
                 for space, _, col in spaces]
        print(f"  {r['method']}-{r['engine_calls']}: " + ", ".join(cells)
              + f", confident {r['confident_mean']:.3f} {'yes' if r['confident_mean'] >= conf_low else 'no'}")
    if a.plot:
        from ddpm_export.evaluation.plots import plot_frontier

        student = [dict(r, method=f"student ({r['method']})") for r in s["rows"]]
        plot_frontier(dict(t, rows=t["rows"] + student), Path(a.plot))
        print(f"wrote {a.plot}")


if __name__ == "__main__":
    main()
