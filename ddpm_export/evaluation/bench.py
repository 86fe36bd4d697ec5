"""Speed benchmark: U-Net evaluations per second (image-steps/s) on this machine.

(a) diffusers UNet2DModel, eager PyTorch, the cifar10 architecture
(b) a bare ONNX Runtime session on our export of the same architecture
(c) our full runtime loop (scheduler, noise, input checks and copies included)
plus the scheduler's own cost per step next to one digits-model engine call.
All in one process, one thread count; medians of repeated runs. A benchmark
prints a table; it is not a timed test.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np


def _median_rate(fn: Callable[[], int], repeats: int, warmup: int = 1) -> float:
    """Median of image-steps/s over ``repeats`` runs of fn (fn returns its image-steps)."""
    return _interleaved_rates([fn], repeats, warmup)[0]


def _interleaved_rates(fns: List[Callable[[], int]], repeats: int, warmup: int = 1) -> List[float]:
    """Medians of image-steps/s, the candidates timed round-robin so that the
    machine's drift (a shared, noisy host) hits all of them alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    rates: List[List[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            n = fn()
            rates[i].append(n / (time.perf_counter() - t0))
    return [statistics.median(r) for r in rates]


def _loop_overhead(engine, batch: int, steps: int = 200) -> float:
    """Seconds per step the runtime loop adds around the engine: input checks,
    scheduler, noise, finiteness check and copies, with a runner that returns
    instantly (deterministic, unlike the difference of two noisy timings)."""
    from runtime.loop import sample

    zeros = np.zeros((batch,) + tuple(engine.image_shape), np.float32)

    def null_runner(x, t):
        engine.runner.check_inputs(x, t)
        return zeros

    def run():
        return sample(null_runner, engine.image_shape, engine.manifest["schedule"], batch,
                      steps=steps, batch=batch).network_calls

    return 1.0 / _median_rate(run, 3)


def _cifar10_export(tmp: Path, seed: int = 0):
    import torch

    from runtime.schedulers.schedule import ScheduleConfig

    from ddpm_export.model.checkpoint import save_checkpoint
    from ddpm_export.model.config import PRESETS
    from ddpm_export.export.onnx_export import export_onnx
    from ddpm_export.model.unet import UNet

    torch.manual_seed(seed)
    model = UNet(PRESETS["cifar10"].unet).eval()
    ckpt = tmp / "cifar10.pt"
    save_checkpoint({"model_config": PRESETS["cifar10"].unet.to_dict(),
                     "schedule_config": ScheduleConfig().to_dict(), "ema": model.state_dict()}, ckpt)
    onnx_path = tmp / "cifar10.onnx"
    export_onnx(ckpt, onnx_path, check=False, command="ddpm-export bench")
    return onnx_path


def _diffusers_unet():
    from diffusers import UNet2DModel

    from ddpm_export.model.config import PRESETS
    from ddpm_export.weights import config_to_diffusers

    return UNet2DModel(**config_to_diffusers(PRESETS["cifar10"].unet)).eval()


def run_bench(batches=(1, 8), steps: int = 10, repeats: int = 5, threads: int = 2,
              digits_onnx: Optional[str] = "engines/digits.onnx") -> Dict[str, object]:
    import onnxruntime as ort
    import torch

    import runtime
    from runtime.contract import INPUT_T, INPUT_X, OUTPUT
    from runtime.loop import make_scheduler
    from runtime.seeding import ImageStreams

    torch.set_num_threads(threads)
    rows: List[Dict[str, object]] = []
    with tempfile.TemporaryDirectory() as d:
        onnx_path = _cifar10_export(Path(d))
        unet = _diffusers_unet()
        engine = runtime.load(onnx_path, threads=threads)
        engine.__enter__()
        try:
            opts = ort.SessionOptions()  # the same options the runtime's runner uses
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.intra_op_num_threads = threads
            bare = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
            rng = np.random.default_rng(0)
            for b in batches:
                x = rng.standard_normal((b, 3, 32, 32), dtype=np.float32)
                t = np.full((b,), 500, dtype=np.int32)
                xt, tt = torch.from_numpy(x), torch.from_numpy(t).long()

                def eager():
                    with torch.inference_mode():
                        for _ in range(steps):
                            unet(xt, tt)
                    return b * steps

                def bare_ort():
                    for _ in range(steps):
                        bare.run([OUTPUT], {INPUT_X: x, INPUT_T: t})
                    return b * steps

                def loop():
                    return engine.sample_float(b, seed=0, steps=steps, method="ddpm", batch=b).image_steps

                a_, b_, c_ = _interleaved_rates([eager, bare_ort, loop], repeats)
                overhead = _loop_overhead(engine, b)
                rows.append({"batch": b, "diffusers_eager": a_, "onnxruntime_bare": b_, "runtime_loop": c_,
                             "loop_vs_eager": c_ / a_, "loop_vs_bare": c_ / b_,
                             "loop_overhead_s": overhead, "overhead_share": overhead * b_ / b})
        finally:
            engine.__exit__(None, None, None)

    sched_row = None
    if digits_onnx and Path(digits_onnx).is_file():
        with runtime.load(digits_onnx, threads=threads) as eng:
            shape = (1,) + tuple(eng.image_shape)
            x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
            t = np.full((1,), 500, dtype=np.int32)
            n = 200
            call = 1.0 / _median_rate(lambda: [eng(x, t) for _ in range(n)] and n, repeats)
            sched = make_scheduler(eng.manifest["schedule"], "ddpm")
            srng = ImageStreams(0, 0, 1)  # the loop's per-image noise streams
            eps = eng(x, t)
            step = 1.0 / _median_rate(lambda: [sched.step(eps, 500, x, srng) for _ in range(n)] and n, repeats)
        sched_row = {"engine_call_s": call, "scheduler_step_s": step, "share": step / call}
    return {"threads": threads, "steps": steps, "rows": rows, "scheduler": sched_row,
            "torch": torch.__version__, "onnxruntime": ort.__version__}


