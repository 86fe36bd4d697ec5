"""``ddpm-export build``: an ONNX export -> a TensorRT plan + its manifest.

The TensorRT part is Polygraphy's loaders (``NetworkFromOnnxPath``,
``PostprocessNetwork``, ``CreateConfig``, ``EngineBytesFromNetwork``,
``EngineFromBytes``, ``SaveBytes``), which hide most API differences between
TensorRT 8.5 and 11; this module decides what to ask them for and checks
everything around them. The plan is built as bytes and written as those bytes:
a version-compatible engine cannot be serialized again once deserialized, and
the finished engine is deserialized only to check its I/O.

precision (``precision_mode``), by TensorRT version and the export's graph:

    TensorRT      --fp16 with                   build
    8.5 - 9.x     the float32 graph             FP16 builder flag (weakly typed)
    10.x          the FP16 graph (FP32 islands) strongly typed
    10.x          the float32 graph             FP16 builder flag (still there in 10)
    >= 11         the FP16 graph                strongly typed (11 has no FP16 flag)
    any           no --fp16, float32 graph      float32
    >= 10         no --fp16, FP16 graph         strongly typed (the graph's types)

With ``--checkpoint`` instead of ``--onnx`` the export is made first, in the
precision the table wants (``export_precision``). With neither, the project's
default export is built (``default_source``): the cifar10 export in engines/
when there is one, else the shipped digits export, saying which.

FP16 with the builder flag lets TensorRT choose each layer's precision, so the
layers that the FP16 export keeps in float32 (``fp32_island_nodes``: the
timestep embedding, GroupNorm, softmax) are pinned to FP32 (layer precision
and output types, with precision constraints obeyed). A node's layers are found
by graph position: every layer between the node's input and output tensors
(``layers_between``; the parser names each node's output tensors after the
ONNX ones), and also by name (the layer an importer registers is named after
its node). Names alone miss the layers an importer adds without registering,
such as Gemm's bias add. Only layers that compute are pinned: shuffles
(reshapes, whose second input may be a shape tensor), shapes and constants are
left to TensorRT. Every normalization, softmax and timestep-embedding matrix
product of the islands must have been found by position and pinned, else the
build stops (``unpinned_island_nodes``): they would otherwise run, wholly or in
part, in FP16 silently. That step
needs the ``onnx`` package (in the ``trt`` extra). TensorRT >= 10.12 marks
layer precision and output types deprecated in favour of strong typing
(a DeprecationWarning on each call); the build silences that warning for the
pinning only, and the strongly typed FP16 export remains the preferred build.

The plan's manifest is the export's manifest plus an ``engine`` section
(``engine_section_dict``); the runtime checks that section against the running
TensorRT and GPU before deserializing (runtime/backends/tensorrt/). The default
``--out`` is the ONNX's name with ``.plan``, so plan and ONNX share NAME.json;
a plan never overwrites the NAME.json of a different ONNX. That NAME.json then also holds the
plan's engine section, so the precision a file computes in is read for the file loaded
(``contract.compute_precision(manifest, path)``): the plan's ``engine.precision``, the ONNX
export's top-level ``precision``.
"""
from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from runtime.contract import (
    INPUT_T,
    INPUT_X,
    BatchRange,
    Condition,
    ManifestError,
    conditions_of,
    read_manifest,
    sample_shape_of,
    sha256_file,
    write_manifest,
)
from runtime.io import atomic_write
from runtime.backends.tensorrt import (ENGINE_SECTION_VERSION, BackendMissing, DeviceInfo,
                                       EngineMismatch, PlanNotLoadable, check_engine_io,
                                       parse_version,
                                       probe_cuda_device)
from runtime.backends.tensorrt.compat import check_encoder_io, encoder_io

MIN_TRT = (8, 5)  # JetPack 5; the name-based I/O API (set_input_shape, execute_async_v3)
FEATURE_MIN = {"builder_opt_level": (8, 6), "version_compatible": (8, 6)}
STRONGLY_TYPED_MIN = (10, 0)
NO_FP16_FLAG = (11, 0)
_INSTALL_BUILD = (
    "desktop/server: pip install tensorrt-cu12 (tensorrt-cu13 for CUDA 13; from NVIDIA's index, "
    "pypi.nvidia.com) polygraphy; Jetson: TensorRT comes with JetPack (sudo apt install "
    "python3-libnvinfer python3-libnvinfer-dev; use the system python3 or a venv made with "
    "--system-site-packages), then pip install polygraphy. The lean runtime wheels "
    "(tensorrt-lean-*) run plans but cannot build them"
)
ENGINES = Path("engines")
GET_CIFAR10 = (
    "to build the CIFAR-10 model, get the official weights (google/ddpm-cifar10-32 in diffusers "
    "format, downloaded yourself) and run: ddpm-export import --format diffusers ddpm-cifar10-32/ "
    "--out engines/cifar10.pt; ddpm-export export --checkpoint engines/cifar10.pt (add --fp16 for "
    "TensorRT >= 10); ddpm-export build --fp16"
)
# Every TensorRT attribute this module touches itself (the rest goes through Polygraphy);
# tests/ddpm_export/export/test_tensorrt_build.py checks each against TensorRT's Python binding
# sources at every version of tests/trt_fakes.py TRT_API_VERSIONS (tests/runtime/backends/trt_api/).
BUILD_TRT_API: Dict[str, Tuple[str, ...]] = {
    "": ("__version__", "OnnxParserFlag", "MemoryPoolType", "DataType", "LayerType",
         "TensorIOMode", "INetworkDefinition", "ILayer", "ITensor"),
    "OnnxParserFlag": ("NATIVE_INSTANCENORM",),
    "MemoryPoolType": ("WORKSPACE",),
    "DataType": ("FLOAT", "HALF", "INT32", "INT64"),  # INT64: check_engine_io, a >= 9 plan's labels
    "LayerType": ("SHAPE", "CONSTANT", "SHUFFLE"),
    "INetworkDefinition": ("num_layers", "get_layer"),
    "ILayer": ("name", "type", "precision", "num_inputs", "get_input", "num_outputs", "get_output",
               "set_output_type"),
    "ITensor": ("dtype", "name"),
}
BUILD_TRT_API_SINCE = {("", "OnnxParserFlag"): (8, 6), ("OnnxParserFlag", "NATIVE_INSTANCENORM"): (8, 6),
                       ("DataType", "INT64"): (9, 0)}  # read with getattr (compat._label_dtypes)
