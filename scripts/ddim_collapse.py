"""DDIM's quality against step count under three clipping conventions, through the runtime.

    PYTHONPATH=. python scripts/ddim_collapse.py --engine engines/digits.onnx \
        --samples 450 --steps 20,100,1000 --json examples/ddim-collapse.json [--resume]

Variants (runtime method "ddim", eta 0): "consistent" (x0_hat clipped, eps re-derived from
it: the runtime's default, improved-diffusion's ddim_sample), "diffusers" (x0_hat clipped,
the network's eps kept in the direction term: diffusers' DDIMScheduler default), and
"no clipping". Scored like ``ddpm-export steps-table`` (digits Frechet distance to
held-out real digits next to the real-vs-real floor at the same count).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ddpm_export.evaluation.steps_table import steps_table
from runtime.io import write_json

VARIANTS = {"consistent": {"variant": "consistent"}, "diffusers": {"variant": "diffusers"},
            "no clipping": {"clip": False}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", default="engines/digits.onnx")
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--steps", default="20,100,1000")
    p.add_argument("--seeds", default="0")
    p.add_argument("--json", default=None, help="write every variant's result here")
    p.add_argument("--resume", action="store_true",
                   help="reuse the runs already in --json (same engine and --samples) and sample only the rest")
    a = p.parse_args()
    steps = [int(v) for v in a.steps.split(",")]
    seeds = [int(v) for v in a.seeds.split(",")]
    out = {}
    earlier = {}
    if a.resume and a.json and Path(a.json).exists():
        earlier = json.loads(Path(a.json).read_text())
        if any(r["num"] != a.samples or r["engine"] != a.engine for r in earlier.values()):
            raise SystemExit(f"{a.json}: made with another engine or --samples; drop --resume or pick another --json")
    for name, opts in VARIANTS.items():
        done = earlier.get(name, {}).get("runs", ())

        def save(r, name=name):  # after every run: an interrupted run keeps what it measured
            out[name] = r
            if a.json:  # atomically: a run killed mid-write keeps the file --resume reads
                write_json(a.json, {**earlier, **out}, allow_nan=True)

        r = steps_table(a.engine, a.samples, steps, ["ddim"], seeds, options={"ddim": opts}, done=done,
                        log=lambda s, name=name: print(f"[{name}] {s}", flush=True), on_run=save)
        save(r)
    print(f"| DDIM (eta 0), {a.samples} samples, seeds {seeds} | " + " | ".join(f"{n} steps" for n in steps) + " |")
    print("|---|" + "---|" * len(steps))
    for name, r in out.items():
        cells = {row["steps"]: f"{row['frechet_mean']:.2f}" + (f" +- {row['frechet_std']:.2f}" if len(seeds) > 1 else "")
                 for row in r["rows"]}
        print(f"| {name} | " + " | ".join(cells.get(n, "-") for n in steps) + " |")
    print(f"real-vs-real floor at {a.samples}: {next(iter(out.values()))['real_floor']:.2f}")


if __name__ == "__main__":
    main()
