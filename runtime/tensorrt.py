"""TensorRT backend: runs a ``NAME.plan`` built by ``ddpm-export build``.

Order of checks on ``__enter__`` (each ends in a clear error, never in
TensorRT's own "incompatible device" or a crash):

1. the manifest's ``engine`` section (written by the build) is present;
2. a usable CUDA device exists (``probe_cuda_device``). This comes before any
   TensorRT call: without a GPU, ``Runtime.deserialize_cuda_engine`` segfaults
   (seen with the 11.4 lean runtime, see shared/DEPLOYMENT.md);
3. TensorRT imports: ``tensorrt``, or for a version-compatible plan also the
   lean runtime (``tensorrt_lean`` / ``tensorrt_lean_bindings``), which only
   runs version-compatible plans;
4. the plan's TensorRT version and compute capability fit the running ones
   (``check_engine_compat``), and the plan's sha256 is the manifest's;
5. deserialize, then check the engine's I/O against the contract.

Device memory goes through Polygraphy's ``polygraphy.cuda``: it is pure Python
(ctypes over the ``libcudart`` that every CUDA install and JetPack ships), so
it works on JetPack 5's Python 3.8, where cuda-python (Python >= 3.9, and its
major version must follow the CUDA driver's) does not install; it is also what
the build already needs. It has no pinned memory, device query or CUDA graph
calls, so those few go through the same ``libcudart`` handle (``CUDART_API``).

Buffers are allocated once for the profile's max batch; each call copies
the batch into pinned host buffers, sets the input shapes when the batch size
changes, and runs H2D copy, ``execute_async_v3`` and D2H copy on one stream.
Static-batch engines (min == max) replay a CUDA graph captured at the first
activation (``cuda_graph=None`` means: on for static engines); when capture
fails the runner falls back to ``execute_async_v3`` and says why in
``cuda_graph_error``. Batches below the profile's min are zero-padded.
"""
from __future__ import annotations

import ctypes
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from runtime.contract import INPUT_T, INPUT_X, OUTPUT, BatchRange, ManifestError, sha256_file
from runtime.runner import Runner

# Every TensorRT attribute this module touches, in one place:
# tests/runtime/test_tensorrt.py checks each against the real lean bindings.
TRT_API: Dict[str, Tuple[str, ...]] = {
    "": ("__version__", "Logger", "Runtime", "ICudaEngine", "IExecutionContext",
         "TensorIOMode", "DataType", "nptype"),
    "Logger": ("WARNING",),
    "Runtime": ("deserialize_cuda_engine", "engine_host_code_allowed"),
    "ICudaEngine": ("num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_dtype",
                    "get_tensor_shape", "get_tensor_profile_shape", "create_execution_context"),
    "IExecutionContext": ("set_input_shape", "set_tensor_address", "execute_async_v3"),
    "TensorIOMode": ("INPUT", "OUTPUT"),
    "DataType": ("FLOAT", "INT32"),
}
# libcudart symbols called directly (Polygraphy's wrapper calls cudaMalloc, cudaFree,
# cudaMemcpyAsync, cudaStreamCreate/Synchronize/Destroy itself).
CUDART_API: Tuple[str, ...] = (
    "cudaGetDeviceCount", "cudaGetDevice", "cudaDeviceGetAttribute", "cudaGetErrorName",
    "cudaDriverGetVersion", "cudaRuntimeGetVersion", "cudaHostAlloc", "cudaFreeHost",
    "cudaStreamBeginCapture", "cudaStreamEndCapture", "cudaGraphInstantiateWithFlags",
    "cudaGraphLaunch", "cudaGraphExecDestroy", "cudaGraphDestroy",
)
# cudaGetDeviceProperties: CUDA 12 exports both (the _v2 is the current struct), CUDA 13
# only the unsuffixed name. Only the name (char[256] at offset 0 in every layout) is read.
CUDART_PROPS = ("cudaGetDeviceProperties_v2", "cudaGetDeviceProperties")
LEAN_MODULES = ("tensorrt_lean", "tensorrt_lean_bindings")  # TRT 10 pip name, 11.x wheel name
ENGINE_SECTION_VERSION = 1
_ATTR_CC_MAJOR, _ATTR_CC_MINOR = 75, 76  # cudaDevAttrComputeCapabilityMajor/Minor
_CAPTURE_MODE_THREAD_LOCAL = 1  # cudaStreamCaptureModeThreadLocal
_INSTALL = (
    "desktop/server: pip install tensorrt-cu12 (tensorrt-cu13 for CUDA 13; the wheels come from "
    "NVIDIA's index, pypi.nvidia.com); Jetson: TensorRT comes with JetPack (sudo apt install "
    "python3-libnvinfer; use the system python3 or a venv made with --system-site-packages)"
)