# used only by the FP16 builder-flag build, which TensorRT 11 no longer has (strong typing only)
BUILD_TRT_API_UNTIL = {("ILayer", "precision"): NO_FP16_FLAG, ("ILayer", "set_output_type"): NO_FP16_FLAG}


class BuildError(RuntimeError):
    """A build that cannot start or failed; nothing was written to --out."""


@dataclass
class BuildConfig:
    """What to build; the CLI options mirror these fields."""

    onnx: Optional[str] = None  # NAME.onnx (+ NAME.json) to build; None: export checkpoint first
    checkpoint: Optional[str] = None  # used only without onnx
    out: Optional[str] = None  # NAME.plan; None: the ONNX's path with .plan
    fp16: bool = False  # FP16 engine (builder flag or strongly typed, see precision_mode)
    min_batch: Optional[int] = None  # None: the export's batch_range (1 / 8 / 64 by default)
    opt_batch: Optional[int] = None
    max_batch: Optional[int] = None
    static_batch: Optional[int] = None  # min = opt = max = N; the runtime pads smaller batches
    timing_cache: Optional[str] = None  # read if it exists, written after the build
    builder_opt_level: Optional[int] = None  # 0..5; None: TensorRT's default (3)
    version_compatible: bool = False  # later TensorRT (full or dispatch runtime), >= 8.6
    workspace_mb: Optional[int] = None  # None: TensorRT's default (the GPU's memory)
    force: bool = False  # overwrite an existing --out (and re-export from --checkpoint)


# --- pure decisions (unit-tested) ---------------------------------------------
def resolve_profile(export_range: Any, min_batch: Optional[int] = None,
                    opt_batch: Optional[int] = None, max_batch: Optional[int] = None,
                    static_batch: Optional[int] = None) -> BatchRange:
    """The engine's batch profile: --static-batch N, else the export's range with overrides."""
    if static_batch is not None:
        given = {k: v for k, v in (("--min-batch", min_batch), ("--opt-batch", opt_batch),
                                   ("--max-batch", max_batch)) if v is not None}
        if given:
            raise BuildError(f"--static-batch {static_batch} sets min = opt = max; drop "
                             f"{', '.join(given)}")
        return _range(static_batch, static_batch, static_batch)
    base = BatchRange.coerce(export_range)
    mn = base.min if min_batch is None else min_batch
    mx = base.max if max_batch is None else max_batch
    opt = base.opt if opt_batch is None else opt_batch
    if opt_batch is None:  # keep the export's opt when it fits the new range, else clamp
        opt = min(max(opt, mn), mx)
    return _range(mn, opt, mx)


def _range(mn: int, opt: int, mx: int) -> BatchRange:
    try:
        return BatchRange(mn, opt, mx)
    except ManifestError as e:
        msg = str(e).replace("batch_range: ", "")
        raise BuildError(f"batch profile: {msg} (--min-batch/--opt-batch/--max-batch)") from None


def precision_mode(trt_version: str, fp16: bool, onnx_precision: str) -> str:
    """'fp32', 'fp16_builder_flag' or 'strongly_typed' (table in the module docstring)."""
    v = parse_version(trt_version)[:2]
    if onnx_precision == "fp16":
        if v < STRONGLY_TYPED_MIN:
            raise BuildError(
                f"TensorRT {trt_version} cannot build the FP16 graph (strongly typed networks "
                f"need TensorRT >= 10): build the float32 export with --fp16 (FP16 builder flag), "
                f"or pass --checkpoint and let build export the right graph")
        return "strongly_typed"
    if onnx_precision != "fp32":
        raise BuildError(f"export precision {onnx_precision!r}: expected 'fp32' or 'fp16'")
    if not fp16:
        return "fp32"
    if v >= NO_FP16_FLAG:
        raise BuildError(
            f"TensorRT {trt_version} has no FP16 builder flag (removed in 11): build the FP16 "
            f"export ('ddpm-export export --fp16', then --onnx NAME-fp16.onnx), or pass "
            f"--checkpoint and let build export it")
    return "fp16_builder_flag"


