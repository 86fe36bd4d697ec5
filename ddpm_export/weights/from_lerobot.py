"""Import a LeRobot 0.4.4 DiffusionPolicy folder (save_pretrained + its pre/post processors).

Reads config.json, model.safetensors and the normalizer/unnormalizer stats with the
safetensors library only (no lerobot, no torchvision, no code from the folder), builds our
own modules (:mod:`ddpm_export.model.lerobot_diffusion`) with strict loading, and writes our
checkpoint: ``ema`` = the denoiser (LeRobot's ``unet.*``), ``policy`` = the encoder's weights
(``encoder_state``), the LeRobot config and every feature's normalization. What cannot be
deployed exactly is refused in one line listing every reason.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ddpm_export.model.lerobot_diffusion import (FAMILY_LEROBOT, BACKBONES, action_dim, build_lerobot,
                                                 split_state_dict)
from ddpm_export.weights.common import _write_checkpoint
from ddpm_export.weights.diffusers_schedule import schedule_from_diffusers

PRE = "policy_preprocessor.json"
POST = "policy_postprocessor.json"
MODES = {"IDENTITY": "identity", "MEAN_STD": "mean_std", "MIN_MAX": "min_max",
         "QUANTILES": "quantiles", "QUANTILE10": "quantile10"}
MODE_STATS = {"mean_std": ("mean", "std"), "min_max": ("min", "max"), "quantiles": ("q01", "q99"),
              "quantile10": ("q10", "q90"), "identity": ()}
TYPES = ("STATE", "VISUAL", "ENV", "ACTION")


def _normalizer(src: Path, proc_file: str, registry: str, problems: List[str]):
    """(eps, norm_map, stats dict) of the folder's normalizer step, or None with problems added."""
    p = src / proc_file
    if not p.is_file():
        problems.append(f"{proc_file} is missing (expected beside config.json, written by the processor's "
                        f"save_pretrained; save the policy's pre/post processors into {src})")
        return None
    steps = json.loads(p.read_text()).get("steps", [])
    step = next((s for s in steps if s.get("registry_name") == registry), None)
    if step is None:
        problems.append(f"{proc_file} has no {registry} step (received steps "
                        f"{[s.get('registry_name') for s in steps]}; re-save the processors)")
        return None
    stats: Dict[str, Any] = {}
    sf = step.get("state_file")
    if sf:
        if not (src / sf).is_file():
            problems.append(f"{sf} (the {registry} stats) is missing: copy it from the training output")
        else:
            from safetensors.numpy import load_file

            stats = load_file(str(src / sf))
    return float(step.get("config", {}).get("eps", 1e-8)), dict(step.get("config", {}).get("norm_map", {})), stats


def _norm_entry(name: str, ftype: str, norm_map, stats, eps, problems) -> Optional[Dict[str, Any]]:
    mode_src = norm_map.get(ftype, "IDENTITY")
    mode = MODES.get(mode_src)
    if mode is None:
        problems.append(f"{name}: normalization {mode_src!r} is not supported (expected one of {sorted(MODES)})")
        return None
    out: Dict[str, Any] = {"mode": mode}
    for key in MODE_STATS[mode]:
        arr = stats.get(f"{name}.{key}")
        if arr is None:
            problems.append(f"{name}: {mode_src} needs the {key!r} stat, absent from the stats file "
                            f"(re-save the processors with dataset stats)")
            return None
        out[key] = arr.astype("float32").tolist()
    if mode != "identity":
        out["eps"] = eps
    return out


def lerobot_problems(cfg: Dict[str, Any]) -> List[str]:
    p: List[str] = []
    if cfg.get("type") != "diffusion":
        p.append(f"config type is {cfg.get('type')!r}, expected 'diffusion' (only DiffusionPolicy imports)")
    if cfg.get("resize_shape") is not None:
        p.append(f"resize_shape {cfg['resize_shape']} is set: torchvision's antialiased resize is not "
                 f"reproduced (resize the images before the policy and set resize_shape null)")
    feats = dict(cfg.get("input_features") or {})
    for k, v in feats.items():
        if v.get("type") not in TYPES:
            p.append(f"input feature {k} has type {v.get('type')!r}, expected one of {TYPES}")
    if any(v.get("type") == "VISUAL" for v in feats.values()):
        if cfg.get("vision_backbone") not in BACKBONES:
            p.append(f"vision_backbone {cfg.get('vision_backbone')!r} is not supported (expected one of "
                     f"{sorted(BACKBONES)})")
        if not cfg.get("use_group_norm"):
            p.append("use_group_norm is false: BatchNorm backbones are not reproduced (train with "
                     "use_group_norm true)")
        if cfg.get("pretrained_backbone_weights"):
            p.append(f"pretrained_backbone_weights {cfg['pretrained_backbone_weights']!r} is set: not supported")
        crop = cfg.get("crop_shape")
        shp = next(v["shape"] for v in feats.values() if v.get("type") == "VISUAL")
        if crop is not None and (crop[0] > shp[1] or crop[1] > shp[2]):
            p.append(f"crop_shape {crop} is larger than the image {shp[1:]} (torchvision would pad): "
                     f"expected a crop within the image")
    if "observation.state" not in feats:
        p.append("no observation.state input feature (LeRobot requires one)")
    if cfg.get("prediction_type") not in ("epsilon", "sample"):
        p.append(f"prediction_type {cfg.get('prediction_type')!r}, expected 'epsilon' or 'sample'")
    if cfg.get("noise_scheduler_type") not in ("DDPM", "DDIM"):
        p.append(f"noise_scheduler_type {cfg.get('noise_scheduler_type')!r}, expected DDPM or DDIM")
    return p


