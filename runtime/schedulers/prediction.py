"""From the network's output to what a scheduler needs: x0_hat (limited) and eps, in float64.

Every scheduler goes through ``OutputConverter``, built once per timestep grid. With
a = sqrt(abar_t) and b = sqrt(1 - abar_t) at a step's timestep (x_t = a x0 + b eps):

  prediction "eps" (diffusers "epsilon"):   x0 = (x_t - b out) / a,  eps = out
  prediction "x0"  (diffusers "sample"):    x0 = out,                eps = (x_t - a x0) / b
  prediction "v"   (diffusers "v_prediction", v = a eps - b x0):
                                            x0 = a x_t - b out,      eps = a out + b x_t

then x0 is limited (``resolve_limit`` / ``limiter``) as diffusers' schedulers do: dynamic thresholding when the schedule
asks for it (Saharia et al. 2022, Section 2.3), else clipping to [-r, r]
(``clip_sample_range``) when clipping is on. eps is formed from the unlimited x0, as
diffusers' DDIMScheduler does; a scheduler that wants eps to agree with the limited x0
(our consistent DDIM) re-derives it itself.

For "eps" x0 is computed as c1 x_t - c2 out with the caller's precomputed c1 = 1/a,
c2 = b/a: the same three array operations per step as before prediction types existed.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

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


def limiter(limit: Limit) -> Optional[Callable[[np.ndarray], np.ndarray]]:
    """The function that applies ``limit`` to x0_hat (None: no limit), chosen once per
    scheduler so a step pays one call. Clipping works in place: x0 must be the caller's
    own float64 array."""
    if limit is None:
        return None
    if limit[0] == "clip":
        r = float(limit[1])
        if r == 1.0:
            return clip_unit

        def clip_range(x0: np.ndarray) -> np.ndarray:
            np.maximum(x0, -r, out=x0)
            return np.minimum(x0, r, out=x0)
        return clip_range
    ratio, top = float(limit[1]), float(limit[2])
    return lambda x0: dynamic_threshold(x0, ratio, top)


class OutputConverter:
    """x0_hat and eps from the network's output at grid position i, for one timestep grid.

    alpha, sigma: sqrt(abar) and sqrt(1 - abar) per grid position (float64 arrays).
    recip, recipm1: 1/alpha and sigma/alpha, for "eps": given, x0 = recip x - recipm1 out
    (the DDPM/DDIM form, the reference sampler's arithmetic); not given, x0 =
    (x - sigma out) / alpha (the solvers' form). Each keeps its scheduler's results bit
    for bit as they were before prediction types existed.

    ``x0(i, out, x)``: x0_hat before limiting (a new array, or ``out`` itself for "x0").
    ``eps(i, out, x, x0)``: eps_hat from the output and the unlimited x0_hat; for an eps
    model it is ``out`` itself (``eps_is_output``: a caller may skip the call).
    Both are plain functions picked once here, so a step pays one call and no branching.
    """

    def __init__(self, prediction: str, alpha: np.ndarray, sigma: np.ndarray,
                 recip: Optional[np.ndarray] = None, recipm1: Optional[np.ndarray] = None):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction={prediction!r} is unknown: expected one of {', '.join(PREDICTIONS)}")
        self.prediction = prediction
        self.alpha, self.sigma = alpha, sigma
        self.eps_is_output = prediction == "eps"
        # x0 = c1[i] x - c2[i] out for "eps" (table form) and "v"; None for "x0" and the
        # solvers' division form: lets the DDPM/DDIM step form x0 without a call
        self.linear = None
        if prediction == "eps":
            if recip is None:
                def x0(i, out, x):
                    return (x - sigma[i] * out) / alpha[i]
            else:
                self.linear = (recip, recipm1)

                def x0(i, out, x):
                    return recip[i] * x - recipm1[i] * out

            def eps(i, out, x, x0):
                return out
        elif prediction == "v":
            self.linear = (alpha, sigma)

            def x0(i, out, x):
                return alpha[i] * x - sigma[i] * out

            def eps(i, out, x, x0):
                return alpha[i] * out + sigma[i] * x
        else:
            def x0(i, out, x):
                return out

            def eps(i, out, x, x0):
                return (x - alpha[i] * x0) / sigma[i]
        self.x0: Callable[[int, np.ndarray, np.ndarray], np.ndarray] = x0
        self.eps: Callable[[int, np.ndarray, np.ndarray, np.ndarray], np.ndarray] = eps
