"""TensorRT compatibility policy: which plan runs with which TensorRT and GPU.

Reads the ``engine`` section that ``ddpm-export build`` writes into a plan's
manifest and decides, before any TensorRT call, whether this machine can run
the plan; also checks a deserialized engine's I/O against the export contract.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from runtime.backends.tensorrt.cuda import BackendMissing, DeviceInfo
from runtime.contract import INPUT_T, INPUT_X, OUTPUT, BatchRange, Condition, ManifestError

# The modules that can run a plan, in the order tried; names: TensorRT 8.6-10 wheels, 11.x wheels.
# "full" runs any plan its version built and version-compatible plans per the matrix below;
# "dispatch" runs version-compatible plans per that matrix (it loads the lean runtime the plan
# embeds: NVIDIA's own version-compatibility sample imports it); "lean" runs version-compatible
# plans built by its own version only (NvInferRuntime.h, IRuntime::loadRuntime). Neither of
# the latter two has a plugin registry to fill (init_libnvinfer_plugins is a full-bindings name).
FULL, DISPATCH, LEAN = "full", "dispatch", "lean"
RUNTIME_MODULES = (("tensorrt", FULL), ("tensorrt_dispatch", DISPATCH),
                   ("tensorrt_dispatch_bindings", DISPATCH), ("tensorrt_lean", LEAN),
                   ("tensorrt_lean_bindings", LEAN))
LEAN_MODULES = tuple(m for m, kind in RUNTIME_MODULES if kind != FULL)
ENGINE_SECTION_VERSION = 1
_INSTALL = (
    "desktop/server: pip install tensorrt-cu12 (tensorrt-cu13 for CUDA 13; the wheels come from "
    "NVIDIA's index, pypi.nvidia.com); Jetson: TensorRT comes with JetPack (sudo apt install "
    "python3-libnvinfer; use the system python3 or a venv made with --system-site-packages)"
)


class EngineMismatch(RuntimeError):
    """A plan that cannot run with this TensorRT or on this GPU (known before deserializing):
    another machine's plan, so running the ONNX export instead is right. A plan that does not
    match its own NAME.json is PlanManifestMismatch instead."""


class PlanNotLoadable(RuntimeError):
    """TensorRT refused a plan whose manifest says it fits this TensorRT and GPU: the file is
    damaged or not the plan its NAME.json describes (or needs what this runtime lacks)."""


class PlanManifestMismatch(PlanNotLoadable):
    """The deserialized plan is not the one its NAME.json describes (I/O tensors, image shape,
    batch profile): plan and manifest were mixed up. Never a reason to fall back to the ONNX
    export (which EngineMismatch, "built for another TensorRT or GPU", is): rebuild the plan."""


class HostCodeNotAllowed(PermissionError):
    """A version-compatible plan (it embeds host code) loaded without allow_host_code=True."""


def import_tensorrt(allow_lean: bool = False) -> Tuple[Any, str]:
    """(module, kind): ``tensorrt`` ("full"), else with allow_lean (a version-compatible plan)
    the dispatch or the lean runtime ("dispatch" / "lean")."""
    errors = []
    for name, kind in RUNTIME_MODULES:
        if kind != FULL and not allow_lean:
            continue
        try:
            return __import__(name), kind
        except (ImportError, OSError) as e:  # OSError: bindings without libnvinfer
            errors.append(f"{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    lean = ("; this plan is version-compatible, so the dispatch runtime also runs it: pip install "
            "tensorrt-dispatch-cu12 (or, for a plan built by exactly that version, "
            "tensorrt-lean-cu12)") if allow_lean else ""
    raise BackendMissing(f"TensorRT is not installed ({'; '.join(errors)}). {_INSTALL}{lean}")


# --- manifest engine section and compatibility --------------------------------
# Which running TensorRT may load a version-compatible plan, as NVIDIA documents it:
#   "Version compatibility is supported from version 8.6; the plan must be built with a version
#    at least 8.6 or higher, and the runtime must be 8.6 or higher." "engines built with
#    TensorRT 8 work with TensorRT 9 and TensorRT 10 runtimes. However, engines built with
#    newer versions (TensorRT 9 or 10) do not work with older runtimes (TensorRT 8)."
#    (TensorRT 10 Developer Guide, Advanced Topics > Version Compatibility,
#    https://docs.nvidia.com/deeplearning/tensorrt/10.16.1/inference-library/version-compatibility.html)
#   "engines built with TensorRT 10 work with TensorRT 11 ... engines built with version
#    compatibility enabled using TensorRT 11.0 will be compatible with TensorRT 11.1 and later
#    11.x versions." (TensorRT 11.1, Engine Compatibility,
#    https://docs.nvidia.com/deeplearning/tensorrt/11.1.0/inference-library/engine-compatibility.html)
#   "Two combinations are supported across major versions: TensorRT 10 version-compatible
#    engines can run with a TensorRT 11 runtime, and TensorRT 8 version-compatible engines can
#    run with a TensorRT 10 runtime. No other combination across major versions is supported."
#    (TensorRT 11.4.1 Support Matrix, Engine Portability,
#    https://docs.nvidia.com/deeplearning/tensorrt/11.4.1/getting-started/support-matrix.html)
# built major -> the newest running major documented to load it (never an older one). A 9.x
# plan stays on 9.x: no document lists 9 -> 10. 8 -> 9 is the 10.16 guide's own example.
VERSION_COMPAT_MIN = (8, 6)
VERSION_COMPAT_NEWEST_MAJOR = {8: 10, 9: 9, 10: 11, 11: 11}
VERSION_COMPAT_SOURCE = ("TensorRT's version-compatibility documentation (8.6 -> 8.x/9/10, "
                         "9 -> 9.x, 10 -> 10.x/11, 11 -> 11.x; 11.4.1 support matrix)")


def version_compatible_range(built: Tuple[int, ...]) -> Tuple[Tuple[int, int], int]:
    """(oldest running (major, minor), newest running major) documented for a plan built by built."""
    return tuple(built[:2]), VERSION_COMPAT_NEWEST_MAJOR.get(built[0], built[0])


def parse_version(v: Any) -> Tuple[int, ...]:
    """'10.3.0.30' -> (10, 3, 0, 30), '8.5' -> (8, 5, 0); raises ValueError for anything else.

    The build number (4th component) is kept when given: TensorRT checks it too when it
    deserializes a plan that is not version-compatible. A pre-release or local tag ends the
    numbers ('10.0.0b6', TensorRT 10.0 EA's __version__ -> (10, 0, 0); '8.6.1.post1' ->
    (8, 6, 1)); ``version_tag`` keeps it for the exact comparison."""
    nums = []
    for part in str(v).split(".")[:4]:
        digits = len(part) - len(part.lstrip("0123456789"))
        if digits == 0:
            break
        nums.append(int(part[:digits]))
        if digits < len(part):  # a tag such as 'b6' or 'rc1': no further numbers count
            break
    if len(nums) < 2:
        raise ValueError(f"version {v!r}: expected MAJOR.MINOR[.PATCH[.BUILD]] (numbers, e.g. "
                         f"'10.3.0.30', optionally with a pre-release tag such as '10.0.0b6')")
    return tuple(nums) + (0,) * (3 - len(nums))


def version_tag(v: Any) -> str:
    """The part of a version after its numbers ('' for '10.3.0.30', 'b6' for '10.0.0b6')."""
    m = re.match(r"\d+(?:\.\d+){0,3}", str(v))
    return str(v)[m.end():].lstrip(".") if m else str(v)


def same_build(built: Tuple[int, ...], running: Tuple[int, ...]) -> bool:
    """Equal on every component both give (the build number only when both record it)."""
    n = min(len(built), len(running))
    return built[:n] == running[:n]


def engine_section(manifest: Mapping[str, Any]) -> Dict[str, Any]:
    """The validated ``engine`` section of a plan's manifest (ManifestError if absent/bad)."""
    fix = "rebuild the plan with 'ddpm-export build' (it writes the engine section into NAME.json)"
    e = manifest.get("engine")
    if not isinstance(e, Mapping):
        raise ManifestError(f"manifest has no 'engine' section: this NAME.json describes an ONNX "
                            f"export, not a TensorRT plan; {fix}")
    for key, typ in (("tensorrt_version", str), ("compute_capability", str), ("device_name", str),
                     ("precision", str), ("version_compatible", bool), ("profiles", list)):
        if not isinstance(e.get(key), typ):
            raise ManifestError(f"manifest engine.{key}: received {e.get(key, '<missing>')!r}, "
                                f"expected a {typ.__name__}; {fix}")
    try:
        parse_version(e["tensorrt_version"])
        parse_version(e["compute_capability"])
        if len(e["profiles"]) != 1:
            raise ValueError(f"profiles: received {len(e['profiles'])}, expected exactly 1")
        BatchRange.coerce(e["profiles"][0])
    except (ValueError, ManifestError) as err:
        raise ManifestError(f"manifest engine section: {err}; {fix}") from None
    return dict(e)


