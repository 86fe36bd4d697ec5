"""A diffusion policy in a fixed-rate control loop: the starting point of a robot's Jetson app.

It loads a policy exported by ddpm-export (a TensorRT plan NAME.plan with NAME-encoder.plan, or
the ONNX export NAME.onnx with NAME-encoder.onnx) once, then runs the shipped obstacle task
(ddpm_export/tasks/obstacle.py: NumPy only, standing in for the robot) at a fixed rate: each
tick one observation goes in and one action comes out (``Policy.select_action``), and the loop
sleeps until the next tick. It prints the latency per tick and per chunk (median, p90, max) and
how many ticks overran the period. A plan that cannot run here (no TensorRT or GPU, built for
another TensorRT or GPU) falls back to the ONNX export beside it, as app.py does.

    python3 examples/jetson_app/control_loop.py --policy engines/obstacle-policy.plan --hz 10
    python3 examples/jetson_app/control_loop.py --policy engines/obstacle-policy.onnx --hz 10 \\
        --method ddim --steps 10 --ticks 40

Most ticks pop a queued action (microseconds); every n_action_steps-th tick predicts a chunk
(the encoder once, then ``steps`` denoiser calls), and that tick is the one that may overrun.
The last line printed is a JSON summary. Imports no torch: NumPy, the runtime and a backend.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

try:
    import runtime
except ImportError:  # run from a checkout without installing: the repo root is two levels up
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import runtime

sys.path.insert(0, str(Path(__file__).resolve().parent))
from app import OrtMissing, open_with_fallback, peak_rss_mb  # noqa: E402  (this folder's app.py)

from ddpm_export.tasks.obstacle import DEFAULT_MAX_STEPS, ObstacleTask  # noqa: E402  (NumPy only)
from runtime.api import TRT_SUFFIXES  # noqa: E402
from runtime.loop import METHODS  # noqa: E402


def stats_ms(seconds: Sequence[float]) -> Optional[Dict[str, float]]:
    """median, p90 and max of a list of durations, in ms (None for an empty list)."""
    if not len(seconds):
        return None
    a = 1e3 * np.asarray(seconds, dtype=np.float64)
    return {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "max": float(a.max()),
            "n": int(a.size)}


def _fmt(s: Optional[Dict[str, float]]) -> str:
    return "none" if s is None else f"median {s['median']:.2f} / p90 {s['p90']:.2f} / max {s['max']:.2f} ms"


def run_loop(policy, task: ObstacleTask, hz: float, ticks: int, sleep=time.sleep,
             clock=time.perf_counter) -> Dict[str, Any]:
    """Run the task at ``hz`` for at most ``ticks`` ticks (or until every episode ended).

    Tick k's deadline is k / hz after the start; a tick whose work (select_action and the task
    step) ends after its deadline overran, and the schedule restarts from then (a late tick
    does not make the following ones late). Returns the per-tick and per-chunk timings."""
    period = 1.0 / hz
    obs = task.reset()
    policy.reset()
    tick_s: List[float] = []
    chunks: List[Dict[str, float]] = []
    overran: List[int] = []
    deadline = clock() + period
    for k in range(ticks):
        if task.done.all():
            break
        before = policy.chunks
        t0 = clock()
        action = policy.select_action(obs)  # observation in, one action out
        tick_s.append(clock() - t0)
        if policy.chunks != before:  # this tick predicted a chunk: the encoder + the denoiser
            chunks.append(dict(policy.last_timing, tick=k))
        obs = task.step(action)  # the "robot" acts
        now = clock()
        if now > deadline:
            overran.append(k)
            deadline = now + period
        else:
            sleep(deadline - now)
            deadline += period
    return {"hz": hz, "period_ms": 1e3 * period, "ticks": len(tick_s), "tick_ms": stats_ms(tick_s),
            "chunk_ms": stats_ms([c["chunk_s"] for c in chunks]),
            "encoder_ms": stats_ms([c["encoder_s"] for c in chunks]),
            "denoiser_ms": stats_ms([c["denoiser_s"] for c in chunks]),
            "chunks": len(chunks), "chunk_ticks": [c["tick"] for c in chunks],
            "engine_calls_per_chunk": policy.engine_calls_per_chunk,
            "overran": len(overran), "overran_ticks": overran[:20],
            "episodes": task.B, "done": int(task.done.sum()), "success": int(task.success.sum()),
            "collided": int(task.collided.sum())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="A diffusion policy in a fixed-rate control loop on the obstacle "
                                "task: an action out each tick, latency per tick and per chunk; a .plan falls "
                                "back to its .onnx when TensorRT or the GPU is missing.")
    p.add_argument("--policy", required=True, help="NAME.plan (TensorRT, + NAME-encoder.plan) or NAME.onnx "
                   "(ONNX Runtime, + NAME-encoder.onnx)")
    p.add_argument("--onnx", default=None, help="ONNX export to fall back to (default: NAME.onnx next to the plan)")
    p.add_argument("--hz", type=float, default=10.0, help="control rate in ticks per second (default 10)")
    p.add_argument("--ticks", type=int, default=DEFAULT_MAX_STEPS,
                   help=f"at most this many ticks (default {DEFAULT_MAX_STEPS}, the task's episode limit)")
    p.add_argument("--episodes", type=int, default=1, help="episodes stepped together (the policy's batch; default 1)")
    p.add_argument("--seed", type=int, default=0, help="the task layout's and the policy's seed (default 0)")
    p.add_argument("--method", choices=METHODS, default=None,
                   help="sampler (default: the manifest's, else DDPM over all steps, LeRobot's default)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps = denoiser calls per chunk")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: ONNX Runtime's)")
    p.add_argument("--allow-host-code", action="store_true",
                   help="run version-compatible plans, which embed host code TensorRT runs in this process; "
                        "only for plans you trust")
    args = p.parse_args(argv)
    if not args.hz > 0 or args.ticks < 1 or args.episodes < 1:
        p.error(f"--hz must be > 0, --ticks and --episodes >= 1; got {args.hz}, {args.ticks}, {args.episodes}")

    path = Path(args.policy)
    fallback = Path(args.onnx) if args.onnx else path.with_suffix(".onnx")
    out = sys.stdout
    policy = None
    try:
        def load(p_: Path):
            kw = {"allow_host_code": args.allow_host_code} if p_.suffix in TRT_SUFFIXES else {"threads": args.threads}
            return runtime.load_policy(p_, seed=args.seed, method=args.method, steps=args.steps, **kw)
        t0 = time.perf_counter()
        # TensorRT's log reaches Python through Polygraphy's logger on sys.stdout: keep stdout ours
        with contextlib.redirect_stdout(sys.stderr):
            policy, reason = open_with_fallback(path, fallback, load, lambda s: print(s, file=sys.stderr))
        backend = str(policy.engine.runner.backend)
        load_s = time.perf_counter() - t0
        print(f"loaded {fallback if reason else path} ({backend}) in {load_s:.2f} s: {policy.plan['method']} "
              f"with {policy.engine_calls_per_chunk} denoiser calls per chunk, a chunk every "
              f"{policy.n_action_steps} ticks; peak RSS {peak_rss_mb():.0f} MB", file=out)
        task = ObstacleTask(args.episodes, seed=args.seed, max_steps=args.ticks)
        with contextlib.redirect_stdout(sys.stderr):
            r = run_loop(policy, task, args.hz, args.ticks)
    except (OSError, ValueError, RuntimeError, OrtMissing) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 1
    finally:
        if policy is not None:
            with contextlib.redirect_stdout(sys.stderr):
                policy.close()
    print(f"{r['ticks']} ticks at {args.hz:g} Hz (period {r['period_ms']:.1f} ms), {r['episodes']} episode(s): "
          f"{r['success']} reached the goal, {r['collided']} collided, {r['done']} ended", file=out)
    print(f"per tick (select_action): {_fmt(r['tick_ms'])}", file=out)
    print(f"per chunk ({r['chunks']} chunks, {r['engine_calls_per_chunk']} denoiser calls each): "
          f"{_fmt(r['chunk_ms'])}; encoder {_fmt(r['encoder_ms'])}; denoiser {_fmt(r['denoiser_ms'])}", file=out)
    late = (f"{r['overran']} of {r['ticks']} ticks overran the {r['period_ms']:.1f} ms period (ticks "
            f"{', '.join(map(str, r['overran_ticks']))}{', ...' if r['overran'] > len(r['overran_ticks']) else ''})"
            if r["overran"] else f"no tick overran the {r['period_ms']:.1f} ms period")
    print(late, file=out)
    print(json.dumps({"policy": str(args.policy), "backend": backend, "fallback_reason": reason, "load_s": load_s,
                      "peak_rss_mb": peak_rss_mb(), **r}), file=out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
