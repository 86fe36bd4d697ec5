"""FP16 export: a half-precision copy of the U-Net with FP32 islands, and its error table.

TensorRT 11 builds only *strongly typed* networks: the precision of every layer
comes from the ONNX graph, so FP16 has to be in the graph itself, with the parts
that need float32 written as explicit Cast nodes. We get those Casts by
exporting a PyTorch model whose islands call ``.float()`` / ``.half()``
(converting an exported FP32 graph afterwards yields graphs ONNX Runtime
refuses to load, see docs/deployment.md). FP32 islands:

- GroupNorm (statistics and affine): normalization is the main FP16 error
  source in diffusion U-Nets (mean/variance over H*W*C/G values).
- attention softmax: exp of large logits overflows in FP16.
- the timestep embedding and its MLP: ``t * freqs`` reaches ~1000 and loses
  its fractional part in FP16 (the MLP is [N, 4ch]: float32 costs nothing).

Everything else (Conv, Gemm, MatMul, SiLU, residual adds) runs in FP16. The
graph's inputs and output stay float32 (Casts at the edges, inside the graph),
so the runtime feeds the same arrays to every precision.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from runtime.contract import INPUT_T, INPUT_X

from ddpm_export.export.ort import ort_session
from ddpm_export.model.conditions import condition_feeds, example_conditions, model_conditions
from ddpm_export.model.external import FAMILY_DIFFUSERS, ExternalDenoiser, image_shape_of, weights_module
from ddpm_export.model.unet import AttnBlock, TimeEmbedding, UNet


class Fp32GroupNorm(nn.Module):
    """A float32 copy of a GroupNorm, run on a float32 cast of its input."""

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.norm = copy.deepcopy(norm).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.float()).to(x.dtype)


class Fp32TimeEmbedding(nn.Module):
    """A float32 copy of the timestep embedding + MLP; output cast to out_dtype."""

    def __init__(self, temb: TimeEmbedding, out_dtype: torch.dtype = torch.float16):
        super().__init__()
        self.temb = copy.deepcopy(temb).float()
        self.out_dtype = out_dtype

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.temb(t).to(self.out_dtype)


class Fp32SoftmaxAttnBlock(AttnBlock):
    """AttnBlock whose softmax runs in float32 (same forward, same parameters)."""

    def softmax(self, attn: torch.Tensor) -> torch.Tensor:
        return torch.softmax(attn.float(), dim=-1).to(attn.dtype)


class Fp16EpsModel(nn.Module):
    """float32 x_t [N, C, H, W], int t [N] -> float32 eps; FP16 inside, FP32 islands.

    model: our UNet, or an ExternalDenoiser (see make_fp16_external).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.external = isinstance(model, ExternalDenoiser)
        self.model = make_fp16_external(model) if self.external else make_fp16_unet(model)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        # float conditions enter in FP16 like x_t; labels stay int64 (an embedding's index)
        cond = tuple(c.to(torch.float16) if c.is_floating_point() else c for c in cond)
        if self.external:
            with Fp32Attention():
                return self.model(x_t.to(torch.float16), t, *cond).to(torch.float32)
        return self.model(x_t.to(torch.float16), t, *cond).to(torch.float32)


_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d, nn.BatchNorm2d)
_SOFTMAX_FUNCS = (torch.softmax, torch.nn.functional.softmax, torch.Tensor.softmax)