class BackendMissing(ImportError):
    """TensorRT or Polygraphy is not installed."""


class NoCudaDevice(RuntimeError):
    """No usable CUDA device (no GPU, no driver, or a driver older than libcudart)."""


class EngineMismatch(RuntimeError):
    """A plan that cannot run with this TensorRT or on this GPU."""


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    compute_capability: Tuple[int, int]
    count: int = 1
    driver_version: int = 0  # e.g. 12040 for CUDA 12.4
    runtime_version: int = 0  # the libcudart found

    @property
    def cc(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


# --- imports ---------------------------------------------------------------
def import_polygraphy_cuda():
    try:
        from polygraphy import cuda  # lazy: optional for the runtime
    except ImportError as e:
        raise BackendMissing(
            "the TensorRT backend needs Polygraphy for CUDA memory: pip install polygraphy "
            "(or 'ddpm-export[trt]'; pure Python, works on JetPack's Python 3.8)"
        ) from e
    return cuda


def import_tensorrt(allow_lean: bool = False) -> Tuple[Any, bool]:
    """(module, is_lean): ``tensorrt``, else with allow_lean the lean runtime."""
    errors = []
    for name in ("tensorrt",) + (LEAN_MODULES if allow_lean else ()):
        try:
            return __import__(name), name != "tensorrt"
        except (ImportError, OSError) as e:  # OSError: bindings without libnvinfer
            errors.append(f"{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    lean = ("; this plan is version-compatible, so the lean runtime also runs it: pip install "
            "tensorrt-lean-cu12-libs tensorrt-lean-cu12-bindings") if allow_lean else ""
    raise BackendMissing(f"TensorRT is not installed ({'; '.join(errors)}). {_INSTALL}{lean}")


# --- CUDA device probe ------------------------------------------------------
def _cudart():
    """Polygraphy's ctypes handle to libcudart; NoCudaDevice when there is none."""
    cuda = import_polygraphy_cuda()
    try:
        return cuda.wrapper().handle
    except Exception as e:  # OSError from ctypes, or Polygraphy's exception
        raise NoCudaDevice(
            f"no CUDA runtime library (libcudart) found ({str(e).splitlines()[0][:160]}): a "
            f"TensorRT engine needs an NVIDIA GPU with its driver and CUDA; put the directory "
            f"of libcudart.so on LD_LIBRARY_PATH or pip install nvidia-cuda-runtime-cu12 "
            f"(Jetson: it comes with JetPack)"
        ) from None


def _err_name(h, rc: int) -> str:
    try:
        f = h.cudaGetErrorName
        f.restype = ctypes.c_char_p
        return f(ctypes.c_int(rc)).decode()
    except Exception:
        return "unknown"


def probe_cuda_device(index: Optional[int] = None) -> DeviceInfo:
    """The current (or index-th) CUDA device, through libcudart; never touches TensorRT.

    Raises NoCudaDevice with the CUDA error when there is no usable device.
    """
    h = _cudart()
    n = ctypes.c_int(0)
    rc = h.cudaGetDeviceCount(ctypes.byref(n))
    if rc != 0 or n.value < 1:
        drv = ctypes.c_int(0)
        h.cudaDriverGetVersion(ctypes.byref(drv))
        why = {35: "no NVIDIA driver, or one older than the CUDA runtime",
               100: "no CUDA-capable GPU visible (check CUDA_VISIBLE_DEVICES)",
               3: "CUDA failed to initialize"}.get(rc, "")
        raise NoCudaDevice(
            f"no CUDA device: cudaGetDeviceCount returned {rc} ({_err_name(h, rc)}"
            f"{': ' + why if why else ''}; driver supports CUDA {drv.value}); TensorRT engines "
            f"run only on an NVIDIA GPU: use the .onnx export with ONNX Runtime on this machine"
        )
    dev = ctypes.c_int(0)
    if index is None:
        h.cudaGetDevice(ctypes.byref(dev))
    else:
        dev.value = int(index)
    cc = []
    for attr in (_ATTR_CC_MAJOR, _ATTR_CC_MINOR):
        v = ctypes.c_int(0)
        rc = h.cudaDeviceGetAttribute(ctypes.byref(v), ctypes.c_int(attr), dev)
        if rc != 0:
            raise NoCudaDevice(f"CUDA device {dev.value}: cannot read its compute capability "
                               f"({_err_name(h, rc)})")
        cc.append(v.value)
    name = "unknown"
    for sym in CUDART_PROPS:
        if hasattr(h, sym):
            buf = ctypes.create_string_buffer(16384)  # > sizeof(cudaDeviceProp) in any CUDA
            if getattr(h, sym)(buf, dev) == 0:
                name = buf.raw[:256].split(b"\0", 1)[0].decode(errors="replace")
            break
    drv, rtv = ctypes.c_int(0), ctypes.c_int(0)
    h.cudaDriverGetVersion(ctypes.byref(drv))
    h.cudaRuntimeGetVersion(ctypes.byref(rtv))
    return DeviceInfo(dev.value, name, (cc[0], cc[1]), n.value, drv.value, rtv.value)


# --- manifest engine section and compatibility --------------------------------
def parse_version(v: Any) -> Tuple[int, ...]:
    """'10.3.0.30' -> (10, 3, 0); raises ValueError for anything else."""
    parts = str(v).split(".")
    try:
        nums = tuple(int(p) for p in parts[:3])
    except ValueError:
        raise ValueError(f"version {v!r}: expected MAJOR.MINOR[.PATCH], e.g. '10.3.0'") from None
    return nums + (0,) * (3 - len(nums))


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
                        lean: bool = False) -> List[str]:
    """Raise EngineMismatch when the plan cannot run here; return warnings for what may be slow."""
    built, running = parse_version(engine["tensorrt_version"]), parse_version(trt_version)
    b, r = ".".join(map(str, built)), ".".join(map(str, running))
    vc = bool(engine["version_compatible"])
    rebuild = "rebuild it on this machine with 'ddpm-export build'"
    if lean and not vc:
        raise EngineMismatch(
            f"the plan was built without --version-compatible, and only TensorRT's lean runtime "
            f"({r}) is installed, which runs version-compatible plans only: install TensorRT {b} "
            f"({_INSTALL}) or {rebuild} --version-compatible")
    if vc and running[:2] < built[:2]:
        raise EngineMismatch(
            f"the plan was built with TensorRT {b}; version-compatible plans run on that version "
            f"or later, and this is TensorRT {r}: upgrade TensorRT or {rebuild}")
    if not vc and running != built:
        raise EngineMismatch(
            f"the plan was built with TensorRT {b} and this is TensorRT {r}: a plan runs only on "
            f"the TensorRT version that built it; {rebuild} (or build with --version-compatible)")
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


