"""TensorRT backend: runs a ``NAME.plan`` built by ``ddpm-export build``.

Order of checks on ``__enter__`` (each ends in a clear error, never in
TensorRT's own "incompatible device" or a crash):

1. the manifest's ``engine`` section (written by the build) is present, and a
   version-compatible plan is refused unless the caller opted in to running
   the host code it embeds (``allow_host_code=True``, see below);
2. a usable CUDA device exists (``probe_cuda_device``). This comes before any
   TensorRT call: without a GPU, ``Runtime.deserialize_cuda_engine`` segfaults
   (seen with the 11.4 lean runtime, see docs/deployment.md);
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

Trust: a version-compatible plan carries TensorRT's lean runtime, host code
that TensorRT runs in this process when ``Runtime.engine_host_code_allowed`` is
set. The manifest that says "version-compatible" is as untrusted as the plan,
so the runner sets that flag only when the caller passes
``allow_host_code=True`` (``runtime.load(..., allow_host_code=True)``, CLI
``--allow-host-code``); without it such a plan is refused before TensorRT
sees it. Load plans and ONNX models only from sources you trust.

TensorRT keeps one logger per process (a second one is ignored with a
warning), so the runner uses Polygraphy's TensorRT logger, the one the build
uses, whenever it runs on the full ``tensorrt`` module.
"""
from __future__ import annotations

import ctypes
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from runtime.backends.base import Runner
from runtime.backends.tensorrt.compat import (EngineMismatch, HostCodeNotAllowed,
                                              check_engine_compat, check_engine_io,
                                              engine_section, import_tensorrt)
from runtime.backends.tensorrt.cuda import (_CAPTURE_MODE_THREAD_LOCAL, DeviceInfo, _err_name,
                                            import_polygraphy_cuda, probe_cuda_device)
from runtime.contract import INPUT_T, INPUT_X, OUTPUT, BatchRange, ManifestError, sha256_file

# Every TensorRT attribute this module touches, in one place:
# tests/runtime/backends/test_tensorrt.py checks each against the real lean bindings and
# against TensorRT's Python binding sources at 8.5.3, 8.6.1 and 10.3 (trt_api/).
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
# Names needed only from a TensorRT version on (the others exist in 8.5 and later):
# engine_host_code_allowed is set for version-compatible plans, which need TensorRT >= 8.6.
TRT_API_SINCE: Dict[Tuple[str, str], Tuple[int, int]] = {("Runtime", "engine_host_code_allowed"): (8, 6)}

_LOGGERS: Dict[str, Any] = {}  # one TensorRT logger per module, for the whole process


def shared_logger(trt: Any) -> Any:
    """The process's TensorRT logger: Polygraphy's (also the build's) for ``tensorrt``."""
    name = getattr(trt, "__name__", "tensorrt")
    if name not in _LOGGERS:
        logger = None
        if name == "tensorrt":
            try:
                from polygraphy.backend.trt.util import get_trt_logger

                logger = get_trt_logger()
            except ImportError:
                logger = None
        _LOGGERS[name] = logger if logger is not None else trt.Logger(trt.Logger.WARNING)
    return _LOGGERS[name]


def host_code_refusal(path: str) -> str:
    return (f"{path} is a version-compatible TensorRT plan (its NAME.json says so): it embeds "
            f"TensorRT's lean runtime as host code, which TensorRT runs inside this process when "
            f"the plan is loaded, so loading it means running code from the file. Load it only if "
            f"you trust where the plan and its NAME.json came from, then opt in: "
            f"runtime.load(path, allow_host_code=True), or --allow-host-code on the command line; "
            f"otherwise rebuild it here without --version-compatible ('ddpm-export build')")


def _check_rc(h, what: str, rc: int) -> None:
    if rc != 0:
        raise RuntimeError(f"{what} returned {rc} ({_err_name(h, rc)})")


# --- the runner ----------------------------------------------------------------
class TensorRTRunner(Runner):
    backend = "tensorrt"

    def __init__(self, path: str, manifest: Dict[str, Any], cuda_graph: Optional[bool] = None,
                 verify_sha256: bool = True, allow_host_code: bool = False):
        super().__init__(path, manifest)
        self.engine_info = engine_section(manifest)
        self.allow_host_code = bool(allow_host_code)
        if self.engine_info["version_compatible"] and not self.allow_host_code:
            raise HostCodeNotAllowed(host_code_refusal(self.path))
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
        self._runtime = trt.Runtime(shared_logger(trt))
        if self.engine_info["version_compatible"]:
            if not self.allow_host_code:  # checked in __init__; never set the flag without it
                raise HostCodeNotAllowed(host_code_refusal(self.path))
            self._runtime.engine_host_code_allowed = True  # the caller trusts this plan
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
        from polygraphy.cuda import MemcpyKind

        self._set_batch(self.profile.max)
        for name in (INPUT_X, INPUT_T):  # the warm-up reads defined inputs: the zeroed host buffers
            ptr, arr = self._host[name]
            cuda.wrapper().memcpy(self._dev[name], ptr, arr.nbytes, MemcpyKind.HostToDevice,
                                  self._stream.ptr)
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
        """Release everything, each step on its own: one failing call (e.g. after a sticky CUDA
        error) neither leaks the rest nor raises out of close(); failures become one warning."""
        errors = []

        def attempt(what, fn, *args):
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - collected and reported below
                errors.append(f"{what}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")

        try:
            from polygraphy.cuda import wrapper

            cu = wrapper()
        except Exception:  # nothing was allocated without libcudart
            cu = None
        if cu is not None:
            h = cu.handle
            if self._stream is not None:
                attempt("stream synchronize", self._stream.synchronize)
            for what, obj in (("cudaGraphExecDestroy", self._graph_exec),
                              ("cudaGraphDestroy", self._graph)):
                if obj is not None:
                    attempt(what, lambda w=what, o=obj: _check_rc(h, w, getattr(h, w)(o)))
        self._graph = self._graph_exec = None
        # the context uses the device buffers and its own activation memory: it goes first
        self._context = None
        if cu is not None:
            for name, ptr in self._dev.items():
                attempt(f"cudaFree({name})", cu.free, ptr)
            for name, (ptr, _) in self._host.items():
                attempt(f"cudaFreeHost({name})", lambda p=ptr: _check_rc(
                    cu.handle, "cudaFreeHost", cu.handle.cudaFreeHost(ctypes.c_void_p(p))))
            if self._stream is not None:
                attempt("stream free", self._stream.free)
        # then the TensorRT objects in dependency order: engine, runtime
        self._engine = None
        self._runtime = None
        self._reset()
        if errors:
            warnings.warn(f"{self.path}: releasing GPU resources: {'; '.join(errors)}",
                          RuntimeWarning, stacklevel=3)

    def _deactivate(self) -> None:
        self._free()