class Fp32Attention(torch.overrides.TorchFunctionMode):
    """While active: softmax and scaled_dot_product_attention on half tensors run in float32.

    This is how an FP16 export of a network we did not write keeps its attention
    island: whichever way the network computes attention (an explicit softmax, or
    ``F.scaled_dot_product_attention`` as diffusers does), the call is redone on
    float32 casts of its inputs and the result cast back, so the exported graph
    holds Cast -> (MatMul, Softmax, MatMul in float32) -> Cast.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SOFTMAX_FUNCS and args and _is_half(args[0]):
            return func(args[0].float(), *args[1:], **kwargs).to(args[0].dtype)
        if func is torch.nn.functional.scaled_dot_product_attention and _is_half(args[0]):
            dtype = args[0].dtype
            args = tuple(a.float() if _is_half(a) else a for a in args)
            kwargs = {k: (v.float() if _is_half(v) else v) for k, v in kwargs.items()}
            return func(*args, **kwargs).to(dtype)
        return func(*args, **kwargs)


def _is_half(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.dtype == torch.float16


class Fp32Norm(nn.Module):
    """A float32 copy of any normalization module, run on a float32 cast of its input."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = copy.deepcopy(norm).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.float()).to(x.dtype)


class Fp32Island(nn.Module):
    """A float32 copy of a module: floating tensor inputs cast up, tensor output cast to out_dtype."""

    def __init__(self, module: nn.Module, out_dtype: torch.dtype = torch.float16):
        super().__init__()
        self.module = copy.deepcopy(module).float()
        self.out_dtype = out_dtype

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        args = tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
        out = self.module(*args, **kwargs)
        return out.to(self.out_dtype) if isinstance(out, torch.Tensor) else out