def check_engine_compat(engine: Mapping[str, Any], trt_version: str, device: DeviceInfo,
                        kind: str = FULL) -> List[str]:
    """Raise EngineMismatch when the plan cannot run here; return warnings for what may be slow.

    kind: the running module's kind (``import_tensorrt``): "full", "dispatch" or "lean"."""
    try:
        running = parse_version(trt_version)
    except ValueError as e:
        raise BackendMissing(f"the installed TensorRT reports the version {trt_version!r}, which "
                             f"is not a TensorRT version ({e}): reinstall TensorRT ({_INSTALL})") from None
    built = parse_version(engine["tensorrt_version"])
    b, r = str(engine["tensorrt_version"]), str(trt_version)
    vc = bool(engine["version_compatible"])
    rebuild = "rebuild it on this machine with 'ddpm-export build'"
    if kind != FULL and not vc:
        raise EngineMismatch(
            f"the plan was built without --version-compatible, and only TensorRT's {kind} runtime "
            f"({r}) is installed, which runs version-compatible plans only: install TensorRT {b} "
            f"({_INSTALL}) or {rebuild} --version-compatible")
    if vc and built[:2] < VERSION_COMPAT_MIN:
        raise EngineMismatch(
            f"the manifest says the plan is version-compatible, but it was built with TensorRT "
            f"{b}, and version compatibility exists from TensorRT 8.6: {rebuild}")
    tagged = version_tag(engine["tensorrt_version"]) or version_tag(trt_version)
    if kind == LEAN and (not same_build(built, running) or (tagged and b != r)):
        raise EngineMismatch(
            f"the plan was built with TensorRT {b} and this is TensorRT's lean runtime {r}, "
            f"which runs version-compatible plans built by its own version only: install the "
            f"lean runtime {b}, or the dispatch runtime (pip install tensorrt-dispatch-cu12), "
            f"which runs version-compatible plans of older versions, or {rebuild}")
    if vc and kind != LEAN:
        oldest, newest_major = version_compatible_range(built)
        if running[:2] < oldest:
            raise EngineMismatch(
                f"the plan was built with TensorRT {b}; version-compatible plans run on that "
                f"version or later, and this is TensorRT {r}: upgrade TensorRT or {rebuild}")
        if running[0] > newest_major:
            raise EngineMismatch(
                f"the plan was built with TensorRT {b} (version-compatible), which runs on "
                f"TensorRT {oldest[0]}.{oldest[1]} through {newest_major}.x per "
                f"{VERSION_COMPAT_SOURCE}; this is TensorRT {r}: {rebuild}")
    if not vc and (not same_build(built, running) or (tagged and b != r)):
        raise EngineMismatch(
            f"the plan was built with TensorRT {b} and this is TensorRT {r}: a plan runs only on "
            f"the TensorRT version (and build) that built it; {rebuild} (or build with "
            f"--version-compatible)")
    want = parse_version(engine["compute_capability"])[:2]
    got = device.compute_capability
    hw = engine.get("hardware_compatibility") or "none"
    if hw == "ampere_plus":
        if got < (8, 0):
            raise EngineMismatch(
                f"the plan is hardware-compatible for Ampere and newer (compute capability >= 8.0); "
                f"this GPU, {device.name}, has {device.cc}: {rebuild}")
    elif tuple(got) != tuple(want):
        raise EngineMismatch(
            f"the plan was built for compute capability {want[0]}.{want[1]} "
            f"({engine['device_name']}); this GPU, {device.name}, has {device.cc}: TensorRT plans "
            f"are specific to the GPU architecture; {rebuild}")
    notes = []
    if engine["device_name"] != device.name:
        notes.append(
            f"the plan was built on {engine['device_name']} and runs on {device.name} (compute "
            f"capability {device.cc} both): it works, but its kernels were timed on the other GPU; "
            f"rebuild here for best speed")
    return notes


