"""Checkpoints: one ``torch.save`` dict, written atomically, validated on load.

Layout (``format: ddpm-export/1``)::

    model_config     UNetConfig.to_dict()      -> rebuilds the model alone
    schedule_config  ScheduleConfig.to_dict()
    ema              EMA weights (used by sampling and export)
    model            raw weights (training checkpoints only)
    optimizer, step, rng, train_config, train_state  (training checkpoints only)
    provenance       how it was made (command, seed, steps, source files)

Loading never runs code: ``torch.load(weights_only=True)``, which admits only
tensors and plain containers (dict, list, tuple, str, int, float, bool, None).
Everything a checkpoint holds is of those types (the RNG states are uint8
tensors, the configs plain dicts); ``save_checkpoint`` checks it. One type more is
allowed by name: ``TorchVersion``, a ``str`` subclass that checkpoints written
before this rule carried in ``provenance["torch"]`` (the shipped
``engines/digits.pt`` among them). Anything else is refused with the command that
converts a file you trust: ``ddpm-export convert-checkpoint OLD.pt NEW.pt --trust-pickle``.

A ``.safetensors`` file (``ddpm-export convert-checkpoint X.pt X.safetensors``) is
the shareable form: the EMA weights, with the configs and provenance as JSON in
its header. It loads everywhere a sampling checkpoint does.
"""
from __future__ import annotations

import json
import os
import re
from collections import OrderedDict as OrderedDictType
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from torch.torch_version import TorchVersion

from runtime.io import atomic_write
from runtime.schedulers.schedule import ScheduleConfig

from ddpm_export.model.config import UNetConfig
from ddpm_export.model.external import build_external, is_external_config, weights_module
from ddpm_export.model.unet import UNet

FORMAT = "ddpm-export/1"
SAFETENSORS_SUFFIX = ".safetensors"

# The exact types beyond weights_only's defaults that a checkpoint may hold: old files
# carry torch.__version__ (a str subclass, rebuilt from one str) in their provenance.
SAFE_GLOBALS = (TorchVersion,)


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged or of another architecture."""


def plain(obj: Any, where: str = "checkpoint") -> Any:
    """obj with every value of a type that a weights-only load admits: tensors, dict, list,
    tuple, str, int, float, bool, None. Subclasses of str/int/float (torch.__version__,
    numpy scalars) and paths become the plain type; anything else raises TypeError."""
    if obj is None or isinstance(obj, (torch.Tensor, bool)):
        return obj
    if isinstance(obj, dict):  # OrderedDict (state dicts) stays: weights_only admits it
        items = ((k, plain(v, f"{where}[{k!r}]")) for k, v in obj.items())
        if not isinstance(obj, OrderedDictType):
            return dict(items)
        out = OrderedDictType(items)
        if getattr(obj, "_metadata", None) is not None:  # a state dict's module versions
            out._metadata = plain(obj._metadata, f"{where}._metadata")  # type: ignore[attr-defined]
        return out
    if isinstance(obj, (list, tuple)):
        out = [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return tuple(out) if isinstance(obj, tuple) else out
    for kind in (str, int, float):
        if isinstance(obj, kind):
            return kind(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():  # numpy scalar
        return plain(obj.item(), where)
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; a checkpoint holds only "
        f"tensors and plain values (dict, list, tuple, str, int, float, bool, None) so that "
        f"loading it never runs code: store it as one of those"
    )


def save_checkpoint(ckpt: Dict[str, Any], path) -> None:
    ckpt = plain(dict(ckpt))
    ckpt.setdefault("format", FORMAT)
    atomic_write(Path(path), lambda tmp: torch.save(ckpt, tmp))


def _torch_load_weights_only(path: Path, map_location) -> Any:
    """torch.load(weights_only=True) with SAFE_GLOBALS admitted; raises what torch raises."""
    context = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    if context is not None:
        with context(list(SAFE_GLOBALS)):
            return torch.load(path, map_location=map_location, weights_only=True)
    add = getattr(torch.serialization, "add_safe_globals", None)  # torch 2.4
    if add is not None:
        add(list(SAFE_GLOBALS))
    return torch.load(path, map_location=map_location, weights_only=True)


def _refused_global(e: Exception) -> str:
    """'module.name' of the global that torch's weights-only load refused, or '' when e is
    another failure (a truncated or foreign file)."""
    m = re.search(r"GLOBAL\s+([\w.]+)|(?:Unsupported class|Trying to call reduce for)\s+([\w.]+)", str(e))
    return (m.group(1) or m.group(2)) if m else ""


def _reason(e: Exception) -> str:
    """The one line of an exception that says what went wrong (torch's weights-only
    errors put it after several lines of general advice)."""
    skip = ("Weights only load failed", "Check the documentation", "Please file an issue")
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith(skip)]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def convert_command(path) -> str:
    return f"ddpm-export convert-checkpoint {path} NEW.pt --trust-pickle"


def load_checkpoint(path, map_location="cpu") -> Dict[str, Any]:
    """Load and check a ddpm-export checkpoint (.pt or .safetensors) without running code;
    raises CheckpointError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(
            f"{path}: no such checkpoint file; pass a .pt written by 'ddpm-export train' "
            f"or 'ddpm-export import', or a .safetensors from 'ddpm-export convert-checkpoint'"
        )
    if p.suffix == SAFETENSORS_SUFFIX:
        ckpt = load_safetensors(p, map_location)
    else:
        try:
            ckpt = _torch_load_weights_only(p, map_location)
        except Exception as e:
            refused = _refused_global(e)
            if refused:
                raise CheckpointError(
                    f"{path}: refused: the file holds a pickled Python object ({refused}), not only "
                    f"tensors and plain values, and unpickling it could run code; if you trust where "
                    f"the file came from, convert it once with '{convert_command(path)}'"
                ) from None
            raise _unreadable(path, e) from e
    _check(ckpt, path)
    return ckpt


