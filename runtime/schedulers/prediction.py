"""From the network's output to what a scheduler needs: x0_hat (limited) and eps, in float64.

Every scheduler goes through ``OutputConverter``, built once per timestep grid. With
a = sqrt(abar_t) and b = sqrt(1 - abar_t) at a step's timestep (x_t = a x0 + b eps):

  prediction "eps" (diffusers "epsilon"):   x0 = (x_t - b out) / a,  eps = out
  prediction "x0"  (diffusers "sample"):    x0 = out,                eps = (x_t - a x0) / b
  prediction "v"   (diffusers "v_prediction", v = a eps - b x0):
                                            x0 = a x_t - b out,      eps = a out + b x_t

then x0 is limited (``resolve_limit`` / ``apply_limit``) as diffusers' schedulers do: dynamic thresholding when the schedule
asks for it (Saharia et al. 2022, Section 2.3), else clipping to [-r, r]
(``clip_sample_range``) when clipping is on. eps is formed from the unlimited x0, as
diffusers' DDIMScheduler does; a scheduler that wants eps to agree with the limited x0
(our consistent DDIM) re-derives it itself.

For "eps" x0 is computed as c1 x_t - c2 out with the caller's precomputed c1 = 1/a,
c2 = b/a: the same three array operations per step as before prediction types existed.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from runtime.schedulers.schedule import PREDICTIONS, ScheduleConfig


def clip_unit(x: np.ndarray) -> np.ndarray:
    """Clamp to [-1, 1] in place; the same values as np.clip at a fifth of its call
    overhead, which matters on a 256-pixel batch-1 step (NaN stays NaN)."""
    np.maximum(x, -1.0, out=x)
    return np.minimum(x, 1.0, out=x)


def dynamic_threshold(x0: np.ndarray, ratio: float, max_value: float) -> np.ndarray:
    """Saharia et al. 2022 (Imagen), Section 2.3, as diffusers' ``_threshold_sample``: per
    image, s = the ratio-quantile of |x0| (linear interpolation), clamped to [1, max_value];
    x0 <- clip(x0, -s, s) / s. max_value 1 is plain clipping to [-1, 1]."""
    flat = x0.reshape(x0.shape[0], -1)
    s = np.quantile(np.abs(flat), ratio, axis=1)
    s = np.clip(s, 1.0, max_value)[:, None]
    return (np.clip(flat, -s, s) / s).reshape(x0.shape)


# How x0_hat is limited: None, ("clip", r) or ("threshold", ratio, max_value)
Limit = Optional[Tuple]


def resolve_limit(config: ScheduleConfig, clip: Optional[bool] = None,
                  threshold_ratio: Optional[float] = None,
                  threshold_max: Optional[float] = None, who: str = "this scheduler") -> Limit:
    """The x0 limit of a sampling run: the schedule's, changed by the method's options.

    clip None: the schedule decides: thresholding (``thresholding``), else clipping to
    [-clip_sample_range, clip_sample_range] when ``clip_denoised``, else nothing.
    clip False: no limit at all. clip True: the schedule's limit, clipping when it has none.
    threshold_ratio / threshold_max: dynamic thresholding with these (the schedule's
    dynamic_thresholding_ratio / sample_max_value for the one not given); they need a limit.
    Raises ValueError naming every bad option.
    """
    explicit = threshold_ratio is not None or threshold_max is not None
    on = (config.clip_denoised or config.thresholding) if clip is None else bool(clip)
    problems = []
    if explicit and not on:
        problems.append(
            "dynamic thresholding (threshold_ratio / threshold_max) needs clipping, which is off "
            "(clip=False, or the model's clip_denoised=false without thresholding); drop those "
            "options or turn clipping on")
    if threshold_ratio is not None and not 0.0 < float(threshold_ratio) <= 1.0:
        problems.append(f"threshold_ratio={threshold_ratio!r}: expected a quantile in (0, 1], e.g. 0.995 (Imagen)")
    if threshold_max is not None and float(threshold_max) < 1.0:
        problems.append(f"threshold_max={threshold_max!r}: expected >= 1 (1 = plain clipping)")
    if problems:
        raise ValueError(f"{who}: " + "; ".join(problems))
    if not on:
        return None
    if explicit or config.thresholding:
        ratio = config.dynamic_thresholding_ratio if threshold_ratio is None else float(threshold_ratio)
        top = config.sample_max_value if threshold_max is None else float(threshold_max)
        return ("threshold", ratio, top)
    return ("clip", config.clip_sample_range)


def apply_limit(x0: np.ndarray, limit: Limit) -> np.ndarray:
    """x0 limited by ``limit`` (in place for clipping; x0 must be the caller's own float64 array)."""
    if limit is None:
        return x0
    if limit[0] == "clip":
        r = limit[1]
        if r == 1.0:
            return clip_unit(x0)
        np.maximum(x0, -r, out=x0)
        return np.minimum(x0, r, out=x0)
    return dynamic_threshold(x0, limit[1], limit[2])


class OutputConverter:
    """x0_hat and eps from the network's output at grid position i, for one timestep grid.

    alpha, sigma: sqrt(abar) and sqrt(1 - abar) per grid position (float64 arrays).
    recip, recipm1: 1/alpha and sigma/alpha, for "eps": given, x0 = recip x - recipm1 out
    (the DDPM/DDIM form, the reference sampler's arithmetic); not given, x0 =
    (x - sigma out) / alpha (the solvers' form). Each keeps its scheduler's results bit
    for bit as they were before prediction types existed.
    """

    def __init__(self, prediction: str, alpha: np.ndarray, sigma: np.ndarray,
                 recip: Optional[np.ndarray] = None, recipm1: Optional[np.ndarray] = None):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction={prediction!r} is unknown: expected one of {', '.join(PREDICTIONS)}")
        self.prediction = prediction
        self.alpha, self.sigma = alpha, sigma
        self._recip, self._recipm1 = recip, recipm1

    def x0(self, i: int, out: np.ndarray, x: np.ndarray) -> np.ndarray:
        """x0_hat before limiting: a new array, or ``out`` itself for "x0"."""
        p = self.prediction
        if p == "eps":
            if self._recip is None:
                return (x - self.sigma[i] * out) / self.alpha[i]
            return self._recip[i] * x - self._recipm1[i] * out
        if p == "v":
            return self.alpha[i] * x - self.sigma[i] * out
        return out

    def eps(self, i: int, out: np.ndarray, x: np.ndarray, x0: np.ndarray) -> np.ndarray:
        """eps_hat; ``x0`` = this step's x0_hat before limiting (call before limiting it)."""
        p = self.prediction
        if p == "eps":
            return out
        if p == "v":
            return self.alpha[i] * out + self.sigma[i] * x
        return (x - self.alpha[i] * x0) / self.sigma[i]
