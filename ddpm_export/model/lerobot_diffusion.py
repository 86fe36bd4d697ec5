"""LeRobot 0.4.4 DiffusionPolicy's two networks, written here (no lerobot, no torchvision).

:class:`LeRobotUnet1d` reproduces ``DiffusionConditionalUnet1d`` (FiLM 1-D U-Net, Mish,
GroupNorm, sinusoidal step embedding) and :class:`LeRobotObsEncoder` reproduces
``DiffusionModel._prepare_global_conditioning`` with ``DiffusionRgbEncoder`` (a ResNet-18/34
backbone whose BatchNorm is GroupNorm(num_features // 16), as LeRobot's ``use_group_norm``
makes it; SpatialSoftmax with its 1x1 conv; Linear + ReLU; the eval-mode center crop).
Submodule names are LeRobot's, so ``model.safetensors`` (less its ``diffusion.`` prefix)
loads with ``strict=True``: ``unet.*`` into the denoiser, ``rgb_encoder.*`` into the encoder.
``cfg`` is LeRobot's config.json as a dict.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
import torch.nn.functional as F

FAMILY_LEROBOT = "lerobot.DiffusionPolicy"
OBS_STATE = "observation.state"
OBS_IMAGES = "observation.images"
OBS_ENV = "observation.environment_state"
BACKBONES = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


def _shape(cfg: Dict[str, Any], name: str) -> Tuple[int, ...]:
    feats = dict(cfg.get("input_features") or {}, **(cfg.get("output_features") or {}))
    return tuple(int(v) for v in feats[name]["shape"])


def image_features(cfg: Dict[str, Any]) -> List[str]:
    """Camera order: config.image_features order (input_features order of VISUAL features)."""
    return [k for k, v in (cfg.get("input_features") or {}).items() if v.get("type") == "VISUAL"]


def env_feature(cfg: Dict[str, Any]) -> Optional[str]:
    for k, v in (cfg.get("input_features") or {}).items():
        if v.get("type") == "ENV":
            return k
    return None


def action_dim(cfg: Dict[str, Any]) -> int:
    return _shape(cfg, "action")[0]


class SinusoidalPosEmb(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freq = torch.exp(torch.arange(half, device=x.device) * -(math.log(10000) / (half - 1)))
        emb = x.unsqueeze(-1) * freq.unsqueeze(0)
        return torch.cat((emb.sin(), emb.cos()), dim=-1)


class Conv1dBlock(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, n_groups: int = 8):
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(cin, cout, k, padding=k // 2), nn.GroupNorm(n_groups, cout), nn.Mish())

    def forward(self, x):
        return self.block(x)


class ResBlock1d(nn.Module):
    def __init__(self, cin: int, cout: int, cond_dim: int, kernel_size: int, n_groups: int, film_scale: bool):
        super().__init__()
        self.film_scale = film_scale
        self.out_channels = cout
        self.conv1 = Conv1dBlock(cin, cout, kernel_size, n_groups)
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, cout * 2 if film_scale else cout))
        self.conv2 = Conv1dBlock(cout, cout, kernel_size, n_groups)
        self.residual_conv = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, cond):
        out = self.conv1(x)
        c = self.cond_encoder(cond).unsqueeze(-1)
        if self.film_scale:
            out = c[:, :self.out_channels] * out + c[:, self.out_channels:]
        else:
            out = out + c
        return self.conv2(out) + self.residual_conv(x)


class LeRobotUnet1d(nn.Module):
    """net(x_t [B, horizon, A], t float [B], global_cond [B, D]) -> [B, horizon, A]."""

    def __init__(self, cfg: Dict[str, Any], global_cond_dim: int):
        super().__init__()
        e = int(cfg["diffusion_step_embed_dim"])
        dims = [int(d) for d in cfg["down_dims"]]
        a = action_dim(cfg)
        self.diffusion_step_encoder = nn.Sequential(SinusoidalPosEmb(e), nn.Linear(e, e * 4), nn.Mish(),
                                                    nn.Linear(e * 4, e))
        kw = dict(cond_dim=e + global_cond_dim, kernel_size=int(cfg["kernel_size"]),
                  n_groups=int(cfg["n_groups"]), film_scale=bool(cfg["use_film_scale_modulation"]))
        in_out = [(a, dims[0])] + list(zip(dims[:-1], dims[1:]))
        self.down_modules = nn.ModuleList([
            nn.ModuleList([ResBlock1d(i, o, **kw), ResBlock1d(o, o, **kw),
                           nn.Conv1d(o, o, 3, 2, 1) if n < len(in_out) - 1 else nn.Identity()])
            for n, (i, o) in enumerate(in_out)])
        self.mid_modules = nn.ModuleList([ResBlock1d(dims[-1], dims[-1], **kw) for _ in range(2)])
        # LeRobot's up path: is_last is never true there, every level upsamples
        self.up_modules = nn.ModuleList([
            nn.ModuleList([ResBlock1d(i * 2, o, **kw), ResBlock1d(o, o, **kw), nn.ConvTranspose1d(o, o, 4, 2, 1)])
            for (o, i) in reversed(in_out[1:])])
        self.final_conv = nn.Sequential(Conv1dBlock(dims[0], dims[0], int(cfg["kernel_size"])),
                                        nn.Conv1d(dims[0], a, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)
        feat = torch.cat([self.diffusion_step_encoder(t), global_cond], dim=-1)
        skips = []
        for r1, r2, down in self.down_modules:
            x = r2(r1(x, feat), feat)
            skips.append(x)
            x = down(x)
        for m in self.mid_modules:
            x = m(x, feat)
        for r1, r2, up in self.up_modules:
            x = torch.cat((x, skips.pop()), dim=1)
            x = up(r2(r1(x, feat), feat))
        return self.final_conv(x).transpose(1, 2)


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock with GroupNorm(num_features // 16) for BatchNorm."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.GroupNorm(cout // 16, cout)
        self.relu = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.GroupNorm(cout // 16, cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(cout // 16, cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + idt)


def resnet_backbone(name: str) -> nn.Sequential:
    """torchvision.models.<name> children[:-2] (conv1, bn1, relu, maxpool, layer1-4)."""
    layers: List[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.GroupNorm(4, 64), nn.ReLU(),
                               nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for i, (n, cout) in enumerate(zip(BACKBONES[name], (64, 128, 256, 512))):
        blocks = []
        for j in range(n):
            blocks.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
            cin = cout
        layers.append(nn.Sequential(*blocks))
    return nn.Sequential(*layers)


class SpatialSoftmax(nn.Module):
    def __init__(self, c: int, h: int, w: int, num_kp: Optional[int]):
        super().__init__()
        self.h, self.w = h, w
        self.nets = nn.Conv2d(c, num_kp, 1) if num_kp is not None else None
        self.out_c = num_kp if num_kp is not None else c
        ys = torch.linspace(-1.0, 1.0, h, dtype=torch.float64)
        xs = torch.linspace(-1.0, 1.0, w, dtype=torch.float64)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        self.register_buffer("pos_grid", torch.stack([gx.reshape(-1), gy.reshape(-1)], 1).float())

    def forward(self, f):
        if self.nets is not None:
            f = self.nets(f)
        att = F.softmax(f.reshape(-1, self.h * self.w), dim=-1)
        return (att @ self.pos_grid).view(-1, self.out_c, 2)


class RgbEncoder(nn.Module):
    """DiffusionRgbEncoder in eval mode: center crop, backbone, SpatialSoftmax, Linear + ReLU."""

    def __init__(self, cfg: Dict[str, Any], image_shape: Sequence[int]):
        super().__init__()
        c, h, w = (int(v) for v in image_shape)
        crop = cfg.get("crop_shape")
        self.crop = None
        if crop is not None:
            th, tw = int(crop[0]), int(crop[1])
            # torchvision CenterCrop: top = int(round((h - th) / 2)), left likewise
            self.crop = (int(round((h - th) / 2.0)), int(round((w - tw) / 2.0)), th, tw)
            h, w = th, tw
        self.backbone = resnet_backbone(cfg["vision_backbone"])
        with torch.no_grad():
            fm = self.backbone(torch.zeros(1, c, h, w)).shape[1:]
        kp = cfg.get("spatial_softmax_num_keypoints")
        self.pool = SpatialSoftmax(int(fm[0]), int(fm[1]), int(fm[2]), kp)
        self.feature_dim = int(kp) * 2
        self.out = nn.Linear(int(kp) * 2, self.feature_dim)
        self.relu = nn.ReLU()

    def forward(self, x):
        if self.crop is not None:
            top, left, th, tw = self.crop
            x = x[:, :, top:top + th, left:left + tw]
        return self.relu(self.out(torch.flatten(self.pool(self.backbone(x)), start_dim=1)))


class LeRobotObsEncoder(nn.Module):
    """Normalized observation history -> global_cond [B, n_obs_steps * per_step_dim].

    forward(*inputs) takes the tensors named by :attr:`input_names`, in that order:
    observation.state [B, n_obs, S], observation.images [B, n_obs, n_cam, C, H, W] (if the
    policy has cameras), observation.environment_state [B, n_obs, E] (if it has one).
    """

    def __init__(self, cfg: Dict[str, Any]):
        super().__init__()
        self.cams = image_features(cfg)
        self.env = env_feature(cfg)
        self.separate = bool(cfg.get("use_separate_rgb_encoder_per_camera"))
        self.n_obs = int(cfg["n_obs_steps"])
        dim = _shape(cfg, OBS_STATE)[0]
        self.input_names = [OBS_STATE]
        if self.cams:
            shp = _shape(cfg, self.cams[0])
            if self.separate:
                self.rgb_encoder = nn.ModuleList([RgbEncoder(cfg, shp) for _ in self.cams])
                dim += self.rgb_encoder[0].feature_dim * len(self.cams)
            else:
                self.rgb_encoder = RgbEncoder(cfg, shp)
                dim += self.rgb_encoder.feature_dim * len(self.cams)
            self.input_names.append(OBS_IMAGES)
        if self.env:
            dim += _shape(cfg, self.env)[0]
            self.input_names.append(OBS_ENV)
        self.per_step_dim = dim
        self.global_cond_dim = dim * self.n_obs

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.input_names, inputs))
        state = named[OBS_STATE]
        b, s = state.shape[0], state.shape[1]
        feats = [state]
        if self.cams:
            img = named[OBS_IMAGES]
            n = len(self.cams)
            if self.separate:
                per = [enc(img[:, :, i].reshape(-1, *img.shape[3:])) for i, enc in enumerate(self.rgb_encoder)]
                f = torch.stack([p.reshape(b, s, -1) for p in per], dim=2).reshape(b, s, -1)
            else:
                f = self.rgb_encoder(img.reshape(-1, *img.shape[3:])).reshape(b, s, -1)
            feats.append(f)
        if self.env:
            feats.append(named[OBS_ENV])
        return torch.cat(feats, dim=-1).flatten(start_dim=1)


def build_lerobot(cfg: Dict[str, Any]) -> Tuple[LeRobotObsEncoder, LeRobotUnet1d]:
    enc = LeRobotObsEncoder(cfg)
    return enc, LeRobotUnet1d(cfg, enc.global_cond_dim)


def split_state_dict(sd: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """LeRobot's model.safetensors -> (encoder state, unet state) in our modules' names."""
    enc, unet = {}, {}
    for k, v in sd.items():
        k2 = k[len("diffusion."):] if k.startswith("diffusion.") else k
        if k2.startswith("unet."):
            unet[k2[len("unet."):]] = v
        else:
            enc[k2] = v
    return enc, unet


def build_lerobot_denoiser(model_config: Dict[str, Any]):
    """The checkpoint's denoiser: LeRobotUnet1d behind ExternalDenoiser (x_t, t, global_cond),
    sample_kind "array", one vector condition global_cond with no null form; the step
    embedding is its FP32 island."""
    from ddpm_export.model.external import ExternalDenoiser

    cfg = model_config["config"]
    d = int(model_config["global_cond_dim"])
    net = LeRobotUnet1d(cfg, d)
    cond = {"name": "global_cond", "kind": "vector", "dtype": "float32", "shape": [d], "null": None}
    return ExternalDenoiser(net, model_config["image_shape"], FAMILY_LEROBOT,
                            fp32_modules=("diffusion_step_encoder",), conditions=[cond], sample_kind="array")


def build_lerobot_encoder(ckpt: Dict[str, Any]) -> LeRobotObsEncoder:
    """The checkpoint's observation encoder, weights loaded strictly."""
    enc = LeRobotObsEncoder(ckpt["policy"]["lerobot_config"])
    enc.load_state_dict(ckpt["policy"]["encoder_state"], strict=True)
    return enc.eval()
