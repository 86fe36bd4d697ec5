"""The DDPM noise schedule and posterior constants, in float64 NumPy.

One source of truth for the schedule: training (``ddpm_export``), the PyTorch
reference sampler and every runtime scheduler read their constants from here
(improved-diffusion ``gaussian_diffusion.py`` keeps them the same way).
Equations: Ho et al. 2020, eq. (4), (6), (7); code indices t = 0..T-1.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict

import numpy as np

VARIANCE_TYPES = ("fixedlarge", "fixedsmall")


@dataclass(frozen=True)
class ScheduleConfig:
    """Everything that defines the forward process and the sampler's variance."""

    kind: str = "linear"  # beta schedule; the paper's linear one is the only kind
    beta_start: float = 1e-4  # beta_1 of the paper
    beta_end: float = 0.02  # beta_T of the paper
    num_timesteps: int = 1000  # T
    variance_type: str = "fixedlarge"  # CIFAR-10 used fixedlarge; LSUN fixedsmall
    clip_denoised: bool = True  # clamp x0_hat to [-1, 1] before the posterior mean

    def __post_init__(self) -> None:
        if self.kind != "linear":
            raise ValueError(f"schedule kind {self.kind!r} is not supported; expected 'linear'")
        if self.variance_type not in VARIANCE_TYPES:
            raise ValueError(
                f"variance_type {self.variance_type!r} is not one of {VARIANCE_TYPES}"
            )
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(
                f"betas must satisfy 0 < beta_start < beta_end < 1, got "
                f"beta_start={self.beta_start}, beta_end={self.beta_end}"
            )
        if int(self.num_timesteps) < 2:
            raise ValueError(f"num_timesteps must be >= 2, got {self.num_timesteps}")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ScheduleConfig":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


class Schedule:
    """Float64 constants of the forward process and the true posterior q(x_{t-1} | x_t, x_0).

    Attributes are 1-D float64 arrays of length T indexed by code timestep t.
    """

    def __init__(self, config: ScheduleConfig = ScheduleConfig()):
        self.config = config
        T = int(config.num_timesteps)
        self.num_timesteps = T
        # linspace in float64, as the official code does (diffusers uses float32).
        self.betas = np.linspace(config.beta_start, config.beta_end, T, dtype=np.float64)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = np.cumprod(self.alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)
        # eq. (7): posterior variance and mean coefficients
        self.posterior_variance = (
            self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        )
        self.posterior_mean_coef1 = (
            self.betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        )
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(self.alphas) / (1.0 - self.alphas_cumprod)
        )
        # posterior_variance[0] is 0: both variance choices clip the log at index 0
        # with posterior_variance[1] (official diffusion_utils_2.py).
        if config.variance_type == "fixedlarge":
            self.model_log_variance = np.log(
                np.append(self.posterior_variance[1], self.betas[1:])
            )
        else:
            self.model_log_variance = np.log(
                np.append(self.posterior_variance[1], self.posterior_variance[1:])
            )
        self.model_std = np.exp(0.5 * self.model_log_variance)