class _DiffusersTimeIsland(nn.Module):
    """diffusers' time_proj + time_embedding in float32, fed the float32 t directly.

    UNet2DModel.forward casts the sinusoids to the model's dtype between the two; the
    island ignores that rounded copy and recomputes them from ``self.t`` (set by
    _Fp16Diffusers.forward before each call), so the embedding sees float32 sinusoids of
    the exact t.
    """

    def __init__(self, time_proj: nn.Module, time_embedding: nn.Module):
        super().__init__()
        self.proj = copy.deepcopy(time_proj).float()
        self.embedding = copy.deepcopy(time_embedding).float()
        self.t: Optional[torch.Tensor] = None

    def forward(self, _rounded: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.embedding(self.proj(self.t).float(), *args, **kwargs).to(torch.float16)


class _Fp16Diffusers(ExternalDenoiser):
    def call_net(self, x_t: torch.Tensor, t: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        self.net.time_embedding.t = t
        return self.net(x_t, t, **cond).sample


def make_fp16_external(model: ExternalDenoiser) -> ExternalDenoiser:
    """A half-precision copy of a wrapped network with FP32 islands; model is untouched.

    Islands: every normalization module (GroupNorm, LayerNorm, InstanceNorm2d,
    BatchNorm2d), the submodules named in ``model.fp32_modules`` (for diffusers the
    timestep embedding, with its sinusoids from the float32 t), and, through
    :class:`Fp32Attention` around the call, every softmax and scaled-dot-product
    attention. Everything else is cast to float16.
    """
    if not isinstance(model, ExternalDenoiser):
        raise TypeError(f"expected an ExternalDenoiser, received {type(model).__name__}")
    half = copy.deepcopy(model).eval()
    islands = _fp32_norms(half.net, model.net, skip=model.fp32_modules)
    originals = dict(model.net.named_modules())
    if model.config.family == FAMILY_DIFFUSERS:
        island = _DiffusersTimeIsland(model.net.time_proj, model.net.time_embedding)
        half.net.time_embedding = island
        islands.add(id(island))
        half.__class__ = _Fp16Diffusers
    else:
        for name in model.fp32_modules:
            wrapper = Fp32Island(originals[name])
            _set_submodule(half.net, name, wrapper)
            islands.add(id(wrapper))
    _half_outside(half, islands)
    half.eval()
    return half


def _fp32_norms(half: nn.Module, original: nn.Module, skip: Sequence[str] = ()) -> set:
    """Replace every normalization module of ``half`` (a copy of ``original``) by a float32 copy
    of the original's (Fp32Norm), except under the names in skip; returns the wrappers' ids."""
    islands = set()
    originals = dict(original.named_modules())
    for name in list(dict(half.named_modules())):
        mod = originals[name]
        if name and isinstance(mod, _NORMS) and not any(name == f or name.startswith(f + ".") for f in skip):
            wrapper = Fp32Norm(mod)
            _set_submodule(half, name, wrapper)
            islands.add(id(wrapper))
    return islands


class HalfWithNormIslands(nn.Module):
    """A half-precision copy of a module with every normalization module float32 (Fp32Norm),
    float32 in and out: the image encoder of a policy's FP16 observation encoder."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.half_module = copy.deepcopy(module).eval()
        _half_outside(self.half_module, _fp32_norms(self.half_module, module))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.half_module(x.to(torch.float16)).to(torch.float32)


class Fp16PolicyEncoder(nn.Module):
    """A LeRobot policy's observation encoder with its image encoders in FP16 and FP32 islands.

    The image encoders (ResNet backbone, spatial softmax keypoints, Linear + ReLU) run in FP16,
    with every GroupNorm float32 and, through :class:`Fp32Attention` around the call, the
    spatial softmax float32: the same islands the FP16 builder-flag build pins. The state and
    environment inputs, their concatenation with the image features and the output stay
    float32 (a concatenation gains nothing from FP16). model is untouched."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = copy.deepcopy(encoder).eval()
        rgb = encoder.rgb_encoder
        self.encoder.rgb_encoder = (nn.ModuleList([HalfWithNormIslands(m) for m in rgb])
                                    if isinstance(rgb, nn.ModuleList) else HalfWithNormIslands(rgb))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        with Fp32Attention():
            return self.encoder(*inputs)


def make_fp16_unet(model: UNet) -> UNet:
    """A half-precision copy of model with FP32 islands; model itself is untouched."""
    if not isinstance(model, UNet):
        raise TypeError(f"expected a ddpm_export.model.unet.UNet, received {type(model).__name__}")
    half = copy.deepcopy(model).eval()
    islands = set()
    # Islands are copied from the float32 original, never from rounded halves.
    for name, mod in model.named_modules():
        if isinstance(mod, nn.GroupNorm):
            wrapper = Fp32GroupNorm(mod)
            _set_submodule(half, name, wrapper)
            islands.add(id(wrapper))
    half.temb = Fp32TimeEmbedding(model.temb)
    islands.add(id(half.temb))
    if getattr(model, "class_embedding", None) is not None:
        # a class-conditional U-Net's label embedding, added to the time embedding: looked up in
        # float32 like the time embedding's MLP (the builder-flag build pins the same scope)
        half.class_embedding = Fp32Island(model.class_embedding)
        islands.add(id(half.class_embedding))
    for mod in half.modules():
        if type(mod) is AttnBlock:
            mod.__class__ = Fp32SoftmaxAttnBlock
    _half_outside(half, islands)
    half.eval()
    return half


def _set_submodule(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, leaf = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, new)


def _half_outside(module: nn.Module, islands: set) -> None:
    if id(module) in islands:
        return
    for p in module.parameters(recurse=False):
        p.data = p.data.half()
    for b_name, b in module.named_buffers(recurse=False):
        if b.is_floating_point():
            setattr(module, b_name, b.half())
    for child in module.children():
        _half_outside(child, islands)


FP16_MAX = 65504.0  # largest finite float16


def fp16_overflow(model: nn.Module, x: torch.Tensor, t: torch.Tensor,
                  cond: Sequence[torch.Tensor] = ()) -> Optional[Dict[str, Any]]:
    """The first module to finish (so the innermost: a forward hook fires when a module
    returns) whose float32 output exceeds FP16's range on (x, t): {"module", "type", "max_abs"}, or None.

    Such a value is inf in an FP16 graph whatever the islands do (an island casts an inf
    up, and normalizing it gives NaN), so this is what an FP16 export's failure is checked
    against first: no cast or island fixes weights whose activations do not fit in FP16.
    """
    found: List[Dict[str, Any]] = []

    def hook(name: str):
        def f(mod, inp, out):
            o = out[0] if isinstance(out, (tuple, list)) and out else out
            o = getattr(o, "sample", o)
            if not found and isinstance(o, torch.Tensor) and o.is_floating_point():
                peak = float(o.detach().abs().max()) if o.numel() else 0.0
                if not peak <= FP16_MAX:
                    found.append({"module": name, "type": type(mod).__name__, "max_abs": peak})
        return f

    ref = copy.deepcopy(model).float().eval()
    handles = [m.register_forward_hook(hook(n)) for n, m in weights_module(ref).named_modules() if n]
    try:
        with torch.no_grad():
            ref(x, t, *cond)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


FP16_TABLE_BATCH = 4  # images per timestep in the error table


def fp16_timesteps(num_timesteps: int, step: int = 50) -> List[int]:
    """0, step, 2*step, ... below T, plus T-1 (the first step of sampling)."""
    ts = list(range(0, int(num_timesteps), int(step)))
    if ts[-1] != num_timesteps - 1:
        ts.append(int(num_timesteps) - 1)
    return ts


def fp16_error_table(
    onnx_path: Any,
    model: nn.Module,
    timesteps: Optional[Sequence[int]] = None,
    batch: int = FP16_TABLE_BATCH,
    seed: int = 0,
    backend: str = "onnxruntime",
    num_timesteps: int = 1000,
) -> List[Dict[str, Any]]:
    """Per-timestep eps error of an FP16 model against the float32 PyTorch model.

    backend "onnxruntime": the FP16 ONNX graph at onnx_path on ONNX Runtime CPU.
    backend "torch": PyTorch half precision on CPU with the same FP32 islands
    (onnx_path unused). timesteps default: fp16_timesteps(num_timesteps). Inputs: x_t ~ N(0, 1) float32 [batch, C, H, W] (seeded),
    the same for every t. Rows: {"t", "max_abs", "mean_abs", "ref_rms"}.
    """
    if backend not in ("onnxruntime", "torch"):
        raise ValueError(f"backend must be 'onnxruntime' or 'torch', received {backend!r}")
    if timesteps is None:
        timesteps = fp16_timesteps(num_timesteps)
    ref = copy.deepcopy(model).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *image_shape_of(model), generator=g)
    conds = model_conditions(model)
    cond = example_conditions(conds, batch, g)
    if backend == "onnxruntime":
        sess = ort_session(onnx_path)
        feeds = condition_feeds(conds, cond)
        run = lambda t: sess.run(None, {INPUT_X: x.numpy(), INPUT_T: t.numpy(), **feeds})[0]  # noqa: E731
    else:
        fp16 = Fp16EpsModel(model).eval()
        run = lambda t: fp16(x, t, *cond).numpy()  # noqa: E731
    rows = []
    with torch.no_grad():
        for t_val in timesteps:
            t = torch.full((batch,), int(t_val), dtype=torch.int32)
            want = ref(x, t, *cond).numpy().astype(np.float64)
            err = np.abs(run(t).astype(np.float64) - want)
            rows.append({
                "t": int(t_val),
                "max_abs": float(err.max()),
                "mean_abs": float(err.mean()),
                "ref_rms": float(np.sqrt(np.mean(want ** 2))),
            })
    return rows


def node_precisions(proto) -> List[Dict[str, str]]:
    """The element type each node of an ONNX graph computes in (its first output's, after
    shape inference): [{"name", "op_type", "dtype"}]. This is how the FP32 islands of an
    FP16 export are checked on the graph itself."""
    import onnx
    from onnx import helper

    inferred = onnx.shape_inference.infer_shapes(proto)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.output) + list(g.input)}
    types.update({i.name: i.data_type for i in g.initializer})
    rows = []
    for n in g.node:
        elem = types.get(n.output[0]) if n.output else None
        dtype = str(helper.tensor_dtype_to_np_dtype(elem)) if elem else "unknown"
        rows.append({"name": n.name, "op_type": n.op_type, "dtype": dtype})
    return rows
