"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) as a NumPy scheduler.

API shaped like diffusers' ``DDPMScheduler``: ``set_timesteps(n)``, a
``timesteps`` array, ``step(eps, t, x_t, rng)``. The math runs in float64 on the
constants of ``runtime.schedulers.schedule``; arrays come back in the scheduler's ``dtype``.
Noise order (shared by every sampler in the project): ``init_noise`` draws x_T
first, then ``step`` draws one z per step with t > 0, in descending t, each as
``rng.standard_normal(x_t.shape, dtype=np.float32)``. ``rng`` is a numpy Generator or
a ``runtime.seeding.ImageStreams`` (one stream per image: what the sampling loop passes).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from runtime.schedulers.base import Scheduler, StepOutput, draw_noise
from runtime.schedulers.prediction import limiter, resolve_limit
from runtime.schedulers.schedule import ScheduleConfig


class DDPMScheduler(Scheduler):
    """Ancestral DDPM sampler over all T steps or a strided subset of them.

    schedule_config: betas, T, variance_type ("fixedlarge" | "fixedsmall"), the
    prediction type and how x0_hat is limited (clip_denoised, thresholding).
    dtype: dtype of the arrays step()/add_noise() return (float32 by default; float64
    keeps the chain in float64 as the PyTorch reference sampler does). The math is
    float64 whatever the input dtype. clip: None = the schedule's limit, False = none,
    True = the schedule's, clipping when it has none (runtime.schedulers.prediction).
    """

    def __init__(self, schedule_config: ScheduleConfig = ScheduleConfig(), dtype: Any = np.float32,
                 clip: Optional[bool] = None):
        super().__init__(schedule_config, dtype)
        self.limit = resolve_limit(schedule_config, clip, who="ddpm")
        self._limit_x0 = limiter(self.limit)
        self.set_timesteps(None)

    def set_timesteps(self, num_inference_steps: Optional[int] = None,
                      timesteps: Optional[Sequence[int]] = None) -> None:
        """None: t = T-1, ..., 0. N: the schedule's timestep_spacing and steps_offset, as
        diffusers' DDPMScheduler.set_timesteps(N) (leading, the default: arange(N) * (T // N)
        descending). ``timesteps``: exactly those (ints, strictly descending, in [0, T-1]).

        A strided step from t to the next timestep t' of the subset uses the
        respaced beta' = 1 - abar_t / abar_t' (improved-diffusion respace.py;
        diffusers' DDPMScheduler via previous_timestep) in eq. (7) and in the
        variance. With all T steps the constants are runtime.schedulers.schedule's, bit for bit.
        """
        super().set_timesteps(num_inference_steps, timesteps)

    def _set_coefficients(self, t, prev, abar, abar_prev) -> None:
        s = self.schedule
        # Consecutive steps take the schedule's own betas: 1 - abar_t/abar_{t-1}
        # would equal them only to ~1e-12 (cancellation where beta ~ 1e-4).
        betas = np.where(prev == t - 1, s.betas[t], 1.0 - abar / abar_prev)
        alphas = 1.0 - betas
        # eq. (7), same expressions (and rounding) as runtime.schedulers.schedule
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        self._coef_x0 = betas * np.sqrt(abar_prev) / (1.0 - abar)
        self._coef_xt = (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar)
        var = betas.copy() if self.config.variance_type == "fixedlarge" else post_var.copy()
        # The last step goes into abar = 1, where the posterior variance is 0. The paper adds
        # no noise there. With final_step_noise and a last t > 0 (a chain that ends above 0)
        # diffusers' DDPMScheduler does: its variance for the jump to t = -1, beta' = 1 - abar_t
        # (fixed_large) or the posterior variance clamped at 1e-20 (fixed_small).
        self._noise_last = bool(self.config.final_step_noise and t[-1] > 0)
        if self._noise_last:
            var[-1] = max(var[-1], 1e-20)
        else:
            # like the official code, take the log at the next timestep's posterior variance
            # (never used: no noise on the last step)
            var[-1] = post_var[-2] if len(t) > 1 else 1.0
        self._std = np.exp(0.5 * np.log(var))

    def _finish_step(self, i: int, t: int, out: np.ndarray, x_t: np.ndarray, x0: np.ndarray,
                     rng: Optional[np.random.Generator], noise: Optional[np.ndarray]) -> StepOutput:
        """Algorithm 2's step x_t -> x_{t'} from x0_hat (not yet limited); z (from rng
        or noise) is added on every step but the last (into the clean sample), not drawn there."""
        # 2. clip x0_hat to [-1, 1] (or threshold it) before it enters the posterior mean
        if self._limit_x0 is not None:
            x0 = self._limit_x0(x0)
        # 3. posterior mean of q(x_{t-1} | x_t, x0_hat), eq. (7)
        mean = self._coef_x0[i] * x0 + self._coef_xt[i] * x_t
        # 4. Algorithm 2, line 4: x_{t-1} = mean + sigma_t z with z ~ N(0, I) if t > 0,
        #    sigma_t^2 = beta_t (fixedlarge) or beta_tilde_t (fixedsmall); z = 0 on the last
        #    step, into the clean sample (t = 0, or the smallest timestep of a chain that
        #    ends above 0: trailing spacing, steps_offset, given timesteps), unless the
        #    schedule's final_step_noise asks for diffusers' rule (noise whenever t > 0).
        if i < self.num_inference_steps - 1 or self._noise_last:
            prev = mean + self._std[i] * draw_noise(rng, noise, x_t.shape, t)
        else:
            prev = mean
        return StepOutput(prev.astype(self.dtype), x0.astype(self.dtype))
