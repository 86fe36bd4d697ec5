"""Multistep consistency sampling (Song et al. 2023, Algorithm 1) for few-step students.

A student made by ``ddpm-export distill`` maps a noisy x_t straight to the end of
the teacher's ODE trajectory through x_t. One call at t = T-1 is a sample; with N
calls the sampler re-noises that sample to the next timestep with fresh noise,
x_t' = sqrt(abar_t') x0 + sqrt(1 - abar_t') z, and asks the student again, so each
call sees an input distributed like the forward process at its timestep.

Timesteps of set_timesteps(N): round(linspace(0, T-1, N+1)) without the 0, descending
(the solvers' "linspace" spacing), so N = 1, 2, 4, 8 use nested subsets of the grid
the student was trained on (N = 4 on T = 1000: 999, 749, 500, 250). A student's
manifest lists its own per call count, and the runtime samples those
(set_timesteps(timesteps=...); runtime.contract.sampling_plan): the shipped digits
student's 4-call list is 999, 375, 250, 125, chosen by measurement after training.

Noise order, as every scheduler here: x_T first, then one z per step that adds
noise (every step but the last), ``rng.standard_normal(x_t.shape, dtype=float32)``.
The model output is read by the schedule's ``prediction`` type (eps, x0 or v).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from runtime.schedulers.base import Scheduler, StepOutput, draw_noise
from runtime.schedulers.prediction import limiter, resolve_limit
from runtime.schedulers.schedule import ScheduleConfig

DEFAULT_STEPS = 4


def consistency_timesteps(num_inference_steps: int, num_timesteps: int) -> np.ndarray:
    """round(linspace(0, T-1, N+1))[::-1] without the final 0, as int64."""
    t = np.linspace(0, num_timesteps - 1, num_inference_steps + 1).round()[::-1][:-1]
    return t.astype(np.int64)


class ConsistencyScheduler(Scheduler):
    """x0 = student(x_t, t); x_t' = sqrt(abar_t') x0 + sqrt(1 - abar_t') z; the last step returns x0.

    clip: limit x0 (clip, or the schedule's dynamic thresholding) before re-noising and at
    the end; None = the schedule's clip_denoised. dtype: of the returned arrays; the math
    is float64.
    """

    def __init__(self, schedule_config: ScheduleConfig = ScheduleConfig(), clip: Optional[bool] = None,
                 dtype: Any = np.float32):
        super().__init__(schedule_config, dtype)
        self._limit = resolve_limit(schedule_config, clip, who="consistency")
        self._limit_x0 = limiter(self._limit)
        self.set_timesteps(DEFAULT_STEPS)

    def _timesteps(self, num_inference_steps: int, num_timesteps: int) -> np.ndarray:
        return consistency_timesteps(num_inference_steps, num_timesteps)

    def _set_coefficients(self, t, prev, abar, abar_prev) -> None:
        self._sqrt_abar_prev = np.sqrt(abar_prev)
        self._sqrt_one_minus_abar_prev = np.sqrt(1.0 - abar_prev)
        self._last = len(t) - 1

    def _finish_step(self, i: int, t: int, out: np.ndarray, x_t: np.ndarray, x0: np.ndarray,
                     rng: Optional[np.random.Generator], noise: Optional[np.ndarray]) -> StepOutput:
        # 1. x0 = the student's jump to the end of the ODE trajectory through x_t, limited
        if self._limit_x0 is not None:  # in place: x0 (or out, for an x0 model) is step()'s own copy
            x0 = self._limit_x0(x0)
        if i == self._last:  # 2. the last call's x0 is the sample
            return StepOutput(x0.astype(self.dtype), x0.astype(self.dtype))
        # 3. re-noise to the next timestep with fresh noise: x_t' ~ q(x_t' | x0)
        z = draw_noise(rng, noise, x_t.shape, t)
        prev = self._sqrt_abar_prev[i] * x0 + self._sqrt_one_minus_abar_prev[i] * z
        return StepOutput(prev.astype(self.dtype), x0.astype(self.dtype))