def format_table(res: Dict[str, object]) -> str:
    lines = [
        f"image-steps/s, cifar10 architecture (35.7M params, 32x32), {res['threads']} threads, "
        f"median of runs of {res['steps']} steps; torch {res['torch']}, onnxruntime {res['onnxruntime']}",
        "| batch | (a) diffusers eager | (b) ORT bare session | (c) runtime loop | (c)/(a) | (c)/(b) "
        "| loop overhead per step |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(f"| {r['batch']} | {r['diffusers_eager']:.2f} | {r['onnxruntime_bare']:.2f} | "
                     f"{r['runtime_loop']:.2f} | {r['loop_vs_eager']:.2f}x | {r['loop_vs_bare']:.3f} | "
                     f"{r['loop_overhead_s'] * 1e6:.0f} us = {100 * r['overhead_share']:.2f} % of a call |")
    s = res["scheduler"]
    if s:
        lines.append(
            f"scheduler + noise per DDPM step: {s['scheduler_step_s'] * 1e6:.0f} us = {100 * s['share']:.1f} % "
            f"of one digits engine call at batch 1 ({s['engine_call_s'] * 1e3:.2f} ms)"
        )
    return "\n".join(lines)


# (method, options) rows of the scheduler-cost table: every method's defaults, plus the
# third-order solvers (the longest history)
SCHEDULER_COST_ROWS = (("ddpm", {}), ("ddim", {}), ("dpmsolver++", {}), ("dpmsolver++", {"order": 3}),
                       ("sde-dpmsolver++", {}), ("unipc", {}), ("unipc", {"order": 3}),
                       ("consistency", {}))  # a distilled student's sampler: x0, then re-noise


def scheduler_costs(digits_onnx: str = "engines/digits.onnx", batches=(1, 64), steps: int = 20,
                    repeats: int = 5, threads: int = 2) -> Dict[str, object]:
    """Per-step cost of each scheduler's bookkeeping (step(): data prediction, history,
    coefficients, noise draw) next to one engine call at the same batch, timed round-robin.

    A whole chain of ``steps`` steps runs on a fixed eps (no engine), so the history and the
    order switches are those of a real chain; per step = chain time / steps."""
    import runtime
    from runtime.schedulers import make_scheduler
    from runtime.seeding import ImageStreams

    rows: List[Dict[str, object]] = []
    with runtime.load(digits_onnx, threads=threads) as eng:
        for b in batches:
            rng = np.random.default_rng(0)
            shape = (b,) + tuple(eng.image_shape)
            x = rng.standard_normal(shape, dtype=np.float32)
            t = np.full((b,), 500, dtype=np.int32)
            eps = eng(x, t)
            n_calls = max(2, 20 // b)

            def call():
                for _ in range(n_calls):
                    eng(x, t)
                return n_calls

            chains = []
            for method, opts in SCHEDULER_COST_ROWS:
                sched = make_scheduler(eng.manifest["schedule"], method, steps, **opts)
                ts = [int(v) for v in sched.timesteps]

                def chain(sched=sched, ts=ts, b=b):
                    srng = ImageStreams(1, 0, b)  # the per-image streams, as the sampling loop draws
                    xx = x
                    for tt in ts:
                        xx = sched.step(eps, tt, xx, srng).prev_sample
                    return len(ts)

                chains.append(chain)
            # one chain per timing, many timings: the minimum skips the preemptions a
            # loaded host inflicts on some chains (single steps of 20-50 us hit 30 ms)
            best = _best_times([call] + chains, repeats)
            call_s = best[0]
            for (method, opts), step_s in zip(SCHEDULER_COST_ROWS, best[1:]):
                rows.append({"batch": b, "method": method, "options": opts, "engine_call_s": call_s,
                             "step_s": step_s, "share": step_s / call_s})
    return {"threads": threads, "steps": steps, "repeats": repeats, "rows": rows}


def _best_times(fns: List[Callable[[], int]], repeats: int) -> List[float]:
    """Seconds per unit of each fn, the minimum over ``repeats`` round-robin runs: on a
    shared host the minimum is the run least disturbed by other work, for the engine call
    and the scheduler alike (a median would inflate the multi-threaded engine call more)."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            n = fn()
            best[i] = min(best[i], (time.perf_counter() - t0) / n)
    return best


def format_scheduler_costs(res: Dict[str, object]) -> str:
    lines = [f"scheduler bookkeeping per step vs one digits engine call ({res['threads']} threads, "
             f"chains of {res['steps']} steps, best of {res['repeats']} round-robin runs)",
             "| batch | method | options | step (us) | engine call (ms) | share of a call |",
             "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "defaults"
        lines.append(f"| {r['batch']} | {r['method']} | {opts} | {r['step_s'] * 1e6:.0f} | "
                     f"{r['engine_call_s'] * 1e3:.2f} | {100 * r['share']:.2f} % |")
    return "\n".join(lines)
