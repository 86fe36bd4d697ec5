"""What the multistep solvers (DPM-Solver++, UniPC) share: the time grid, data
prediction with clipping or dynamic thresholding, and the per-chain history.

Notation (Lu et al. 2022, DPM-Solver++, Section 2; Zhao et al. 2023, UniPC, Section 2):
alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t)
(the half log-SNR), x_t = alpha_t x_0 + sigma_t eps. With the "Karras sigma"
s = sigma_t / alpha_t = sqrt(1/abar_t - 1): alpha = 1/sqrt(1 + s^2), sigma = s alpha,
lambda = -log(s). The grid ends at s = 0 (lambda = +inf), where the exact solution
of the first-order step is the data prediction itself (diffusers' final_sigmas_type
"zero"). The time grid and the options follow diffusers' DPMSolverMultistepScheduler
and UniPCMultistepScheduler, so results compare one to one; the math is float64.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence

import numpy as np

from runtime.schedulers.base import (
    StepOutput,
    check_dtype,
    check_num_steps,
    check_rng,
    check_timesteps,
    init_noise,
    q_sample,
    step_inputs,
)
from runtime.schedulers.prediction import OutputConverter, limiter, resolve_limit
from runtime.schedulers.schedule import Schedule, ScheduleConfig

SOLVER_SPACINGS = ("linspace", "leading", "trailing")
KARRAS_RHO = 7.0  # Karras et al. 2022, eq. (5)


def solver_timesteps(spacing: str, n: int, num_timesteps: int, steps_offset: int = 0) -> np.ndarray:
    """The N descending integer timesteps of diffusers' three spacings (Lin et al. 2023,
    "Common diffusion noise schedules and sample steps are flawed", Table 2) for the
    multistep solvers; ``steps_offset`` shifts "leading" only, as diffusers does."""
    T = num_timesteps
    if spacing == "linspace":  # round(linspace(0, T-1, N+1)) without the 0
        return np.linspace(0, T - 1, n + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "leading":  # arange(N+1) * (T // (N+1)) without the 0, + steps_offset
        t = (np.arange(n + 1) * (T // (n + 1))).round()[::-1][:-1].astype(np.int64) + int(steps_offset)
        if t[0] > T - 1:
            raise ValueError(f"steps={n} with spacing 'leading' and steps_offset={steps_offset} reaches "
                             f"t={int(t[0])}, past the last timestep {T - 1}; use fewer steps or "
                             f"another spacing")
        return t
    if spacing == "trailing":  # round(arange(T, 0, -T/N)) - 1: starts at T-1
        return (np.arange(T, 0, -T / n).round() - 1).astype(np.int64)
    raise ValueError(f"spacing={spacing!r} is unknown: expected one of {SOLVER_SPACINGS}")


def karras_grid(schedule: Schedule, n: int):
    """Karras et al. 2022 eq. (5): s_i = (s_max^(1/rho) + i/(N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho,
    rho = 7, between the schedule's smallest and largest s. Each s_i is evaluated by the
    network at the (rounded) timestep whose log s interpolates it linearly; the solver
    itself uses s_i (as diffusers does). Returns (timesteps int64, s float64)."""
    s_all = schedule.sqrt_recipm1_alphas_cumprod  # s_t = sqrt(1/abar_t - 1), increasing in t
    lo, hi = s_all[0] ** (1.0 / KARRAS_RHO), s_all[-1] ** (1.0 / KARRAS_RHO)
    s = (hi + np.linspace(0.0, 1.0, n) * (lo - hi)) ** KARRAS_RHO
    log_s_all = np.log(s_all)
    # log s is increasing in t: np.interp inverts it piecewise linearly (clamped at the ends)
    t = np.interp(np.log(s), log_s_all, np.arange(len(s_all), dtype=np.float64))
    return t.round().astype(np.int64), s


class MultistepSolver:
    """Base of the multistep solvers: grid, data prediction, history and step bookkeeping.

    Subclasses set ``max_order`` / ``name`` and implement ``_update(i, x) -> x_next``
    and ``_plan(n) -> per-step orders``. One instance holds ONE chain's history; a
    chain restarts whenever ``step`` is called with ``timesteps[0]`` (or after ``reset()``).
    """

    name = "multistep"
    max_order = 3
    min_order = 1
    takes_noise = False

    def __init__(
        self,
        schedule_config: ScheduleConfig = ScheduleConfig(),
        order: int = 2,
        spacing: str = "linspace",
        lower_order_final: bool = True,
        karras: bool = False,
        clip: Optional[bool] = None,
        dynamic_threshold_ratio: Optional[float] = None,
        sample_max_value: Optional[float] = None,
        dtype: Any = np.float32,
    ):
        if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or not (
                self.min_order <= order <= self.max_order):
            valid = list(range(self.min_order, self.max_order + 1))
            raise ValueError(f"order={order!r} is not available for {self.name}: expected one of {valid}")
        if spacing not in SOLVER_SPACINGS:
            raise ValueError(f"spacing={spacing!r} is unknown for {self.name}: expected one of {SOLVER_SPACINGS}")
        self.config = schedule_config
        self.limit = resolve_limit(schedule_config, clip, dynamic_threshold_ratio, sample_max_value, who=self.name)
        self.clip = self.limit is not None
        self._limit_x0 = limiter(self.limit)
        self.schedule = Schedule(schedule_config)
        self.num_train_timesteps = self.schedule.num_timesteps
        self.order = int(order)
        self.spacing = spacing
        self.lower_order_final = bool(lower_order_final)
        self.karras = bool(karras)
        self.dtype = check_dtype(dtype)
        self.set_timesteps(min(20, self.num_train_timesteps))

    # --- grid -------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: Optional[int] = 20,
                      timesteps: Optional[Sequence[int]] = None) -> None:
        """N steps on this solver's spacing (or the Karras grid), or exactly ``timesteps``
        (ints, strictly descending, in [0, T-1]); ``timesteps`` is descending.

        Raises ValueError when N is too small for the solver to ever use ``order``.
        """
        T = self.num_train_timesteps
        if timesteps is not None:
            if self.karras:
                raise ValueError(f"timesteps={list(timesteps)!r} with karras=True: the Karras grid "
                                 f"chooses its own timesteps; drop one of them")
            given = check_timesteps(timesteps, T)
            n = len(given)
        else:
            given = None
            n = min(20, T) if num_inference_steps is None else check_num_steps(num_inference_steps, T)
        need = self.min_steps()
        if n < need:
            raise ValueError(
                f"{n} steps are too few for {self.name} order {self.order}: with these options it "
                f"reaches that order from {need} steps on; use --steps >= {need} or a lower --order"
            )
        if given is not None:
            self.timesteps = given
            s = self.schedule.sqrt_recipm1_alphas_cumprod[self.timesteps]
        elif self.karras:
            self.timesteps, s = karras_grid(self.schedule, n)
        else:
            self.timesteps = solver_timesteps(self.spacing, n, T, self.config.steps_offset)
            s = self.schedule.sqrt_recipm1_alphas_cumprod[self.timesteps]
        self.num_inference_steps = n
        # s_i for i = 0..N, with s_N = 0 (the clean end of the grid)
        self.sigmas = np.append(s, 0.0)
        self.alpha = 1.0 / np.sqrt(1.0 + self.sigmas**2)
        self.sigma = self.sigmas * self.alpha
        with np.errstate(divide="ignore"):
            self.lambdas = -np.log(self.sigmas)  # lambda_N = +inf
        self.orders = self._plan(n)
        self._convert = OutputConverter(self.config.prediction, self.alpha, self.sigma)
        self._to_x0 = self._convert.x0
        self.reset()

    def min_steps(self) -> int:
        """The fewest steps at which this solver's plan uses its full order."""
        for n in range(1, 64):
            if max(self._plan(n)) >= self.order:
                return n
        return 64  # not reached for the orders offered

    def _plan(self, n: int) -> List[int]:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget the history: the next step must be at timesteps[0]."""
        self._i = 0
        self._history: List[np.ndarray] = []  # data predictions, newest last (at most `order`)

    # --- data prediction (DPM-Solver++ eq. (4)'s x_theta; UniPC's data-prediction form) ---
    def data_prediction(self, out: np.ndarray, x: np.ndarray, i: int) -> np.ndarray:
        """x0 from the model output (for eps: (x - sigma_i eps) / alpha_i), then clipped or
        dynamically thresholded (runtime.schedulers.prediction)."""
        x0 = self._to_x0(i, out, x)
        return x0 if self._limit_x0 is None else self._limit_x0(x0)

    def _chain_index(self, t: int) -> int:
        """Index of this step in the chain; a new chain starts at timesteps[0]."""
        n = self.num_inference_steps
        if self._i < n and int(self.timesteps[self._i]) == t:
            return self._i
        if int(self.timesteps[0]) == t:
            self.reset()
            return 0
        expected = int(self.timesteps[self._i]) if self._i < n else "none (the chain is finished)"
        raise ValueError(
            f"t={t} is out of order for {self.name}: a multistep solver walks its timesteps in order "
            f"(next expected t={expected}); iterate over scheduler.timesteps, start again at "
            f"t={int(self.timesteps[0])}, or call reset()"
        )

    def step(
        self,
        eps: np.ndarray,
        t: int,
        x_t: np.ndarray,
        rng: Optional[np.random.Generator] = None,
        noise: Optional[np.ndarray] = None,
    ) -> StepOutput:
        """One step x_{t_i} -> x_{t_{i+1}} (t_N: the clean end), updating this chain's history.

        eps: eps_theta(x_t, t), [N, C, H, W] float32/float64; x_t: same shape.
        rng / noise: where z comes from (SDE variant only; ignored by the ODE solvers).
        Returns StepOutput(prev_sample, pred_original_sample) in ``self.dtype``.
        """
        t_arr = np.asarray(t)
        if isinstance(t, bool) or t_arr.ndim != 0 or t_arr.dtype.kind not in "iu":
            raise ValueError(f"t must be a single integer timestep, got {t!r}")
        i = self._chain_index(int(t_arr))
        _, t, eps, x = step_inputs(eps, int(t_arr), x_t, {int(t_arr): i})
        check_rng(rng)
        prev, x0 = self._update(i, eps, x, rng, noise)
        self._i = i + 1
        return StepOutput(prev.astype(self.dtype), x0.astype(self.dtype))

    def _update(self, i, eps, x, rng, noise):
        raise NotImplementedError

    def _push(self, x0: np.ndarray) -> None:
        self._history.append(x0)
        if len(self._history) > self.order:
            del self._history[0]

    def add_noise(self, x0: np.ndarray, noise: np.ndarray, t: Any) -> np.ndarray:
        """q_sample, DDPM eq. (4). x0, noise: [N, ...]; t: int or [N] ints. Returns ``dtype``."""
        return q_sample(self.schedule, x0, noise, t).astype(self.dtype)

    @staticmethod
    def init_noise(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
        """x_T ~ N(0, I): rng.standard_normal(shape, float32), the first draw of a chain."""
        return init_noise(shape, rng)
