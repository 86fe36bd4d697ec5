"""The DDPM U-Net (Ho et al. 2020), with the parameter names of the official
code as converted by pesser/pytorch_diffusion, so the converted CIFAR-10
checkpoint loads without renaming (``temb.dense.0``, ``down.0.block.1.conv1``...).

Shapes: ``x [N, C, H, W] float32``, ``t [N]`` (int or float) -> ``eps [N, C, H, W]``.

Class-conditional (``UNetConfig.num_classes = K > 0``): ``forward(x, t, class_labels)`` with
``class_labels int64 [N]`` in 0..K, K being the learned null label (classifier-free
guidance, Ho & Salimans 2021). The label's embedding (``class_embedding``, an
``nn.Embedding(K + 1, temb_ch)``) is added to the time embedding before the blocks, as
in guided-diffusion and diffusers' UNet2DModel (``num_class_embeds``).
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ddpm_export.model.config import UNetConfig


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding, sin first: ``[N] -> [N, dim] float32``.

    freqs = exp(-arange(half) * log(10000) / (half - 1)), computed in float32 even
    when the rest of the network runs in half precision (``t * freqs`` reaches
    ~1000 and loses its fractional part in FP16).
    """
    half = dim // 2
    scale = math.log(10000) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * -scale)
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _tracing() -> bool:
    """True while torch.jit / torch.onnx (either exporter) / torch.compile trace the model."""
    compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or bool(compiling and compiling())


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, dropout: float, groups: int, eps: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_ch, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        if in_ch != out_ch:
            self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1)
        else:
            self.nin_shortcut = None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with a residual add.

    Written as 1x1 convs + two batched MatMuls + Softmax on the last axis: plain
    ONNX ops that every TensorRT version from 8.5 parses (no fused attention op).
    """

    def __init__(self, ch: int, groups: int, eps: float):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch, eps=eps)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = self.norm(x)
        q = self.q(y).reshape(n, c, h * w).permute(0, 2, 1)  # [N, HW, C]
        k = self.k(y).reshape(n, c, h * w)  # [N, C, HW]
        v = self.v(y).reshape(n, c, h * w)  # [N, C, HW]
        attn = torch.bmm(q, k) * (1.0 / math.sqrt(c))  # [N, HW(q), HW(k)]
        attn = self.softmax(attn)
        out = torch.bmm(v, attn.permute(0, 2, 1)).reshape(n, c, h, w)
        return x + self.proj_out(out)

    def softmax(self, attn: torch.Tensor) -> torch.Tensor:
        # kept as a method so the FP16 export can run it in float32
        return torch.softmax(attn, dim=-1)


class Downsample(nn.Module):
    """Stride-2 3x3 conv with TF "SAME" padding: pad right 1, bottom 1, then none."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TimeEmbedding(nn.Module):
    def __init__(self, ch: int, temb_ch: int):
        super().__init__()
        self.ch = ch
        self.dense = nn.ModuleList([nn.Linear(ch, temb_ch), nn.Linear(temb_ch, temb_ch)])

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.ch)
        return self.dense[1](F.silu(self.dense[0](emb)))


class UNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        c = config
        ch, g, eps = c.ch, c.num_groups, c.norm_eps
        temb_ch = ch * 4
        self.temb = TimeEmbedding(ch, temb_ch)
        if c.num_classes > 0:  # rows 0..K-1 the classes, row K (null_label) "no label"
            self.class_embedding = nn.Embedding(c.num_classes + 1, temb_ch)
        self.conv_in = nn.Conv2d(c.in_channels, ch, 3, padding=1)

        in_mult = (1,) + tuple(c.ch_mult)
        res = c.image_size
        self.down = nn.ModuleList()
        block_in = ch
        for i, mult in enumerate(c.ch_mult):
            level = nn.Module()
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            block_in = ch * in_mult[i]
            block_out = ch * mult
            for _ in range(c.num_res_blocks):
                level.block.append(ResnetBlock(block_in, block_out, temb_ch, c.dropout, g, eps))
                block_in = block_out
                if res in c.attn_resolutions:
                    level.attn.append(AttnBlock(block_in, g, eps))
            if i != len(c.ch_mult) - 1:
                level.downsample = Downsample(block_in)
                res //= 2
            self.down.append(level)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, temb_ch, c.dropout, g, eps)
        self.mid.attn_1 = AttnBlock(block_in, g, eps)
        self.mid.block_2 = ResnetBlock(block_in, block_in, temb_ch, c.dropout, g, eps)

        up_levels: List[nn.Module] = []
        for i in reversed(range(len(c.ch_mult))):
            level = nn.Module()
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            block_out = ch * c.ch_mult[i]
            skip_in = ch * c.ch_mult[i]
            for j in range(c.num_res_blocks + 1):
                if j == c.num_res_blocks:
                    skip_in = ch * in_mult[i]
                level.block.append(
                    ResnetBlock(block_in + skip_in, block_out, temb_ch, c.dropout, g, eps)
                )
                block_in = block_out
                if res in c.attn_resolutions:
                    level.attn.append(AttnBlock(block_in, g, eps))
            if i != 0:
                level.upsample = Upsample(block_in)
                res *= 2
            up_levels.insert(0, level)  # self.up[i] is resolution level i
        self.up = nn.ModuleList(up_levels)

        self.norm_out = nn.GroupNorm(g, block_in, eps=eps)
        self.conv_out = nn.Conv2d(block_in, c.in_channels, 3, padding=1)
        self._init_weights()

    def _init_weights(self) -> None:
        # Official init: Glorot-uniform everywhere, zero-ish (scale 1e-10) init of
        # the last conv of each ResBlock, attention's projection and conv_out.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        zero_init = [self.conv_out]
        for m in self.modules():
            if isinstance(m, ResnetBlock):
                zero_init.append(m.conv2)
            elif isinstance(m, AttnBlock):
                zero_init.append(m.proj_out)
        for m in zero_init:
            with torch.no_grad():
                m.weight.mul_(1e-10)

    @property
    def null_label(self) -> Optional[int]:
        """The class index meaning "no label" (UNetConfig.null_label); None when unconditional."""
        return self.config.null_label

    def _class_emb(self, class_labels: Optional[torch.Tensor], batch: int) -> Optional[torch.Tensor]:
        """The class embedding [N, temb_ch] of class_labels, after checking them; None when the
        model is unconditional (and then class_labels must be None)."""
        k = self.config.num_classes
        if k == 0:
            if class_labels is not None:
                raise ValueError(
                    "class_labels were passed to an unconditional model (num_classes=0); call it "
                    "as model(x, t), or train a class-conditional model (e.g. --preset digits-cond)"
                )
            return None
        if class_labels is None:
            raise ValueError(
                f"this model is class-conditional (num_classes={k}) and needs class_labels: "
                f"int64 [N] in 0..{k}, with {k} (null_label) for 'no label'; got none"
            )
        if not isinstance(class_labels, torch.Tensor):
            class_labels = torch.as_tensor(class_labels)
        if class_labels.is_floating_point() or class_labels.is_complex() or class_labels.dtype == torch.bool:
            raise ValueError(
                f"class_labels must be integers (int64 [N] in 0..{k}), got dtype {class_labels.dtype}"
            )
        if not _tracing():  # value checks only in eager mode: an export traces one graph for all inputs
            if tuple(class_labels.shape) != (batch,):
                raise ValueError(
                    f"class_labels has shape {tuple(class_labels.shape)}, expected [{batch}] "
                    f"(one label per image of x)"
                )
            if batch and (int(class_labels.min()) < 0 or int(class_labels.max()) > k):
                raise ValueError(
                    f"class_labels range over {int(class_labels.min())}..{int(class_labels.max())}, "
                    f"expected 0..{k} ({k} = null_label, 'no label')"
                )
        return self.class_embedding(class_labels.to(torch.int64))

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, class_labels: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        c = self.config
        temb = self.temb(t)
        cemb = self._class_emb(class_labels, x.shape[0])
        if cemb is not None:
            temb = temb + cemb.to(temb.dtype)
        hs = [self.conv_in(x)]
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.block):
                h = block(hs[-1], temb)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
                hs.append(h)
            if i != len(c.ch_mult) - 1:
                hs.append(level.downsample(hs[-1]))
        h = hs[-1]
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h, temb)), temb)
        for i in reversed(range(len(c.ch_mult))):
            level = self.up[i]
            for j, block in enumerate(level.block):
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
            if i != 0:
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