def check_engine_io(engine: Any, trt: Any, image_shape: Tuple[int, int, int]) -> BatchRange:
    """The deserialized engine's I/O must be the contract's; returns its batch profile."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    want = {INPUT_X: (trt.TensorIOMode.INPUT, trt.DataType.FLOAT, "float32"),
            INPUT_T: (trt.TensorIOMode.INPUT, trt.DataType.INT32, "int32"),
            OUTPUT: (trt.TensorIOMode.OUTPUT, trt.DataType.FLOAT, "float32")}
    fix = "the plan and its NAME.json do not belong together: rebuild with 'ddpm-export build'"
    if sorted(names) != sorted(want):
        raise EngineMismatch(f"engine I/O tensors {names}, expected {sorted(want)}; {fix}")
    for name, (mode, dtype, dname) in want.items():
        got_mode, got_dtype = engine.get_tensor_mode(name), engine.get_tensor_dtype(name)
        if got_mode != mode or got_dtype != dtype:
            raise EngineMismatch(f"engine tensor {name!r} is {got_mode} {got_dtype}, expected "
                                 f"{mode} {dname}; {fix}")
    dims = tuple(engine.get_tensor_shape(INPUT_X))
    if len(dims) != 4 or tuple(dims[1:]) != tuple(image_shape):
        raise EngineMismatch(f"engine input {INPUT_X!r} has shape {dims}, expected "
                             f"(batch, {', '.join(map(str, image_shape))}); {fix}")
    mn, opt, mx = (tuple(s) for s in engine.get_tensor_profile_shape(INPUT_X, 0))
    return BatchRange(mn[0], opt[0], mx[0])



# --- the runner ----------------------------------------------------------------
class TensorRTRunner(Runner):
    backend = "tensorrt"

    def __init__(self, path: str, manifest: Dict[str, Any], cuda_graph: Optional[bool] = None,
                 verify_sha256: bool = True):
        super().__init__(path, manifest)
        self.engine_info = engine_section(manifest)
        self.profile = BatchRange.coerce(self.engine_info["profiles"][0])
        self.static = self.profile.min == self.profile.max
        # Batches below the profile's min are padded, so every size up to max is accepted.
        self.min_batch, self.max_batch = 1, self.profile.max
        self.batch_range = {"min": 1, "opt": self.profile.opt, "max": self.profile.max}
        self.use_cuda_graph = self.static if cuda_graph is None else bool(cuda_graph)
        if self.use_cuda_graph and not self.static:
            raise ValueError(f"cuda_graph=True needs a static-batch plan (min == max); "
                             f"{path} has batch range {self.profile.to_dict()}")
        self.verify_sha256 = verify_sha256
        self.cuda_graph_error: Optional[str] = None
        self.device: Optional[DeviceInfo] = None
        self.trt_version: Optional[str] = None
        self._reset()

    def _reset(self) -> None:
        self._runtime = self._engine = self._context = self._stream = None
        self._dev: Dict[str, int] = {}
        self._host: Dict[str, Tuple[int, np.ndarray]] = {}
        self._graph = self._graph_exec = None
        self._batch = -1

    def _activate(self) -> None:
        self.device = probe_cuda_device()  # before TensorRT: no GPU -> crash inside TensorRT
        trt, lean = import_tensorrt(allow_lean=bool(self.engine_info["version_compatible"]))
        self.trt_version = trt.__version__
        for note in check_engine_compat(self.engine_info, trt.__version__, self.device, lean):
            warnings.warn(note, RuntimeWarning, stacklevel=3)
        want = self.engine_info.get("plan_sha256")
        if self.verify_sha256 and want and sha256_file(self.path) != want:
            raise ManifestError(f"{self.path}: sha256 differs from its NAME.json's engine."
                                f"plan_sha256: the plan and its manifest come from different "
                                f"builds; rebuild with 'ddpm-export build'")
        cuda = import_polygraphy_cuda()
        try:
            self._load(trt, cuda)
        except BaseException:
            self._free()
            raise

    def _load(self, trt, cuda) -> None:
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if self.engine_info["version_compatible"]:
            self._runtime.engine_host_code_allowed = True  # the plan embeds its lean runtime
        engine = self._runtime.deserialize_cuda_engine(Path(self.path).read_bytes())
        if engine is None:
            raise EngineMismatch(f"{self.path}: TensorRT {trt.__version__} could not deserialize "
                                 f"it (see its log above); rebuild with 'ddpm-export build'")
        self._engine = engine
        got = check_engine_io(engine, trt, self.image_shape)
        if got != self.profile:
            raise EngineMismatch(f"{self.path}: engine profile {got.to_dict()} differs from its "
                                 f"manifest's {self.profile.to_dict()}; rebuild with 'ddpm-export build'")
        self._context = engine.create_execution_context()
        if self._context is None:
            raise EngineMismatch(f"{self.path}: TensorRT could not create an execution context "
                                 f"(out of GPU memory?); close other GPU programs or rebuild with "
                                 f"a smaller --max-batch")
        h = cuda.wrapper().handle
        self._stream = cuda.Stream()
        c, hh, w = self.image_shape
        n = self.profile.max
        for name, shape, dtype in ((INPUT_X, (n, c, hh, w), np.float32), (INPUT_T, (n,), np.int32),
                                   (OUTPUT, (n, c, hh, w), np.float32)):
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            self._dev[name] = cuda.wrapper().malloc(nbytes)
            ptr = ctypes.c_void_p()
            rc = h.cudaHostAlloc(ctypes.byref(ptr), ctypes.c_size_t(nbytes), ctypes.c_uint(0))
            if rc != 0:
                raise MemoryError(f"cudaHostAlloc({nbytes}) failed: {_err_name(h, rc)}")
            arr = np.frombuffer((ctypes.c_char * nbytes).from_address(ptr.value), dtype=dtype)
            arr = arr.reshape(shape)
            arr[...] = 0
            self._host[name] = (ptr.value, arr)
            if not self._context.set_tensor_address(name, self._dev[name]):
                raise EngineMismatch(f"set_tensor_address({name!r}) failed")
        if self.use_cuda_graph:
            self._capture_graph(h, cuda)

    def _set_batch(self, b: int) -> None:
        if b != self._batch:
            c, h, w = self.image_shape
            if not (self._context.set_input_shape(INPUT_X, (b, c, h, w))
                    and self._context.set_input_shape(INPUT_T, (b,))):
                raise EngineMismatch(f"set_input_shape(batch={b}) failed; profile {self.profile.to_dict()}")
            self._batch = b

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self._stream.ptr):
            raise RuntimeError("TensorRT execute_async_v3 failed (see its log above)")

    def _capture_graph(self, h, cuda) -> None:
        """Capture execute_async_v3 at the static batch; on failure fall back (see cuda_graph_error)."""
        self._set_batch(self.profile.max)
        self._enqueue()  # one plain run first: TensorRT finishes lazy setup outside the capture
        self._stream.synchronize()
        s = ctypes.c_void_p(self._stream.ptr)
        graph, exec_ = ctypes.c_void_p(), ctypes.c_void_p()
        rc = h.cudaStreamBeginCapture(s, ctypes.c_int(_CAPTURE_MODE_THREAD_LOCAL))
        if rc == 0:
            ok = self._context.execute_async_v3(self._stream.ptr)
            rc = h.cudaStreamEndCapture(s, ctypes.byref(graph))  # always end a begun capture
            if rc == 0 and not ok:
                rc = -1
        if rc == 0:
            rc = h.cudaGraphInstantiateWithFlags(ctypes.byref(exec_), graph, ctypes.c_ulonglong(0))
        if rc != 0:
            if graph.value:
                h.cudaGraphDestroy(graph)
            self.cuda_graph_error = (f"CUDA graph capture failed ({_err_name(h, rc) if rc > 0 else 'enqueue'}"
                                     f"); running execute_async_v3 per call instead")
            warnings.warn(self.cuda_graph_error, RuntimeWarning, stacklevel=4)
            self.use_cuda_graph = False
            return
        self._graph, self._graph_exec = graph, exec_

    def _infer(self, x_t: np.ndarray, t: np.ndarray) -> np.ndarray:
        from polygraphy.cuda import MemcpyKind, wrapper

        b = x_t.shape[0]
        run_b = max(b, self.profile.min)  # pad up to the profile's min
        hx, ht, he = self._host[INPUT_X][1], self._host[INPUT_T][1], self._host[OUTPUT][1]
        hx[:b], ht[:b] = x_t, t
        if run_b > b:
            hx[b:run_b], ht[b:run_b] = 0.0, 0
        cu, stream = wrapper(), self._stream.ptr
        for name, arr in ((INPUT_X, hx), (INPUT_T, ht)):
            nbytes = run_b * arr[0].nbytes
            cu.memcpy(self._dev[name], self._host[name][0], nbytes, MemcpyKind.HostToDevice, stream)
        if self._graph_exec is not None:
            rc = cu.handle.cudaGraphLaunch(self._graph_exec, ctypes.c_void_p(stream))
            if rc != 0:
                raise RuntimeError(f"cudaGraphLaunch failed: {_err_name(cu.handle, rc)}")
        else:
            self._set_batch(run_b)
            self._enqueue()
        cu.memcpy(self._host[OUTPUT][0], self._dev[OUTPUT], b * he[0].nbytes,
                  MemcpyKind.DeviceToHost, stream)
        self._stream.synchronize()
        return he[:b].copy()  # the pinned buffer is reused by the next call

    def _free(self) -> None:
        try:
            from polygraphy.cuda import wrapper

            h = wrapper().handle
        except Exception:  # nothing was allocated without libcudart
            self._reset()
            return
        if self._stream is not None:
            try:
                self._stream.synchronize()
            except Exception:
                pass
        if self._graph_exec is not None:
            h.cudaGraphExecDestroy(self._graph_exec)
        if self._graph is not None:
            h.cudaGraphDestroy(self._graph)
        for ptr in self._dev.values():
            wrapper().free(ptr)
        for ptr, _ in self._host.values():
            h.cudaFreeHost(ctypes.c_void_p(ptr))
        if self._stream is not None:
            self._stream.free()
        # TensorRT objects go in dependency order: context, engine, runtime
        self._context = None
        self._engine = None
        self._runtime = None
        self._reset()

    def _deactivate(self) -> None:
        self._free()
