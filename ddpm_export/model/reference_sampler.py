"""Batched sampling with the PyTorch reference, on the runtime's noise streams.

Image i of a run with seed s draws x_T and every z from its own stream,
``runtime.seeding.ImageStreams(s, i, 1)`` (the NumPy runtime uses the same), so
the images do not depend on the batch size, any batch can be regenerated alone
(the tests regenerate batch 0 of the shipped digits samples), and the runtime
with the same seed follows the same chain up to the engine's rounding.
The schedule decides what the model's output means (eps, x0 or v) and how x0_hat is
limited (clipping, clip_sample_range, dynamic thresholding), as in the runtime.
A conditional model samples with its conditions (one row per image, sliced per batch as
the runtime slices them) and classifier-free guidance mixed on the raw output
(``ddpm_export.model.conditions.GuidedModel``, the reference of runtime.guidance).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from runtime.io import load_npz
from runtime.schedulers.schedule import ScheduleConfig
from runtime.seeding import ImageStreams

from ddpm_export.model.diffusion import GaussianDiffusion
from ddpm_export.model.external import image_shape_of


def load_samples_npz(path) -> np.ndarray:
    """The float samples [N, C, H, W] of a .npz from 'digits-score --save' or 'sample --npz'
    (read without unpickling; runtime.io.NpzError names the file)."""
    return load_npz(path, "samples written by 'ddpm-export sample --npz' or 'digits-score --save'",
                    keys=("samples",))["samples"]


def sample_images(
    model: torch.nn.Module,
    schedule: ScheduleConfig,
    num: int,
    seed: int = 0,
    batch_size: int = 25,
    first_batch: int = 0,
    num_batches: Optional[int] = None,
    trajectory_every: int = 0,
    progress: bool = True,
    device: str = "cpu",
    conditions: Sequence[Any] = (),
    cond: Optional[Dict[str, Any]] = None,
    guidance: float = 1.0,
) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """Draw images 0..num-1 of ``seed`` [num, C, H, W] float32 in [-1, 1]
    (batches first_batch, ... of ``batch_size`` when given: images from
    first_batch * batch_size on).

    Returns the images and, when ``trajectory_every`` > 0, the x0-prediction
    trajectory of the first batch [(t, [b, C, H, W])].

    conditions: a conditional model's (runtime.contract.Condition, in input order); cond: their
    values by name, one for all images or one per image ([num, ...], as engine.sample_float
    takes them); guidance: the classifier-free guidance scale (1 = the conditional model alone).
    """
    if num < 1 or batch_size < 1:
        raise ValueError(f"need num >= 1 and batch_size >= 1, got num={num}, batch_size={batch_size}")
    conds = None
    if conditions or cond:
        from runtime.guidance import check_guidance, null_conditions, prepare_conditions

        from ddpm_export.model.conditions import GuidedModel

        if check_guidance(guidance) == 0.0 and cond is None:
            conds = null_conditions(conditions, num)  # the unconditional model alone, as the runtime
        else:
            conds = prepare_conditions(conditions, cond, num)
        guided = GuidedModel(model, conditions, guidance)
    diffusion = GaussianDiffusion(schedule)
    n_batches = (num + batch_size - 1) // batch_size
    last = n_batches if num_batches is None else min(n_batches, first_batch + num_batches)
    out, trajectory = [], []
    bar = None
    if progress:
        from runtime.progress import progress_bar

        bar = progress_bar(total=(last - first_batch) * diffusion.num_timesteps, desc="sampling", unit="step")
    image_shape = image_shape_of(model)
    model = model.to(device).eval()
    for i in range(first_batch, last):
        n = min(batch_size, num - i * batch_size)
        shape = (n, *image_shape)
        net = model
        if conds is not None:
            from ddpm_export.model.conditions import WithConditions, condition_tensors

            rows = slice(i * batch_size, i * batch_size + n)
            net = WithConditions(guided, [v.to(device) for v in condition_tensors(conditions, conds, rows)])
        x, traj = diffusion.sample(
            _Counting(net, bar), shape, device=device,
            trajectory_every=trajectory_every if i == first_batch else 0,
            **stream_noise(ImageStreams(seed, i * batch_size, n), shape),
        )
        out.append(x.numpy())
        if traj:
            trajectory = [(t, a.numpy()) for t, a in traj]
    if bar is not None:
        bar.close()
    return np.concatenate(out), trajectory


def stream_noise(streams: ImageStreams, shape) -> dict:
    """``x_T`` and ``noise`` for GaussianDiffusion.sample drawn from ``streams`` in the
    runtime's order: x_T now, then z for t = T-1, ..., 1 as the chain asks for them."""
    x_T = torch.from_numpy(streams.standard_normal(shape, dtype=np.float32))
    return {"x_T": x_T, "noise": lambda t: torch.from_numpy(streams.standard_normal(shape, dtype=np.float32))}


class _Counting(torch.nn.Module):
    """Wraps the model to tick the progress bar once per network call."""

    def __init__(self, model, bar):
        super().__init__()
        self.model, self.bar = model, bar
        self.config = model.config

    def forward(self, x, t):
        if self.bar is not None:
            self.bar.update(1)
        return self.model(x, t)
