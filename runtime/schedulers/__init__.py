"""The sampling methods: one registry, name -> factory with its valid options.

Adding a solver is one file in this package plus one ``Method(...)`` line in
``REGISTRY``; the loop, ``runtime.load(...).sample(method=...)``, both runtime CLIs,
``ddpm-export sample-many``, ``steps-table`` and ``validate`` read this table.

Options (all optional; None or absent = the method's default):
  steps                  model calls (= steps); default per method
  eta                    DDIM's noise scale in [0, 1] (only methods with takes_eta)
  spacing                which timesteps: ddim uniform (the model's timestep_spacing) | quadratic |
                         leading | trailing | linspace; solvers linspace | leading | trailing
  order                  multistep order (solvers)
  variant                ddim: consistent (eps re-derived from the clipped x0) | diffusers
                         (diffusers' DDIMScheduler.step exactly, its t - T//N step included);
                         unipc: bh1 | bh2
  corrector              unipc: use UniC (default True)
  lower_order_final      solvers: lower orders near the end of short chains (default True)
  karras                 solvers: Karras et al. sigma spacing (default False)
  clip                   limit x0_hat (clip to the model's clip_sample_range, or its dynamic
                         thresholding); default: the model's clip_denoised / thresholding
  threshold_ratio        solvers: dynamic thresholding quantile (Imagen), needs clipping
  threshold_max          solvers: dynamic thresholding's largest s (>= 1), needs clipping
DDPM and DDIM ("uniform") space N < T steps as the model's schedule says (timestep_spacing,
steps_offset: diffusers' DDPMPipeline / set_timesteps(N)); the solvers keep diffusers' solver
default, linspace, unless ``spacing`` says otherwise (steps_offset shifts their "leading").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

from runtime.schedulers.ddim import SPACINGS as DDIM_SPACINGS
from runtime.schedulers.ddim import DDIMScheduler
from runtime.schedulers.ddpm import DDPMScheduler
from runtime.schedulers.dpmsolver import DPMSolverPlusPlus, SDEDPMSolverPlusPlus
from runtime.schedulers.schedule import ScheduleConfig
from runtime.schedulers.solver_base import SOLVER_SPACINGS
from runtime.schedulers.unipc import VARIANTS as UNIPC_VARIANTS
from runtime.schedulers.unipc import UniPCScheduler

# an option's valid values: a tuple of choices, or a type (bool, int, float)
Valid = Union[Tuple[Any, ...], type]


@dataclass(frozen=True)
class Method:
    name: str
    factory: Callable[..., Any]  # factory(ScheduleConfig, **options) -> scheduler
    default_steps: Optional[int]  # None = all T
    takes_eta: bool
    summary: str
    options: Dict[str, Valid] = field(default_factory=dict)
    defaults: Dict[str, Any] = field(default_factory=dict)


_THRESHOLD = {"clip": bool, "threshold_ratio": float, "threshold_max": float}
_SOLVER = dict(spacing=SOLVER_SPACINGS, lower_order_final=bool, karras=bool, **_THRESHOLD)
_SOLVER_DEFAULTS = {"spacing": "linspace", "lower_order_final": True, "karras": False, "clip": None,
                    "threshold_ratio": None, "threshold_max": None}


def _solver(cls):
    def make(cfg: ScheduleConfig, threshold_ratio=None, threshold_max=None, **kw):
        return cls(cfg, dynamic_threshold_ratio=threshold_ratio, sample_max_value=threshold_max, **kw)
    return make


def _ddim(cfg: ScheduleConfig, variant: str = "consistent", **kw):
    consistent = variant == "consistent"
    return DDIMScheduler(cfg, use_clipped_model_output=consistent, diffusers_prev=not consistent, **kw)


REGISTRY: Dict[str, Method] = {m.name: m for m in (
    Method("ddpm", DDPMScheduler, None, False, "ancestral DDPM (Ho et al. 2020), all T or strided steps",
           {"clip": bool}, {"clip": None}),
    Method("ddim", _ddim, 50, True, "DDIM (Song et al. 2021); eta 0 deterministic",
           {"eta": float, "spacing": DDIM_SPACINGS, "variant": ("consistent", "diffusers"), "clip": bool},
           {"eta": 0.0, "spacing": "uniform", "variant": "consistent", "clip": None}),
    Method("dpmsolver++", _solver(DPMSolverPlusPlus), 20, False,
           "multistep DPM-Solver++ (Lu et al. 2022), ODE, orders 1-3",
           dict(order=(1, 2, 3), **_SOLVER), dict(order=2, **_SOLVER_DEFAULTS)),
    Method("sde-dpmsolver++", _solver(SDEDPMSolverPlusPlus), 20, False,
           "SDE-DPM-Solver++ (stochastic), orders 1-2",
           dict(order=(1, 2), **_SOLVER), dict(order=2, **_SOLVER_DEFAULTS)),
    Method("unipc", _solver(UniPCScheduler), 20, False,
           "UniPC predictor-corrector (Zhao et al. 2023), orders 1-3, bh1/bh2",
           dict(order=(1, 2, 3), variant=UNIPC_VARIANTS, corrector=bool, **_SOLVER),
           dict(order=2, variant="bh2", corrector=True, **_SOLVER_DEFAULTS)),
)}
METHODS: Tuple[str, ...] = tuple(REGISTRY)


def get_method(name: str) -> Method:
    m = REGISTRY.get(name)
    if m is None:
        raise ValueError(f"method {name!r} is unknown: expected one of {', '.join(METHODS)}")
    return m


def resolve_options(name: str, options: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The method's full option set: its defaults overridden by the non-None ``options``.

    Raises ValueError, naming the valid choices, for an unknown method, an option the
    method does not take (eta with a solver, order with DDIM, ...) or a value it does not accept.
    """
    m = get_method(name)
    given = {k: v for k, v in (options or {}).items() if v is not None}
    out = dict(m.defaults)
    for k, v in given.items():
        valid = m.options.get(k)
        if valid is None:
            takes = ", ".join(sorted(m.options)) or "none"
            if k == "eta":
                users = [n for n, mm in REGISTRY.items() if mm.takes_eta]
                raise ValueError(f"eta={v!r}: method {name} takes no eta (only {', '.join(users)} do); "
                                 f"drop it. {name}'s options: {takes}")
            raise ValueError(f"option {k}={v!r} does not apply to method {name}; its options: {takes}")
        if isinstance(valid, tuple):
            if v not in valid:
                shown = ", ".join(str(c) for c in valid)
                raise ValueError(f"{k}={v!r} is not available for method {name}: expected one of {shown}")
        elif valid is bool:
            if not isinstance(v, bool):
                raise ValueError(f"{k}={v!r} for method {name}: expected True or False")
        elif valid is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{k}={v!r} for method {name}: expected a number")
            v = float(v)
        out[k] = v
    return out


def make_scheduler(
    schedule: Union[ScheduleConfig, Mapping[str, Any]], method: str = "ddpm",
    steps: Optional[int] = None, timesteps: Optional[Sequence[int]] = None, **options: Any,
):
    """A scheduler for the schedule (a ScheduleConfig or a manifest's schedule dict) with
    ``steps`` (None = the method's default) or exactly ``timesteps`` (ints, strictly
    descending, in [0, T-1]: e.g. a distilled student's), and the method's ``options``;
    set_timesteps done."""
    m = get_method(method)
    opts = {k: v for k, v in resolve_options(method, options).items() if v is not None}
    cfg = schedule if isinstance(schedule, ScheduleConfig) else ScheduleConfig.from_dict(dict(schedule))
    sched = m.factory(cfg, **opts)
    if timesteps is not None:
        if steps is not None:
            raise ValueError(f"steps={steps!r} and timesteps={list(timesteps)!r} given together: pass one "
                             f"(the number of steps is len(timesteps))")
        sched.set_timesteps(timesteps=timesteps)
    else:
        sched.set_timesteps(m.default_steps if steps is None else steps)
    return sched