def export_precision(trt_version: str, fp16: bool) -> str:
    """The graph to export for a --checkpoint build: FP16 graph where builds are strongly typed."""
    return "fp16" if fp16 and parse_version(trt_version)[:2] >= STRONGLY_TYPED_MIN else "fp32"


def check_config(cfg: BuildConfig, trt_version: Optional[str] = None) -> None:
    """Argument checks that need no GPU; with trt_version also what that TensorRT supports."""
    if cfg.onnx and cfg.checkpoint:
        raise BuildError("pass at most one of --onnx NAME.onnx (an export) or --checkpoint CKPT "
                         "(exported first); with neither, the default export in engines/ is built")
    if cfg.out is not None and Path(cfg.out).suffix not in (".plan", ".engine"):
        raise BuildError(f"--out {cfg.out}: expected a NAME.plan (its manifest goes to NAME.json)")
    if cfg.builder_opt_level is not None and not 0 <= cfg.builder_opt_level <= 5:
        raise BuildError(f"--builder-opt-level {cfg.builder_opt_level}: expected 0..5 "
                         f"(TensorRT's default is 3)")
    if cfg.static_batch is not None:
        resolve_profile(None, cfg.min_batch, cfg.opt_batch, cfg.max_batch, cfg.static_batch)
    if cfg.workspace_mb is not None and cfg.workspace_mb < 1:
        raise BuildError(f"--workspace {cfg.workspace_mb}: expected a positive number of MB")
    if trt_version is None:
        return
    try:
        v = parse_version(trt_version)[:2]
    except ValueError as e:
        raise BuildError(f"the installed TensorRT reports tensorrt.__version__ {trt_version!r}, "
                         f"which this build cannot read ({e}); reinstall TensorRT: "
                         f"{_INSTALL_BUILD}") from None
    if v < MIN_TRT:
        raise BuildError(f"TensorRT {trt_version} is too old: this project needs >= 8.5 "
                         f"(JetPack 5.1); upgrade TensorRT (or JetPack)")
    for field, flag in (("builder_opt_level", "--builder-opt-level"),
                        ("version_compatible", "--version-compatible")):
        val = getattr(cfg, field)
        if val is not None and val is not False and v < FEATURE_MIN[field]:  # 0 == False: level 0 is set
            raise BuildError(f"{flag} needs TensorRT >= 8.6; this is {trt_version} (JetPack 5): "
                             f"drop {flag}")


def check_out_path(out: Path, onnx: Path, force: bool) -> None:
    """A plan reads NAME.json: refuse to overwrite the sidecar of a *different* NAME.onnx."""
    twin = out.with_suffix(".onnx")
    if twin.exists() and twin.resolve() != onnx.resolve():
        raise BuildError(
            f"{out.with_suffix('.json')} is the manifest of {twin}, a different export than "
            f"{onnx}, and {out} would share it: choose another --out, e.g. "
            f"{onnx.with_suffix('.plan')}")
    if out.exists() and not force:
        raise BuildError(f"{out} exists; pass --force to overwrite it or choose another --out")


def engine_section_dict(*, trt_version: str, device: DeviceInfo, mode: str, profile: BatchRange,
                        cfg: BuildConfig, onnx: Path, onnx_sha256: Optional[str], plan: Path,
                        plan_sha256: str, build_seconds: float, polygraphy_version: str,
                        native_instancenorm: Optional[bool], command: str) -> Dict[str, Any]:
    """The manifest's ``engine`` section (checked by runtime.backends.tensorrt.compat.engine_section)."""
    return {
        "section_version": ENGINE_SECTION_VERSION,
        "format": "tensorrt-plan",
        "plan": plan.name,
        "plan_sha256": plan_sha256,
        "tensorrt_version": str(trt_version),
        "device_name": device.name,
        "compute_capability": device.cc,
        "cuda_driver_version": device.driver_version,
        "precision": "fp32" if mode == "fp32" else "fp16",
        "precision_mode": mode,
        "profiles": [profile.to_dict()],
        "static_batch": cfg.static_batch,
        "version_compatible": bool(cfg.version_compatible),
        "hardware_compatibility": "none",
        "onnx": onnx.name,
        "onnx_sha256": onnx_sha256,
        "native_instancenorm": native_instancenorm,
        "builder_optimization_level": cfg.builder_opt_level,
        "workspace_mb": cfg.workspace_mb,
        "timing_cache": Path(cfg.timing_cache).name if cfg.timing_cache else None,
        "polygraphy": polygraphy_version,
        "build_seconds": round(float(build_seconds), 1),
        "command": command,
    }


