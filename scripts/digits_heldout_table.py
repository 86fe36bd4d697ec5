"""Samplers of digits engines on held-out seeds, scored in both digits feature spaces.

    PYTHONPATH=. python scripts/digits_heldout_table.py --seeds 7,8,9 --samples 450 \\
        --run student-4=engines/digits-distilled.onnx:consistency:4 \\
        --run unipc-10=engines/digits.onnx:unipc:10 \\
        --run ddpm-1000=engines/digits.onnx:ddpm:1000 \\
        --reference ddpm-1000 --cache runs/heldout-samples --json examples/distilled-heldout.json

``--run NAME=ENGINE:METHOD:STEPS`` samples ``--samples`` images per seed through the runtime
(``engine.sample_float``: image i of seed s starts from the same x_T in every engine, as in
steps-table), or ``NAME=ENGINE:consistency:T1/T2/...`` a student at that timestep list
(``runtime.loop.sample(timesteps=)``, as scripts/distill_timesteps.py). Every sample set is
kept in ``--cache`` (keyed by the engine file's sha256, the sampler and the seed), so a
rerun, another feature space or another table reuses it instead of sampling again
(DDPM-1000 costs about 12 minutes per 450 images on this CPU).

Each set is scored by ``digits_distribution`` in every space of ``FEATURE_SPACES`` (the
MLP the project has always used and the independent conv net): Frechet distance to that
space's held-out real digits, with its real-vs-real floor at the same count, and the
confident share by that space's classifier. Rows: mean and sample standard deviation over
the seeds, and, against ``--reference``, the paired difference per seed and whether each
row's mean lies within the reference's spread (Frechet <= mean + std) in each space.
The seeds here must not be seeds anything was tuned on (the timestep search used 10-15,
the report tables 0-2).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ddpm_export.evaluation.digits import FEATURE_SPACES, FLOOR, digits_distribution  # noqa: E402


def parse_run(spec: str) -> Dict[str, object]:
    name, sep, rest = spec.partition("=")
    rest, _, seeds = rest.partition("@")
    if sep and rest.startswith("npz:"):
        return {"name": name, "npz": rest[4:], "steps": int(seeds or 1000), "seeds": None}  # @CALLS
    parts = rest.rsplit(":", 2)
    if not sep or len(parts) != 3 or not name:
        raise SystemExit(f"error: --run {spec!r}: expected NAME=ENGINE:METHOD:STEPS[@S1/S2], "
                         f"NAME=ENGINE:consistency:T1/T2/...[@S1/S2] or NAME=npz:PATH[@CALLS] "
                         f"(e.g. ddpm-1000=engines/digits.onnx:ddpm:1000@7)")
    engine, method, steps = parts
    ts = [int(t) for t in steps.split("/")] if "/" in steps else None
    return {"name": name, "engine": engine, "method": method, "steps": len(ts) if ts else int(steps),
            "timesteps": ts, "seeds": [int(x) for x in seeds.split("/")] if seeds else None}


def stored_set(run: Dict[str, object], num: int):
    """(seed, the first ``num`` 'samples') of a stored .npz, e.g. engines/digits_samples.npz:
    DDPM-1000 of the PyTorch reference sampler at seed 0, which draws the runtime's noise
    streams (docs/results.md: its first 450 images score as the runtime's DDPM-1000 seed 0)."""
    with np.load(str(run["npz"])) as z:
        x = np.asarray(z["samples"], dtype=np.float32)
        seed = int(z["seed"]) if "seed" in z.files else f"npz:{run['npz']}"
    if len(x) < num:
        raise SystemExit(f"error: {run['npz']}: {len(x)} samples, need --samples {num}")
    return seed, x[:num]


def sample_set(run: Dict[str, object], seed: int, num: int, cache: Path) -> np.ndarray:
    import runtime
    from runtime.io import sha256_file
    from runtime.loop import sample

    ts = run["timesteps"]
    tag = "-".join(map(str, ts)) if ts else str(run["steps"])
    path = cache / f"{sha256_file(run['engine'])[:12]}-{run['method']}-{tag}-seed{seed}-n{num}.npz"
    if path.is_file():
        with np.load(path) as z:
            return np.asarray(z["samples"])
    print(f"{run['name']} seed {seed}: sampling {num} images ({run['method']}, {tag})", file=sys.stderr, flush=True)
    with runtime.load(str(run["engine"]), threads=1) as engine:  # one core: the CPU is shared
        if ts:
            images = sample(engine.runner, engine.image_shape, engine.manifest["schedule"], num, seed=seed,
                            method=str(run["method"]), timesteps=ts, batch=min(num, engine.runner.max_batch)).images
        else:
            images = engine.sample_float(num, seed=seed, method=str(run["method"]), steps=int(run["steps"]),
                                         progress=True).images
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, samples=np.asarray(images, dtype=np.float32), seed=np.int64(seed))
    tmp.replace(path)
    return np.asarray(images, dtype=np.float32)


