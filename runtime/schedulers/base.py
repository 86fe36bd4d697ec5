"""What every scheduler shares: the step-argument checks, the noise draws, q_sample,
and ``Scheduler``, the base that does ``set_timesteps``' bookkeeping.

A scheduler subclasses ``Scheduler`` and supplies ``_timesteps(n, T)`` (its
spacing) and ``_set_coefficients(t, prev, abar, abar_prev)`` (its per-step
constants) and ``step``. The base validates the step count, keeps
``timesteps`` / ``num_inference_steps``, and the x0_hat coefficients and the
t -> index map every step needs.
"""
from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Sequence

import numpy as np

from runtime.seeding import ImageStreams
from runtime.schedulers.prediction import OutputConverter
from runtime.schedulers.schedule import Schedule, ScheduleConfig


class StepOutput(NamedTuple):
    prev_sample: np.ndarray  # x at the next (smaller) timestep, [N, C, H, W]
    pred_original_sample: np.ndarray  # x0_hat, clipped when config.clip_denoised


def check_num_steps(num_inference_steps: Any, num_timesteps: int) -> int:
    n = num_inference_steps
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= num_timesteps:
        raise ValueError(
            f"num_inference_steps={n!r} is invalid: expected an int in [1, {num_timesteps}] "
            f"(the model was trained with T={num_timesteps} steps); pass e.g. 50, or None for all T"
        )
    return int(n)


def leading_timesteps(num_inference_steps: int, num_timesteps: int) -> np.ndarray:
    """diffusers' "leading" spacing: arange(N) * (T // N), descending (N=50: 980, ..., 0)."""
    step = num_timesteps // num_inference_steps
    return (np.arange(num_inference_steps, dtype=np.int64) * step)[::-1].copy()


def spaced_timesteps(spacing: str, num_inference_steps: int, num_timesteps: int,
                     steps_offset: int = 0) -> np.ndarray:
    """The N descending timesteps of diffusers' DDPMScheduler/DDIMScheduler.set_timesteps(N)
    for ``timestep_spacing`` (Lin et al. 2023, Table 2):
      leading:  arange(N) * (T // N) + steps_offset   (N=10, T=1000: 900, ..., 0)
      trailing: round(arange(T, 0, -T/N)) - 1          (999, 899, ..., 99)
      linspace: round(linspace(0, T - 1, N))           (999, 888, ..., 0)
    Raises ValueError when steps_offset pushes a leading timestep past T - 1."""
    n, T = num_inference_steps, num_timesteps
    if spacing == "leading":
        t = leading_timesteps(n, T) + int(steps_offset)
        if t[0] > T - 1:
            raise ValueError(
                f"steps={n} with timestep_spacing 'leading' and steps_offset={steps_offset} reaches "
                f"t={int(t[0])}, past the last timestep {T - 1}; use fewer steps (at most "
                f"{max_leading_steps(T, steps_offset)}) or pass the timesteps explicitly")
        return t
    if spacing == "trailing":
        return (np.round(np.arange(T, 0, -T / n)) - 1).astype(np.int64)
    if spacing == "linspace":
        return np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
    raise ValueError(f"timestep_spacing={spacing!r} is unknown: expected leading, trailing or linspace")


