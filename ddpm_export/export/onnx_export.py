"""Export a checkpoint to ONNX for TensorRT 8.5 through 11, checked and with its manifest.

Exporter and opset (why the graph looks the way it does):

- The legacy TorchScript exporter, ``torch.onnx.export(..., dynamo=False)``
  (torch 2.13 still has it; dynamo=True is the default). It lowers GroupNorm to
  Reshape + InstanceNormalization + Reshape + Mul/Add (at every opset), which
  TensorRT 8.5+ parses; the dynamo exporter emits GroupNormalization, which
  TensorRT parses only from 10.9 (and opset-21 GroupNormalization fails before
  that). With opset >= 17 newer TensorRT maps InstanceNormalization onto its
  native normalization layer.
- Default opset 17: the highest TensorRT 8.5 (JetPack 5) supports. 13 is the
  lowest allowed (Softmax over the last axis only, Unsqueeze/Slice axes as
  inputs); 20 is the legacy exporter's highest.
- Attention is the U-Net's own Conv 1x1 + MatMul + Softmax(axis=-1) + MatMul,
  plain ops every TensorRT version parses and fuses; no fused attention op.
- Constant subgraphs the exporter leaves behind (the pads of Downsample's
  F.pad, built with a step -1 Slice it cannot fold) are folded here, so Pad
  gets a constant ``pads`` as older TensorRT parsers want.
- t is an int32 input (TensorRT 8.x only down-casts int64); the graph casts it
  to float32 for the embedding.

Every export runs onnx.checker (full check), strict shape inference, an I/O check
against runtime.contract and, unless check=False, parity against PyTorch
through ONNX Runtime CPU. The file is written to a temporary name and renamed
only after all checks pass; then the sidecar NAME.json is written.
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import io
import json
import platform
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn

from runtime import contract
from runtime.contract import BatchRange
from runtime.io import sha256_file, write_bytes

from runtime.schedulers.schedule import ScheduleConfig

from ddpm_export.model.checkpoint import build_model, load_checkpoint
from ddpm_export.export import ExportError
from ddpm_export.export.fp16 import (FP16_MAX, FP16_TABLE_BATCH, Fp16EpsModel, fp16_error_table,
                                     fp16_overflow, fp16_timesteps)
from ddpm_export.model.conditions import condition_feeds, example_conditions, model_conditions
from ddpm_export.model.external import ExternalDenoiser, image_shape_of
from ddpm_export.model.unet import UNet
from ddpm_export.export.ort import ort_session

__all__ = ["export_onnx", "export_module", "torch_to_onnx", "check_parity", "fp16_error_table",
           "ExportError"]

DEFAULT_OPSET = 17
SUPPORTED_OPSETS = range(13, 21)
PARITY_TIMESTEPS = (0, 1, 250, 500, 999)
PARITY_ATOL = 1e-4  # float32 graph vs float32 PyTorch, max abs over all eps values
FP16_ATOL = 2e-2  # FP16 graph vs float32 PyTorch, max abs (eps is ~N(0, 1))
EXPORTER = "torch.onnx.export(dynamo=False) (TorchScript)"
_TRACE_BATCH = 2  # not 1: the tracer must not specialize on a singleton batch
_FOLD_MAX_ELEMENTS = 4096  # fold shape arithmetic, never copy weights into Constants
_FP16_TRACE_CHANNELS_LAST = True  # see _export_proto


class EpsModel(nn.Module):
    """float32 x_t [N, C, H, W], int t [N], the conditions (model_conditions' order) ->
    float32 eps [N, C, H, W] (an eval copy)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).eval()

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        return self.model(x_t, t, *cond)