def _label_dtypes(trt: Any) -> Dict[Any, str]:
    """The TensorRT dtypes a class-label input may have in a plan, by name. TensorRT 8.x has
    no INT64 I/O tensors: its ONNX parser maps an int64 graph input to INT32 (onnx-tensorrt
    convertDtype, release/8.x), so an 8.x plan takes labels as INT32; the parsers that have
    INT64 (TensorRT 9/10 on) keep it INT64. A version-compatible 8.6 plan run by TensorRT 10
    still has INT32 labels, so either is accepted where the running module binds it."""
    out = {trt.DataType.INT32: "int32"}
    int64 = getattr(trt.DataType, "INT64", None)  # not bound before TensorRT 9
    if int64 is not None:
        out[int64] = "int64"
    return out


def _want_io(trt: Any, conditions: Sequence[Condition]) -> Dict[str, Tuple[Any, Dict[Any, str]]]:
    """name -> (mode, {accepted TensorRT dtype: numpy name}) for every I/O tensor of the contract."""
    M, D = trt.TensorIOMode, trt.DataType
    want = {INPUT_X: (M.INPUT, {D.FLOAT: "float32"}), INPUT_T: (M.INPUT, {D.INT32: "int32"}),
            OUTPUT: (M.OUTPUT, {D.FLOAT: "float32"})}
    for c in conditions:
        want[c.name] = (M.INPUT, _label_dtypes(trt) if c.kind == "class_label" else {D.FLOAT: "float32"})
    return want


