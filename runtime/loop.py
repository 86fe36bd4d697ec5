"""The sampling loop: scheduler + runner, with noise in the project's canonical order.

One ``numpy.random.Generator(seed)`` serves the whole run, batch after batch:
x_T first, then one z per step with noise (see ``runtime.schedulers.ddpm``). The PyTorch
reference sampler fed the same draws gives the same chain (tests check it).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from runtime.schedulers.ddim import DEFAULT_STEPS as DDIM_DEFAULT_STEPS, SPACINGS, DDIMScheduler
from runtime.schedulers.ddpm import DDPMScheduler
from runtime.schedulers.schedule import ScheduleConfig

METHODS = ("ddpm", "ddim")

# callback(step_index, t, x_t_next, x0_hat) after each step of each batch
StepCallback = Callable[[int, int, np.ndarray, np.ndarray], None]


class NonFiniteError(FloatingPointError):
    """NaN or Inf appeared in the chain."""


class SampleResult(NamedTuple):
    images: np.ndarray  # float32 [N, C, H, W] in [-1, 1] (when clipping)
    trajectory: List[Tuple[int, np.ndarray]]  # (t, x0_hat of the first batch), trajectory_frames of them
    seconds: float  # wall time of the loop
    network_calls: int  # engine calls made
    image_steps: int  # sum of the batch sizes of those calls


def check_method_options(method: str, eta: float = 0.0, spacing: str = SPACINGS[0]) -> None:
    """DDPM has no eta and no spacing: refuse them rather than ignore them."""
    if method == "ddpm" and (eta != 0.0 or spacing != SPACINGS[0]):
        raise ValueError(
            f"eta={eta!r} and spacing={spacing!r} apply to method ddim only (ddpm takes eta 0 and "
            f"spacing {SPACINGS[0]}); drop them or use method ddim (--method ddim)"
        )


def make_scheduler(
    schedule: Dict[str, Any], method: str = "ddpm", steps: Optional[int] = None,
    eta: float = 0.0, spacing: str = SPACINGS[0],
):
    """A scheduler for the manifest's schedule; steps None means all T (DDPM) or
    DDIM_DEFAULT_STEPS (DDIM)."""
    check_method_options(method, eta, spacing)
    cfg = ScheduleConfig.from_dict(schedule)
    if method == "ddpm":
        sched = DDPMScheduler(cfg)
        sched.set_timesteps(steps)
    elif method == "ddim":
        sched = DDIMScheduler(cfg, eta=eta, spacing=spacing)
        sched.set_timesteps(DDIM_DEFAULT_STEPS if steps is None else steps)
    else:
        raise ValueError(f"method {method!r} is unknown; expected one of {METHODS}")
    return sched


def sample(
    runner: Callable[[np.ndarray, np.ndarray], np.ndarray],
    image_shape: Tuple[int, int, int],
    schedule: Dict[str, Any],
    num: int,
    seed: int = 0,
    steps: Optional[int] = None,
    method: str = "ddpm",
    eta: float = 0.0,
    spacing: str = SPACINGS[0],
    batch: int = 8,
    callback: Optional[StepCallback] = None,
    trajectory_frames: int = 0,
    progress: bool = False,
) -> SampleResult:
    """Draw ``num`` images with ``runner`` (eps = runner(x_t, t)); see SampleResult."""
    if num < 1 or batch < 1:
        raise ValueError(f"need num >= 1 and batch >= 1, got num={num}, batch={batch}")
    sched = make_scheduler(schedule, method, steps, eta, spacing)
    rng = np.random.default_rng(seed)
    timesteps = [int(t) for t in sched.timesteps]
    t_arrays: Dict[int, Dict[int, np.ndarray]] = {}
    out, trajectory = [], []
    every = max(1, len(timesteps) // trajectory_frames) if trajectory_frames else 0
    n_batches = (num + batch - 1) // batch
    bar = _progress(progress, n_batches * len(timesteps))
    start = time.perf_counter()
    for b0 in range(0, num, batch):
        n = min(batch, num - b0)
        x = sched.init_noise((n,) + tuple(image_shape), rng)
        ts = t_arrays.setdefault(n, {t: np.full((n,), t, dtype=np.int32) for t in timesteps})
        for i, t in enumerate(timesteps):
            eps = runner(x, ts[t])
            if not np.isfinite(eps).all():
                raise NonFiniteError(
                    f"NaN/Inf in the engine's output at step {i + 1}/{len(timesteps)} (t={t}, batch "
                    f"starting at image {b0}): {int((~np.isfinite(eps)).sum())} non-finite values. "
                    f"With an FP16 engine this is overflow: re-export with 'ddpm-export export --fp16' "
                    f"(it keeps FP32 islands) or use the FP32 model"
                )
            x, x0 = sched.step(eps, t, x, rng)
            if callback is not None:
                callback(i, t, x, x0)
            if b0 == 0 and every and ((i + 1) % every == 0 or i == len(timesteps) - 1):
                trajectory.append((t, x0.copy()))
            if bar is not None:
                bar.update(1)
        out.append(x)
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    return SampleResult(np.concatenate(out), trajectory, seconds,
                        n_batches * len(timesteps), num * len(timesteps))


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm  # optional: the runtime needs only NumPy
    except ImportError:
        return None
    return tqdm(total=total, desc="sampling", unit="step", dynamic_ncols=True)
