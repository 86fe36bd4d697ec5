"""Checkpoints: one ``torch.save`` dict, written atomically, validated on load.

Layout (``format: ddpm-export/1``)::

    model_config     UNetConfig.to_dict()      -> rebuilds the model alone
    schedule_config  ScheduleConfig.to_dict()
    ema              EMA weights (used by sampling and export)
    model            raw weights (training checkpoints only)
    optimizer, step, rng, train_config, train_state  (training checkpoints only)
    provenance       how it was made (command, seed, steps, source files)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import torch

from runtime.io import atomic_write
from runtime.schedulers.schedule import ScheduleConfig

from ddpm_export.model.config import UNetConfig
from ddpm_export.model.unet import UNet

FORMAT = "ddpm-export/1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged or of another architecture."""


def save_checkpoint(ckpt: Dict[str, Any], path) -> None:
    ckpt = dict(ckpt)
    ckpt.setdefault("format", FORMAT)
    atomic_write(Path(path), lambda tmp: torch.save(ckpt, tmp))


def load_checkpoint(path, map_location="cpu") -> Dict[str, Any]:
    """Load and check a ddpm-export checkpoint; raises CheckpointError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(
            f"{path}: no such checkpoint file; pass a .pt written by 'ddpm-export train' "
            f"or 'ddpm-export import'"
        )
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=False)
    except Exception as e:
        raise CheckpointError(
            f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"the file is truncated or not a PyTorch checkpoint: re-copy it or train again"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path}: not a ddpm-export checkpoint (format {found!r}, expected {FORMAT!r}); "
            f"convert foreign weights with 'ddpm-export import --format diffusers|pesser'"
        )
    for key in ("model_config", "schedule_config"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint has no {key!r}; it is damaged, train again")
    if "ema" not in ckpt and "model" not in ckpt:
        raise CheckpointError(f"{path}: checkpoint holds no weights ('ema' or 'model')")
    return ckpt


def build_model(
    ckpt: Dict[str, Any], path="checkpoint", weights: str = "ema"
) -> Tuple[UNet, UNetConfig, ScheduleConfig]:
    """Rebuild the model a checkpoint describes and load its weights (EMA by default)."""
    try:
        config = UNetConfig.from_dict(ckpt["model_config"])
        schedule = ScheduleConfig.from_dict(ckpt["schedule_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid model or schedule config: {e}") from e
    model = UNet(config)
    key = weights if weights in ckpt else ("ema" if "ema" in ckpt else "model")
    load_state_dict_checked(model, ckpt[key], path)
    model.eval()
    return model, config, schedule


def load_state_dict_checked(model: torch.nn.Module, state: Dict[str, torch.Tensor], path) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} of another shape (e.g. {wrong[0]})")
        raise CheckpointError(
            f"{path}: weights do not fit the model architecture: {'; '.join(parts)}; "
            f"the checkpoint was made for another model config"
        )
    model.load_state_dict(state)


def load_model(path, weights: str = "ema", map_location="cpu") -> Tuple[UNet, Dict[str, Any]]:
    ckpt = load_checkpoint(path, map_location)
    model, _, _ = build_model(ckpt, path, weights)
    return model, ckpt


def slim(ckpt: Dict[str, Any]) -> Dict[str, Any]:
    """A sampling-only copy: configs, EMA weights and provenance (no optimizer)."""
    keep = ("format", "model_config", "schedule_config", "ema", "step", "provenance", "train_config")
    out = {k: ckpt[k] for k in keep if k in ckpt}
    if "ema" not in out:
        out["ema"] = ckpt["model"]
    return out
