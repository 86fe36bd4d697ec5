"""Networks that are not our U-Net, behind the same export contract.

The contract (``runtime.contract``) is ``x_t`` float32 [N, C, H, W], ``t`` int32 [N]
-> one float32 tensor of x_t's shape, whose meaning is the schedule's
``prediction`` (eps, x0 or v). Any ``torch.nn.Module`` with that signature can be
exported: :class:`ExternalDenoiser` wraps it, and gives the export, its FP16
islands and the validation what they need (the image shape, which submodules
stay float32).

:class:`DiffusersUNet` is diffusers' own ``UNet2DModel`` behind that wrapper, so
every block type, head size, sinusoid order, padding and norm setting of a
diffusers model is exported exactly as diffusers computes it. A checkpoint
holding one has ``model_config = {"family": "diffusers.UNet2DModel", "config":
{...UNet2DModel config...}, "image_shape": [C, H, W]}`` and diffusers' own
parameter names; :func:`build_external` rebuilds it (diffusers needed).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

FAMILY_DIFFUSERS = "diffusers.UNet2DModel"
FAMILY_MODULE = "torch.nn.Module"
PREDICTIONS = ("eps", "x0", "v")


@dataclass(frozen=True)
class ExternalConfig:
    """What the export needs to know about a wrapped network: its family and image shape."""

    family: str
    image_shape: Tuple[int, ...]  # C, H, W for images; any rank for an array model

    @property
    def in_channels(self) -> int:
        return int(self.image_shape[0])

    @property
    def image_size(self) -> Optional[int]:
        """H for square images, None otherwise (code that needs a square size must check)."""
        if len(self.image_shape) != 3:
            return None
        _, h, w = self.image_shape
        return int(h) if h == w else None

    def to_dict(self) -> Dict[str, Any]:
        return {"family": self.family, "image_shape": [int(v) for v in self.image_shape]}


def check_sample_shape(sample_shape: Any) -> Tuple[int, ...]:
    """A per-sample shape of any rank >= 1 (an array model's: [C, L], [horizon, action_dim])."""
    try:
        shape = tuple(int(v) for v in sample_shape)
    except (TypeError, ValueError):
        shape = ()
    if not shape or min(shape) < 1 or any(isinstance(v, bool) or int(v) != v for v in sample_shape):
        raise ValueError(f"sample_shape: received {sample_shape!r}, expected positive ints, e.g. (16, 2)")
    return shape


def check_image_shape(image_shape: Any) -> Tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in image_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1 or any(
            isinstance(v, bool) or int(v) != v for v in image_shape):
        raise ValueError(f"image_shape: received {image_shape!r}, expected (C, H, W) positive ints, "
                         f"e.g. (3, 32, 32)")
    return shape  # type: ignore[return-value]


class ExternalDenoiser(nn.Module):
    """Any module ``net(x_t, t) -> tensor like x_t`` as a contract model.

    ``t`` reaches ``net`` as float32 (exact for every t < 2**24), so the graph's int32
    input is cast once and the network's own embedding runs in float32.
    ``fp32_modules``: dotted names of submodules of ``net`` that an FP16 export keeps in
    float32 (their inputs are cast up, their outputs down), typically the timestep
    embedding; GroupNorm/LayerNorm, softmax and scaled-dot-product attention are kept
    in float32 everywhere without being named.
    """

    def __init__(self, net: nn.Module, image_shape: Sequence[int], family: str = FAMILY_MODULE,
                 fp32_modules: Sequence[str] = (), conditions: Sequence[Any] = (),
                 sample_kind: Optional[str] = None):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net: received {type(net).__name__}, expected a torch.nn.Module "
                            f"called as net(x_t, t)")
        self.net = net
        from runtime.contract import Condition  # the contract's own type, validated

        self.conditions = tuple(c if isinstance(c, Condition) else Condition.from_dict(c, f"conditions[{i}]")
                                for i, c in enumerate(conditions))
        for c in self.conditions:
            if c.problems():
                raise ValueError(f"conditions: {c.name!r}: {'; '.join(c.problems())}")
        self.sample_kind = sample_kind or "image"
        shape = check_image_shape(image_shape) if self.sample_kind == "image" else check_sample_shape(image_shape)
        self.config = ExternalConfig(family, shape)
        names = dict(net.named_modules())
        missing = [n for n in fp32_modules if n not in names]
        if missing:
            raise ValueError(f"fp32_modules: {missing} are not submodules of {type(net).__name__} "
                             f"(it has e.g. {sorted(n for n in names if n and '.' not in n)[:8]})")
        self.fp32_modules = tuple(fp32_modules)

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        return self.config.image_shape

    def call_net(self, x_t: torch.Tensor, t: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        return self.net(x_t, t, **cond)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        """cond: the condition inputs in ``self.conditions``' order (positional, so that the
        exporter traces them as graph inputs); the network gets them by name."""
        if len(cond) != len(self.conditions):
            raise ValueError(f"{type(self.net).__name__}: received {len(cond)} condition inputs, expected "
                             f"{len(self.conditions)} ({[c.name for c in self.conditions]})")
        out = self.call_net(x_t, t.to(torch.float32), **{c.name: v for c, v in zip(self.conditions, cond)})
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"{type(self.net).__name__}(x_t, t) returned {type(out).__name__}; expected "
                            f"a tensor of x_t's shape (wrap the module so it returns the prediction)")
        return out