def _ms(v: List[float]) -> Dict[str, float]:
    a = np.asarray(v, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True, help="NAME=ENGINE:METHOD:STEPS (repeat)")
    p.add_argument("--seeds", default="7,8,9")
    p.add_argument("--samples", type=int, default=450)
    p.add_argument("--reference", action="append", default=[],
                   help="the NAME of a row to pair with (e.g. ddpm-1000); repeat for several")
    p.add_argument("--cache", default="runs/heldout-samples")
    p.add_argument("--json", default=None)
    p.add_argument("--sample-only", action="store_true", help="only draw (and cache) the sets, score nothing")
    p.add_argument("--mse", action="append", default=[], metavar="A:B",
                   help="also print the per-pixel mean squared difference of rows A and B, image by image "
                   "(the same x_T) on each seed both have: e.g. a 1-call student against the teacher "
                   "trajectory ends it regresses (at the distill --data-seed, 1000, its own training x_T)")
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    runs = [parse_run(s) for s in a.run]
    names = [r["name"] for r in runs]
    for ref in a.reference:
        if ref not in names:
            raise SystemExit(f"error: --reference {ref!r} is not one of the --run names {names}")
    sets = {}
    for r in runs:
        if "npz" in r:
            seed, images = stored_set(r, a.samples)
            sets[(r["name"], seed)] = images
        for s in ([] if "npz" in r else r["seeds"] or seeds):
            sets[(r["name"], s)] = sample_set(r, s, a.samples, Path(a.cache))
    mse = {}
    for pair in a.mse:
        x, _, y = pair.partition(":")
        mse[pair] = {str(sd): float(np.mean((sets[(x, sd)] - sets[(y, sd)]) ** 2))
                     for (n, sd) in sets if n == x and (y, sd) in sets}
        print(f"mean squared difference {x} vs {y}, per seed: "
              + ", ".join(f"{k}: {v:.5f}" for k, v in mse[pair].items()))
    if a.sample_only:
        return
    spaces = {k: train() for k, train in FEATURE_SPACES.items()}
    scores, floors = [], {}
    for (name, seed), images in sets.items():
        row = {"name": name, "seed": seed}
        for k, clf in spaces.items():
            d = digits_distribution(clf, {"samples": images})
            row[f"frechet_{k}"] = d["sets"]["samples"]["frechet_to_real"]
            row[f"confident_{k}"] = d["sets"]["samples"]["confident_share"]
            floors[k] = {"floor": d["sets"][FLOOR]["frechet_to_real"], "n": d["n"],
                         "classifier_test_accuracy": clf.test_accuracy}
        scores.append(row)
    cols = [f"{m}_{k}" for k in spaces for m in ("frechet", "confident")]
    rows = []
    for name in dict.fromkeys(names):  # rows in --run order; a name given twice pools its sets
        got = sorted((x for x in scores if x["name"] == name), key=lambda x: str(x["seed"]))
        first = next(r for r in runs if r["name"] == name)
        rows.append(dict(name=name, steps=first["steps"], sets=[x["seed"] for x in got],
                         **{c: dict(_ms([x[c] for x in got]), per_seed=[x[c] for x in got]) for c in cols}))
    out = {"command": " ".join(["python"] + sys.argv), "seeds": seeds, "num": a.samples,
           "feature_spaces": floors, "mse": mse, "runs": scores, "rows": rows, "references": a.reference}
    print(f"{a.samples} samples per set, seeds {seeds}; Frechet to held-out real digits, mean +- std over seeds; "
          + "; ".join(f"{k}: floor {v['floor']:.2f} at n={v['n']}, test accuracy {v['classifier_test_accuracy']:.3f}"
                      for k, v in floors.items()))
    print("| sampler | calls | seeds | " + " | ".join(f"Frechet ({k}), per seed | confident ({k})" for k in spaces) + " |")
    print("|---|---|---|" + "---|---|" * len(spaces))
    for r in rows:
        print(f"| {r['name']} | {r['steps']} | {', '.join(map(str, r['sets']))} | " + " | ".join(
            f"{r[f'frechet_{k}']['mean']:.2f} +- {r[f'frechet_{k}']['std']:.2f} "
            f"({', '.join(f'{v:.2f}' for v in r[f'frechet_{k}']['per_seed'])}) | {r[f'confident_{k}']['mean']:.3f}"
            for k in spaces) + " |")
    for name in a.reference:
        ref = next(r for r in rows if r["name"] == name)
        print(f"\nagainst {name} (within its spread: Frechet mean <= its mean + std; paired: this row "
              f"minus it on the runtime seeds both have):")
        for r in rows:
            if r is ref:
                continue
            verdict = {}
            for k in spaces:
                f, fr = r[f"frechet_{k}"], ref[f"frechet_{k}"]
                theirs = dict(zip(ref["sets"], fr["per_seed"]))
                d = [v - theirs[s] for s, v in zip(r["sets"], f["per_seed"]) if s in theirs and isinstance(s, int)]
                verdict[k] = {"bound": fr["mean"] + fr["std"], "within": f["mean"] <= fr["mean"] + fr["std"],
                              "paired_diff_per_seed": d}
            r.setdefault("against", {})[name] = verdict
            print(f"  {r['name']}: " + "; ".join(
                f"{k} {r[f'frechet_{k}']['mean']:.2f} vs <= {v['bound']:.2f} {'within' if v['within'] else 'NOT within'}"
                + (f" (paired {', '.join(f'{x:+.2f}' for x in v['paired_diff_per_seed'])})"
                   if v["paired_diff_per_seed"] else "") for k, v in verdict.items())
                + (" -> holds on both" if all(v["within"] for v in verdict.values()) else ""))
    if a.json:
        from runtime.io import write_json

        write_json(a.json, out, allow_nan=True)
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