def max_leading_steps(num_timesteps: int, steps_offset: int) -> int:
    """The most steps "leading" spacing with this offset can take inside [0, T - 1]."""
    return max(n for n in range(1, num_timesteps + 1)
               if (n - 1) * (num_timesteps // n) + steps_offset <= num_timesteps - 1)


def check_timesteps(timesteps: Any, num_timesteps: int) -> np.ndarray:
    """An explicit timestep list (diffusers' set_timesteps(timesteps=[...])) as descending int64.

    Refuses, listing every problem: not a 1-D sequence of ints, empty, out of [0, T-1],
    not strictly descending."""
    T = num_timesteps
    arr = np.asarray(timesteps) if not isinstance(timesteps, (str, bytes)) else np.asarray([])
    if isinstance(timesteps, (str, bytes)) or arr.ndim != 1 or arr.size == 0:
        raise ValueError(
            f"timesteps={timesteps!r} is invalid: expected a non-empty list of ints, strictly "
            f"descending, in [0, {T - 1}] (e.g. [999, 749, 499, 249])")
    problems = []
    if arr.dtype.kind not in "iu":
        non_int = [v for v in timesteps if isinstance(v, bool) or not isinstance(v, (int, np.integer))]
        problems.append(f"not ints: {non_int[:4]}")
    else:
        arr = arr.astype(np.int64)
        out = arr[(arr < 0) | (arr > T - 1)]
        if out.size:
            problems.append(f"outside [0, {T - 1}] (T={T}): {out[:4].tolist()}")
        up = np.nonzero(np.diff(arr) >= 0)[0]
        if up.size:
            shown = ", ".join(f"{arr[k]} -> {arr[k + 1]}" for k in up[:3])
            problems.append(f"not strictly descending at {shown}")
    if problems:
        shown = arr.tolist() if arr.size <= 8 else arr[:4].tolist() + ["..."] + arr[-2:].tolist()
        raise ValueError(f"timesteps={shown} is invalid: {'; '.join(problems)}; expected ints, "
                         f"strictly descending, in [0, {T - 1}]")
    return arr


def check_dtype(dtype: Any) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.float16, np.float32, np.float64):
        raise ValueError(f"dtype={dt} is not supported: expected float16, float32 or float64")
    return dt


def check_rng(rng: Any) -> None:
    if rng is not None and not isinstance(rng, (np.random.Generator, ImageStreams)):
        raise ValueError(
            f"rng must be a numpy.random.Generator or runtime.seeding.ImageStreams, got "
            f"{type(rng).__name__}; create one with runtime.seeding.ImageStreams(seed, first, n) "
            f"(one stream per image) or numpy.random.default_rng(seed)"
        )


def step_inputs(eps: Any, t: Any, x_t: Any, index: Dict[int, int]):
    """Validate step() arguments -> (i, t, eps float64, x_t float64).

    Written for speed (it runs once per step, ~2x cheaper than np.issubdtype checks):
    dtype.kind tests and a dict lookup.
    """
    if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
        t = int(t)
    else:
        t_arr = np.asarray(t)
        if t_arr.ndim != 0 or t_arr.dtype.kind not in "iu":
            raise ValueError(f"t must be a single integer timestep, got {t!r}")
        t = int(t_arr)
    i = index.get(t)
    if i is None:
        shown = sorted(index, reverse=True)
        shown = shown if len(shown) <= 8 else shown[:4] + ["..."] + shown[-2:]
        raise ValueError(
            f"t={t} is not in this scheduler's timesteps {shown}; iterate over "
            f"scheduler.timesteps, or call set_timesteps() with the step count you sample with"
        )
    eps, x_t = np.asarray(eps), np.asarray(x_t)
    for name, a in (("eps", eps), ("x_t", x_t)):
        if a.dtype.kind != "f":
            raise ValueError(f"{name} has dtype {a.dtype}: expected a float32 or float64 array")
    if eps.shape != x_t.shape:
        raise ValueError(
            f"eps has shape {eps.shape} but x_t has shape {x_t.shape}: the model output must "
            f"have the sample's shape [N, C, H, W] (a learned-variance model's extra channels "
            f"are not supported)"
        )
    return i, t, eps.astype(np.float64), x_t.astype(np.float64)


def draw_noise(rng: Any, noise: Any, shape: Sequence[int], t: int) -> np.ndarray:
    """z for one step: the caller's ``noise`` or rng.standard_normal(shape, float32)."""
    if noise is not None:
        if rng is not None:
            raise ValueError("pass either rng or noise to step(), not both")
        z = np.asarray(noise)
        if z.shape != tuple(shape):
            raise ValueError(f"noise has shape {z.shape}, expected x_t's shape {tuple(shape)}")
        return z.astype(np.float64)
    if rng is None:
        raise ValueError(
            f"step at t={t} adds noise: pass rng=numpy.random.default_rng(seed) or noise=z"
        )
    check_rng(rng)
    return rng.standard_normal(shape, dtype=np.float32).astype(np.float64)


def q_sample(s: Schedule, x0: Any, noise: Any, t: Any) -> np.ndarray:
    x0, noise, t = np.asarray(x0, np.float64), np.asarray(noise, np.float64), np.asarray(t)
    if x0.shape != noise.shape:
        raise ValueError(f"noise has shape {noise.shape}, expected x0's shape {x0.shape}")
    n = x0.shape[0] if x0.ndim else 0
    if not np.issubdtype(t.dtype, np.integer) or t.ndim > 1 or (t.ndim == 1 and t.shape[0] != n):
        raise ValueError(f"t must be an int or [N={n}] ints (one per sample), got {t!r}")
    if np.any(t < 0) or np.any(t >= s.num_timesteps):
        raise ValueError(f"t={t!r} is out of range: expected 0 <= t < {s.num_timesteps}")
    shape = (-1,) + (1,) * (x0.ndim - 1) if t.ndim == 1 else ()
    a = s.sqrt_alphas_cumprod[t].reshape(shape)
    b = s.sqrt_one_minus_alphas_cumprod[t].reshape(shape)
    return a * x0 + b * noise


def init_noise(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    if rng is None:
        raise ValueError("init_noise needs rng=numpy.random.default_rng(seed)")
    check_rng(rng)
    return rng.standard_normal(tuple(int(d) for d in shape), dtype=np.float32)


class Scheduler:
    """Base of the NumPy schedulers: schedule, dtype, timesteps and their shared constants.

    After ``set_timesteps(n)``: ``timesteps`` (descending int64), ``num_inference_steps``,
    ``_index`` (t -> position), ``_convert`` (the model output -> x0_hat / eps per position,
    by the schedule's prediction type; for eps x0_hat = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps,
    DDPM eq. 15).
    """

    def __init__(self, schedule_config: ScheduleConfig = ScheduleConfig(), dtype: Any = np.float32):
        self.config = schedule_config
        self.schedule = Schedule(schedule_config)
        self.num_train_timesteps = self.schedule.num_timesteps
        self.dtype = check_dtype(dtype)

    def _timesteps(self, num_inference_steps: int, num_timesteps: int) -> np.ndarray:
        """The descending timesteps for N steps: the schedule's timestep_spacing and
        steps_offset (older manifests: "leading", 0)."""
        c = self.config
        return spaced_timesteps(c.timestep_spacing, num_inference_steps, num_timesteps, c.steps_offset)

    def _all_timesteps(self, num_timesteps: int) -> np.ndarray:
        """The timesteps of set_timesteps(None): every one, T-1 ... 0 (whatever the spacing)."""
        return np.arange(num_timesteps - 1, -1, -1, dtype=np.int64)

    def _set_coefficients(self, t: np.ndarray, prev: np.ndarray, abar: np.ndarray,
                          abar_prev: np.ndarray) -> None:
        """Per-step constants of the subclass; prev = the next timestep, -1 after the last."""
        raise NotImplementedError

    def set_timesteps(self, num_inference_steps: Optional[int] = None,
                      timesteps: Optional[Sequence[int]] = None) -> None:
        """N steps (None = all T, T-1 ... 0) with this scheduler's spacing, or the given
        ``timesteps`` (ints, strictly descending, in [0, T-1]; e.g. those a distilled
        model was trained on); ``timesteps`` is descending."""
        s, T = self.schedule, self.num_train_timesteps
        if timesteps is not None:
            if num_inference_steps is not None:
                raise ValueError("pass num_inference_steps or timesteps to set_timesteps(), not both")
            t = check_timesteps(timesteps, T)
            n = len(t)
            self.custom_timesteps = True
        else:
            n = T if num_inference_steps is None else check_num_steps(num_inference_steps, T)
            t = self._all_timesteps(T) if num_inference_steps is None else self._timesteps(n, T)
            self.custom_timesteps = False
        self.num_inference_steps = n
        self.timesteps = t
        prev = np.append(t[1:], -1)
        abar = s.alphas_cumprod[t]
        abar_prev = np.where(prev >= 0, s.alphas_cumprod[np.maximum(prev, 0)], 1.0)
        self._convert = OutputConverter(
            self.config.prediction, np.sqrt(abar), np.sqrt(1.0 - abar),
            recip=s.sqrt_recip_alphas_cumprod[t], recipm1=s.sqrt_recipm1_alphas_cumprod[t])
        self._to_x0 = self._convert.x0
        self._x0_coef = self._convert.linear  # (c1, c2): x0 = c1 x - c2 out, formed inline
        self._eps_is_output = self._convert.eps_is_output
        self._index = {int(v): i for i, v in enumerate(t)}
        self._set_coefficients(t, prev, abar, abar_prev)

    def step(
        self,
        eps: np.ndarray,
        t: int,
        x_t: np.ndarray,
        rng: Optional[np.random.Generator] = None,
        noise: Optional[np.ndarray] = None,
    ) -> StepOutput:
        """One reverse step x_t -> x_{t'} (t' = the next entry of ``timesteps``).

        eps: the model output at (x_t, t), [N, C, H, W] float32/float64: the noise, or x0
        or v as the schedule's ``prediction`` says; x_t: same shape.
        rng / noise: where z comes from when the step adds noise (one of them).
        Returns StepOutput(prev_sample, pred_original_sample) in ``self.dtype``.
        """
        i, t, out, x_t = step_inputs(eps, t, x_t, self._index)
        check_rng(rng)
        # x0_hat, not limited (DDPM eq. (15) for an eps model): the converter's coefficients,
        # applied here without a call (this runs once per step and image batch)
        c = self._x0_coef
        x0 = c[0][i] * x_t - c[1][i] * out if c is not None else self._to_x0(i, out, x_t)
        return self._finish_step(i, t, out, x_t, x0, rng, noise)

    def _finish_step(self, i: int, t: int, out: np.ndarray, x_t: np.ndarray, x0: np.ndarray,
                     rng: Optional[np.random.Generator], noise: Optional[np.ndarray]) -> StepOutput:
        """The scheduler's own update, float64 inputs; i is t's position in ``timesteps``;
        out: the model output (eps, x0 or v: ``self._convert`` turns it into eps);
        x0: x0_hat not yet limited (it may be ``out`` itself: the subclass owns both)."""
        raise NotImplementedError

    def add_noise(self, x0: np.ndarray, noise: np.ndarray, t: Any) -> np.ndarray:
        """q_sample, DDPM eq. (4): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise.

        x0, noise: [N, ...]; t: an int or [N] ints in [0, T). Returns ``self.dtype``.
        """
        return q_sample(self.schedule, x0, noise, t).astype(self.dtype)

    @staticmethod
    def init_noise(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
        """x_T ~ N(0, I): rng.standard_normal(shape, float32), the first draw of a chain."""
        return init_noise(shape, rng)
