"""The DDPM noise schedule, the model's prediction type and the posterior constants, in float64 NumPy.

One source of truth for the schedule: training (``ddpm_export``), the PyTorch
reference sampler and every runtime scheduler read their constants from here
(improved-diffusion ``gaussian_diffusion.py`` keeps them the same way).
Equations: Ho et al. 2020, eq. (4), (6), (7); code indices t = 0..T-1.

``ScheduleConfig`` follows diffusers' scheduler options where they overlap
(``beta_schedule``, ``trained_betas``, ``prediction_type``, ``thresholding``,
``clip_sample_range``, ``timestep_spacing``, ``steps_offset``, ``set_alpha_to_one``),
with our own names where they differ;
every new field defaults to the meaning a manifest had before it existed (linear
betas, an eps network, clipping to [-1, 1], "leading" spacing), so older manifests
and checkpoints load unchanged. docs/numerics.md describes each option.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

VARIANCE_TYPES = ("fixedlarge", "fixedsmall")
KINDS = ("linear", "scaled_linear", "squaredcos_cap_v2", "explicit")
PREDICTIONS = ("eps", "x0", "v")  # diffusers prediction_type: epsilon | sample | v_prediction
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
COSINE_MAX_BETA = 0.999  # diffusers' betas_for_alpha_bar cap (Nichol & Dhariwal 2021, eq. 17)
COSINE_S = 0.008  # the cosine schedule's offset s


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


@dataclass(frozen=True)
class ScheduleConfig:
    """Everything that defines the forward process, what the network predicts and how a
    sampler limits x0_hat and spaces its timesteps.

    kind: how the betas are made: "linear" (linspace(beta_start, beta_end, T)),
        "scaled_linear" (linspace(sqrt(beta_start), sqrt(beta_end), T)^2),
        "squaredcos_cap_v2" (the cosine schedule, betas capped at 0.999; beta_start and
        beta_end are unused) or "explicit" (``betas`` as given; T = len(betas)).
    prediction: what the network outputs: "eps" (the noise), "x0" (the clean sample) or
        "v" (sqrt(abar) eps - sqrt(1 - abar) x0). The I/O tensor keeps the name "eps".
    clip_denoised / clip_sample_range: clamp x0_hat to [-range, range].
    thresholding / dynamic_thresholding_ratio / sample_max_value: diffusers' dynamic
        thresholding of x0_hat (it replaces clipping when on).
    timestep_spacing / steps_offset: which timesteps DDPM and DDIM visit for N < T steps.
    final_step_noise: DDPM only, for a chain whose last timestep is above 0 (trailing
        spacing, steps_offset, given timesteps): add the variance's noise on that last
        step too, as diffusers' DDPMScheduler does whenever t > 0 (std sqrt(1 - abar_t)
        with fixedlarge, 1e-10 with fixedsmall). False (the default, the paper's
        Algorithm 2): the last step adds no noise to the clean sample. The diffusers
        import sets it, so ``--steps N`` equals ``DDPMPipeline(num_inference_steps=N)``.
    set_alpha_to_one: DDIM only (diffusers' DDIMScheduler option of the same name): the
        alpha_cumprod the step after the last timestep goes to: 1 (True, the default and
        the meaning of every manifest without the key: that step returns x0_hat) or
        alphas_cumprod[0] (False: it ends at the noise level of t = 0).
    """

    kind: str = "linear"
    beta_start: float = 1e-4  # beta_1 of the paper
    beta_end: float = 0.02  # beta_T of the paper
    num_timesteps: int = 1000  # T
    variance_type: str = "fixedlarge"  # CIFAR-10 used fixedlarge; LSUN fixedsmall
    clip_denoised: bool = True  # clamp x0_hat to [-clip_sample_range, clip_sample_range]
    betas: Optional[Tuple[float, ...]] = None  # only with kind "explicit"
    prediction: str = "eps"
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    clip_sample_range: float = 1.0
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    final_step_noise: bool = False
    set_alpha_to_one: bool = True

    def __post_init__(self) -> None:
        if self.betas is not None and not isinstance(self.betas, (str, bytes)) \
                and isinstance(self.betas, (Sequence, np.ndarray)):
            object.__setattr__(self, "betas", tuple(
                float(b) if _is_real(b) or isinstance(b, np.floating) else b for b in self.betas))
        problems = self.problems()
        if problems:
            raise ValueError("schedule: " + "; ".join(problems))
        for name in ("beta_start", "beta_end", "dynamic_thresholding_ratio", "sample_max_value",
                     "clip_sample_range"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "num_timesteps", int(self.num_timesteps))
        object.__setattr__(self, "steps_offset", int(self.steps_offset))

    def problems(self) -> List[str]:
        """Every reason this config is invalid (empty when valid), each naming the field,
        the value received and what is accepted."""
        out: List[str] = []

        def bad(field: str, expected: str) -> None:
            out.append(f"{field}={getattr(self, field)!r} (expected {expected})")

        if self.kind not in KINDS:
            bad("kind", f"one of {', '.join(KINDS)}")
        if self.kind in ("linear", "scaled_linear"):
            ok = _is_real(self.beta_start) and _is_real(self.beta_end)
            if not (ok and 0 < self.beta_start < self.beta_end < 1):
                out.append(f"beta_start={self.beta_start!r}, beta_end={self.beta_end!r} (expected "
                           f"0 < beta_start < beta_end < 1 for kind {self.kind!r})")
        elif not (_is_real(self.beta_start) and _is_real(self.beta_end)):
            out.append(f"beta_start={self.beta_start!r}, beta_end={self.beta_end!r} (expected numbers; "
                       f"unused by kind {self.kind!r})")
        if not _is_int(self.num_timesteps) or self.num_timesteps < 2:
            bad("num_timesteps", "an int >= 2")
        if self.kind == "explicit":
            b = self.betas
            if not isinstance(b, tuple) or len(b) < 2:
                bad("betas", "a list of at least 2 betas with kind 'explicit'")
            else:
                wrong = [i for i, v in enumerate(b) if not (_is_real(v) and 0 < v < 1)]
                if wrong:
                    shown = ", ".join(f"betas[{i}]={b[i]!r}" for i in wrong[:3])
                    more = f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""
                    out.append(f"{shown}{more} (expected every beta a number with 0 < beta < 1)")
                if _is_int(self.num_timesteps) and self.num_timesteps != len(b):
                    out.append(f"num_timesteps={self.num_timesteps!r} but len(betas)={len(b)} "
                               f"(expected num_timesteps=len(betas))")
        elif self.betas is not None:
            out.append(f"betas=<{len(self.betas) if isinstance(self.betas, tuple) else type(self.betas).__name__}"
                       f" values> with kind={self.kind!r} (expected betas only with kind 'explicit', "
                       f"else null)")
        if self.variance_type not in VARIANCE_TYPES:
            bad("variance_type", f"one of {', '.join(VARIANCE_TYPES)}")
        if not isinstance(self.clip_denoised, bool):
            bad("clip_denoised", "true or false")
        if self.prediction not in PREDICTIONS:
            bad("prediction", f"one of {', '.join(PREDICTIONS)} (diffusers' epsilon, sample, v_prediction)")
        if not isinstance(self.thresholding, bool):
            bad("thresholding", "true or false")
        r = self.dynamic_thresholding_ratio
        if not (_is_real(r) and 0 < r <= 1):
            bad("dynamic_thresholding_ratio", "a quantile in (0, 1], e.g. 0.995")
        if not (_is_real(self.sample_max_value) and self.sample_max_value >= 1):
            bad("sample_max_value", "a number >= 1 (1 = thresholding that only ever clips to [-1, 1])")
        if not (_is_real(self.clip_sample_range) and self.clip_sample_range > 0):
            bad("clip_sample_range", "a number > 0")
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            bad("timestep_spacing", f"one of {', '.join(TIMESTEP_SPACINGS)}")
        if not _is_int(self.steps_offset) or self.steps_offset < 0:
            bad("steps_offset", "an int >= 0")
        elif _is_int(self.num_timesteps) and self.steps_offset >= self.num_timesteps:
            bad("steps_offset", f"an int below num_timesteps={self.num_timesteps}")
        if not isinstance(self.final_step_noise, bool):
            bad("final_step_noise", "true or false")
        if not isinstance(self.set_alpha_to_one, bool):
            bad("set_alpha_to_one", "true or false")
        return out

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready: every field (betas as a list or null)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["betas"] = None if self.betas is None else list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ScheduleConfig":
        """The config of a manifest's ``schedule`` (or a checkpoint's ``schedule_config``).

        Missing keys take their defaults, which are the meaning a manifest had before
        the key existed. An unknown key is refused: it would come from a newer
        ddpm-export whose meaning this one cannot honour, and ignoring it could
        change the samples silently.
        """
        names = [f.name for f in fields(cls)]
        unknown = sorted(k for k in d if k not in names)
        if unknown:
            raise ValueError(
                f"schedule: unknown key(s) {', '.join(map(repr, unknown))} (expected only "
                f"{', '.join(names)}); the file was written by a newer ddpm-export: upgrade to read it"
            )
        return cls(**{k: d[k] for k in names if k in d})

    @property
    def is_legacy(self) -> bool:
        """True when a first-version reader (linear betas only, no later fields) samples this
        config exactly as this runtime does: kind "linear" and every later field at its default."""
        return self.kind == "linear" and all(getattr(self, name) == default for name, default in _LATER_FIELDS)


_LATER_FIELDS = tuple(
    (f.name, f.default) for f in fields(ScheduleConfig)
    if f.name not in ("kind", "beta_start", "beta_end", "num_timesteps", "variance_type", "clip_denoised")
)


def make_betas(config: ScheduleConfig) -> np.ndarray:
    """The T betas of ``config`` in float64 (diffusers computes the same in float32)."""
    T = config.num_timesteps
    if config.kind == "linear":
        return np.linspace(config.beta_start, config.beta_end, T, dtype=np.float64)
    if config.kind == "scaled_linear":
        return np.linspace(config.beta_start**0.5, config.beta_end**0.5, T, dtype=np.float64) ** 2
    if config.kind == "squaredcos_cap_v2":
        # Nichol & Dhariwal 2021, eq. (17): abar(u) = cos((u + s)/(1 + s) * pi/2)^2, u = t/T;
        # beta_t = min(1 - abar((t+1)/T) / abar(t/T), 0.999)
        u = np.arange(T + 1, dtype=np.float64) / T
        abar = np.cos((u + COSINE_S) / (1 + COSINE_S) * math.pi / 2) ** 2
        return np.minimum(1.0 - abar[1:] / abar[:-1], COSINE_MAX_BETA)
    return np.asarray(config.betas, dtype=np.float64)


class Schedule:
    """Float64 constants of the forward process and the true posterior q(x_{t-1} | x_t, x_0).

    Attributes are 1-D float64 arrays of length T indexed by code timestep t.
    """

    def __init__(self, config: ScheduleConfig = ScheduleConfig()):
        self.config = config
        T = int(config.num_timesteps)
        self.num_timesteps = T
        # float64, as the official code does (diffusers uses float32).
        self.betas = make_betas(config)
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