def export_onnx(
    checkpoint_path: Any,
    out_path: Any,
    fp16: bool = False,
    opset: int = DEFAULT_OPSET,
    batch_range: Any = None,
    check: bool = True,
    command: Optional[str] = None,
    weights: str = "ema",
    parity_atol: Optional[float] = None,
    guidance: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Export a checkpoint to out_path (NAME.onnx) + NAME.json; returns the manifest.

    A class-conditional checkpoint (num_classes > 0) gets a ``class_labels`` input and its null
    label in the manifest; guidance: {"default": w}, the guidance scale the runtime uses
    when none is given.

    fp16: FP16 graph with FP32 islands and FP32 I/O (see export_fp16).
    batch_range: None (contract.DEFAULT_BATCH_RANGE), (min, opt, max) or BatchRange.
    check: run the ONNX Runtime parity check (checker and shape inference always run).
    parity_atol: max abs eps difference allowed vs float32 PyTorch
    (default PARITY_ATOL, or FP16_ATOL with fp16). Raises ExportError on failure,
    leaving no file at out_path.
    """
    out = Path(out_path)
    if out.suffix != ".onnx":
        raise ValueError(f"out_path {str(out)!r} must end in .onnx (the manifest goes to NAME.json)")
    _check_opset(opset)
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', received {weights!r}")
    batch = BatchRange.coerce(batch_range)
    atol = parity_atol if parity_atol is not None else (FP16_ATOL if fp16 else PARITY_ATOL)
    if not atol > 0:
        raise ValueError(f"parity_atol must be > 0, received {atol!r}")
    ckpt = load_checkpoint(checkpoint_path)
    model, config, schedule = build_model(ckpt, checkpoint_path, weights)
    key = weights if weights in ckpt else ("ema" if "ema" in ckpt else "model")
    source = {
        "checkpoint": Path(checkpoint_path).name,
        "checkpoint_sha256": sha256_file(checkpoint_path),
        "weights": key,
        "step": ckpt.get("step"),
        "model_config": _jsonable(ckpt["model_config"]) if isinstance(model, ExternalDenoiser)
        else config.to_dict(),
        "provenance": _jsonable(ckpt.get("provenance")),
    }
    if command is None:
        command = (f"ddpm_export.export.onnx_export.export_onnx({str(checkpoint_path)!r}, {str(out)!r}, "
                   f"fp16={fp16}, opset={opset}, batch_range={tuple(batch.to_dict().values())})")
    manifest = _export_model(model, schedule, out, fp16=fp16, opset=opset, batch=batch, check=check,
                             atol=atol, source=source, command=command, what=str(checkpoint_path),
                             sampling=ckpt.get("sampling"), guidance=guidance)
    if "policy" in ckpt:  # a LeRobot policy: its observation encoder too, tied by the manifest's policy section
        from ddpm_export.export.policy_export import export_policy

        manifest = dict(manifest, policy=export_policy(ckpt, out, fp16=fp16,
                                                       batch_range=tuple(batch.to_dict().values())))
    return manifest


def export_module(
    module: nn.Module,
    schedule_config: Any,
    image_shape: Sequence[int],
    out_path: Any,
    fp16: bool = False,
    opset: int = DEFAULT_OPSET,
    batch_range: Any = None,
    check: bool = True,
    fp32_modules: Sequence[str] = (),
    source: Optional[Dict[str, Any]] = None,
    command: Optional[str] = None,
    parity_atol: Optional[float] = None,
    conditions: Sequence[Any] = (),
    sample_kind: Optional[str] = None,
    guidance: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Export your own denoiser ``module(x_t, t, **cond) -> eps | x0 | v`` with its schedule.

    conditions: a conditional denoiser's inputs after (x_t, t), each a
    runtime.contract.Condition or its dict ({"name", "kind", "dtype", "shape", "null",
    "num_classes"}); the module is called with them as keywords by those names, and the
    engine takes them as inputs of the same names. sample_kind: None = "image" for
    (C, H, W), "array" for samples of another rank (image_shape is then the per-sample
    shape). guidance: {"default": w}, the guidance scale the runtime uses when none is given.

    module: any ``torch.nn.Module`` called as ``module(x_t, t)`` with x_t float32
    [N, *image_shape] and t a float32 [N] of integer timesteps 0..T-1, returning a
    tensor of x_t's shape (wrap it first if it returns anything else). What the
    output means is ``schedule_config["prediction"]`` ("eps", "x0" or "v").
    schedule_config: a ScheduleConfig or its dict (kind, betas or beta_start/beta_end,
    num_timesteps, prediction, variance_type, ...). image_shape: (C, H, W).
    fp16: FP16 graph; normalization layers, softmax and scaled-dot-product attention
    stay float32, and so do the submodules named in ``fp32_modules`` (name the
    timestep embedding there). source: what to record about the weights (path,
    sha256, library versions) in the manifest's ``source``.
    Writes out_path (NAME.onnx) + NAME.json, with the same checks as export_onnx;
    returns the manifest.
    """
    out = Path(out_path)
    if out.suffix != ".onnx":
        raise ValueError(f"out_path {str(out)!r} must end in .onnx (the manifest goes to NAME.json)")
    _check_opset(opset)
    if isinstance(module, ExternalDenoiser):
        model = module
    else:
        kind = sample_kind or ("image" if len(tuple(image_shape)) == 3 else "array")
        model = ExternalDenoiser(module, image_shape, fp32_modules=fp32_modules, conditions=conditions,
                                 sample_kind=kind)
    schedule = schedule_config if isinstance(schedule_config, ScheduleConfig) else \
        ScheduleConfig.from_dict(dict(schedule_config))
    batch = BatchRange.coerce(batch_range)
    atol = parity_atol if parity_atol is not None else (FP16_ATOL if fp16 else PARITY_ATOL)
    if not atol > 0:
        raise ValueError(f"parity_atol must be > 0, received {atol!r}")
    src = {"module": f"{type(model.net).__module__}.{type(model.net).__qualname__}",
           "model_config": model.config.to_dict(), "fp32_modules": list(model.fp32_modules),
           "checkpoint": None, "checkpoint_sha256": state_dict_sha256(model.net),
           "checkpoint_sha256_of": "the module's state_dict in memory (names, dtypes, shapes, bytes)"}
    src.update(_jsonable(dict(source or {})))
    if command is None:
        command = (f"ddpm_export.export.export_module({type(model.net).__name__}(...), ..., "
                   f"{tuple(model.image_shape)}, {str(out)!r}, fp16={fp16}, opset={opset})")
    return _export_model(model.eval(), schedule, out, fp16=fp16, opset=opset, batch=batch, check=check,
                         atol=atol, source=src, command=command, what=type(model.net).__name__,
                         guidance=guidance)


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over a module's state_dict: each name, dtype, shape and the tensor's bytes, in order."""
    h = hashlib.sha256()
    for name, v in module.state_dict().items():
        a = v.detach().cpu().contiguous()
        h.update(f"{name}|{a.dtype}|{tuple(a.shape)}|".encode())
        h.update(a.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _export_model(model: nn.Module, schedule: ScheduleConfig, out: Path, *, fp16: bool, opset: int,
                  batch: BatchRange, check: bool, atol: float, source: Dict[str, Any], command: str,
                  what: str, sampling: Optional[Dict[str, Any]] = None,
                  guidance: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    precision = "fp16" if fp16 else "fp32"
    image_shape = image_shape_of(model)
    conditions = model_conditions(model)
    T = int(schedule.num_timesteps)
    external = isinstance(model, ExternalDenoiser)

    proto = _export_proto(model, fp16, opset)
    checks: Dict[str, Any] = {"onnx_checker": True, "shape_inference": True,
                              "parity": None, "fp16_error": None}
    if check:
        blob = proto.SerializeToString()
        checks["parity"] = check_parity(blob, model, batches=sorted({batch.min, batch.opt}),
                                        atol=atol, num_timesteps=T)
        if not checks["parity"]["passed"]:
            diff = checks["parity"]["max_abs_diff"]
            raise ExportError(
                f"{precision} ONNX export of {what} failed parity: max abs eps "
                f"difference {'non-finite' if diff is None else format(diff, '.3g')} "
                f"vs float32 PyTorch exceeds {atol:g} "
                f"(ONNX Runtime CPU); nothing was written to {out}"
                + (_fp16_overflow_note(model, T) if fp16 else "")
            )
        if fp16:
            rows = fp16_error_table(blob, model, fp16_timesteps(T), num_timesteps=T)
            checks["fp16_error"] = {
                "backend": checks["parity"]["backend"], "reference": "PyTorch float32",
                "batch": FP16_TABLE_BATCH, "rows": rows,
                "max_abs": max(r["max_abs"] for r in rows),
                "mean_abs": float(np.mean([r["mean_abs"] for r in rows])),
            }
    if external:
        onnx_info = {"opset": opset, "exporter": EXPORTER,
                     "network": model.config.family,
                     "normalization": "the network's own, as the exporter lowers it",
                     "attention": "the network's own (softmax / scaled_dot_product_attention "
                                  "lowered to MatMul + Softmax)",
                     "fp32_islands": (["normalization layers", "softmax and scaled-dot-product attention"]
                                      + [f"{m} (timestep embedding)" for m in model.fp32_modules])
                     if fp16 else []}
    else:
        onnx_info = {"opset": opset, "exporter": EXPORTER,
                     "normalization": "GroupNorm as Reshape+InstanceNormalization+Reshape+Mul+Add",
                     "attention": "Conv1x1 + MatMul + Softmax(axis=-1) + MatMul",
                     "fp32_islands": ["GroupNorm", "softmax", "timestep embedding"] if fp16 else []}
    manifest = contract.manifest_dict(
        image_shape, schedule.to_dict(), precision=precision, batch_range=batch,
        source=source, checks=checks, tools=_tools(), command=command, onnx=onnx_info,
        sampling=sampling,  # a distilled student's method and timesteps (None: not a student)
        conditions=conditions, sample_kind=getattr(model, "sample_kind", None), guidance=guidance,
    )
    # Embedded copy: onnx_sha256 is null (a file cannot hold its own hash).
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = contract.MANIFEST_KEY, json.dumps(manifest, allow_nan=False)
    data = proto.SerializeToString()
    manifest["onnx_sha256"] = hashlib.sha256(data).hexdigest()
    write_bytes(out, data)
    contract.write_manifest(out, manifest)
    return manifest


def _fp16_overflow_note(model: nn.Module, num_timesteps: int) -> str:
    """Why an FP16 graph failed, where the weights are the reason: the first module whose
    float32 output exceeds FP16's range on the parity check's own inputs (batch 1, each t)."""
    g = torch.Generator().manual_seed(0)  # check_parity's seed: its first inputs
    conds = model_conditions(model)
    for t_val in sorted({min(int(t), num_timesteps - 1) for t in PARITY_TIMESTEPS}):
        x = torch.randn(1, *image_shape_of(model), generator=g)
        cond = example_conditions(conds, 1, g)
        hit = fp16_overflow(model, x, torch.tensor([t_val], dtype=torch.int32), cond)
        if hit is not None:
            return (f". The float32 model itself exceeds FP16's range ({FP16_MAX:g}): "
                    f"{hit['module']} ({hit['type']}) outputs {hit['max_abs']:.3g} at t={t_val}, "
                    f"which is inf in FP16 (and NaN after the next normalization) whatever the "
                    f"FP32 islands do; these weights need the float32 export")
    return ""


def torch_to_onnx(model: nn.Module, out_path: Any, fp16: bool = False, opset: int = DEFAULT_OPSET) -> None:
    """Write model's graph alone (no checks beyond checker/shape inference, no manifest).

    model is never modified: export works on an eval-mode copy, so neither its
    weights nor its training flag change (torch.onnx.export restores the flag of
    the module it is given, which here is the copy).
    """
    import onnx

    onnx.save(_export_proto(model, fp16, opset), str(out_path))


def _check_opset(opset: Any) -> None:
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in SUPPORTED_OPSETS:
        raise ValueError(
            f"opset {opset!r} is not supported; expected {SUPPORTED_OPSETS.start}.."
            f"{SUPPORTED_OPSETS.stop - 1} (17, the default, is the highest TensorRT 8.5 parses)"
        )


def _export_proto(model: UNet, fp16: bool, opset: int):
    import onnx

    _check_opset(opset)
    if not isinstance(model, (UNet, ExternalDenoiser)):
        raise TypeError(f"expected a ddpm_export.model.unet.UNet or an ExternalDenoiser, "
                        f"received {type(model).__name__}")
    image_shape = image_shape_of(model)
    wrapper = (Fp16EpsModel(model) if fp16 else EpsModel(model)).eval()
    x = torch.randn(_TRACE_BATCH, *image_shape)
    if fp16 and _FP16_TRACE_CHANNELS_LAST and x.dim() == 4:  # an array sample (rank 3 batch) has no NHWC
        # The tracer runs the half-precision forward once. A CPU without native FP16 runs
        # contiguous (NCHW) half convolutions through a slow fallback: 86 s for one 3x3
        # 128->128 conv on a 2 x 128 x 128 x 128 input, where the channels-last (NHWC)
        # oneDNN path takes 1.1 s; the real-size tutorial U-Net's FP16 export took 2205 s.
        # Memory format is not part of the ONNX graph: same nodes, same initializers.
        wrapper = wrapper.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    t = torch.arange(_TRACE_BATCH, dtype=torch.int32)
    conditions = model_conditions(model)
    cond = tuple(example_conditions(conditions, _TRACE_BATCH, torch.Generator().manual_seed(0)))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # GroupNorm's batch-size sanity check is traced as a constant: harmless.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning,
                                module="torch.nn.functional")
        # AttnBlock's 1/sqrt(C) is traced as a constant: C is static.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning,
                                module=r"ddpm_export\.unet")
        # diffusers' shape checks (batch size, upsample size) are traced as constants;
        # the exported graph is checked against PyTorch below.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"diffusers\.")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning,
                                module=r"ddpm_export\.export\.fp16")  # the same, seen through Fp32Attention
        # The step -1 Slice that fold_constants() folds instead.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        # The legacy exporter is deprecated upstream, and chosen here on purpose.
        warnings.filterwarnings("ignore", category=DeprecationWarning,
                                message="You are using the legacy TorchScript")
        warnings.filterwarnings("ignore", category=DeprecationWarning,
                                message="The feature will be removed")
        with torch.no_grad():
            torch.onnx.export(
                wrapper, (x, t) + cond, buf, **_legacy_exporter(), opset_version=opset,
                input_names=list(contract.input_names(conditions)),
                output_names=list(contract.OUTPUT_NAMES),
                dynamic_axes=contract.dynamic_axes(conditions), do_constant_folding=True,
            )
    proto = onnx.load_from_string(buf.getvalue())
    fold_constants(proto)
    check_graph(proto, image_shape, conditions)
    return proto


def _legacy_exporter() -> Dict[str, Any]:
    """torch.onnx.export's keyword for the TorchScript exporter (torch < 2.5 has no other)."""
    params = inspect.signature(torch.onnx.export).parameters
    if "dynamo" in params:
        return {"dynamo": False}
    return {}


def fold_constants(proto) -> int:
    """Replace nodes whose inputs are all constants by Constant nodes; returns how many.

    Identity nodes are kept: the exporter uses them to share equal weights.
    """
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    values: Dict[str, np.ndarray] = {}  # small constants only: weights stay where they are

    def value(name: str) -> np.ndarray:
        return values[name] if name in values else numpy_helper.to_array(inits[name])

    new_nodes, folded = [], 0
    for node in g.node:
        if node.op_type == "Constant":
            values[node.output[0]] = ReferenceEvaluator(node).run(None, {})[0]
        elif (node.op_type != "Identity" and node.input and node.domain in ("", "ai.onnx")
              and all(i == "" or i in values or i in inits for i in node.input)):
            outs = [np.asarray(v) for v in
                    ReferenceEvaluator(node).run(None, {i: value(i) for i in node.input if i})]
            if all(v.size <= _FOLD_MAX_ELEMENTS for v in outs):
                for name, val in zip(node.output, outs):
                    values[name] = val
                    new_nodes.append(helper.make_node(
                        "Constant", [], [name], name=f"{node.name}_folded",
                        value=numpy_helper.from_array(val, name)))
                folded += 1
                continue
        new_nodes.append(node)
    # drop constants nothing reads any more
    while True:
        used = {i for n in new_nodes for i in n.input} | {o.name for o in g.output}
        kept = [n for n in new_nodes if n.op_type != "Constant" or n.output[0] in used]
        if len(kept) == len(new_nodes):
            break
        new_nodes = kept
    del g.node[:]
    g.node.extend(new_nodes)
    return folded


def check_graph(proto, image_shape: Sequence[int], conditions: Sequence[Any] = ()) -> None:
    """onnx.checker (full), strict shape inference, and the I/O of runtime.contract."""
    import onnx
    from onnx import helper

    onnx.checker.check_model(proto, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    spec = contract.io_spec(image_shape, conditions)
    if len(inferred.graph.input) != len(spec["inputs"]):
        raise ExportError(f"exported graph has inputs {[v.name for v in inferred.graph.input]}, expected "
                          f"{[w['name'] for w in spec['inputs']]} (a condition the network ignores is "
                          f"dropped by the exporter: check that the module uses every condition)")
    for kind, got_list in (("inputs", inferred.graph.input), ("outputs", inferred.graph.output)):
        got = {v.name: v for v in got_list}
        for want in spec[kind]:
            v = got.get(want["name"])
            if v is None:
                raise ExportError(f"exported graph has no {kind[:-1]} {want['name']!r} "
                                  f"(has {sorted(got)}); expected the contract's {spec[kind]}")
            tt = v.type.tensor_type
            dtype = str(helper.tensor_dtype_to_np_dtype(tt.elem_type))
            dims = [d.dim_param or d.dim_value for d in tt.shape.dim]
            if dtype != want["dtype"] or dims != want["shape"]:
                raise ExportError(f"exported {kind[:-1]} {want['name']!r}: received {dtype} "
                                  f"{dims}, expected {want['dtype']} {want['shape']}")


def check_parity(
    onnx_model: Any,
    model: nn.Module,
    batches: Sequence[int] = (1, 8),
    timesteps: Sequence[int] = PARITY_TIMESTEPS,
    atol: float = PARITY_ATOL,
    seed: int = 0,
    num_timesteps: int = 1000,
) -> Dict[str, Any]:
    """Max abs eps difference of an ONNX model (path or bytes) on ONNX Runtime CPU vs model.

    Batch 1 runs each t alone; a larger batch runs once with the t values
    mixed across its rows (catches per-row timestep mix-ups). Inputs:
    x_t ~ N(0, 1) float32 (seeded), t int32 (clipped to T-1).
    """
    sess = ort_session(onnx_model)  # says what to install when onnxruntime is missing
    import onnxruntime as ort

    ts = sorted({min(int(t), num_timesteps - 1) for t in timesteps})
    ref = copy.deepcopy(model).eval()
    shape = image_shape_of(ref)
    conds = model_conditions(ref)
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    with torch.no_grad():
        for b in batches:
            t_sets = [[t] for t in ts] if b == 1 else [[ts[i % len(ts)] for i in range(b)]]
            for t_list in t_sets:
                x = torch.randn(b, *shape, generator=g)
                t = torch.tensor(t_list, dtype=torch.int32)
                cond = example_conditions(conds, b, g)
                want = ref(x, t, *cond).numpy()
                got = sess.run(None, {contract.INPUT_X: x.numpy(), contract.INPUT_T: t.numpy(),
                                      **condition_feeds(conds, cond)})[0]
                if got.shape != want.shape or got.dtype != np.float32:
                    raise ExportError(f"ONNX Runtime returned {got.dtype} {got.shape}, "
                                      f"expected float32 {want.shape}")
                diff = np.abs(got.astype(np.float64) - want.astype(np.float64)).max()
                worst = max(worst, float(diff) if np.isfinite(diff) else float("inf"))
    return {"backend": f"onnxruntime {ort.__version__} CPU", "reference": "PyTorch float32",
            "batches": [int(b) for b in batches], "timesteps": ts,
            "max_abs_diff": worst if np.isfinite(worst) else None,
            "atol": float(atol), "passed": bool(worst < atol)}


def _tools() -> Dict[str, Optional[str]]:
    import onnx

    from ddpm_export import __version__

    try:
        import onnxruntime

        ort_version: Optional[str] = onnxruntime.__version__
    except ImportError:
        ort_version = None
    return {"python": platform.python_version(), "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxruntime": ort_version, "numpy": np.__version__,
            "ddpm_export": __version__}


def _jsonable(obj: Any) -> Any:
    """obj with anything JSON cannot hold turned into its str()."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else str(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return str(obj)
