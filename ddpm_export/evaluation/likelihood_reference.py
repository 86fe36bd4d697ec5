"""The PyTorch reference of the bound: ``GaussianDiffusion.calc_bpd`` on the draws of
:class:`ddpm_export.evaluation.likelihood.NoisePlan`.

A second implementation of the same definition (torch, float64 step math, the model in
float32), fed the same timesteps and noise as the NumPy bound through an engine, so
the two agree per image up to the engine's eps error.
"""
from __future__ import annotations

import time
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

from runtime.schedulers.schedule import ScheduleConfig

from ddpm_export.evaluation.likelihood import Bound, NoisePlan, ProgressFn, check_on_grid, check_t_samples
from ddpm_export.model.diffusion import GaussianDiffusion


def reference_bound(model, x0: np.ndarray, schedule: ScheduleConfig, t_samples: Optional[int] = None,
                    batch: int = 64, seed: int = 0, indices: Optional[Sequence[int]] = None,
                    progress: Optional[ProgressFn] = None, conditions: Sequence[Any] = (),
                    cond: Optional[Dict[str, np.ndarray]] = None) -> Bound:
    """L_vlb per image with the PyTorch model; arguments as in ``likelihood.compute_bound``
    (conditions: the model's runtime.contract.Condition list, in input order, with ``cond``)."""
    x0 = check_on_grid(x0)
    diffusion = GaussianDiffusion(schedule)
    T = diffusion.num_timesteps
    t_samples = check_t_samples(t_samples, T)
    indices = np.arange(len(x0)) if indices is None else np.asarray(indices)
    parts = []
    start = time.perf_counter()
    for lo in range(0, len(x0), batch):
        xb = x0[lo:lo + batch]
        plan = NoisePlan(seed, indices[lo:lo + batch], T, t_samples, xb.shape[1:])

        def noise(k, plan=plan, n=len(xb)):
            z = torch.from_numpy(plan.noise(k))
            if progress is not None:
                progress(n)
            return z

        net = model
        if conditions:
            from ddpm_export.model.conditions import WithConditions, condition_tensors

            net = WithConditions(model, condition_tensors(conditions, cond, slice(lo, lo + len(xb))))
        terms, mse, prior = diffusion.calc_bpd(net, torch.from_numpy(xb), torch.from_numpy(plan.timesteps),
                                               noise)
        parts.append((plan.timesteps, terms.numpy(), mse.numpy(), prior.numpy()))
    return Bound(T, t_samples, seed, *(np.concatenate(p) for p in zip(*parts)),
                 seconds=time.perf_counter() - start)
