"""The sampling loop: scheduler + runner, with noise in the project's canonical order.

Image i of a run draws all its noise from its own stream (``runtime.seeding``):
x_T first, then one z per step with noise (see ``runtime.schedulers.ddpm``). So the
images of a seed do not depend on the batch size, and images first_image, ... of a
run are the same whether drawn alone or as part of a larger run. The PyTorch
reference sampler fed the same streams gives the same chain (tests check it).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from runtime.contract import Condition
from runtime.guidance import GuidedDenoiser, prepare_conditions
from runtime.limits import LOOP_BYTES_PER_VALUE, check_images_fit
from runtime.progress import progress_bar
from runtime.schedulers import METHODS, make_scheduler
from runtime.seeding import ImageStreams

__all__ = ["METHODS", "make_scheduler", "NonFiniteError", "SampleResult", "StepCallback", "sample"]

# callback(step_index, t, x_t_next, x0_hat) after each step of each batch
StepCallback = Callable[[int, int, np.ndarray, np.ndarray], None]


class NonFiniteError(FloatingPointError):
    """NaN or Inf appeared in the chain."""


class SampleResult(NamedTuple):
    images: np.ndarray  # float32 [N, *sample_shape] ([N, C, H, W] in [-1, 1] for clipped images)
    trajectory: List[Tuple[int, np.ndarray]]  # (t, x0_hat of the first batch), trajectory_frames of them
    seconds: float  # wall time of the loop
    network_calls: int  # engine calls made
    image_steps: int  # sum of the batch sizes of those calls (2N per guided call at batch 2N)


def sample(
    runner: Callable[..., np.ndarray],
    image_shape: Tuple[int, ...],
    schedule: Dict[str, Any],
    num: int,
    seed: int = 0,
    steps: Optional[int] = None,
    method: str = "ddpm",
    eta: Optional[float] = None,
    spacing: Optional[str] = None,
    batch: int = 8,
    callback: Optional[StepCallback] = None,
    trajectory_frames: int = 0,
    progress: bool = False,
    first_image: int = 0,
    timesteps: Optional[Sequence[int]] = None,
    conditions: Sequence[Condition] = (),
    cond: Optional[Dict[str, Any]] = None,
    guidance: float = 1.0,
    max_batch: Optional[int] = None,
    **options: Any,
) -> SampleResult:
    """Draw images first_image, ..., first_image + num - 1 of ``seed`` with ``runner``
    (eps = runner(x_t, t)); see SampleResult. ``batch`` changes speed, not the images.

    method: a name in runtime.schedulers.METHODS; eta, spacing and ``options`` (order,
    variant, corrector, karras, clip, ...) are the method's, None = its default. A
    multistep solver restarts its history at the first timestep of every batch.
    timesteps: exactly these (strictly descending ints in [0, T-1], e.g. a distilled
    student's, from its manifest's ``sampling`` section) instead of ``steps``.
    image_shape: the per-sample shape (any rank; [C, H, W] for images).
    conditions: the model's (runtime.contract.conditions_of(manifest)); cond: their values by
    name, one for all samples or one per sample ([num, *shape]), sliced per batch; guidance:
    the classifier-free guidance scale (runtime.guidance; 1 = none), one engine call at batch
    2n per step while 2n <= max_batch (None: no limit), else two. The samples' noise does
    not depend on either.
    """
    if num < 1 or batch < 1:
        raise ValueError(f"need num >= 1 and batch >= 1, got num={num}, batch={batch}")
    if isinstance(first_image, bool) or not isinstance(first_image, (int, np.integer)) or first_image < 0:
        raise ValueError(f"first_image={first_image!r}: expected an int >= 0 (the index of the first image)")
    check_images_fit(num, image_shape, LOOP_BYTES_PER_VALUE)  # all num images are returned at once
    model = GuidedDenoiser(runner, conditions, guidance, max_batch)
    if conditions and cond is None and model.guidance == 0.0:
        conds = model.null(num)  # the unconditional model alone needs no condition
    else:
        conds = prepare_conditions(conditions, cond, num) if (conditions or cond) else {}
    sched = make_scheduler(schedule, method, steps, timesteps=timesteps, eta=eta, spacing=spacing, **options)
    timesteps = [int(t) for t in sched.timesteps]
    t_arrays: Dict[int, Dict[int, np.ndarray]] = {}
    out, trajectory = [], []
    every = max(1, len(timesteps) // trajectory_frames) if trajectory_frames else 0
    n_batches = (num + batch - 1) // batch
    bar = _progress(progress, n_batches * len(timesteps))
    start = time.perf_counter()
    for b0 in range(0, num, batch):
        n = min(batch, num - b0)
        rng = ImageStreams(seed, first_image + b0, n)
        x = sched.init_noise((n,) + tuple(image_shape), rng)
        ts = t_arrays.setdefault(n, {t: np.full((n,), t, dtype=np.int32) for t in timesteps})
        cond_b = {k: v[b0:b0 + n] for k, v in conds.items()}
        for i, t in enumerate(timesteps):
            eps = model(x, ts[t], cond_b)
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
                        model.calls, num * len(timesteps) * model.branches)


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    return progress_bar(total=total, desc="sampling", unit="step")