def default_source(trt_version: str, fp16: bool, engines: Path = ENGINES
                   ) -> Tuple[Optional[Path], Optional[Path], str]:
    """(onnx, checkpoint, note) for a build without --onnx/--checkpoint.

    The cifar10 export in engines/ (the FP16 graph where builds are strongly typed, else the
    float32 graph), else engines/cifar10.pt (exported first), else the shipped digits export;
    note says which and, without a cifar10 model, how to get one.
    """
    want = export_precision(trt_version, fp16)
    for name in ("cifar10", "digits"):
        graphs = ([f"{name}-fp16.onnx", f"{name}.onnx"] if want == "fp16" else [f"{name}.onnx"])
        for g in graphs:
            onnx = engines / g
            if not onnx.is_file():
                continue
            try:  # a graph this TensorRT cannot build with these flags is no default
                precision_mode(trt_version, fp16, "fp16" if g.endswith("-fp16.onnx") else "fp32")
            except BuildError:
                continue
            note = f"no --onnx or --checkpoint: building the default export {onnx}"
            if name == "digits":
                note += (f" (the shipped digits model; no cifar10 export or checkpoint in "
                         f"{engines}/): {GET_CIFAR10}")
            return onnx, None, note
        ckpt = engines / f"{name}.pt"
        if name == "cifar10" and ckpt.is_file():
            return None, ckpt, f"no --onnx or --checkpoint: exporting and building {ckpt}"
    raise BuildError(f"no --onnx or --checkpoint, and no export in {engines}/ to build by default "
                     f"(engines/cifar10*.onnx or engines/digits.onnx); {GET_CIFAR10}")


# --- FP32 islands of the float32 graph (FP16 builder-flag builds) -----------------
ISLAND_NORM_OPS = ("InstanceNormalization", "GroupNormalization")  # GroupNorm as exported
ISLAND_OPS = ("Softmax",)  # attention softmax
# the U-Net's timestep embedding module (sinusoid + MLP), a class-conditional U-Net's class
# embedding, whose output is added to it, and a LeRobot policy U-Net's step embedding (the FP16
# export's island: build_lerobot_denoiser's fp32_modules)
ISLAND_SCOPES = ("temb", "class_embedding", "diffusion_step_encoder")
NO_COMPUTE_OPS = ("Constant", "Shape", "Identity")
# island nodes that must be pinned: the numerically sensitive operations themselves
ISLAND_MUST_PIN_OPS = ISLAND_NORM_OPS + ISLAND_OPS + ("Gemm", "MatMul")
_DEPRECATED_PRECISION = r".*Superseded by strong typing"  # TensorRT >= 10.12's warning text


def _scope(node_name: str) -> str:
    return node_name.rsplit("/", 1)[0] if "/" in node_name else ""


def fp32_island_nodes(graph: Any) -> List[str]:
    """Names of the nodes that the FP16 export keeps in float32 (ddpm_export.export.fp16).

    graph: an onnx GraphProto (or ModelProto). The rule, on the float32 export's node names
    (torch.onnx scopes, e.g. ``/model/block.0/norm1/InstanceNormalization``):
      - GroupNorm: every node in the scope of an InstanceNormalization or GroupNormalization
        node (the reshapes, the normalization and the affine Mul/Add);
      - the timestep embedding: every node under a ``temb`` scope (sinusoid and its MLP), or
        ``diffusion_step_encoder`` (a LeRobot policy's U-Net), and a class-conditional model's
        class embedding (its Gather, under ``class_embedding``);
      - softmax: every Softmax node (attention; a policy encoder's spatial softmax).
    Nodes that compute nothing (Constant, Shape, Identity) are left out.
    """
    graph = getattr(graph, "graph", graph)
    nodes = list(graph.node)
    norm_scopes = {_scope(n.name) for n in nodes if n.op_type in ISLAND_NORM_OPS}
    out = []
    for n in nodes:
        if n.op_type in NO_COMPUTE_OPS:
            continue
        scope = _scope(n.name)
        if (scope in norm_scopes or n.op_type in ISLAND_OPS
                or any(k in scope.split("/") for k in ISLAND_SCOPES)):
            out.append(n.name)
    return out


def node_of_layer(layer_name: str, node_names: set) -> Optional[str]:
    """The ONNX node a TensorRT layer comes from, by its name, which the ONNX parser sets to the
    node's name (a node that becomes several layers: the node name + a suffix)."""
    if layer_name in node_names:
        return layer_name
    for k in range(len(layer_name) - 1, 0, -1):  # the longest node name it starts with
        if layer_name[:k] in node_names:
            return layer_name[:k]
    return None


def island_layer(layer_name: str, islands: set, node_names: set) -> bool:
    """Whether a TensorRT layer belongs to an island node, by its name."""
    return node_of_layer(layer_name, node_names) in islands


def layers_between(network: Any, outputs: Iterable[str], graph_tensors: set) -> Optional[List[int]]:
    """Indices of the layers that compute the tensors ``outputs`` (one node's ONNX outputs) from
    the node's inputs: walked back from those tensors, stopping at any tensor with an ONNX name
    (graph_tensors: every node output, graph input and initializer name). The ONNX parser names
    every node output tensor after its ONNX name, and the tensors an importer makes inside a node
    keep TensorRT's "(Unnamed Layer* N) [...]_output" names, so this finds the layers an importer
    adds without naming them (Gemm's bias add: onnx-tensorrt 8.5-GA builtin_op_importers.cpp
    ~1655, 10.1-GA onnxOpImporters.cpp ~2076). None when no output is a tensor of the network."""
    producer: Dict[str, int] = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for k in range(layer.num_outputs):
            producer[layer.get_output(k).name] = i
    todo = [o for o in outputs if o in producer]
    if not todo:
        return None
    found: List[int] = []
    while todo:
        i = producer.get(todo.pop())
        if i is None or i in found:
            continue
        found.append(i)
        layer = network.get_layer(i)
        for k in range(layer.num_inputs):
            t = layer.get_input(k)
            if t is not None and t.name not in graph_tensors:
                todo.append(t.name)
    return sorted(found)