class DiffusersUNet(ExternalDenoiser):
    """diffusers ``UNet2DModel`` -> ``.sample``; the timestep embedding is its FP32 island.
    conditions: ``(Condition("class_labels", ...),)`` for a class-conditional model."""

    def __init__(self, net: nn.Module, image_shape: Optional[Sequence[int]] = None,
                 conditions: Sequence[Any] = ()):
        cfg = net.config
        if image_shape is None:
            size = cfg.sample_size
            h, w = (size, size) if isinstance(size, int) else tuple(size)
            image_shape = (cfg.in_channels, h, w)
        if int(cfg.out_channels) != int(image_shape[0]):
            raise ValueError(f"UNet2DModel has in_channels={cfg.in_channels}, out_channels={cfg.out_channels}: "
                             f"a denoiser predicts a tensor of x_t's shape (out_channels == in_channels; "
                             f"a learned variance doubles out_channels and is not supported)")
        super().__init__(net, image_shape, FAMILY_DIFFUSERS, fp32_modules=("time_embedding",),
                         conditions=conditions)

    def call_net(self, x_t: torch.Tensor, t: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        return self.net(x_t, t, **cond).sample


def diffusers_model_config(config: Dict[str, Any], image_shape: Sequence[int],
                           conditions: Sequence[Any] = ()) -> Dict[str, Any]:
    """The checkpoint ``model_config`` of a diffusers UNet2DModel (``conditions``: their
    runtime.contract.Condition dicts, for a class-conditional model)."""
    d = {"family": FAMILY_DIFFUSERS, "config": dict(config),
         "image_shape": [int(v) for v in check_image_shape(image_shape)]}
    if conditions:
        d["conditions"] = [c if isinstance(c, dict) else c.to_dict() for c in conditions]
    return d


def is_external_config(model_config: Any) -> bool:
    return isinstance(model_config, dict) and "family" in model_config


def build_external(model_config: Dict[str, Any]) -> ExternalDenoiser:
    """The (untrained) network a checkpoint's external ``model_config`` describes."""
    family = model_config.get("family")
    if family == "lerobot.DiffusionPolicy":
        from ddpm_export.model.lerobot_diffusion import build_lerobot_denoiser

        return build_lerobot_denoiser(model_config).eval()
    if family != FAMILY_DIFFUSERS:
        raise ValueError(f"model_config family {family!r} cannot be rebuilt from a checkpoint "
                         f"(only {FAMILY_DIFFUSERS!r}); export such a network from Python with "
                         f"ddpm_export.export.export_module")
    try:
        from diffusers import UNet2DModel
    except ImportError as e:
        raise ValueError("this checkpoint holds a diffusers UNet2DModel: install diffusers "
                         "(pip install diffusers) to load it") from e
    net = UNet2DModel.from_config(dict(model_config["config"]))
    return DiffusersUNet(net, model_config["image_shape"], model_config.get("conditions", ())).eval()


def weights_module(model: nn.Module) -> nn.Module:
    """The module whose state_dict a checkpoint stores and hooks walk: a wrapped network's own
    (diffusers' names, as the import writes them), else the model itself."""
    return model.net if isinstance(model, ExternalDenoiser) else model


def image_shape_of(model: nn.Module) -> Tuple[int, int, int]:
    """(C, H, W) of our UNet or of an ExternalDenoiser."""
    if isinstance(model, ExternalDenoiser):
        return model.image_shape
    cfg = model.config
    return (int(cfg.in_channels), int(cfg.image_size), int(cfg.image_size))


# ---------------------------------------------------------------------------
# denoising-diffusion-pytorch (lucidrains): Unet + GaussianDiffusion
# ---------------------------------------------------------------------------

FAMILY_DDP = "denoising_diffusion_pytorch.Unet"
_DDP_OBJECTIVES = {"pred_noise": "eps", "pred_x0": "x0", "pred_v": "v"}


def from_denoising_diffusion_pytorch(diffusion: nn.Module):
    """``GaussianDiffusion(Unet(...))`` of denoising-diffusion-pytorch -> (ExternalDenoiser, schedule dict).

    The schedule is the one its ancestral sampler (``p_sample_loop``) uses: its own betas
    (kind "explicit": the library's default is the sigmoid schedule, cosine and linear
    are options; the betas are read from the model, whichever it was), its
    ``objective`` as the prediction (pred_noise -> eps, pred_x0 -> x0, pred_v -> v, the
    default in 2.x), the posterior variance (fixedsmall) and x0 clipped to [-1, 1].
    Images are in [-1, 1] as the network sees them (the library's ``auto_normalize``
    maps them to [0, 1] afterwards: (x + 1) / 2). Raises ValueError listing every
    setting the export contract cannot carry.
    """
    problems = []
    kind = type(diffusion).__name__
    if kind != "GaussianDiffusion":
        problems.append(f"{kind} (supported: GaussianDiffusion; learned-variance, continuous-time and "
                        f"elucidated variants sample differently)")
    objective = getattr(diffusion, "objective", None)
    if objective not in _DDP_OBJECTIVES:
        problems.append(f"objective={objective!r} (supported: {', '.join(_DDP_OBJECTIVES)})")
    if getattr(diffusion, "self_condition", False):
        problems.append("self_condition=True (the network also takes its previous x0 estimate, which the "
                        "export contract has no input for)")
    net = getattr(diffusion, "model", None)
    if not isinstance(net, nn.Module):
        problems.append(f"diffusion.model is {type(net).__name__} (expected the Unet module)")
    elif getattr(net, "learned_variance", False) or getattr(net, "out_dim", None) not in (None, getattr(net, "channels", None)):
        problems.append(f"out_dim={getattr(net, 'out_dim', None)!r} != channels={getattr(net, 'channels', None)!r} "
                        f"(a learned variance is not part of the export contract)")
    if problems:
        raise ValueError(f"denoising-diffusion-pytorch model cannot be exported: {'; '.join(problems)}")
    h, w = diffusion.image_size
    image_shape = (int(diffusion.channels), int(h), int(w))
    betas = [float(b) for b in diffusion.betas.detach().double().cpu()]
    schedule = {"kind": "explicit", "betas": betas, "num_timesteps": len(betas),
                "prediction": _DDP_OBJECTIVES[objective], "variance_type": "fixedsmall", "clip_denoised": True}
    fp32 = ("time_mlp",) if "time_mlp" in dict(net.named_children()) else ()
    return ExternalDenoiser(net, image_shape, family=FAMILY_DDP, fp32_modules=fp32).eval(), schedule
