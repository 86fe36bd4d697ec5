"""Cost of the per-image noise streams (runtime/seeding.py) against one engine call.

    python scripts/bench_seeding.py [--engine engines/digits.onnx] [--batch 64] [--threads 2]

Prints, per sampling step at the given batch: one engine call; the noise z drawn
as before this scheme (one Generator for the whole batch) and from the per-image
streams; creating the batch's streams (once per chain), spread over a 50-step
and a 1000-step chain; and the whole scheduler step (DDPM, streams included).
Medians of interleaved repeats; needs only NumPy and ONNX Runtime. ``--clock cpu``
times with the process's CPU time instead of wall time: on a machine shared with
other jobs it is much less disturbed by them (use --threads 1 with it, so the
engine's CPU time is its own work, not threads spinning while they wait).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

import runtime
from runtime.loop import make_scheduler
from runtime.seeding import ImageStreams

ROOT = Path(__file__).resolve().parents[1]


def _per_call(fn, n: int, clock) -> float:
    t0 = clock()
    for _ in range(n):
        fn()
    return (clock() - t0) / n


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def measure(engine_path, batch: int = 64, threads: int = 2, repeats: int = 7, n: int = 20,
            clock: str = "wall") -> dict:
    with runtime.load(engine_path, threads=threads) as eng:
        shape = (batch,) + tuple(eng.image_shape)
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        t = np.full((batch,), 500, dtype=np.int32)
        eps = eng(x, t)
        sched = make_scheduler(eng.manifest["schedule"], "ddpm")
        one = np.random.default_rng(0)
        streams = ImageStreams(0, 0, batch)
        cases = {
            "engine_call": lambda: eng(x, t),
            "noise_one_generator": lambda: one.standard_normal(shape, dtype=np.float32),
            "noise_image_streams": lambda: streams.standard_normal(shape, dtype=np.float32),
            "make_streams": lambda: ImageStreams(0, 0, batch),
            "scheduler_step_streams": lambda: sched.step(eps, 500, x, streams),
        }
        times = {k: [] for k in cases}
        for _ in range(repeats):  # interleaved, so a busy moment hits every case alike
            for k, fn in cases.items():
                times[k].append(_per_call(fn, n, CLOCKS[clock]))
    med = {k: statistics.median(v) for k, v in times.items()}
    call = med["engine_call"]
    return {"engine": str(engine_path), "batch": batch, "threads": threads, "repeats": repeats, "clock": clock,
            "seconds": med,
            "share_of_call": {
                "noise_image_streams": med["noise_image_streams"] / call,
                "extra_vs_one_generator": (med["noise_image_streams"] - med["noise_one_generator"]) / call,
                "streams_per_step_50": (med["noise_image_streams"] + med["make_streams"] / 50) / call,
                "streams_per_step_1000": (med["noise_image_streams"] + med["make_streams"] / 1000) / call,
                "scheduler_step_streams": med["scheduler_step_streams"] / call,
            }}


def format_table(r: dict) -> str:
    s, f = r["seconds"], r["share_of_call"]
    us = lambda v: f"{v * 1e6:.0f} us"  # noqa: E731
    return "\n".join([
        f"{Path(r['engine']).name}, batch {r['batch']}, {r['threads']} ONNX Runtime threads, "
        f"{r['clock']} time, medians of {r['repeats']} interleaved repeats",
        "| per step | time | share of one engine call |",
        "|---|---|---|",
        f"| engine call | {s['engine_call'] * 1e3:.2f} ms | 100 % |",
        f"| z from one Generator (old scheme) | {us(s['noise_one_generator'])} | "
        f"{100 * s['noise_one_generator'] / s['engine_call']:.2f} % |",
        f"| z from per-image streams | {us(s['noise_image_streams'])} | {100 * f['noise_image_streams']:.2f} % |",
        f"| extra cost of the streams over one Generator | "
        f"{us(s['noise_image_streams'] - s['noise_one_generator'])} | {100 * f['extra_vs_one_generator']:.2f} % |",
        f"| creating the batch's streams (once per chain) | {us(s['make_streams'])} per chain | "
        f"{100 * f['streams_per_step_50']:.2f} % per step with z, 50-step chain; "
        f"{100 * f['streams_per_step_1000']:.2f} % at 1000 steps |",
        f"| whole DDPM scheduler step, streams included | {us(s['scheduler_step_streams'])} | "
        f"{100 * f['scheduler_step_streams']:.2f} % |",
    ])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", default=str(ROOT / "engines" / "digits.onnx"), help="ONNX engine (default: the shipped digits.onnx)")
    p.add_argument("--batch", type=int, default=64, help="images per step (default 64)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    p.add_argument("--repeats", type=int, default=7, help="interleaved repeats; the median is shown (default 7)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall time (default) or this process's CPU time (steadier on a shared machine)")
    args = p.parse_args(argv)
    print(format_table(measure(args.engine, args.batch, args.threads, args.repeats, clock=args.clock)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
