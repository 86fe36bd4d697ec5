"""Pieces shared by the two weight importers (:mod:`ddpm_export.weights.from_diffusers`
and :mod:`ddpm_export.weights.from_pesser`).

Reading a ``torch.save``'d file with the importers' error messages, checking that
what was read is a plain state_dict, casting it to float32, checking it against our
U-Net, and writing the resulting ddpm-export checkpoint. Nothing here knows about
either source format; :mod:`ddpm_export.weights` is the public face of all three.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from runtime.schedulers.schedule import ScheduleConfig

from ddpm_export.model.checkpoint import CheckpointError, load_state_dict_checked, save_checkpoint
from ddpm_export.model.config import UNetConfig
from ddpm_export.model.unet import UNet

StateDict = Dict[str, torch.Tensor]


def _first_line(e: BaseException) -> str:
    s = str(e)
    return s.splitlines()[0] if s else ""


def _check_tensors(obj: Any, path: Path, hint: str) -> StateDict:
    if not isinstance(obj, dict) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise ValueError(f"{path}: expected a state_dict (a dict of name -> tensor), got "
                         f"{type(obj).__name__}; {hint}")
    return obj


def _load_torch_file(path: Path) -> Any:
    """``torch.load`` a plain (weights-only) file on the CPU; ValueError if it cannot be read."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"{path}: cannot be read as a PyTorch state_dict ({type(e).__name__}: {_first_line(e)}); "
            f"the file is truncated, corrupt or not a plain state_dict: re-download it"
        ) from e


def _to_float32(sd: StateDict) -> StateDict:
    return {k: v.detach().to(torch.float32).contiguous().clone() for k, v in sd.items()}


def _as_schedule(schedule_config) -> ScheduleConfig:
    if isinstance(schedule_config, ScheduleConfig):
        return schedule_config
    if isinstance(schedule_config, dict):
        return ScheduleConfig.from_dict(schedule_config)
    raise TypeError(f"schedule_config must be a ScheduleConfig or a dict, got {type(schedule_config).__name__}")


def _validate(cfg: UNetConfig, state: StateDict, path, hint: str) -> None:
    model = UNet(cfg)
    try:
        load_state_dict_checked(model, state, path)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; {hint}") from e


def _write_checkpoint(out_path, cfg: Union[UNetConfig, Dict[str, Any]], sched: ScheduleConfig,
                      state: StateDict, provenance: Dict[str, Any],
                      sampling: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Save the imported weights as a ddpm-export checkpoint at ``out_path``; returns the dict.

    cfg: our UNetConfig, or an external network's model_config dict
    (:func:`ddpm_export.model.external.diffusers_model_config`). sampling: the manifest's
    ``sampling`` section the export will carry (runtime/contract.py), e.g. the non-binding
    default of a diffusers DDIMPipeline folder; None: none.
    """
    ckpt = {
        "model_config": cfg.to_dict() if isinstance(cfg, UNetConfig) else dict(cfg),
        "schedule_config": sched.to_dict(),
        "ema": state,
        "provenance": provenance,
    }
    if sampling is not None:
        ckpt["sampling"] = dict(sampling)
    save_checkpoint(ckpt, out_path)
    return ckpt


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot be read as JSON ({type(e).__name__}: {e}); re-download it") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}; re-download it")
    return d