def import_lerobot(src_dir, out, command: Optional[str] = None) -> Dict[str, Any]:
    src = Path(src_dir)
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{src}: no config.json; expected a LeRobot DiffusionPolicy folder "
                         f"(policy.save_pretrained(DIR) plus its pre/post processors)")
    cfg = json.loads(cfg_path.read_text())
    problems = lerobot_problems(cfg)
    if not (src / "model.safetensors").is_file():
        problems.append("model.safetensors is missing (expected the save_pretrained weights)")
    pre = _normalizer(src, PRE, "normalizer_processor", problems)
    post = _normalizer(src, POST, "unnormalizer_processor", problems)
    observations, action = [], None
    if pre is not None and post is not None and not problems:
        eps, nmap, stats = pre
        cam = 0
        for name, f in cfg["input_features"].items():
            e = {"name": name, "type": f["type"], "shape": list(f["shape"]),
                 "normalization": _norm_entry(name, f["type"], nmap, stats, eps, problems)}
            if f["type"] == "VISUAL":
                e["camera_index"] = cam
                cam += 1
            observations.append(e)
        peps, pmap, pstats = post
        af = cfg["output_features"]["action"]
        action = {"name": "action", "shape": list(af["shape"]),
                  "normalization": _norm_entry("action", "ACTION", pmap, pstats, peps, problems)}
    sched = None
    try:
        sched = schedule_from_diffusers({k: cfg.get(k) for k in (
            "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "clip_sample",
            "clip_sample_range", "prediction_type")}, source="config.json")
    except ValueError as e:
        problems.append(f"scheduler: {e}")
    if problems:
        raise ValueError(f"{src} cannot be deployed exactly: " + "; ".join(problems))

    enc, unet = build_lerobot(cfg)
    from safetensors.torch import load_file

    e_sd, u_sd = split_state_dict(load_file(str(src / "model.safetensors")))
    try:
        enc.load_state_dict(e_sd, strict=True)
        unet.load_state_dict(u_sd, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{src}/model.safetensors does not match config.json: "
                         f"{' '.join(str(e).split())}; re-save the policy") from e
    steps = cfg.get("num_inference_steps")
    sampling = None
    if cfg["noise_scheduler_type"] == "DDIM":
        sampling = {"binding": False, "method": "ddim", "steps": int(steps or cfg["num_train_timesteps"]),
                    "options": {"eta": 0.0, "variant": "diffusers"}, "source": "lerobot config"}
    elif steps is not None:
        sampling = {"binding": False, "method": "ddpm", "steps": int(steps), "options": {}}
    model_config = {"family": FAMILY_LEROBOT, "config": cfg, "sample_kind": "array",
                    "image_shape": [int(cfg["horizon"]), action_dim(cfg)],
                    "global_cond_dim": enc.global_cond_dim}
    provenance = {"command": command or f"ddpm_export.weights.import_lerobot({str(src)!r}, {str(out)!r})",
                  "source": str(src), "format": "lerobot", "network": "lerobot DiffusionConditionalUnet1d"}
    ckpt = _write_checkpoint_with_policy(out, model_config, sched, u_sd, provenance, sampling, {
        "format": FAMILY_LEROBOT, "encoder_state": {k: v.float().contiguous() for k, v in enc.state_dict().items()},
        "observations": observations, "action": action, "lerobot_config": cfg, "folder": str(src)})
    return ckpt


def _write_checkpoint_with_policy(out, model_config, sched, state, provenance, sampling, policy):
    from ddpm_export.model.checkpoint import save_checkpoint

    ckpt = _write_checkpoint(out, model_config, sched, {k: v.float().contiguous() for k, v in state.items()},
                             provenance, sampling)
    ckpt["policy"] = policy
    save_checkpoint(ckpt, out)
    return ckpt