def unpinned_island_nodes(op_types: Mapping[str, str], islands: Iterable[str],
                          pinned_layers: Iterable[str], located: Optional[Iterable[str]] = None
                          ) -> List[str]:
    """Island nodes of the ops that must run in FP32 (ISLAND_MUST_PIN_OPS) with no pinned layer,
    or (located given: the island nodes found by graph position) not found by position: then
    the layers between their inputs and outputs cannot all have been pinned."""
    names = set(op_types)
    covered = {node_of_layer(name, names) for name in pinned_layers}
    if located is not None:
        covered &= set(located)
    return [n for n in islands if op_types.get(n) in ISLAND_MUST_PIN_OPS and n not in covered]


def pin_fp32_islands(network: Any, trt: Any, islands: Sequence[str], node_names: Iterable[str],
                     node_outputs: Optional[Mapping[str, Sequence[str]]] = None,
                     graph_tensors: Optional[set] = None) -> Tuple[List[str], List[str]]:
    """Set FP32 precision and FP32 float outputs on the island layers that compute; returns
    (their names, the island nodes found by graph position).

    A layer belongs to an island node when it is named after the node (the layer the node's
    importer registers) or, given node_outputs ({node: its ONNX output names}) and
    graph_tensors, lies between the node's inputs and outputs (``layers_between``): the layers
    an importer adds without registering have TensorRT's default names. Shuffles (a reshape's
    second input may be a shape tensor), shapes and constants are left to TensorRT."""
    islands, node_names = set(islands), set(node_names)
    floats = (trt.DataType.FLOAT, trt.DataType.HALF)
    skip = (trt.LayerType.SHAPE, trt.LayerType.CONSTANT, trt.LayerType.SHUFFLE)
    members = {i for i in range(network.num_layers)
               if island_layer(network.get_layer(i).name, islands, node_names)}
    located = []
    if node_outputs is not None:
        for node in sorted(islands):
            between = layers_between(network, node_outputs.get(node, ()), graph_tensors or set())
            if between is not None:
                located.append(node)
                members.update(between)
    pinned = []
    for i in sorted(members):
        layer = network.get_layer(i)
        if layer.type in skip:
            continue
        outs = [k for k in range(layer.num_outputs) if layer.get_output(k).dtype in floats]
        if not outs:
            continue
        with warnings.catch_warnings():  # TensorRT >= 10.12: deprecated, superseded by strong typing
            warnings.filterwarnings("ignore", message=_DEPRECATED_PRECISION, category=DeprecationWarning)
            layer.precision = trt.DataType.FLOAT
            for k in outs:
                layer.set_output_type(k, trt.DataType.FLOAT)
        pinned.append(layer.name)
    return pinned, located


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_NODE = re.compile(r"[Ii]n node\b.*")
_MEMORY = re.compile(r"workspace|out of memory|outofmemory|insufficient memory|"
                     r"cudaErrorMemoryAllocation|requested amount of gpu memory", re.I)


def explain_failure(log_text: str, onnx: Path, trt_version: str, cfg: BuildConfig,
                    profile: BatchRange, log_path: Path) -> str:
    """One message from Polygraphy's build log: parse error (with the node), memory, or other."""
    log_text = _ANSI.sub("", log_text)  # Polygraphy colors its lines when 'colored' is installed
    errors = [ln.strip() for ln in log_text.splitlines()
              if ln.lstrip().startswith(("[E]", "[!]")) or "ERROR" in ln]
    for ln in errors:
        m = _NODE.search(ln)
        if m:
            return (f"TensorRT {trt_version} cannot parse {onnx}: {m.group(0)[:300]}. An operator "
                    f"TensorRT does not support usually means this TensorRT is older than the "
                    f"export needs: re-export with --opset 17 (the default; TensorRT 8.5 / JetPack "
                    f"5) or upgrade TensorRT; full log {log_path}")
    for ln in errors:
        if _MEMORY.search(ln):
            ws = f"{cfg.workspace_mb} MB" if cfg.workspace_mb else "TensorRT's default"
            return (f"TensorRT {trt_version} ran out of memory building the engine ({ln[:200]}): "
                    f"raise --workspace (now {ws}), lower --max-batch (now {profile.max}) or "
                    f"close other GPU programs; full log {log_path}")
    last = errors[-1][:300] if errors else "no error in the log"
    return f"TensorRT {trt_version} build of {onnx} failed: {last}; full log {log_path}"


