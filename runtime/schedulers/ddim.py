"""DDIM sampling (Song et al. 2021, eq. 12) as a NumPy scheduler.

API shaped like diffusers' ``DDIMScheduler`` (``set_alpha_to_one`` and
``timestep_spacing`` from the schedule): ``set_timesteps(n)``, ``timesteps``,
``step(eps, t, x_t, rng)``. Float64 math on ``runtime.schedulers.schedule``'s constants;
same noise order as ``runtime.schedulers.ddpm``: x_T first, then one z per step with
sigma > 0, each ``rng.standard_normal(x_t.shape, dtype=np.float32)``.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from runtime.schedulers.base import Scheduler, StepOutput, draw_noise, spaced_timesteps
from runtime.schedulers.prediction import limiter, resolve_limit
from runtime.schedulers.schedule import ScheduleConfig

SPACINGS = ("uniform", "quadratic", "leading", "trailing", "linspace")  # the first is the default
DEFAULT_STEPS = 50  # DDIM steps when none are asked for (the DDIM paper's and diffusers' usual)


def quadratic_timesteps(num_inference_steps: int, num_timesteps: int) -> np.ndarray:
    """The DDIM paper's CIFAR-10 subset: (linspace(0, sqrt(0.8 T), N)^2).astype(int), descending.

    For N >= 30 (T = 1000) the int cast repeats small timesteps (N=50 gives 49
    distinct, N=100 gives 96). The paper's code steps through the repeats, but a
    step from t to the same t is the identity (abar_prev = abar_t, sigma = 0), so
    the repeats are dropped: same samples, fewer model calls.
    """
    t = (np.linspace(0, np.sqrt(0.8 * num_timesteps), num_inference_steps) ** 2).astype(np.int64)
    return np.unique(t)[::-1].copy()


class DDIMScheduler(Scheduler):
    """DDIM over a subset of the T training timesteps.

    eta: 0 = deterministic DDIM, 1 = DDPM-like posterior noise (sigma of eq. 16).
    spacing: "uniform" (the schedule's timestep_spacing and steps_offset, as diffusers'
    DDIMScheduler.set_timesteps(N); "leading", arange(N) * (T // N), for older manifests),
    "quadratic" (the DDIM paper's CIFAR-10 subset), or "leading" / "trailing" / "linspace"
    to override the schedule's spacing.
    diffusers_prev: step from t to t - T // N as diffusers' DDIMScheduler does, rather than to
    the next entry of ``timesteps`` (they differ for "linspace" / "trailing" spacing; set by
    the "diffusers" variant).
    use_clipped_model_output: after clipping x0_hat, recompute eps from it, so that the
    direction term points at the x0_hat actually used (improved-diffusion's
    ddim_sample). True by default: with False (diffusers' DDIMScheduler.step and
    DDIMPipeline default) the step mixes a clipped x0_hat with the network's eps,
    x_prev is no longer on the line from x0_hat through x_t, and the error compounds
    with the step count (on the digits model: Frechet 2 at 20 steps, worse at 100,
    collapse at 1000). Only matters when clipping.
    clip: None = the schedule's x0 limit (clip_denoised / thresholding), False = none, True =
    the schedule's, clipping when it has none (runtime.schedulers.prediction).
    dtype: dtype of the returned arrays; the math is float64.
    The step after the last timestep goes to abar_prev = 1 when the schedule's
    set_alpha_to_one is true (the default; the DDIM code's alpha at t = -1), so it returns
    x0_hat, else to alphas_cumprod[0] (diffusers' DDIMScheduler(set_alpha_to_one=False)).
    """

    def __init__(
        self,
        schedule_config: ScheduleConfig = ScheduleConfig(),
        eta: float = 0.0,
        spacing: str = SPACINGS[0],
        use_clipped_model_output: bool = True,
        clip: Optional[bool] = None,
        dtype: Any = np.float32,
        diffusers_prev: bool = False,
    ):
        if not 0.0 <= float(eta) <= 1.0:
            raise ValueError(
                f"eta={eta!r} is out of range: expected 0 <= eta <= 1 (0 = deterministic "
                f"DDIM, 1 = DDPM-like noise); for DDPM's larger variance use DDPMScheduler"
            )
        if spacing not in SPACINGS:
            raise ValueError(f"spacing={spacing!r} is unknown: expected one of {SPACINGS}")
        super().__init__(schedule_config, dtype)
        self.eta = float(eta)
        self.spacing = spacing
        self.use_clipped_model_output = bool(use_clipped_model_output)
        self.diffusers_prev = bool(diffusers_prev)
        self.limit = resolve_limit(schedule_config, clip, who="ddim")
        self._limit_x0 = limiter(self.limit)
        self.clip = self.limit is not None
        self.set_timesteps(None)

    def _timesteps(self, num_inference_steps: int, num_timesteps: int) -> np.ndarray:
        if self.spacing == "uniform":  # the schedule's timestep_spacing / steps_offset
            return super()._timesteps(num_inference_steps, num_timesteps)
        if self.spacing == "quadratic":
            return quadratic_timesteps(num_inference_steps, num_timesteps)
        return spaced_timesteps(self.spacing, num_inference_steps, num_timesteps, self.config.steps_offset)

    def _all_timesteps(self, num_timesteps: int) -> np.ndarray:
        if self.spacing == "quadratic":
            return quadratic_timesteps(num_timesteps, num_timesteps)
        return super()._all_timesteps(num_timesteps)

    def _set_coefficients(self, t, prev, abar, abar_prev) -> None:
        s = self.schedule
        # diffusers' final_alpha_cumprod: where the step after the last timestep goes
        final = 1.0 if self.config.set_alpha_to_one else s.alphas_cumprod[0]
        abar_prev = np.where(prev >= 0, abar_prev, final)
        if self.diffusers_prev and not self.custom_timesteps and self.spacing != "quadratic":
            # diffusers' DDIMScheduler.step steps to t - T // N, not to the next timestep: the
            # same with "leading" spacing, a different point with "linspace" (and "trailing"
            # when N does not divide T), where the next step then starts from x at the
            # wrong noise level. Reproduced only for the "diffusers" variant.
            prev = t - self.num_train_timesteps // self.num_inference_steps
            abar_prev = np.where(prev >= 0, s.alphas_cumprod[np.maximum(prev, 0)], final)
        # eq. (16): sigma_t(eta) = eta sqrt((1 - abar_prev)/(1 - abar_t)) sqrt(1 - abar_t/abar_prev)
        sigma = self.eta * np.sqrt((1.0 - abar_prev) / (1.0 - abar))
        sigma = sigma * np.sqrt(1.0 - abar / abar_prev)
        self._sigma = sigma
        self._sqrt_abar = np.sqrt(abar)
        self._sqrt_one_minus_abar = np.sqrt(1.0 - abar)
        self._sqrt_abar_prev = np.sqrt(abar_prev)
        # max(., 0) only guards rounding: 1 - abar_prev - sigma^2 >= 0 for eta <= 1
        self._dir_coef = np.sqrt(np.maximum(1.0 - abar_prev - sigma**2, 0.0))

    def _finish_step(self, i: int, t: int, out: np.ndarray, x_t: np.ndarray, x0: np.ndarray,
                     rng: Optional[np.random.Generator], noise: Optional[np.ndarray]) -> StepOutput:
        """Eq. (12)'s step x_t -> x_{t'} from the "predicted x0" (not yet limited); z (from rng
        or noise) is added when sigma_t > 0 (eta > 0, not the last step)."""
        # 1. eps_hat from the model output and the unlimited x0_hat (diffusers' pred_epsilon)
        eps = out if self._eps_is_output else self._convert.eps(i, out, x_t, x0)
        # 2. clip or threshold x0_hat (diffusers clip_sample / thresholding); re-derive eps from
        #    it (eq. (12) solved for eps at the limited x0: the direction term then agrees with
        #    the x0 used)
        if self._limit_x0 is not None:
            x0 = self._limit_x0(x0)
            if self.use_clipped_model_output:
                eps = (x_t - self._sqrt_abar[i] * x0) / self._sqrt_one_minus_abar[i]
        # 3. eq. (12): x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z
        prev = self._sqrt_abar_prev[i] * x0 + self._dir_coef[i] * eps
        if self._sigma[i] > 0:
            prev = prev + self._sigma[i] * draw_noise(rng, noise, x_t.shape, t)
        return StepOutput(prev.astype(self.dtype), x0.astype(self.dtype))