def _unreadable(path, e: Exception) -> CheckpointError:
    return CheckpointError(
        f"{path}: cannot be read as a checkpoint ({_reason(e)}); "
        f"the file is truncated or not a PyTorch checkpoint: re-copy it or train again"
    )


def _check(ckpt: Any, path) -> None:
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


# --- the shareable form: safetensors, configs as JSON in its header -----------------

_JSON_KEYS = ("model_config", "schedule_config", "provenance", "train_config")


def save_safetensors(ckpt: Dict[str, Any], path, weights: str = "ema") -> None:
    """The sampling weights (EMA by default) of ckpt as one .safetensors file; the configs,
    step and provenance go into its header as JSON. Written atomically."""
    from safetensors.torch import save_file

    key = weights if weights in ckpt else ("ema" if "ema" in ckpt else "model")
    state = {k: v.detach().to("cpu").contiguous() for k, v in ckpt[key].items()}
    meta = {"format": FORMAT, "weights": key}
    for k in _JSON_KEYS:
        if ckpt.get(k) is not None:
            meta[k] = json.dumps(plain(ckpt[k], k))
    if ckpt.get("step") is not None:
        meta["step"] = str(int(ckpt["step"]))
    atomic_write(Path(path), lambda tmp: save_file(state, tmp, metadata=meta))


def load_safetensors(path, map_location="cpu") -> Dict[str, Any]:
    """A .safetensors from save_safetensors as a sampling checkpoint dict (weights under 'ema')."""
    try:
        from safetensors import safe_open
    except ImportError:
        raise CheckpointError(
            f"{path}: reading .safetensors needs the safetensors package: pip install safetensors"
        ) from None
    device = "cpu" if map_location is None else str(map_location)
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("format") != FORMAT:
            return {"format": meta.get("format")}  # _check names it
        ckpt: Dict[str, Any] = {"format": FORMAT, "ema": state}
        for k in _JSON_KEYS:
            if k in meta:
                ckpt[k] = json.loads(meta[k])
        if "step" in meta:
            ckpt["step"] = int(meta["step"])
    except Exception as e:
        raise _unreadable(path, e) from e
    return ckpt


def convert_checkpoint(src, dst, trust_pickle: bool = False, weights: str = "ema") -> Dict[str, Any]:
    """Rewrite src as a checkpoint that loads weights-only: dst.pt (the full training state,
    for --resume) or dst.safetensors (the shareable sampling weights).

    trust_pickle=True reads src with a full unpickle, which runs whatever code the file
    carries: only for a file whose origin you trust (an old checkpoint of your own). The
    result is checked by loading it back weights-only. Returns the checkpoint written."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise CheckpointError(f"{dst}: the output would overwrite the input; choose another NEW path")
    if trust_pickle and src.suffix != SAFETENSORS_SUFFIX:
        if not src.is_file():
            load_checkpoint(src)  # raises 'no such checkpoint file'
        try:
            ckpt = torch.load(src, map_location="cpu", weights_only=False)
        except Exception as e:
            raise _unreadable(src, e) from e
        _check(ckpt, src)
    else:
        ckpt = load_checkpoint(src)
    try:
        if dst.suffix == SAFETENSORS_SUFFIX:
            save_safetensors(ckpt, dst, weights)
        else:
            save_checkpoint(ckpt, dst)
    except TypeError as e:
        raise CheckpointError(f"{src}: cannot be converted: {e}") from e
    load_checkpoint(dst)  # proves the new file loads without unpickling objects
    return ckpt


def build_model(
    ckpt: Dict[str, Any], path="checkpoint", weights: str = "ema"
) -> Tuple[UNet, UNetConfig, ScheduleConfig]:
    """Rebuild the model a checkpoint describes and load its weights (EMA by default).

    A ``model_config`` with a ``family`` key is a wrapped external network
    (:mod:`ddpm_export.model.external`, e.g. diffusers' UNet2DModel): the model is an
    ``ExternalDenoiser`` and the config its ``ExternalConfig``.
    """
    try:
        schedule = ScheduleConfig.from_dict(ckpt["schedule_config"])
        if is_external_config(ckpt["model_config"]):
            model = build_external(ckpt["model_config"])
            config = model.config
        else:
            config = UNetConfig.from_dict(ckpt["model_config"])
            model = UNet(config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid model or schedule config: {e}") from e
    key = weights if weights in ckpt else ("ema" if "ema" in ckpt else "model")
    # an external network's state_dict uses its own names (e.g. diffusers')
    load_state_dict_checked(weights_module(model), ckpt[key], path)
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