# --- the build ----------------------------------------------------------------
def load_backend() -> SimpleNamespace:
    """tensorrt + Polygraphy's loaders; BackendMissing says what to install."""
    try:
        import tensorrt as trt  # the full library: the lean runtime cannot build
    except (ImportError, OSError) as e:
        raise BackendMissing(f"building needs TensorRT, which is not installed "
                             f"({str(e).splitlines()[0] if str(e) else type(e).__name__}). "
                             f"{_INSTALL_BUILD}") from e
    try:
        import polygraphy
        from polygraphy.backend.common import SaveBytes
        from polygraphy.backend.trt import (CreateConfig, EngineBytesFromNetwork, EngineFromBytes,
                                            NetworkFromOnnxPath, PostprocessNetwork, Profile)
        from polygraphy.exception import PolygraphyException
        from polygraphy.logger import G_LOGGER
    except ImportError as e:
        raise BackendMissing("building needs Polygraphy: pip install polygraphy (or "
                             "'ddpm-export[trt]')") from e
    return SimpleNamespace(trt=trt, version=trt.__version__, polygraphy=polygraphy.__version__,
                           NetworkFromOnnxPath=NetworkFromOnnxPath, CreateConfig=CreateConfig,
                           PostprocessNetwork=PostprocessNetwork,
                           EngineBytesFromNetwork=EngineBytesFromNetwork,
                           EngineFromBytes=EngineFromBytes, SaveBytes=SaveBytes,
                           Profile=Profile, PolygraphyException=PolygraphyException,
                           G_LOGGER=G_LOGGER)


def onnx_from_checkpoint(checkpoint: str, precision: str, force: bool) -> Path:
    """engines/NAME(-fp16).onnx for the checkpoint: reused when it is that export, else made."""
    out = Path("engines") / f"{Path(checkpoint).stem}{'-fp16' if precision == 'fp16' else ''}.onnx"
    if out.exists() and not force:
        try:
            m = read_manifest(out)
        except (ManifestError, OSError):
            m = None
        if (m and m["precision"] == precision
                and m["source"].get("checkpoint_sha256") == sha256_file(checkpoint)):
            return out
        raise BuildError(f"{out} exists but is not the {precision} export of {checkpoint}; pass "
                         f"--force to re-export it, or --onnx to build it as it is")
    from ddpm_export.export.onnx_export import export_onnx  # torch: only for this path

    export_onnx(checkpoint, out, fp16=precision == "fp16",
                command=f"ddpm-export build --checkpoint {checkpoint} (export step)")
    return out


def _open_build_log(logger: Any, path: Path) -> Tuple[bool, Path, Any]:
    """Point Polygraphy's logger at path (uncolored) unless the caller set its own log file."""
    if logger.log_file:  # the caller's own Polygraphy log: read that one, never reopen (truncate) it
        return False, Path(logger.log_file), None
    colors = getattr(logger, "colors", None)
    logger.colors = False  # with 'colored' installed every line would carry ANSI codes
    logger.log_file = str(path)
    return True, path, colors


def _close_build_log(logger: Any, colors: Any) -> None:
    handle = getattr(logger, "_log_file", None)  # setting log_file = None does not close it
    logger.log_file = None
    if handle is not None:
        handle.close()
    logger.colors = colors


def build_engine(cfg: BuildConfig, command: str = "", log=print) -> Dict[str, Any]:
    """Build cfg.out from cfg.onnx, cfg.checkpoint or the default export; returns the manifest.

    A policy export (a ``policy`` section: a denoiser and its observation encoder,
    docs/policies.md) builds both: NAME.plan and NAME-encoder.plan beside it, with the same
    batch profile, and ties the encoder plan to the manifest (``policy.encoder.plan``: file,
    sha256, engine section). Both are built before either is written."""
    check_config(cfg)
    pg = load_backend()
    device = probe_cuda_device()
    check_config(cfg, pg.version)
    if cfg.onnx:
        onnx = Path(cfg.onnx)
        if not onnx.is_file():
            raise BuildError(f"--onnx {onnx}: no such file; export one with 'ddpm-export export'")
    else:
        checkpoint = cfg.checkpoint
        if not checkpoint:
            default_onnx, default_ckpt, note = default_source(pg.version, cfg.fp16)
            log(note)
            checkpoint = str(default_ckpt) if default_ckpt else None
        if checkpoint:
            onnx = onnx_from_checkpoint(checkpoint, export_precision(pg.version, cfg.fp16),
                                        cfg.force)
        else:
            onnx = default_onnx
    manifest = read_manifest(onnx)  # refuses an ONNX whose bytes differ from its NAME.json
    mode = precision_mode(pg.version, cfg.fp16, manifest["precision"])
    profile = resolve_profile(manifest["batch_range"], cfg.min_batch, cfg.opt_batch,
                              cfg.max_batch, cfg.static_batch)
    out = Path(cfg.out) if cfg.out else onnx.with_suffix(".plan")
    check_out_path(out, onnx, cfg.force)
    encoder = policy_encoder_job(manifest, onnx, out, cfg, pg.version) if "policy" in manifest else None
    out.parent.mkdir(parents=True, exist_ok=True)
    log(f"building {out} from {onnx}: TensorRT {pg.version}, {mode}, batch "
        f"{profile.min}/{profile.opt}/{profile.max}, on {device.name} ({device.cc})")

    trt = pg.trt
    sample_shape, conditions = sample_shape_of(manifest), conditions_of(manifest)
    plans = [(out, onnx, mode) + plan_bytes(
        pg, cfg, onnx, mode, profile, profile_inputs(sample_shape, conditions),
        lambda engine: check_engine_io(engine, trt, sample_shape, conditions), out.with_suffix(".build.log"))]
    if encoder is not None:
        log(f"building the policy's observation encoder {encoder.out} from {encoder.onnx}: "
            f"{encoder.mode} ({encoder.why})")
        plans.append((encoder.out, encoder.onnx, encoder.mode) + plan_bytes(
            pg, cfg, encoder.onnx, encoder.mode, profile, encoder.inputs,
            lambda engine: check_encoder_io(engine, trt, encoder.spec),
            encoder.out.with_suffix(".build.log")))
    for path, _, _, data, _, _ in plans:
        try:
            atomic_write(path, lambda tmp: pg.SaveBytes(data, str(tmp))())
        except Exception as e:  # noqa: BLE001 - one message, as for the build
            raise BuildError(f"writing {path} failed: {type(e).__name__}: {e}") from e
    sections = []
    for path, src, m, _, pinned, seconds in plans:
        sections.append(engine_section_dict(
            trt_version=pg.version, device=device, mode=m, profile=profile, cfg=cfg, onnx=src,
            onnx_sha256=sha256_file(src), plan=path, plan_sha256=sha256_file(path),
            build_seconds=seconds, polygraphy_version=pg.polygraphy,
            native_instancenorm=native_instancenorm_used(pg.version, cfg.version_compatible),
            command=command))
        if m == "fp16_builder_flag":
            sections[-1]["fp32_pinned_layers"] = len(pinned)
    manifest["engine"] = sections[0]
    if encoder is not None:
        e = sections[1]
        manifest["policy"]["encoder"]["plan"] = {"file": e["plan"], "sha256": e["plan_sha256"], "engine": e,
                                                 "fp16_note": encoder.why}
    write_manifest(out, manifest)
    return manifest