def check_engine_io(engine: Any, trt: Any, sample_shape: Sequence[int],
                    conditions: Sequence[Condition] = ()) -> BatchRange:
    """The deserialized engine's I/O must be the contract's for this manifest (x_t, t, eps and
    one input per condition, their modes, dtypes, shapes and batch profiles); returns its batch
    profile. Any difference is PlanManifestMismatch."""
    want = _want_io(trt, conditions)
    shapes = {INPUT_X: tuple(sample_shape), OUTPUT: tuple(sample_shape), INPUT_T: ()}
    shapes.update({c.name: tuple(c.shape) for c in conditions})
    return check_io(engine, {n: (mode, dtypes, shapes[n]) for n, (mode, dtypes) in want.items()}, INPUT_X)


def check_io(engine: Any, want: Mapping[str, Tuple[Any, Mapping[Any, str], Tuple[int, ...]]],
             first: str) -> BatchRange:
    """Any plan's I/O against what its manifest says: want maps every I/O tensor's name to
    (TensorRT mode, {accepted TensorRT dtype: numpy name}, per-sample shape); every input has
    the batch profile of input ``first``, which is returned. Any difference is PlanManifestMismatch."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    fix = "the plan and its NAME.json do not belong together: rebuild with 'ddpm-export build'"
    if sorted(names) != sorted(want):
        missing, extra = sorted(set(want) - set(names)), sorted(set(names) - set(want))
        raise PlanManifestMismatch(
            f"engine I/O tensors {names}, expected {sorted(want)} (from its manifest"
            + (f"; missing {missing}" if missing else "") + (f"; not in the manifest {extra}" if extra else "")
            + f"); {fix}")
    for name, (mode, dtypes, _) in want.items():
        got_mode, got_dtype = engine.get_tensor_mode(name), engine.get_tensor_dtype(name)
        if got_mode != mode or got_dtype not in dtypes:
            raise PlanManifestMismatch(f"engine tensor {name!r} is {got_mode} {got_dtype}, expected "
                                       f"{mode} {' or '.join(dtypes.values())}; {fix}")
    for name, (_, _, per_sample) in want.items():
        dims = tuple(engine.get_tensor_shape(name))
        if len(dims) != len(per_sample) + 1 or tuple(dims[1:]) != tuple(per_sample):
            raise PlanManifestMismatch(f"engine tensor {name!r} has shape {dims}, expected "
                                       f"(batch{''.join(', ' + str(d) for d in per_sample)}); {fix}")
    inputs = [n for n, (mode, _, _) in want.items() if mode == want[first][0]]
    mn, opt, mx = (tuple(s) for s in engine.get_tensor_profile_shape(first, 0))
    profile = BatchRange(mn[0], opt[0], mx[0])
    for name in inputs:
        got = [tuple(s) for s in engine.get_tensor_profile_shape(name, 0)]
        expect = [(b,) + tuple(want[name][2]) for b in (profile.min, profile.opt, profile.max)]
        if got != expect:
            raise PlanManifestMismatch(f"engine input {name!r} has the profile (min, opt, max) "
                                       f"{got}, expected {expect} ({first}'s batches); {fix}")
    return profile


def encoder_io(spec: Mapping[str, Any]) -> List[Tuple[str, Tuple[int, ...], bool]]:
    """(name, per-sample shape, is_input) of a policy encoder's I/O, inputs first, from the
    manifest's ``policy.encoder`` (every tensor float32 with a leading batch axis)."""
    return ([(i["name"], tuple(int(d) for d in i["shape"][1:]), True) for i in spec["inputs"]]
            + [(o["name"], tuple(int(d) for d in o["shape"][1:]), False) for o in spec["outputs"]])


def check_encoder_io(engine: Any, trt: Any, spec: Mapping[str, Any]) -> BatchRange:
    """A policy encoder plan's I/O against the manifest's ``policy.encoder``: the named float32
    inputs and global_cond, their shapes and one batch profile (returned)."""
    M, D = trt.TensorIOMode, trt.DataType
    io = encoder_io(spec)
    want = {n: (M.INPUT if is_input else M.OUTPUT, {D.FLOAT: "float32"}, s) for n, s, is_input in io}
    return check_io(engine, want, io[0][0])


def input_dtypes(engine: Any, trt: Any, conditions: Sequence[Condition]) -> Dict[str, Any]:
    """numpy dtype of every condition input as the (checked) plan takes it: float32, or for a
    class label int32 (TensorRT 8.x plans) or int64."""
    out = {}
    for c in conditions:
        names = _want_io(trt, (c,))[c.name][1]
        out[c.name] = np.dtype(names[engine.get_tensor_dtype(c.name)])
    return out
