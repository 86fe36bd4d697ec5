"""The PyTorch reference diffusion: forward process, L_simple, ancestral sampling, the bound L_vlb.

The network may predict eps, x0 or v (the schedule's ``prediction``): ``target`` gives
the training target, ``predict_x0`` converts its output (as runtime/schedulers/prediction.py).

Kept plain and close to the paper (Ho et al. 2020, Algorithms 1 and 2) and the
official ``diffusion_utils_2.py``: every other backend is validated against it.
Schedule constants come from ``runtime.schedulers.schedule`` (float64); the step math runs
in float64, the model in float32.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from runtime.schedulers.schedule import Schedule, ScheduleConfig

NoiseSource = Union[torch.Tensor, Callable[[int], torch.Tensor], None]


def _extract(a: np.ndarray, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Gather float64 constants a[t] -> [N, 1, 1, 1] float64 on t's device."""
    out = torch.from_numpy(a).to(t.device)[t.long()]
    return out.reshape(-1, *([1] * (ndim - 1)))


class GaussianDiffusion:
    def __init__(self, config: ScheduleConfig = ScheduleConfig()):
        self.config = config
        self.schedule = Schedule(config)
        self.num_timesteps = self.schedule.num_timesteps

    # --- forward process -------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (eq. 4); same dtype as x0."""
        s = self.schedule
        a = _extract(s.sqrt_alphas_cumprod, t, x0.ndim).to(x0.dtype)
        b = _extract(s.sqrt_one_minus_alphas_cumprod, t, x0.ndim).to(x0.dtype)
        return a * x0 + b * noise

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network learns to output at x_t = q_sample(x0, t, noise), by the schedule's
        prediction type: the noise ("eps"), x0 ("x0") or v = sqrt(abar) noise - sqrt(1 - abar) x0
        ("v", Salimans & Ho 2022; diffusers' get_velocity); same dtype as x0."""
        p = self.config.prediction
        if p == "eps":
            return noise
        if p == "x0":
            return x0
        s = self.schedule
        a = _extract(s.sqrt_alphas_cumprod, t, x0.ndim).to(x0.dtype)
        b = _extract(s.sqrt_one_minus_alphas_cumprod, t, x0.ndim).to(x0.dtype)
        return a * noise - b * x0

    def loss(
        self,
        model: nn.Module,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        class_labels: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """L_simple = mean((target - model(x_t, t))^2), a scalar; target = eps (eq. 14) for an
        eps model, x0 or v for the other prediction types (``target``), all unweighted.
        ``class_labels`` [N] go to a class-conditional model as model(x_t, t, class_labels=...)."""
        x_t = self.q_sample(x0, t, noise)
        return torch.mean((self.target(x0, t, noise) - _call(model, x_t, t, class_labels)) ** 2)

    # --- the variational bound (official diffusion_utils_2.py) ----------------
    def prior_bpd(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) per image, bits/dim (``_prior_bpd``)."""
        s = self.schedule
        t = torch.full((x0.shape[0],), self.num_timesteps - 1, dtype=torch.int64)
        mean = _extract(s.sqrt_alphas_cumprod, t, x0.ndim) * x0.to(torch.float64)
        logvar = torch.log(1.0 - _extract(s.alphas_cumprod, t, x0.ndim)).expand_as(mean)
        zero = torch.zeros_like(mean)
        return _normal_kl(mean, logvar, zero, zero).flatten(1).mean(1) / np.log(2.0)

    def vb_terms_bpd(self, model: nn.Module, x0: torch.Tensor, x_t: torch.Tensor,
                     t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(bits/dim [N], x0_hat) of ``_vb_terms_bpd``: -log p(x_0 | x_1) where t == 0, else
        KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)); x0 on the 256-bin grid of [-1, 1]."""
        s = self.schedule
        x0, x_t = x0.to(torch.float64), x_t.to(torch.float64)
        mean, logvar, x0_hat = self.p_mean_logvar(model, x_t, t)
        true_mean = (_extract(s.posterior_mean_coef1, t, x_t.ndim) * x0
                     + _extract(s.posterior_mean_coef2, t, x_t.ndim) * x_t)
        clipped = np.log(np.append(s.posterior_variance[1], s.posterior_variance[1:]))
        true_logvar = _extract(clipped, t, x_t.ndim)
        kl = _normal_kl(true_mean, true_logvar, mean, logvar).flatten(1).mean(1) / np.log(2.0)
        nll = -_discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar.expand_as(x0))
        return torch.where(t == 0, nll.flatten(1).mean(1) / np.log(2.0), kl), x0_hat

    @torch.no_grad()
    def calc_bpd(self, model: nn.Module, x0: torch.Tensor, timesteps: torch.Tensor,
                 noise: Callable[[int], torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The bound of ``calc_bpd_loop`` on given draws: timesteps [N, K] (column k is one x_t per
        image) and noise(k) -> [N, C, H, W]. Returns (terms [N, K] bits/dim, mse of x0_hat
        [N, K], prior [N]); the total is prior + T / K x terms.sum(1)."""
        was_training = model.training
        model.eval()
        terms, mse = [], []
        try:
            for k in range(timesteps.shape[1]):
                t = timesteps[:, k].long()
                x_t = self.q_sample(x0.to(torch.float64), t, torch.as_tensor(noise(k)).to(torch.float64))
                term, x0_hat = self.vb_terms_bpd(model, x0, x_t, t)
                terms.append(term)
                mse.append(((x0_hat - x0.to(torch.float64)) ** 2).flatten(1).mean(1))
        finally:
            model.train(was_training)
        return torch.stack(terms, 1), torch.stack(mse, 1), self.prior_bpd(x0)

    # --- reverse process -------------------------------------------------
    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """x0_hat from the model output ``out`` (eps, x0 or v by the schedule's prediction type),
        then limited as the runtime schedulers do (runtime/schedulers/prediction.py): dynamic
        thresholding when the schedule has it, else clipping to +-clip_sample_range when
        clip_denoised. Float64 in, float64 out."""
        s, c = self.schedule, self.config
        if c.prediction == "eps":  # DDPM eq. (15)
            x0 = (
                _extract(s.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t
                - _extract(s.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * out
            )
        elif c.prediction == "v":
            x0 = (_extract(s.sqrt_alphas_cumprod, t, x_t.ndim) * x_t
                  - _extract(s.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * out)
        else:
            x0 = out
        if c.thresholding:
            return _dynamic_threshold(x0, c.dynamic_thresholding_ratio, c.sample_max_value)
        if c.clip_denoised:
            return x0.clamp(-c.clip_sample_range, c.clip_sample_range)
        return x0

    def p_mean_logvar(
        self, model: nn.Module, x_t: torch.Tensor, t: torch.Tensor,
        class_labels: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, log-variance and x0_hat of p(x_{t-1} | x_t), all float64."""
        s = self.schedule
        x_t = x_t.to(torch.float64)
        out = _call(model, x_t.to(torch.float32), t.to(torch.int64), class_labels).to(torch.float64)
        x0 = self.predict_x0(x_t, t, out)
        mean = (
            _extract(s.posterior_mean_coef1, t, x_t.ndim) * x0
            + _extract(s.posterior_mean_coef2, t, x_t.ndim) * x_t
        )
        return mean, _extract(s.model_log_variance, t, x_t.ndim), x0

    @torch.no_grad()
    def sample(
        self,
        model: nn.Module,
        shape: Sequence[int],
        generator: Optional[torch.Generator] = None,
        x_T: Optional[torch.Tensor] = None,
        noise: NoiseSource = None,
        trajectory_every: int = 0,
        progress: bool = False,
        device: Union[str, torch.device] = "cpu",
        callback: Optional[Callable[[int, torch.Tensor], None]] = None,
        class_labels: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, List[Tuple[int, torch.Tensor]]]:
        """Ancestral sampling (Algorithm 2), t = T-1 .. 0.

        shape: [N, C, H, W]. Randomness comes from ``generator`` unless given:
        ``x_T`` ([N, C, H, W]) and ``noise``, either a tensor [T, N, C, H, W] whose
        row t is the z added at step t (row 0 is unused), or a callable t -> z.
        That lets another backend be compared step by step on identical noise.

        ``callback(t, x)`` sees the chain after each step (for drift measurements).
        ``class_labels`` [N] condition a class-conditional model (no guidance: one branch).
        Returns (x_0 float32 [N, C, H, W] in [-1, 1] when clipping, and the
        trajectory: (t, x0_hat float32) every ``trajectory_every`` steps and at t=0).
        """
        shape = tuple(int(s) for s in shape)
        if x_T is None:
            x_T = torch.randn(shape, generator=generator, dtype=torch.float32)
        if tuple(x_T.shape) != shape:
            raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {shape}")
        x = x_T.to(device=device, dtype=torch.float64)
        trajectory: List[Tuple[int, torch.Tensor]] = []
        steps = range(self.num_timesteps - 1, -1, -1)
        if progress:
            from runtime.progress import progress_bar

            steps = progress_bar(steps, desc="sampling (reference)", unit="step")
        labels = None if class_labels is None else torch.as_tensor(class_labels).to(device)
        was_training = model.training
        model.eval()
        try:
            for t_int in steps:
                t = torch.full((shape[0],), t_int, dtype=torch.int64, device=device)
                mean, logvar, x0 = self.p_mean_logvar(model, x, t, labels)
                if t_int > 0:
                    z = self._noise(noise, t_int, shape, generator)
                    x = mean + torch.exp(0.5 * logvar) * z.to(device=device, dtype=torch.float64)
                else:
                    x = mean  # at t = 0 the posterior mean is the clipped x0_hat
                if trajectory_every and (t_int % trajectory_every == 0 or t_int == 0):
                    trajectory.append((t_int, x0.to(torch.float32).cpu()))
                if callback is not None:  # callback(t, x_{t-1} float64) after each step
                    callback(t_int, x)
        finally:
            model.train(was_training)
        return x.to(torch.float32).cpu(), trajectory

    @staticmethod
    def _noise(noise: NoiseSource, t: int, shape: Tuple[int, ...], generator) -> torch.Tensor:
        if noise is None:
            return torch.randn(shape, generator=generator, dtype=torch.float32)
        z = noise(t) if callable(noise) else noise[t]
        z = torch.as_tensor(z)
        if tuple(z.shape) != shape:
            raise ValueError(f"noise for t={t} has shape {tuple(z.shape)}, expected {shape}")
        return z


def _call(model: nn.Module, x_t: torch.Tensor, t: torch.Tensor,
          class_labels: Optional[torch.Tensor]) -> torch.Tensor:
    """model(x_t, t), or model(x_t, t, class_labels=...) when there are labels (an unconditional
    or external network keeps its two-argument call)."""
    if class_labels is None:
        return model(x_t, t)
    return model(x_t, t, class_labels=class_labels)


def _dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Per image s = the ratio-quantile of |x0|, clamped to [1, max_value]; clip(x0, -s, s) / s
    (Saharia et al. 2022, Section 2.3; diffusers' _threshold_sample)."""
    flat = x0.reshape(x0.shape[0], -1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1.0, max=max_value)[:, None]
    return (torch.maximum(torch.minimum(flat, s), -s) / s).reshape(x0.shape)


def _normal_kl(mean1, logvar1, mean2, logvar2):
    """KL of two diagonal Gaussians per element, nats (official ``normal_kl``)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _discretized_gaussian_log_likelihood(x, means, log_scales):
    """log P(256-bin of x) under N(means, e^(2 log_scales)), nats (official definition, with its
    tanh approximation of the normal CDF, open edge bins and the 1e-12 floor)."""
    def cdf(v):
        return 0.5 * (1.0 + torch.tanh(np.sqrt(2.0 / np.pi) * (v + 0.044715 * v ** 3)))

    inv_std = torch.exp(-log_scales)
    plus, minus = cdf(inv_std * (x - means + 1.0 / 255.0)), cdf(inv_std * (x - means - 1.0 / 255.0))
    low = torch.log(plus.clamp(min=1e-12))
    high = torch.log((1.0 - minus).clamp(min=1e-12))
    mid = torch.log((plus - minus).clamp(min=1e-12))
    return torch.where(x < -0.999, low, torch.where(x > 0.999, high, mid))