@dataclass
class EncoderJob:
    """What building a policy's observation encoder takes (``policy_encoder_job``)."""

    onnx: Path  # NAME-encoder.onnx, the manifest's policy.encoder.file beside the denoiser
    out: Path  # the plan: <out's stem>-encoder.plan beside out
    mode: str  # precision_mode of the encoder's own graph
    why: str  # why that precision (a state-only encoder builds in float32)
    inputs: List[Tuple[str, Tuple[int, ...]]]  # the profile's inputs (per-sample shapes)
    spec: Mapping[str, Any]  # policy.encoder


def policy_encoder_job(manifest: Mapping[str, Any], onnx: Path, out: Path, cfg: BuildConfig,
                       trt_version: str) -> EncoderJob:
    """Check, before anything is built, that a policy's encoder can be built with the
    denoiser: its ONNX is there and is the manifest's (sha256), its plan's path is free, and
    its precision. An image encoder follows --fp16 (its own graph's precision, as the
    denoiser's: FP16 graph strongly typed, else the builder flag with GroupNorm and the
    spatial softmax pinned to FP32); a state-only encoder (a concatenation) builds in float32,
    as FP16 would gain nothing."""
    spec = manifest["policy"]["encoder"]
    src = onnx.with_name(spec["file"])
    if not src.is_file():
        raise BuildError(f"{onnx} is a policy: its observation encoder {src} is missing; it is written "
                         f"beside {onnx.name} by 'ddpm-export export': copy both files")
    if sha256_file(src) != spec["sha256"]:
        raise BuildError(f"{src}: sha256 differs from {onnx.with_suffix('.json').name}'s policy.encoder."
                         f"sha256: the encoder and the denoiser come from different exports; re-export both")
    enc_out = out.with_name(out.stem + "-encoder" + out.suffix)
    if enc_out.exists() and not cfg.force:
        raise BuildError(f"{enc_out} exists (the policy's encoder plan); pass --force to overwrite it or "
                         f"choose another --out")
    precision = spec.get("precision", "fp32")
    if manifest["policy"].get("image_features"):
        fp16, why = cfg.fp16, ("an image encoder, FP16 with FP32 islands" if cfg.fp16 else "float32 build")
    else:
        fp16, why = False, ("state-only encoder (a concatenation): float32, FP16 would gain nothing"
                            if cfg.fp16 else "float32 build")
    try:
        mode = precision_mode(trt_version, fp16, precision)
    except BuildError as e:
        raise BuildError(f"the policy's encoder {src} ({precision} graph): {e}") from None
    inputs = [(n, s) for n, s, is_input in encoder_io(spec) if is_input]
    return EncoderJob(src, enc_out, mode, why, inputs, spec)


