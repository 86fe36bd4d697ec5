"""Search a few-step student's timestep lists: every N-call list that starts at T-1 and
takes the rest from the timesteps it was trained on, scored as steps-table scores.

    PYTHONPATH=. python scripts/distill_timesteps.py --engine engines/digits-distilled.onnx \\
        --calls 4 --seeds 10,11,12 --json runs/ts-search-4.json

Selection seeds must not be the report seeds (0, 1, 2): the best of many lists on the
seeds that pick it is biased upward. Candidates: ``--lists "999,749,500,250;999,500,250,125"``
or, by default, T-1 followed by every (N-1)-subset of the student's trained timesteps (the
union of its manifest's ``sampling.timesteps``). Each (list, seed) run samples ``--samples``
images with method ``consistency`` through the runtime (same x_T per seed as every other
engine here) and records the digits Frechet distance in both feature spaces (mlp and conv,
``FEATURE_SPACES``) and the confident share; the JSON is rewritten after every run and
``--json`` reuses runs already in it. The table ranks lists by the sum of their ranks in
the two spaces' mean Frechet distance (``--rank confident`` for the old order, by share), so
that a list is not chosen for what one feature space happens to like.

``--gamma G`` (0 <= G < 1; default 1 = the runtime's fresh noise): partial re-noising, an
experiment outside the runtime: each re-noise keeps part of the noise the student's call
implies, x_t' = sqrt(abar_t') x0 + sqrt(1 - abar_t') (sqrt(1 - G^2) eps_hat + G z) with
eps_hat = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t) (the gamma of Kim et al. 2024,
"Consistency trajectory models"; G = 0 re-uses the implied noise only).
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import List

import numpy as np


def candidates(trained: List[int], calls: int, first: int) -> List[List[int]]:
    rest = sorted((t for t in trained if t < first), reverse=True)
    return [[first] + list(c) for c in itertools.combinations(rest, calls - 1)]


def free_order_sample(runner, image_shape, schedule, num, seed, timesteps, batch, gamma=1.0):
    """Multistep consistency sampling at any timestep order, repeats allowed (the runtime's
    schedulers take strictly descending lists only): each call's x0 is re-noised to the next
    timestep, x_t' = sqrt(abar_t') x0 + sqrt(1 - abar_t') z, so the order is free in the math
    (Song et al. 2023, Algorithm 1, only orders them by convention). Same noise order and
    float64 step math as runtime.schedulers.consistency with a v model and clipping; on a
    descending list it gives the runtime's images (checked by --check-free-order). gamma < 1:
    partial re-noising (see the module's docstring); gamma = 1 is the runtime's fresh noise."""
    from runtime.schedulers.schedule import Schedule, ScheduleConfig
    from runtime.seeding import ImageStreams

    s = Schedule(ScheduleConfig.from_dict(dict(schedule)))
    a, b = s.sqrt_alphas_cumprod, s.sqrt_one_minus_alphas_cumprod
    r = float(schedule.get("clip_sample_range", 1.0))
    out = []
    for b0 in range(0, num, batch):
        n = min(batch, num - b0)
        rng = ImageStreams(seed, b0, n)
        x = rng.standard_normal((n,) + tuple(image_shape), dtype=np.float32)
        for i, t in enumerate(timesteps):
            v = runner(x, np.full((n,), t, dtype=np.int32)).astype(np.float64)
            x0 = np.clip(a[t] * x.astype(np.float64) - b[t] * v, -r, r)
            if i == len(timesteps) - 1:
                x = x0.astype(np.float32)
                break
            z = rng.standard_normal(x.shape, dtype=np.float32).astype(np.float64)
            if gamma != 1.0:  # keep part of the noise this call implies
                eps_hat = (x.astype(np.float64) - a[t] * x0) / b[t]
                z = np.sqrt(1.0 - gamma ** 2) * eps_hat + gamma * z
            nxt = timesteps[i + 1]
            x = (a[nxt] * x0 + b[nxt] * z).astype(np.float32)
        out.append(x)
    return np.concatenate(out)


def main() -> None:
    import runtime
    from ddpm_export.evaluation.digits import FEATURE_SPACES, digits_distribution
    from runtime.io import write_json
    from runtime.loop import sample

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", required=True)
    p.add_argument("--calls", type=int, default=4)
    p.add_argument("--lists", default=None, help="';'-separated comma lists (overrides the subsets)")
    p.add_argument("--seeds", default="10,11,12")
    p.add_argument("--samples", type=int, default=450)
    p.add_argument("--json", required=True)
    p.add_argument("--gamma", type=float, default=1.0, help="partial re-noising (an experiment; 1 = the runtime's)")
    p.add_argument("--rank", choices=("frechet", "confident"), default="frechet",
                   help="table order: the sum of the two spaces' Frechet ranks, or the confident share")
    p.add_argument("--check-free-order", action="store_true",
                   help="check free_order_sample against the runtime on the first list, then stop")
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    out = Path(a.json)
    runs = json.loads(out.read_text())["runs"] if out.is_file() else []
    done = {(tuple(r["timesteps"]), r["seed"]) for r in runs
            if r["num"] == a.samples and r.get("gamma", 1.0) == a.gamma and "frechet_conv" in r}
    with runtime.load(a.engine) as engine:
        sec, sched = engine.manifest.get("sampling") or {}, engine.manifest["schedule"]
        T = int(sched["num_timesteps"])
        if a.lists:
            lists = [[int(t) for t in x.split(",")] for x in a.lists.split(";") if x.strip()]
        else:
            trained = sorted({t for ts in sec.get("timesteps", {}).values() for t in ts}, reverse=True)
            lists = candidates(trained, a.calls, T - 1)
        batch = min(a.samples, engine.runner.max_batch)
        if a.check_free_order:
            ts = lists[0]
            ref = sample(engine.runner, engine.image_shape, sched, a.samples, seed=seeds[0],
                         method="consistency", timesteps=ts, batch=batch).images
            got = free_order_sample(engine.runner, engine.image_shape, sched, a.samples, seeds[0], ts, batch)
            print(f"{ts}: free-order loop vs runtime, max abs diff {np.abs(got - ref).max():.2e}")
            return
        spaces = {k: train() for k, train in FEATURE_SPACES.items()}
        for ts in lists:
            for seed in seeds:
                if (tuple(ts), seed) in done:
                    continue
                if all(x > y for x, y in zip(ts, ts[1:])) and a.gamma == 1.0:
                    res = sample(engine.runner, engine.image_shape, sched, a.samples, seed=seed,
                                 method="consistency", timesteps=ts, batch=batch)
                    images, seconds = res.images, res.seconds
                else:  # a repeat, a rise or gamma < 1: outside the runtime's schedulers (an experiment)
                    t0 = time.perf_counter()
                    images = free_order_sample(engine.runner, engine.image_shape, sched, a.samples, seed, ts, batch,
                                               gamma=a.gamma)
                    seconds = time.perf_counter() - t0
                row, conv = (digits_distribution(spaces[k], {"samples": images})["sets"]["samples"]
                             for k in ("mlp", "conv"))
                runs.append({"timesteps": ts, "seed": seed, "num": a.samples, "gamma": a.gamma,
                             "frechet_to_real": row["frechet_to_real"], "frechet_conv": conv["frechet_to_real"],
                             "confident_share": row["confident_share"], "seconds": seconds})
                print(f"{ts} seed {seed}: Frechet {row['frechet_to_real']:.2f} (conv {conv['frechet_to_real']:.2f}), "
                      f"confident {row['confident_share']:.3f}, {seconds:.1f} s", flush=True)
                write_json(out, {"engine": a.engine, "runs": runs})
    table = {}
    for r in runs:
        if r["seed"] in seeds and r["num"] == a.samples and r.get("gamma", 1.0) == a.gamma and "frechet_conv" in r:
            table.setdefault(tuple(r["timesteps"]), []).append(r)
    mean = {ts: {k: float(np.mean([r[k] for r in rs])) for k in ("frechet_to_real", "frechet_conv", "confident_share")}
            for ts, rs in table.items()}
    rank = {k: {ts: i for i, ts in enumerate(sorted(mean, key=lambda ts: mean[ts][k]))}
            for k in ("frechet_to_real", "frechet_conv")}
    order = (sorted(mean, key=lambda ts: (rank["frechet_to_real"][ts] + rank["frechet_conv"][ts],
                                          mean[ts]["frechet_to_real"]))
             if a.rank == "frechet" else sorted(mean, key=lambda ts: -mean[ts]["confident_share"]))
    print(f"\ngamma {a.gamma:g}, seeds {seeds}\n| timesteps | Frechet (mlp) | Frechet (conv) | rank sum | confident share |"
          f"\n|---|---|---|---|---|")
    sd = lambda v: v.std(ddof=1) if len(v) > 1 else 0.0  # noqa: E731
    for ts in order:
        f, cv, c = (np.array([r[k] for r in table[ts]]) for k in ("frechet_to_real", "frechet_conv", "confident_share"))
        print(f"| {list(ts)} | {f.mean():.2f} +- {sd(f):.2f} | {cv.mean():.2f} +- {sd(cv):.2f} | "
              f"{rank['frechet_to_real'][ts] + rank['frechet_conv'][ts]} | {c.mean():.3f} +- {sd(c):.3f} |")


if __name__ == "__main__":
    main()
