"""Import pesser/pytorch_diffusion ``.ckpt`` files into ddpm-export checkpoints.

pesser's PyTorch port of the paper's TensorFlow code (``ema_diffusion_cifar10_model/
model-790000.ckpt``) saves a plain ``torch.save``'d state_dict that already uses our
parameter names and carries no config: :func:`import_pesser` takes the U-Net shape
from a preset, checks every shape strictly, and writes the checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Union

from runtime.io import sha256_file
from runtime.schedulers.schedule import ScheduleConfig

from ddpm_export.model.config import PRESETS, UNetConfig
from ddpm_export.weights.common import _as_schedule, _check_tensors, _load_torch_file, _to_float32, _validate, _write_checkpoint


def import_pesser(
    src_file,
    out_path,
    preset: Union[str, UNetConfig] = "cifar10",
    *,
    schedule_config: Union[ScheduleConfig, Dict[str, Any], None] = None,
    command: Optional[str] = None,
) -> Dict[str, Any]:
    """Convert a pesser/pytorch_diffusion ``.ckpt`` (a plain state_dict with our names)
    into a ddpm-export checkpoint at ``out_path``.

    The file carries no config: the U-Net shape comes from ``preset`` (a preset name or
    a UNetConfig; default the paper's cifar10) and every shape is checked strictly. The
    schedule is ``schedule_config`` or the default ScheduleConfig (linear 1e-4..0.02,
    T=1000, fixedlarge, clip), which is the CIFAR-10 setting. Returns the checkpoint dict.
    """
    src = Path(src_file)
    if isinstance(preset, UNetConfig):
        cfg, preset_name = preset, None
    else:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
        cfg, preset_name = PRESETS[preset].unet, preset
    if not src.is_file():
        raise ValueError(
            f"{src}: no such file; pass the pesser/pytorch_diffusion checkpoint "
            f"(e.g. ema_diffusion_cifar10_model/model-790000.ckpt)"
        )
    obj = _load_torch_file(src)
    if isinstance(obj, dict) and isinstance(obj.get("format"), str) and obj["format"].startswith("ddpm-export"):
        raise ValueError(f"{src}: already a ddpm-export checkpoint; use it directly, no import needed")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    sd = _check_tensors(obj, src, "expected pesser/pytorch_diffusion's model-*.ckpt")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    state = _to_float32(sd)
    which = f"preset {preset_name!r}" if preset_name else "the given UNetConfig"
    _validate(cfg, state, src, f"it was not made for {which}: pass the matching preset "
                               f"(one of {sorted(PRESETS)}) or UNetConfig")
    sched = _as_schedule(schedule_config) if schedule_config is not None else ScheduleConfig()
    provenance = {
        "command": command or f"ddpm_export.weights.import_pesser({str(src)!r}, {str(out_path)!r})",
        "source": str(src),
        "format": "pesser",
        "source_sha256": sha256_file(src),
        "preset": preset_name,
    }
    return _write_checkpoint(out_path, cfg, sched, state, provenance)