def plan_bytes(pg: SimpleNamespace, cfg: BuildConfig, onnx: Path, mode: str, profile: BatchRange,
               inputs: Sequence[Tuple[str, Tuple[int, ...]]], check_io, log_path: Path
               ) -> Tuple[bytes, List[str], float]:
    """Build one ONNX graph into plan bytes: (bytes, the layers pinned to FP32, seconds).

    inputs: (name, per-sample shape) of every input, all with the profile's batches;
    check_io(engine) -> its profile, raising on I/O that is not the manifest's. Nothing is
    written but Polygraphy's log at log_path."""
    trt = pg.trt
    net_kw: Dict[str, Any] = {}
    if cfg.version_compatible:  # required there; elsewhere the parser's default (may be faster)
        net_kw["flags"] = [trt.OnnxParserFlag.NATIVE_INSTANCENORM]
    if mode == "strongly_typed":
        net_kw["strongly_typed"] = True
    prof = pg.Profile()
    for name, shape in inputs:
        prof.add(name, **{k: (b,) + tuple(shape) for k, b in
                          (("min", profile.min), ("opt", profile.opt), ("max", profile.max))})
    cfg_kw: Dict[str, Any] = {"profiles": [prof]}
    network = pg.NetworkFromOnnxPath(str(onnx), **net_kw)
    pinned: List[str] = []
    if mode == "fp16_builder_flag":
        cfg_kw["fp16"] = True
        cfg_kw["precision_constraints"] = "obey"  # the FP32 islands stay FP32
        network = pg.PostprocessNetwork(network, func=_island_pinner(onnx, pg.version, trt, pinned),
                                        name="pin FP32 islands")
    if cfg.timing_cache:
        cfg_kw["load_timing_cache"] = cfg.timing_cache
    if cfg.builder_opt_level is not None:
        cfg_kw["builder_optimization_level"] = cfg.builder_opt_level
    if cfg.version_compatible:
        cfg_kw["version_compatible"] = True
    if cfg.workspace_mb:
        cfg_kw["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: cfg.workspace_mb << 20}

    own_log, log_path, colors = _open_build_log(pg.G_LOGGER, log_path)
    t0 = time.time()
    try:
        config = pg.CreateConfig(**cfg_kw)
        data = pg.EngineBytesFromNetwork(network, config, save_timing_cache=cfg.timing_cache)()
        # the bytes are what we write; deserialize once only to check the I/O, then drop it.
        # (Polygraphy allows host code here: this is the plan we have just built ourselves.)
        engine = pg.EngineFromBytes(data)()
        got = check_io(engine)
        del engine
        if got != profile:
            raise BuildError(f"the built engine's profile {got.to_dict()} is not the requested "
                             f"{profile.to_dict()}")
    except pg.PolygraphyException:
        if own_log:
            _close_build_log(pg.G_LOGGER, colors)
            own_log = False
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        raise BuildError(explain_failure(text, onnx, pg.version, cfg, profile, log_path)) from None
    except (BuildError, EngineMismatch, PlanNotLoadable):
        raise
    except Exception as e:  # a TensorRT binding error is not Polygraphy's: still one message
        raise BuildError(f"TensorRT {pg.version} build of {onnx} failed: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}; full log {log_path}") from e
    finally:
        if own_log:
            _close_build_log(pg.G_LOGGER, colors)
    return data, pinned, time.time() - t0


def _island_pinner(onnx: Path, trt_version: str, trt: Any, pinned: List[str]):
    """The PostprocessNetwork function of an FP16 builder-flag build of onnx: pins its FP32
    islands (fp32_island_nodes) and stops the build when one was not found; fills pinned."""
    try:
        import onnx as onnx_lib
    except ImportError as e:
        raise BackendMissing(
            f"an FP16 build from the float32 export ({onnx}, TensorRT {trt_version}: the FP16 "
            f"builder flag) reads the ONNX graph to keep GroupNorm, softmax and the timestep "
            f"embedding in FP32, and needs the onnx package ({e}): pip install onnx (it is in "
            f"'ddpm-export[trt]'); on TensorRT >= 10 the FP16 export builds without it") from None

    graph = onnx_lib.load(str(onnx), load_external_data=False).graph
    islands, names = fp32_island_nodes(graph), [n.name for n in graph.node]
    op_types = {n.name: n.op_type for n in graph.node}
    node_outputs = {n.name: [o for o in n.output if o] for n in graph.node}
    graph_tensors = ({o for outs in node_outputs.values() for o in outs}
                     | {i.name for i in graph.input} | {i.name for i in graph.initializer})

    def pin(network):
        got, located = pin_fp32_islands(network, trt, islands, names, node_outputs, graph_tensors)
        pinned[:] = got
        missed = unpinned_island_nodes(op_types, islands, pinned, located)
        if missed:
            raise BuildError(
                f"{len(missed)} FP32-island nodes of {onnx} were not found in TensorRT's "
                f"network, by layer name and by their output tensors (e.g. "
                f"{', '.join(missed[:3])}), so this FP16 builder-flag build could run them, "
                f"or layers of them, in FP16; build the FP16 export strongly typed "
                f"(TensorRT >= 10: ddpm-export export --fp16) or build without --fp16")
        return network
    return pin


def profile_inputs(sample_shape: Sequence[int],
                   conditions: Sequence[Condition] = ()) -> List[Tuple[str, Tuple[int, ...]]]:
    """(input name, per-sample shape) for every engine input the optimization profile covers:
    x_t, t and each condition input, all with one batch range. The runtime runs guidance as one
    call at batch 2N with half the profile's max as its default batch, so a plan's max is the
    2N of its largest guided batch."""
    return ([(INPUT_X, tuple(int(d) for d in sample_shape)), (INPUT_T, ())]
            + [(c.name, tuple(c.shape)) for c in conditions])


def native_instancenorm_used(trt_version: str, version_compatible: bool) -> Optional[bool]:
    """Whether the parser uses TensorRT's own InstanceNorm layer: set for version-compatible
    builds (required there); otherwise the parser's default, which is on from TensorRT 10 and
    off (the plugin) on 8.6/9 ("may be slower" per its 8.6 documentation); None on 8.5."""
    v = parse_version(trt_version)[:2]
    if v < (8, 6):
        return None
    return True if version_compatible else v >= (10, 0)
