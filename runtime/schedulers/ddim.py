"""DDIM sampling (Song et al. 2021, eq. 12) as a NumPy scheduler.

API shaped like diffusers' ``DDIMScheduler`` (``set_alpha_to_one=True``,
``timestep_spacing="leading"``): ``set_timesteps(n)``, ``timesteps``,
``step(eps, t, x_t, rng)``. Float64 math on ``runtime.schedulers.schedule``'s constants;
same noise order as ``runtime.schedulers.ddpm``: x_T first, then one z per step with
sigma > 0, each ``rng.standard_normal(x_t.shape, dtype=np.float32)``.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from runtime.schedulers.base import (
    clip_unit,
    StepOutput,
    check_dtype,
    check_num_steps,
    check_rng,
    draw_noise,
    init_noise,
    leading_timesteps,
    q_sample,
    step_inputs,
)
from runtime.schedulers.schedule import Schedule, ScheduleConfig

SPACINGS = ("uniform", "quadratic")


def quadratic_timesteps(num_inference_steps: int, num_timesteps: int) -> np.ndarray:
    """The DDIM paper's CIFAR-10 subset: (linspace(0, sqrt(0.8 T), N)^2).astype(int), descending.

    For N >= 30 (T = 1000) the int cast repeats small timesteps (N=50 gives 49
    distinct, N=100 gives 96). The paper's code steps through the repeats, but a
    step from t to the same t is the identity (abar_prev = abar_t, sigma = 0), so
    the repeats are dropped: same samples, fewer model calls.
    """
    t = (np.linspace(0, np.sqrt(0.8 * num_timesteps), num_inference_steps) ** 2).astype(np.int64)
    return np.unique(t)[::-1].copy()


class DDIMScheduler:
    """DDIM over a subset of the T training timesteps.

    eta: 0 = deterministic DDIM, 1 = DDPM-like posterior noise (sigma of eq. 16).
    spacing: "uniform" (diffusers' "leading": arange(N) * (T // N)) or "quadratic".
    use_clipped_model_output: after clipping x0_hat, recompute eps from it, so that the
    direction term points at the x0_hat actually used (improved-diffusion's
    ddim_sample). True by default: with False (diffusers' DDIMScheduler.step and
    DDIMPipeline default) the step mixes a clipped x0_hat with the network's eps,
    x_prev is no longer on the line from x0_hat through x_t, and the error compounds
    with the step count (on the digits model: Frechet 2 at 20 steps, worse at 100,
    collapse at 1000). Only matters when clipping.
    clip: clamp x0_hat to [-1, 1]; None = the schedule's clip_denoised.
    dtype: dtype of the returned arrays; the math is float64.
    The step after the last timestep uses abar_prev = 1 (diffusers
    set_alpha_to_one=True; the DDIM code's alpha at t = -1), so it returns x0_hat.
    """

    def __init__(
        self,
        schedule_config: ScheduleConfig = ScheduleConfig(),
        eta: float = 0.0,
        spacing: str = "uniform",
        use_clipped_model_output: bool = True,
        clip: Optional[bool] = None,
        dtype: Any = np.float32,
    ):
        if not 0.0 <= float(eta) <= 1.0:
            raise ValueError(
                f"eta={eta!r} is out of range: expected 0 <= eta <= 1 (0 = deterministic "
                f"DDIM, 1 = DDPM-like noise); for DDPM's larger variance use DDPMScheduler"
            )
        if spacing not in SPACINGS:
            raise ValueError(f"spacing={spacing!r} is unknown: expected one of {SPACINGS}")
        self.config = schedule_config
        self.schedule = Schedule(schedule_config)
        self.num_train_timesteps = self.schedule.num_timesteps
        self.eta = float(eta)
        self.spacing = spacing
        self.use_clipped_model_output = bool(use_clipped_model_output)
        self.clip = schedule_config.clip_denoised if clip is None else bool(clip)
        self.dtype = check_dtype(dtype)
        self.set_timesteps(None)

    def set_timesteps(self, num_inference_steps: Optional[int] = None) -> None:
        """N steps (None = all T) with this scheduler's spacing; ``timesteps`` is descending."""
        s, T = self.schedule, self.num_train_timesteps
        n = T if num_inference_steps is None else check_num_steps(num_inference_steps, T)
        self.num_inference_steps = n
        if self.spacing == "uniform":
            self.timesteps = leading_timesteps(n, T)
        else:
            self.timesteps = quadratic_timesteps(n, T)
        t = self.timesteps
        prev = np.append(t[1:], -1)
        abar = s.alphas_cumprod[t]
        abar_prev = np.where(prev >= 0, s.alphas_cumprod[np.maximum(prev, 0)], 1.0)
        # eq. (16): sigma_t(eta) = eta sqrt((1 - abar_prev)/(1 - abar_t)) sqrt(1 - abar_t/abar_prev)
        sigma = self.eta * np.sqrt((1.0 - abar_prev) / (1.0 - abar))
        sigma = sigma * np.sqrt(1.0 - abar / abar_prev)
        self._sigma = sigma
        self._sqrt_abar = np.sqrt(abar)
        self._sqrt_one_minus_abar = np.sqrt(1.0 - abar)
        self._sqrt_abar_prev = np.sqrt(abar_prev)
        # max(., 0) only guards rounding: 1 - abar_prev - sigma^2 >= 0 for eta <= 1
        self._dir_coef = np.sqrt(np.maximum(1.0 - abar_prev - sigma**2, 0.0))
        self._sqrt_recip = s.sqrt_recip_alphas_cumprod[t]
        self._sqrt_recipm1 = s.sqrt_recipm1_alphas_cumprod[t]
        self._index = {int(v): i for i, v in enumerate(t)}

    def step(
        self,
        eps: np.ndarray,
        t: int,
        x_t: np.ndarray,
        rng: Optional[np.random.Generator] = None,
        noise: Optional[np.ndarray] = None,
    ) -> StepOutput:
        """One DDIM step x_t -> x_{t'} (t' = the next entry of ``timesteps``).

        eps: eps_theta(x_t, t), [N, C, H, W] float32/float64; x_t: same shape.
        rng / noise: where z comes from when sigma_t > 0 (eta > 0, not the last step).
        Returns StepOutput(prev_sample, pred_original_sample) in ``self.dtype``.
        """
        i, t, eps, x_t = step_inputs(eps, t, x_t, self._index)
        check_rng(rng)
        # 1. "predicted x0" of eq. (12): (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
        x0 = self._sqrt_recip[i] * x_t - self._sqrt_recipm1[i] * eps
        # 2. clip x0_hat (diffusers clip_sample); re-derive eps from it (eq. (12) solved for
        #    eps at the clipped x0: the direction term then agrees with the x0 used)
        if self.clip:
            x0 = clip_unit(x0)
            if self.use_clipped_model_output:
                eps = (x_t - self._sqrt_abar[i] * x0) / self._sqrt_one_minus_abar[i]
        # 3. eq. (12): x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z
        prev = self._sqrt_abar_prev[i] * x0 + self._dir_coef[i] * eps
        if self._sigma[i] > 0:
            prev = prev + self._sigma[i] * draw_noise(rng, noise, x_t.shape, t)
        return StepOutput(prev.astype(self.dtype), x0.astype(self.dtype))

    def add_noise(self, x0: np.ndarray, noise: np.ndarray, t: Any) -> np.ndarray:
        """q_sample, DDPM eq. (4). x0, noise: [N, ...]; t: int or [N] ints. Returns ``dtype``."""
        return q_sample(self.schedule, x0, noise, t).astype(self.dtype)

    @staticmethod
    def init_noise(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
        """x_T ~ N(0, I): rng.standard_normal(shape, float32), the first draw of a chain."""
        return init_noise(shape, rng)
