"""Import diffusers ``UNet2DModel`` weights into ddpm-export checkpoints.

The diffusers copy of the paper's CIFAR-10 model (``google/ddpm-cifar10-32``) is a
folder with ``config.json`` + ``diffusion_pytorch_model.safetensors`` (or ``.bin``),
and a ``scheduler_config.json`` beside them (or in a ``scheduler/`` sibling folder in
the pipeline layout). :func:`import_diffusers` reads it; :func:`config_from_diffusers`,
:func:`schedule_from_diffusers` (in :mod:`ddpm_export.weights.diffusers_schedule`, with
the pipeline's default sampling) and :func:`diffusers_to_ours` translate the pieces, and
:func:`config_to_diffusers` / :func:`ours_to_diffusers` go the other way.

Name mapping (table in docs/numerics.md, "Weight names"): ``time_embedding.linear_{1,2}`` <-> ``temb.dense.{0,1}``,
``conv_norm_out`` <-> ``norm_out``, ``down_blocks.i.resnets.j`` <-> ``down.i.block.j``
(``time_emb_proj`` <-> ``temb_proj``, ``conv_shortcut`` <-> ``nin_shortcut``),
``*.attentions.j.{group_norm,to_q,to_k,to_v,to_out.0}`` <-> ``*.attn.j.{norm,q,k,v,proj_out}``
(diffusers Linear ``[C, C]`` <-> our 1x1 Conv2d ``[C, C, 1, 1]``),
``down_blocks.i.downsamplers.0.conv`` <-> ``down.i.downsample.conv``,
``mid_block.{resnets.0,attentions.0,resnets.1}`` <-> ``mid.{block_1,attn_1,block_2}``,
``up_blocks.(L-1-i)`` <-> ``up.i`` (diffusers counts up blocks from the lowest
resolution, we index them by resolution level), ``upsamplers.0.conv`` <-> ``upsample.conv``.
The attention names of diffusers <= 0.13 (``query``, ``key``, ``value``, ``proj_attn``)
are read too.

A model our U-Net cannot express exactly (several attention heads, cos-first or
shifted sinusoids, padded downsampling, other block types, non-square...) is
imported as diffusers' own ``UNet2DModel`` instead (:mod:`ddpm_export.model.external`):
its state_dict is kept under diffusers' names, and exporting it needs diffusers.
The scheduler config is translated option by option (:func:`schedule_from_diffusers`,
:mod:`ddpm_export.weights.diffusers_schedule`);
nothing that changes the samples is guessed, and every refusal is one line listing
all its reasons. ``verify=True`` compares the result with diffusers itself
(:mod:`ddpm_export.weights.verify`).
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from runtime.io import sha256_file
from runtime.schedulers.schedule import ScheduleConfig

from ddpm_export.model.config import UNetConfig
from ddpm_export.weights.common import (
    StateDict,
    _as_schedule,
    _check_tensors,
    _first_line,
    _load_torch_file,
    _read_json,
    _to_float32,
    _validate,
    _write_checkpoint,
)
from ddpm_export.weights.diffusers_schedule import (  # noqa: F401 (schedule_from_diffusers: public here too)
    SCHEDULER_FILE,
    _pipeline_class,
    _resolve_schedule,
    default_sampling,
    schedule_from_diffusers,
)
from ddpm_export.model.unet import UNet

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
CONFIG_FILE = "config.json"

# ---------------------------------------------------------------------------
# state_dict name mapping
# ---------------------------------------------------------------------------

_RES_TO_OURS = {
    "norm1": "norm1",
    "conv1": "conv1",
    "time_emb_proj": "temb_proj",
    "norm2": "norm2",
    "conv2": "conv2",
    "conv_shortcut": "nin_shortcut",
}
_RES_TO_DIFFUSERS = {v: k for k, v in _RES_TO_OURS.items()}
_ATTN_TO_OURS = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
    # diffusers <= 0.13 (AttentionBlock); from_pretrained renames them the same way
    "query": "q",
    "key": "k",
    "value": "v",
    "proj_attn": "proj_out",
}
_ATTN_TO_DIFFUSERS = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_LINEAR_ATTN = ("q", "k", "v", "proj_out")  # Linear [C, C] in diffusers, 1x1 Conv2d in ours
_TOP_TO_OURS = {
    "time_embedding.linear_1": "temb.dense.0",
    "time_embedding.linear_2": "temb.dense.1",
    "conv_in": "conv_in",
    "conv_out": "conv_out",
    "conv_norm_out": "norm_out",
}
_TOP_TO_DIFFUSERS = {v: k for k, v in _TOP_TO_OURS.items()}
_MID_TO_OURS = {"resnets.0": "block_1", "resnets.1": "block_2", "attentions.0": "attn_1"}
_MID_TO_DIFFUSERS = {v: k for k, v in _MID_TO_OURS.items()}

_D_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)\.(weight|bias)$")
_D_SAMPLE = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(downsamplers|upsamplers)\.0\.conv\.(weight|bias)$")
_D_MID = re.compile(r"^mid_block\.(resnets\.\d+|attentions\.\d+)\.(.+)\.(weight|bias)$")
_D_TOP = re.compile(r"^(.+)\.(weight|bias)$")

_O_BLOCK = re.compile(r"^(down|up)\.(\d+)\.(block|attn)\.(\d+)\.(.+)\.(weight|bias)$")
_O_SAMPLE = re.compile(r"^(down|up)\.(\d+)\.(downsample|upsample)\.conv\.(weight|bias)$")
_O_MID = re.compile(r"^mid\.(block_1|block_2|attn_1)\.(.+)\.(weight|bias)$")


def _count_levels(keys, prefix: str) -> int:
    idx = set()
    pat = re.compile(r"^" + re.escape(prefix) + r"\.(\d+)\.")
    for k in keys:
        m = pat.match(k)
        if m:
            idx.add(int(m.group(1)))
    if not idx:
        raise ValueError(f"state_dict has no '{prefix}.N.*' parameters: not a DDPM U-Net state_dict")
    if idx != set(range(len(idx))):
        raise ValueError(f"state_dict '{prefix}' indices {sorted(idx)} are not 0..N-1")
    return len(idx)


def _put(out: Dict[str, Any], key: str, value, src_key: str, seen: Dict[str, str]) -> None:
    if key in out:
        raise ValueError(
            f"state_dict keys {seen[key]!r} and {src_key!r} both map to {key!r} "
            f"(old and new attention names mixed?)"
        )
    seen[key] = src_key
    out[key] = value


def _unknown(keys: List[str], what: str) -> ValueError:
    return ValueError(
        f"{len(keys)} {what} parameter(s) have no counterpart in the DDPM U-Net "
        f"(e.g. {keys[0]!r}); the model is not a plain DDPM UNet2DModel "
        f"(class embeddings, other block types?)"
    )


def diffusers_to_ours(state_dict: Dict[str, Any], num_levels: Optional[int] = None) -> Dict[str, Any]:
    """Rename a diffusers ``UNet2DModel`` state_dict to ours (pesser's names).

    ``num_levels`` (the number of resolution levels, ``len(block_out_channels)``) is
    read off the keys when omitted. Values are not copied; attention q/k/v/proj_out
    weights are reshaped from ``[C, C]`` to ``[C, C, 1, 1]`` (a view).
    Raises ValueError for keys that have no counterpart.
    """
    keys = list(state_dict)
    L = num_levels if num_levels is not None else _count_levels(keys, "down_blocks")
    out: Dict[str, Any] = {}
    seen: Dict[str, str] = {}
    unknown: List[str] = []
    for k in keys:
        v = state_dict[k]
        m = _D_BLOCK.match(k)
        if m:
            side, i, kind, j, name, wb = m.groups()
            level = int(i) if side == "down_blocks" else L - 1 - int(i)
            table = _RES_TO_OURS if kind == "resnets" else _ATTN_TO_OURS
            if name not in table or not 0 <= level < L:
                unknown.append(k)
                continue
            ours_name = table[name]
            if kind == "attentions" and ours_name in _LINEAR_ATTN and wb == "weight" and v.dim() == 2:
                v = v.reshape(v.shape[0], v.shape[1], 1, 1)
            stem = "down" if side == "down_blocks" else "up"
            sub = "block" if kind == "resnets" else "attn"
            _put(out, f"{stem}.{level}.{sub}.{j}.{ours_name}.{wb}", v, k, seen)
            continue
        m = _D_SAMPLE.match(k)
        if m:
            side, i, kind, wb = m.groups()
            if (side == "down_blocks") != (kind == "downsamplers"):
                unknown.append(k)
                continue
            level = int(i) if side == "down_blocks" else L - 1 - int(i)
            if not 0 <= level < L:
                unknown.append(k)
                continue
            stem, sub = ("down", "downsample") if side == "down_blocks" else ("up", "upsample")
            _put(out, f"{stem}.{level}.{sub}.conv.{wb}", v, k, seen)
            continue
        m = _D_MID.match(k)
        if m:
            part, name, wb = m.groups()
            table = _ATTN_TO_OURS if part.startswith("attentions") else _RES_TO_OURS
            if part not in _MID_TO_OURS or name not in table:
                unknown.append(k)
                continue
            ours_name = table[name]
            if part.startswith("attentions") and ours_name in _LINEAR_ATTN and wb == "weight" and v.dim() == 2:
                v = v.reshape(v.shape[0], v.shape[1], 1, 1)
            _put(out, f"mid.{_MID_TO_OURS[part]}.{ours_name}.{wb}", v, k, seen)
            continue
        m = _D_TOP.match(k)
        if m and m.group(1) in _TOP_TO_OURS:
            _put(out, f"{_TOP_TO_OURS[m.group(1)]}.{m.group(2)}", v, k, seen)
            continue
        unknown.append(k)
    if unknown:
        raise _unknown(unknown, "diffusers")
    return out


def ours_to_diffusers(state_dict: Dict[str, Any], num_levels: Optional[int] = None) -> Dict[str, Any]:
    """The inverse of :func:`diffusers_to_ours`: our names -> diffusers ``UNet2DModel`` names.

    Attention q/k/v/proj_out weights are squeezed from ``[C, C, 1, 1]`` to ``[C, C]``.
    The result loads into ``UNet2DModel(**config_to_diffusers(cfg))`` strictly.
    """
    keys = list(state_dict)
    L = num_levels if num_levels is not None else _count_levels(keys, "down")
    out: Dict[str, Any] = {}
    seen: Dict[str, str] = {}
    unknown: List[str] = []
    for k in keys:
        v = state_dict[k]
        m = _O_BLOCK.match(k)
        if m:
            side, i, kind, j, name, wb = m.groups()
            level = int(i)
            table = _RES_TO_DIFFUSERS if kind == "block" else _ATTN_TO_DIFFUSERS
            if name not in table or not 0 <= level < L:
                unknown.append(k)
                continue
            if kind == "attn" and name in _LINEAR_ATTN and wb == "weight" and v.dim() == 4:
                v = v.reshape(v.shape[0], v.shape[1])
            stem = "down_blocks" if side == "down" else "up_blocks"
            idx = level if side == "down" else L - 1 - level
            sub = "resnets" if kind == "block" else "attentions"
            _put(out, f"{stem}.{idx}.{sub}.{j}.{table[name]}.{wb}", v, k, seen)
            continue
        m = _O_SAMPLE.match(k)
        if m:
            side, i, kind, wb = m.groups()
            level = int(i)
            if (side == "down") != (kind == "downsample") or not 0 <= level < L:
                unknown.append(k)
                continue
            if side == "down":
                _put(out, f"down_blocks.{level}.downsamplers.0.conv.{wb}", v, k, seen)
            else:
                _put(out, f"up_blocks.{L - 1 - level}.upsamplers.0.conv.{wb}", v, k, seen)
            continue
        m = _O_MID.match(k)
        if m:
            part, name, wb = m.groups()
            table = _ATTN_TO_DIFFUSERS if part == "attn_1" else _RES_TO_DIFFUSERS
            if name not in table:
                unknown.append(k)
                continue
            if part == "attn_1" and name in _LINEAR_ATTN and wb == "weight" and v.dim() == 4:
                v = v.reshape(v.shape[0], v.shape[1])
            _put(out, f"mid_block.{_MID_TO_DIFFUSERS[part]}.{table[name]}.{wb}", v, k, seen)
            continue
        m = _D_TOP.match(k)
        if m and m.group(1) in _TOP_TO_DIFFUSERS:
            _put(out, f"{_TOP_TO_DIFFUSERS[m.group(1)]}.{m.group(2)}", v, k, seen)
            continue
        unknown.append(k)
    if unknown:
        raise _unknown(unknown, "ddpm-export")
    return out


# ---------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------

# UNet2DModel.__init__ defaults (diffusers 0.42): a key missing from config.json
# means diffusers builds the model with this value.
DIFFUSERS_UNET_DEFAULTS: Dict[str, Any] = {
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [224, 448, 672, 896],
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "num_train_timesteps": None,
}

_DOWN_TYPES = ("DownBlock2D", "AttnDownBlock2D")
_UP_TYPES = ("UpBlock2D", "AttnUpBlock2D")


def config_from_diffusers(
    config_json: Dict[str, Any], image_size: Optional[int] = None, source: str = "config.json"
) -> UNetConfig:
    """Translate a diffusers ``UNet2DModel`` config into our :class:`UNetConfig`.

    Raises ValueError, listing every setting our U-Net cannot express (several heads,
    cos-first or shifted sinusoids, padded downsampling, scale-shift norm, class
    embeddings, other block types...). ``image_size`` overrides (or supplies a missing)
    ``sample_size``; it only decides which levels are "attention resolutions".
    ``source`` names the file in the messages.
    """
    if not isinstance(config_json, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(config_json).__name__}")
    cls = config_json.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise ValueError(
            f"{source}: _class_name is {cls!r}; only diffusers UNet2DModel configs can be imported "
            f"(point SRC at the folder holding the UNet2DModel config.json, e.g. the 'unet/' folder)"
        )
    unknown = sorted(
        k for k in config_json
        if not k.startswith("_") and k not in DIFFUSERS_UNET_DEFAULTS and config_json[k] not in (None, False)
    )
    c = dict(DIFFUSERS_UNET_DEFAULTS)
    c.update({k: v for k, v in config_json.items() if not k.startswith("_")})

    problems: List[str] = []

    def need(cond: bool, msg: str) -> None:
        if not cond:
            problems.append(msg)

    if unknown:
        problems.append(f"unknown settings {unknown} (newer diffusers?); cannot tell whether they change the model")
    need(c["time_embedding_type"] == "positional",
         f"time_embedding_type={c['time_embedding_type']!r} (only 'positional' sinusoids)")
    need(c["flip_sin_to_cos"] is False, f"flip_sin_to_cos={c['flip_sin_to_cos']!r} (ours is sin first: needs false)")
    need(c["freq_shift"] == 1, f"freq_shift={c['freq_shift']!r} (ours divides by half-1: needs 1)")
    need(c["downsample_padding"] == 0,
         f"downsample_padding={c['downsample_padding']!r} (ours pads right/bottom by 1, TF 'SAME': needs 0)")
    need(c["downsample_type"] == "conv", f"downsample_type={c['downsample_type']!r} (needs 'conv')")
    need(c["upsample_type"] == "conv", f"upsample_type={c['upsample_type']!r} (needs 'conv')")
    need(c["act_fn"] in ("silu", "swish"), f"act_fn={c['act_fn']!r} (ours is swish/silu)")
    need(c["out_channels"] == c["in_channels"],
         f"out_channels={c['out_channels']!r} != in_channels={c['in_channels']!r} (ours predicts eps only)")
    need(not c["center_input_sample"], "center_input_sample=true (ours takes inputs already in [-1, 1])")
    need(c["resnet_time_scale_shift"] == "default",
         f"resnet_time_scale_shift={c['resnet_time_scale_shift']!r} (ours adds the time embedding: needs 'default')")
    need(c["class_embed_type"] is None and c["num_class_embeds"] is None,
         "class embeddings (class_embed_type/num_class_embeds): ours is unconditional")
    need(c["mid_block_type"] == "UNetMidBlock2D", f"mid_block_type={c['mid_block_type']!r} (needs 'UNetMidBlock2D')")
    need(c["add_attention"] is True, "add_attention=false (ours has attention in the middle block)")
    need(c["mid_block_scale_factor"] == 1, f"mid_block_scale_factor={c['mid_block_scale_factor']!r} (needs 1)")

    boc = list(c["block_out_channels"] or [])
    down = list(c["down_block_types"] or [])
    up = list(c["up_block_types"] or [])
    L = len(boc)
    ch = int(boc[0]) if boc else 0
    need(L >= 1 and all(isinstance(b, int) and b > 0 for b in boc), f"block_out_channels={boc!r}")
    ch_mult: Tuple[int, ...] = ()
    if L >= 1 and ch > 0:
        bad = [b for b in boc if not isinstance(b, int) or b % ch]
        need(not bad, f"block_out_channels={boc!r}: each must be a multiple of the first (ours: ch * ch_mult)")
        if not bad:
            ch_mult = tuple(b // ch for b in boc)
    need(len(down) == L and len(up) == L,
         f"{len(down)} down / {len(up)} up block types for {L} block_out_channels")
    need(all(t in _DOWN_TYPES for t in down), f"down_block_types={down!r} (only {list(_DOWN_TYPES)})")
    need(all(t in _UP_TYPES for t in up), f"up_block_types={up!r} (only {list(_UP_TYPES)})")
    attn_levels = [i for i, t in enumerate(down) if t == "AttnDownBlock2D"]
    if len(down) == L and len(up) == L:
        up_attn = sorted(L - 1 - i for i, t in enumerate(up) if t == "AttnUpBlock2D")
        need(up_attn == attn_levels,
             f"attention on the way down at levels {attn_levels} but up_block_types {up!r} put it at "
             f"levels {up_attn} on the way up (ours mirrors them: up_blocks[L-1-i] is Attn iff down_blocks[i] is)")
    hd = c["attention_head_dim"]
    if hd is not None:
        attn_channels = sorted({boc[i] for i in attn_levels if i < L} | ({boc[-1]} if boc else set()))
        need(all(hd == ch_ for ch_ in attn_channels),
             f"attention_head_dim={hd!r} gives several heads on {attn_channels} channels "
             f"(ours is single-head: needs null)")
    groups = c["norm_num_groups"]
    need(isinstance(groups, int) and groups > 0, f"norm_num_groups={groups!r} (needs an int)")
    need(c["attn_norm_num_groups"] in (None, groups),
         f"attn_norm_num_groups={c['attn_norm_num_groups']!r} != norm_num_groups={groups!r}")
    need(c["time_embedding_dim"] in (None, 4 * ch),
         f"time_embedding_dim={c['time_embedding_dim']!r} (ours is 4 * block_out_channels[0] = {4 * ch})")
    lpb = c["layers_per_block"]
    need(isinstance(lpb, int) and lpb >= 1, f"layers_per_block={lpb!r}")

    size = image_size if image_size is not None else c["sample_size"]
    if isinstance(size, (list, tuple)):
        need(len(size) == 2 and size[0] == size[1], f"sample_size={size!r} (ours is square)")
        size = size[0] if size else None
    if size is None:
        problems.append("sample_size is null: pass image_size=... (it decides the attention resolutions)")
    elif not isinstance(size, int) or size <= 0:
        problems.append(f"sample_size={size!r}")

    if problems:
        raise ValueError(
            f"{source}: this diffusers UNet2DModel cannot be expressed by the ddpm-export U-Net: "
            + "; ".join(problems)
        )
    dropout = float(c.get("dropout") or 0.0)
    try:
        return UNetConfig(
            image_size=int(size),
            in_channels=int(c["in_channels"]),
            ch=ch,
            ch_mult=ch_mult,
            num_res_blocks=int(lpb),
            attn_resolutions=tuple(int(size) // 2 ** i for i in attn_levels),
            dropout=dropout,
            num_groups=int(groups),
            norm_eps=float(c["norm_eps"]),
        )
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e


def config_to_diffusers(cfg: UNetConfig) -> Dict[str, Any]:
    """``UNet2DModel(**config_to_diffusers(cfg))`` is the diffusers twin of ``UNet(cfg)``."""
    L = len(cfg.ch_mult)
    res = [cfg.image_size // 2 ** i for i in range(L)]
    attn = [r in cfg.attn_resolutions for r in res]
    return {
        "sample_size": cfg.image_size,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.in_channels,
        "block_out_channels": [cfg.ch * m for m in cfg.ch_mult],
        "layers_per_block": cfg.num_res_blocks,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "attention_head_dim": None,
        "norm_num_groups": cfg.num_groups,
        "norm_eps": cfg.norm_eps,
        "act_fn": "silu",
        "flip_sin_to_cos": False,
        "freq_shift": 1,
        "downsample_padding": 0,
        "time_embedding_type": "positional",
        "dropout": cfg.dropout,
    }


# ---------------------------------------------------------------------------
# file reading
# ---------------------------------------------------------------------------

def _read_weights(path: Path) -> StateDict:
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # pragma: no cover - safetensors is a train extra
            raise ValueError(f"{path}: reading .safetensors needs the 'safetensors' package "
                             f"(pip install safetensors)") from e
        try:
            sd = load_file(str(path), device="cpu")
        except Exception as e:
            raise ValueError(
                f"{path}: cannot be read as safetensors ({type(e).__name__}: {_first_line(e)}); "
                f"the file is truncated or corrupt: re-download it (or use diffusion_pytorch_model.bin)"
            ) from e
    else:
        sd = _load_torch_file(path)
    return _check_tensors(sd, path, "re-download it")


def _locate_diffusers(src: Path) -> Tuple[Path, Path, Optional[Path]]:
    """-> (unet folder, weights file, scheduler_config.json or None)."""
    if src.is_file():
        if src.name == CONFIG_FILE or src.name.startswith("diffusion_pytorch_model"):
            src = src.parent
        else:
            raise ValueError(
                f"{src}: expected a diffusers folder (config.json + diffusion_pytorch_model.safetensors), "
                f"got a file; for a pesser .ckpt use --format pesser"
            )
    if not src.is_dir():
        raise ValueError(f"{src}: no such folder; pass the diffusers model folder "
                         f"(e.g. a download of google/ddpm-cifar10-32)")
    if (src / CONFIG_FILE).is_file():
        unet_dir = src
    elif (src / "unet" / CONFIG_FILE).is_file():
        unet_dir = src / "unet"
    else:
        raise ValueError(
            f"{src}: no {CONFIG_FILE} in it or in {src / 'unet'}; expected a diffusers UNet2DModel folder "
            f"(config.json + diffusion_pytorch_model.safetensors or .bin), e.g. "
            f"'huggingface-cli download google/ddpm-cifar10-32 --local-dir {src}'"
        )
    weights = next((unet_dir / w for w in WEIGHT_FILES if (unet_dir / w).is_file()), None)
    if weights is None:
        present = sorted(p.name for p in unet_dir.iterdir())
        raise ValueError(
            f"{unet_dir}: no weights file; expected {' or '.join(WEIGHT_FILES)} beside {CONFIG_FILE} "
            f"(found {present}); download the weights too (fp16 variants and sharded files are not read)"
        )
    candidates = [unet_dir / SCHEDULER_FILE, src / "scheduler" / SCHEDULER_FILE]
    if unet_dir.name == "unet":
        candidates += [unet_dir.parent / "scheduler" / SCHEDULER_FILE, unet_dir.parent / SCHEDULER_FILE]
    sched = next((p for p in candidates if p.is_file()), None)
    return unet_dir, weights, sched


# ---------------------------------------------------------------------------
# importer
# ---------------------------------------------------------------------------

def import_diffusers(
    src_dir,
    out_path,
    schedule_config: Union[ScheduleConfig, Dict[str, Any], None] = None,
    *,
    image_size: Union[int, Tuple[int, int], None] = None,
    network: str = "auto",
    verify: bool = False,
    verify_tol: float = 1e-4,
    verify_steps: int = 10,
    command: Optional[str] = None,
    null_label: Optional[int] = None,
) -> Dict[str, Any]:
    """Convert a diffusers ``UNet2DModel`` folder into a ddpm-export checkpoint at ``out_path``.

    A class-conditional UNet2DModel (``num_class_embeds``, any ``class_embed_type``) imports
    as diffusers' own network with a ``class_labels`` input (class_conditions);
    ``null_label``: the class index it was trained to read as "no label" (needed for
    guidance; diffusers' folders do not record it, so nothing is guessed).

    ``src_dir``: the folder with ``config.json`` + ``diffusion_pytorch_model.safetensors``
    (preferred) or ``.bin`` (``google/ddpm-cifar10-32`` has them at its root), a pipeline
    folder with a ``unet/`` subfolder, or that ``unet/`` folder.

    Schedule and prediction type: from the ``scheduler_config.json`` found beside the
    weights (or in ``scheduler/``). Without one, ``schedule_config`` is required (a
    ScheduleConfig, a dict of its fields naming at least kind, prediction and
    variance_type, or a diffusers scheduler config dict); nothing is guessed. Given
    both, they must agree.

    ``network``: "auto" (our U-Net where the state_dict mapping expresses the model
    exactly, else diffusers' own UNet2DModel behind the export contract), "ours" or
    "diffusers". ``image_size``: an int or (H, W) overriding ``sample_size``.
    ``verify=True`` (needs diffusers) rebuilds the imported model from the written
    checkpoint and compares it with diffusers' own ``UNet2DModel.from_pretrained`` at
    several t, and runs ``verify_steps`` DDPM steps through the runtime scheduler against
    ``DDPMPipeline`` from the same noise (and a DDIM default against ``DDIMPipeline``);
    raises, writing nothing, if eps differs by more than ``verify_tol`` or a chain by more
    than ``verify.CHAIN_TOL`` on [0, 1] images. The report is ``provenance["verify"]`` of
    the returned checkpoint dict.

    A ``DDIMPipeline`` folder (model_index.json) gets the non-binding ``sampling`` section
    of :func:`default_sampling` (DDIM at the pipeline's defaults), which the export carries,
    so the runtime's no-flag sampling is the pipeline's.
    """
    if network not in ("auto", "ours", "diffusers"):
        raise ValueError(f"network: received {network!r}, expected 'auto', 'ours' or 'diffusers'")
    src = Path(src_dir)
    unet_dir, weights_path, sched_path = _locate_diffusers(src)
    config_path = unet_dir / CONFIG_FILE
    config_json = _read_json(config_path)
    raw = _read_weights(weights_path)
    mapped_error: Optional[str] = None
    use_ours = network in ("auto", "ours")
    cfg: Any = None
    if null_label is not None and not _is_class_conditional(config_json):
        raise ValueError(f"{config_path}: null_label (--null-label) {null_label!r} is for class-conditional "
                         f"models (num_class_embeds / class_embed_type); this UNet2DModel is unconditional")
    if use_ours and _is_class_conditional(config_json) and network == "auto":
        use_ours, mapped_error = False, "class-conditional: imported as diffusers' own network"
    if use_ours:
        square = image_size if image_size is None or isinstance(image_size, int) else (
            image_size[0] if len(image_size) == 2 and image_size[0] == image_size[1] else list(image_size))
        try:
            cfg = config_from_diffusers(config_json, image_size=square, source=str(config_path))
        except ValueError as e:
            if network == "ours":
                raise
            use_ours, mapped_error = False, str(e)
    if use_ours:
        try:
            state = _to_float32(diffusers_to_ours(raw, num_levels=len(cfg.ch_mult)))
        except ValueError as e:
            raise ValueError(f"{weights_path}: {e}") from e
        _validate(cfg, state, weights_path, f"{config_path} and {weights_path.name} disagree: re-download both")
        model_config: Dict[str, Any] = cfg.to_dict()
        image_shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
        net_name = "ddpm_export UNet (diffusers weights renamed)"
    else:
        net_name = "diffusers.UNet2DModel"
        try:
            model_config, state = _native_model(config_json, raw, image_size, config_path, weights_path,
                                                null_label)
        except ValueError as e:
            # one line with every reason: the network's and the scheduler's
            raise ValueError(_with_schedule_problems(str(e), schedule_config, sched_path, src)) from e
        image_shape = tuple(model_config["image_shape"])
    sched, sched_json, schedule_source = _resolve_schedule(schedule_config, sched_path, src)
    pipeline_class = _pipeline_class(src, unet_dir)
    sampling = default_sampling(pipeline_class, sched_json)

    provenance: Dict[str, Any] = {
        "command": command or f"ddpm_export.weights.import_diffusers({str(src)!r}, {str(out_path)!r})",
        "source": str(src),
        "format": "diffusers",
        "network": net_name,
        "source_sha256": sha256_file(weights_path),
        "weights_file": str(weights_path),
        "config_file": str(config_path),
        "source_config": {k: v for k, v in config_json.items()},
        "scheduler_config": sched_json,
        "schedule_source": schedule_source,
        "diffusers_version": _diffusers_version(),
        "pipeline_class": pipeline_class,
    }
    if mapped_error is not None:
        provenance["why_diffusers_network"] = mapped_error
    ckpt = _write_checkpoint(out_path, model_config, sched, state, provenance, sampling)
    if verify:
        from ddpm_export.weights.verify import verify_import

        try:
            report = verify_import(out_path, unet_dir, sched, sched_json, image_shape,
                                   tol=verify_tol, steps=verify_steps, sampling=sampling)
        except Exception:
            Path(out_path).unlink(missing_ok=True)  # a checkpoint that failed verification is not kept
            raise
        ckpt["provenance"]["verify"] = report
        ckpt = _write_checkpoint(out_path, model_config, sched, state, ckpt["provenance"], sampling)
    return ckpt


def _with_schedule_problems(message: str, schedule_config, sched_path: Optional[Path], src: Path) -> str:
    try:
        _resolve_schedule(schedule_config, sched_path, src)
    except (TypeError, ValueError) as e:
        return f"{message}; and {e}"
    return message


def _diffusers_version() -> Optional[str]:
    try:
        import diffusers
    except ImportError:
        return None
    return diffusers.__version__


_OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_OLD_ATTN_KEY = re.compile(r"^(.*\.attentions\.\d+\.)(query|key|value|proj_attn)\.(weight|bias)$")


def _native_state(raw: StateDict) -> StateDict:
    """diffusers' current parameter names (from_pretrained renames diffusers <= 0.13's the same way)."""
    out: StateDict = {}
    for k, v in raw.items():
        m = _OLD_ATTN_KEY.match(k)
        if m:
            k = f"{m.group(1)}{_OLD_ATTENTION[m.group(2)]}.{m.group(3)}"
        if k in out:
            raise ValueError(f"state_dict has both old and new names for {k!r}: re-download the weights")
        out[k] = v
    return _to_float32(out)


def _is_class_conditional(config_json: Dict[str, Any]) -> bool:
    return config_json.get("class_embed_type") is not None or config_json.get("num_class_embeds") is not None


def class_conditions(d: Dict[str, Any], null_label: Optional[int]) -> Tuple[list, List[str]]:
    """The contract conditions of a UNet2DModel config (defaults filled in) and the reasons it
    cannot be deployed exactly. diffusers adds the class embedding to the time embedding:
      class_embed_type None, num_class_embeds K: nn.Embedding(K, ...): labels 0..K-1;
      "timestep": the labels go through the sinusoidal projection like t; any integer works
        there, so the label range is num_class_embeds, which must be set;
      "identity": class_labels are already embeddings, float32 [time_embed_dim]: a vector
        condition (no null form: guidance refused);
    the other class_embed_type values ("projection", "simple_projection") take a float vector of
    projection_class_embeddings_input_dim."""
    from runtime.contract import Condition

    kind, k = d.get("class_embed_type"), d.get("num_class_embeds")
    if kind is None and k is None:
        return [], ([] if null_label is None else [f"null_label={null_label!r} for an unconditional model"])
    name, problems = "class_labels", []
    if kind in (None, "timestep"):
        if not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
            return [], [f"class_embed_type={kind!r} with num_class_embeds={k!r} (expected the number of "
                        f"classes, an int >= 1: it is the range of the labels)"]
        if null_label is not None and not (isinstance(null_label, int) and 0 <= null_label < k):
            return [], [f"null_label={null_label!r} (expected a class index in [0, {k - 1}]: diffusers has no "
                        f"extra null row, a model trained for guidance reserves one of its num_class_embeds={k})"]
        return [Condition(name, "class_label", (), k, null_label)], []
    dim = (d.get("block_out_channels") or [0])[0] * 4 if d.get("time_embedding_dim") is None         else d.get("time_embedding_dim")
    if kind == "identity":
        if null_label is not None:
            problems.append("null_label with class_embed_type='identity' (its class_labels are embedding "
                            "vectors, not indices)")
        return [Condition(name, "vector", (int(dim),), None, None)], problems
    if kind in ("projection", "simple_projection"):
        pdim = d.get("projection_class_embeddings_input_dim")
        if not isinstance(pdim, int) or pdim < 1:
            return [], [f"class_embed_type={kind!r} with projection_class_embeddings_input_dim={pdim!r}"]
        if null_label is not None:
            problems.append(f"null_label with class_embed_type={kind!r} (its class_labels are vectors)")
        return [Condition(name, "vector", (pdim,), None, None)], problems
    return [], [f"class_embed_type={kind!r} (supported: None, 'timestep', 'identity', 'projection', "
                f"'simple_projection')"]


def _native_model(config_json: Dict[str, Any], raw: StateDict, image_size, config_path: Path,
                  weights_path: Path, null_label: Optional[int] = None) -> Tuple[Dict[str, Any], StateDict]:
    """The checkpoint model_config and state of diffusers' own UNet2DModel; refuses what the
    export contract cannot carry, listing every reason in one line."""
    try:
        from diffusers import UNet2DModel
    except ImportError as e:
        raise ValueError(
            f"{config_path}: this UNet2DModel is not expressible by the ddpm-export U-Net, and importing it "
            f"as diffusers' own network needs diffusers: pip install diffusers") from e
    import inspect

    from ddpm_export.model.checkpoint import CheckpointError, load_state_dict_checked
    from ddpm_export.model.external import DiffusersUNet, diffusers_model_config

    c = {k: v for k, v in config_json.items() if not k.startswith("_")}
    params = inspect.signature(UNet2DModel.__init__).parameters
    problems: List[str] = []
    unknown = sorted(k for k in c if k not in params)
    if unknown:
        problems.append(f"unknown settings {unknown} for the installed diffusers {_diffusers_version()} "
                        f"(upgrade diffusers: they may change the model)")
    d = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    d.update(c)
    if d.get("out_channels") != d.get("in_channels"):
        problems.append(f"out_channels={d.get('out_channels')!r} != in_channels={d.get('in_channels')!r} "
                        f"(supported: equal; a learned variance or other extra outputs are not part of the "
                        f"export contract)")
    conditions, why = class_conditions(d, null_label)
    problems += why
    if d.get("time_embedding_type", "positional") != "positional":
        problems.append(f"time_embedding_type={d.get('time_embedding_type')!r} (supported: 'positional'; "
                        f"'fourier' models are score-SDE networks conditioned on a noise level, not on t)")
    size = image_size if image_size is not None else d.get("sample_size")
    if isinstance(size, int) and not isinstance(size, bool):
        hw: Optional[Tuple[int, int]] = (size, size)
    elif isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) for v in size):
        hw = (int(size[0]), int(size[1]))
    else:
        hw = None
        problems.append(f"sample_size={size!r} (expected an int or [H, W]; pass image_size=... / --image-size)")
    levels = len(d.get("block_out_channels") or ())
    if hw is not None and levels and any(v <= 0 or v % 2 ** (levels - 1) for v in hw):
        problems.append(f"image size {list(hw)} (supported: H and W positive multiples of "
                        f"2**(levels-1) = {2 ** (levels - 1)} for {levels} levels)")
    if problems:
        raise ValueError(f"{config_path}: this diffusers UNet2DModel cannot be deployed: " + "; ".join(problems))
    model_config = diffusers_model_config(config_json, (int(d["in_channels"]), *hw), conditions)
    try:
        state = _native_state(raw)
    except ValueError as e:
        raise ValueError(f"{weights_path}: {e}") from e
    net = UNet2DModel.from_config({k: v for k, v in config_json.items()})
    wrapped = DiffusersUNet(net, model_config["image_shape"], conditions)
    try:
        load_state_dict_checked(wrapped.net, state, weights_path)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; {config_path} and {weights_path.name} disagree: re-download both") from e
    return model_config, state
