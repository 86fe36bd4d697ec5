"""The diffusers scheduler config -> ScheduleConfig, and how the folder's pipeline samples.

Split out of :mod:`ddpm_export.weights.from_diffusers` (which re-exports
:func:`schedule_from_diffusers`): :func:`schedule_from_diffusers` translates a
``scheduler_config.json`` option by option (DDPM sampling of any config is
``DDPMScheduler.from_config(config)``; the DDIM's final alpha is ``DDIMScheduler``'s
``set_alpha_to_one``); :func:`default_sampling` is the non-binding manifest ``sampling``
section that makes the runtime's no-flag sampling the folder's own pipeline (a
``DDIMPipeline``'s DDIM); ``_resolve_schedule`` picks and checks the schedule of an import
(the folder's, a given one, or both when they agree). Nothing that changes the samples is
guessed; every refusal is one line listing all its reasons.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from runtime.schedulers.schedule import ScheduleConfig

from ddpm_export.weights.common import _read_json

SCHEDULER_FILE = "scheduler_config.json"


_VARIANCE = {
    "fixed_large": "fixedlarge",
    "fixed_large_log": "fixedlarge",
    "fixed_small": "fixedsmall",
    "fixed_small_log": "fixedsmall",
}
_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
_PREDICTION = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
_SPACINGS = ("leading", "trailing", "linspace")
# Scheduler keys that do not change what DDPM sampling computes from the schedule
# (they belong to other samplers, which the runtime configures itself).
_SAMPLER_ONLY_KEYS = ("skip_prk_steps", "eta", "use_karras_sigmas",
                      "solver_order", "algorithm_type", "solver_type", "lower_order_final",
                      "predict_x0", "disable_corrector", "solver_p", "final_sigmas_type",
                      "use_lu_lambdas", "use_exponential_sigmas", "use_beta_sigmas",
                      "euler_at_final", "variance_type_dpm", "lambda_min_clipped",
                      "interpolation_type", "sigma_min", "sigma_max", "timestep_type",
                      "use_flow_sigmas", "flow_shift")
_SCHEDULER_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                   "variance_type", "clip_sample", "clip_sample_range", "prediction_type",
                   "thresholding", "dynamic_thresholding_ratio", "sample_max_value",
                   "timestep_spacing", "steps_offset", "rescale_betas_zero_snr",
                   "set_alpha_to_one") + _SAMPLER_ONLY_KEYS


def schedule_from_diffusers(sched_json: Dict[str, Any], source: str = SCHEDULER_FILE) -> ScheduleConfig:
    """Translate a diffusers scheduler config (DDPMScheduler, DDIMScheduler...) to ScheduleConfig.

    Every option that changes the samples is carried over (beta_schedule linear /
    scaled_linear / squaredcos_cap_v2, trained_betas, prediction_type, clip_sample and
    its range, thresholding, timestep_spacing, steps_offset, variance_type fixed_small /
    fixed_large); a missing key means what diffusers itself reads for it (the
    scheduler class's default).

    DDPM sampling of any config is ``DDPMScheduler.from_config(config)``, whatever its
    ``_class_name``: a config without ``variance_type`` (a DDIMScheduler's or
    PNDMScheduler's, e.g. a DDIMPipeline folder of a model trained with DDPMScheduler)
    takes DDPMScheduler's ``fixed_small`` (the variance the folder's own DDIM gives at
    eta = 1) and DDPMScheduler's noise on a last step above t = 0 (final_step_noise).
    ``set_alpha_to_one`` is what ``DDIMScheduler.from_config(config)`` reads (missing:
    true), for the runtime's DDIM.
    Raises ValueError listing every option it cannot honour, in one line.
    """
    if not isinstance(sched_json, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(sched_json).__name__}")
    s = sched_json
    problems: List[str] = []
    unknown = sorted(k for k in s if not k.startswith("_") and k not in _SCHEDULER_KEYS
                     and s[k] not in (None, False))
    if unknown:
        problems.append(f"unknown option(s) {', '.join(f'{k}={s[k]!r}' for k in unknown)} "
                        f"(newer diffusers? ddpm-export cannot tell whether they change the samples)")
    schedule = s.get("beta_schedule", "linear")
    betas = s.get("trained_betas")
    if betas is None and schedule not in _BETA_SCHEDULES:
        problems.append(f"beta_schedule={schedule!r} (supported: {', '.join(_BETA_SCHEDULES)}, "
                        f"or trained_betas)")
    pred = s.get("prediction_type", "epsilon")
    if pred not in _PREDICTION:
        problems.append(f"prediction_type={pred!r} (supported: {', '.join(_PREDICTION)})")
    if s.get("rescale_betas_zero_snr", False):
        problems.append("rescale_betas_zero_snr=true (supported: false; the zero-SNR rescaled schedule "
                        "is not implemented)")
    spacing = s.get("timestep_spacing", "leading")
    if spacing not in _SPACINGS:
        problems.append(f"timestep_spacing={spacing!r} (supported: {', '.join(_SPACINGS)})")
    # DDPMScheduler.from_config(s) for every class: a missing (or null) variance_type is its
    # default fixed_small, also for a DDIMScheduler / PNDMScheduler config that has no such key
    vt = s["variance_type"] if s.get("variance_type") is not None else "fixed_small"
    if vt not in _VARIANCE:
        problems.append(f"variance_type={vt!r} (supported: {', '.join(_VARIANCE)}; a learned variance "
                        f"needs the network's second output half, which the export contract does not carry)")
    T = s.get("num_train_timesteps", 1000)
    if betas is not None:
        if not isinstance(betas, (list, tuple)) or len(betas) < 2:
            problems.append(f"trained_betas={betas!r} (expected a list of T betas)")
        elif len(betas) != T and "num_train_timesteps" in s:
            problems.append(f"trained_betas has {len(betas)} values but num_train_timesteps={T} "
                            f"(diffusers would use the {len(betas)} betas; fix the file)")
    if problems:
        raise ValueError(f"{source}: this scheduler cannot be expressed by ddpm-export: " + "; ".join(problems))
    fields: Dict[str, Any] = dict(
        num_timesteps=int(T),
        variance_type=_VARIANCE[vt],
        clip_denoised=bool(s.get("clip_sample", True)),
        clip_sample_range=float(s.get("clip_sample_range", 1.0)),
        prediction=_PREDICTION[pred],
        thresholding=bool(s.get("thresholding", False)),
        dynamic_thresholding_ratio=float(s.get("dynamic_thresholding_ratio", 0.995)),
        sample_max_value=float(s.get("sample_max_value", 1.0)),
        timestep_spacing=spacing,
        steps_offset=int(s.get("steps_offset", 0)),
        # DDPMScheduler (which DDPM sampling of any of these configs is) adds noise on every
        # step whose t > 0, the last one of a chain that ends above 0 included (trailing
        # spacing, steps_offset): so does the runtime then
        final_step_noise=True,
        # DDIMScheduler's final_alpha_cumprod (1 or alphas_cumprod[0]); its default True
        set_alpha_to_one=bool(s.get("set_alpha_to_one", True)),
    )
    if betas is not None:
        fields.update(kind="explicit", betas=[float(b) for b in betas], num_timesteps=len(betas))
    else:
        fields.update(kind=schedule, beta_start=float(s.get("beta_start", 1e-4)),
                      beta_end=float(s.get("beta_end", 0.02)))
    try:
        return ScheduleConfig(**fields)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {' '.join(str(e).split())}") from e


PIPELINE_FILE = "model_index.json"
# DDIMPipeline.__call__'s defaults (diffusers 0.42): num_inference_steps=50, eta=0.0,
# use_clipped_model_output=None (the network's eps kept after clipping: the runtime's
# variant "diffusers", which also steps to t - T // N as DDIMScheduler.step does)
_DDIM_PIPELINE = {"method": "ddim", "steps": 50, "options": {"eta": 0.0, "variant": "diffusers"}}


def _pipeline_class(src: Path, unet_dir: Path) -> Optional[str]:
    """The ``_class_name`` of the folder's model_index.json (DDPMPipeline, DDIMPipeline...), or None."""
    candidates = [src / PIPELINE_FILE] if src.is_dir() else []
    if unet_dir.name == "unet":
        candidates.append(unet_dir.parent / PIPELINE_FILE)
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        return None
    name = _read_json(path).get("_class_name")
    return name if isinstance(name, str) else None


def default_sampling(pipeline_class: Optional[str], scheduler_json: Optional[Dict[str, Any]]
                     ) -> Optional[Dict[str, Any]]:
    """The manifest's non-binding ``sampling`` section (runtime/contract.py) that makes the
    runtime's no-flag sampling the folder's own pipeline, or None (DDPM over all T, as
    ``DDPMPipeline`` with a DDPMScheduler samples by default).

    * a ``DDIMPipeline`` folder (model_index.json), or a folder without model_index.json
      whose scheduler is a DDIMScheduler: DDIM at DDIMPipeline's defaults, 50 steps, eta 0,
      diffusers' step rule; set_alpha_to_one, timestep_spacing and steps_offset travel in
      the schedule;
    * a ``DDPMPipeline`` whose scheduler is a DDIMScheduler: DDPMPipeline calls
      DDIMScheduler.step with its defaults (eta 0) at 1000 steps: that DDIM.
    """
    sched_class = (scheduler_json or {}).get("_class_name")
    if pipeline_class == "DDIMPipeline" or (pipeline_class is None and sched_class == "DDIMScheduler"):
        where = "DDIMPipeline" if pipeline_class else "a DDIMScheduler (no model_index.json): DDIMPipeline"
        return {"binding": False, **_DDIM_PIPELINE, "options": dict(_DDIM_PIPELINE["options"]),
                "source": f"diffusers {where}'s defaults: num_inference_steps=50, eta=0.0, "
                          f"use_clipped_model_output=None"}
    if pipeline_class == "DDPMPipeline" and sched_class == "DDIMScheduler":
        T = int((scheduler_json or {}).get("num_train_timesteps") or 1000)
        return {"binding": False, "method": "ddim", "steps": min(1000, T),
                "options": dict(_DDIM_PIPELINE["options"]),
                "source": "diffusers DDPMPipeline's defaults (num_inference_steps=1000) with its "
                          "DDIMScheduler's step defaults (eta=0.0)"}
    return None


_REQUIRED_SCHEDULE_KEYS = ("kind", "prediction", "variance_type")
_DIFFUSERS_SCHEDULER_HINTS = ("_class_name", "beta_schedule", "prediction_type", "num_train_timesteps",
                              "trained_betas")
_NO_SCHEDULER_FIX = (
    "pass the schedule explicitly: the CLI's --scheduler-config FILE (a diffusers scheduler_config.json, "
    "e.g. written by DDPMScheduler(...).save_config(DIR)), or in Python schedule_config= a ScheduleConfig, "
    "a dict naming kind (linear | scaled_linear | squaredcos_cap_v2 | explicit), prediction (eps | x0 | v) "
    "and variance_type (fixedsmall | fixedlarge), or a diffusers scheduler config dict"
)


def _explicit_schedule(schedule_config: Any) -> Tuple[ScheduleConfig, Optional[Dict[str, Any]]]:
    """A given schedule -> (ScheduleConfig, its diffusers scheduler dict or None)."""
    if isinstance(schedule_config, ScheduleConfig):
        return schedule_config, None
    if isinstance(schedule_config, dict):
        if any(k in schedule_config for k in _DIFFUSERS_SCHEDULER_HINTS):
            return schedule_from_diffusers(schedule_config, "schedule_config"), dict(schedule_config)
        missing = [k for k in _REQUIRED_SCHEDULE_KEYS if k not in schedule_config]
        if missing:
            raise ValueError(
                f"schedule_config: received {sorted(schedule_config)}, missing {missing}: they change the "
                f"samples and are not guessed; name kind, prediction and variance_type explicitly")
        try:
            return ScheduleConfig.from_dict(schedule_config), None
        except (TypeError, ValueError) as e:
            raise ValueError(f"schedule_config: {' '.join(str(e).split())}") from e
    raise TypeError(f"schedule_config: received {type(schedule_config).__name__}, expected a ScheduleConfig "
                    f"or a dict")


def _resolve_schedule(schedule_config, sched_path: Optional[Path], src: Path):
    """-> (ScheduleConfig, diffusers scheduler dict or None, where it came from)."""
    pipeline = pipeline_json = None
    if sched_path is not None:
        pipeline_json = _read_json(sched_path)
        pipeline = schedule_from_diffusers(pipeline_json, source=str(sched_path))
    if schedule_config is None:
        if pipeline is None:
            raise ValueError(
                f"{src}: no {SCHEDULER_FILE} beside the weights, in scheduler/ or in the pipeline folder, "
                f"so the schedule and the prediction type (eps, x0 or v) are unknown; {_NO_SCHEDULER_FIX}")
        return pipeline, pipeline_json, str(sched_path)
    given, given_json = _explicit_schedule(schedule_config)
    if pipeline is not None:
        # final_step_noise is DDPMScheduler's rule for any diffusers config, not a choice a
        # caller makes: take the pipeline's and compare everything else
        given = dataclasses.replace(given, final_step_noise=pipeline.final_step_noise)
        a, b = given.to_dict(), pipeline.to_dict()
        diffs = [f"{k}: given {a[k]!r}, the pipeline has {b[k]!r}" for k in a if a[k] != b[k]]
        if diffs:
            shown = [d if len(d) < 200 else d[:200] + "..." for d in diffs]
            raise ValueError(
                f"{src}: schedule_config disagrees with the pipeline's {sched_path}: {'; '.join(shown)}; "
                f"omit schedule_config to use the pipeline's, or correct it")
        return given, pipeline_json, f"given, equal to {sched_path}"
    return given, given_json, "given"
