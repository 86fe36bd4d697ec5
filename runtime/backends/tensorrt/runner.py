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
   dispatch or lean runtime (``compat.RUNTIME_MODULES``);
4. the plan's TensorRT version (with its build number) and compute capability
   fit the running ones (``check_engine_compat``), and the plan's sha256 is the
   manifest's (the plan is read once: hashed, then deserialized from the same bytes);
5. the full ``tensorrt`` registers TensorRT's bundled plugins
   (``init_libnvinfer_plugins``): a plan from TensorRT 8.5, or from 8.6/9.x
   without --version-compatible, holds the InstanceNormalization plugin and
   deserializes only after that call, in every process that loads it;
6. deserialize (None -> ``PlanNotLoadable``), then check the engine's I/O
   against the contract.

Execution is TensorRT's own API (``execute_async_v3``) on device buffers and a
stream from Polygraphy's ``polygraphy.cuda`` (pure Python over ``libcudart``, so
it works on JetPack 5's Python 3.8). Polygraphy's ``TrtRunner`` is not used: it
needs ``tensorrt.TensorFormat``, which the lean and dispatch bindings do not
bind (TensorRT's python/src/pyTensorRT.cpp binds it only with the full
bindings), and its ``EngineFromBytes`` sets ``engine_host_code_allowed`` for
every plan, which would bypass the opt-in below. Buffers are allocated once for
the profile's max batch; each call copies the batch in (x_t, t and every
condition input of a conditional model), sets every input's shape when the
batch size changes, runs, and copies the output back on one stream. Batches
below the profile's min are zero-padded (a padded row's label is 0, a valid
label; its output is dropped). Class labels go in the plan's own dtype: INT32
in a TensorRT 8.x plan (8.x has no INT64 I/O; its ONNX parser turns the int64
input into INT32), INT64 from the parsers that have it; the cast is exact for
labels, which the base runner has checked to lie in [0, num_classes].

The plan's lifecycle and data path above are ``PlanExecution``, whatever the plan's I/O:
``TensorRTRunner`` is a denoiser's (a ``Runner``: x_t, t and the conditions -> eps),
``TensorRTEncoder`` a policy's observation encoder (NAME-encoder.plan: the named observation
history -> global_cond; runtime.load_policy opens it beside the denoiser's plan).

Trust: a version-compatible plan carries TensorRT's lean runtime, host code
that TensorRT runs in this process when ``Runtime.engine_host_code_allowed`` is
set. The manifest that says "version-compatible" is as untrusted as the plan,
so the runner sets that flag only when the caller passes
``allow_host_code=True`` (``runtime.load(..., allow_host_code=True)``, CLI
``--allow-host-code``); without it such a plan is refused before TensorRT
sees it. Load plans and ONNX models only from sources you trust.

TensorRT keeps one logger per process (a second one is ignored with a
warning), so the runner uses Polygraphy's TensorRT logger, the one the build
uses, whenever it runs on the full ``tensorrt`` module. That logger prints to
``sys.stdout``: a program whose stdout is a protocol redirects it while the
runtime loads and runs (examples/jetson_app/app.py does).
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from runtime.backends.base import Activatable, InputError, Runner
from runtime.backends.tensorrt.compat import (FULL, EngineMismatch, HostCodeNotAllowed,
                                              PlanManifestMismatch, PlanNotLoadable,
                                              check_encoder_io, check_engine_compat, check_engine_io,
                                              encoder_io, engine_section, import_tensorrt,
                                              input_dtypes)
from runtime.backends.tensorrt.cuda import DeviceInfo, import_polygraphy_cuda, probe_cuda_device
from runtime.contract import INPUT_T, INPUT_X, OUTPUT, BatchRange, ManifestError

# Every TensorRT attribute this module touches, in one place:
# tests/runtime/backends/test_tensorrt.py checks each against the real lean bindings and
# against TensorRT's Python binding sources at every version of tests/trt_fakes.py
# TRT_API_VERSIONS (trt_api/).
TRT_API: Dict[str, Tuple[str, ...]] = {
    "": ("__version__", "Logger", "Runtime", "ICudaEngine", "IExecutionContext",
         "TensorIOMode", "DataType"),
    "Logger": ("WARNING",),
    "Runtime": ("deserialize_cuda_engine", "engine_host_code_allowed"),
    "ICudaEngine": ("num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_dtype",
                    "get_tensor_shape", "get_tensor_profile_shape", "create_execution_context"),
    "IExecutionContext": ("set_input_shape", "set_tensor_address", "execute_async_v3"),
    "TensorIOMode": ("INPUT", "OUTPUT"),
    "DataType": ("FLOAT", "INT32", "INT64"),
}
# Used only with the full bindings (the lean and dispatch bindings do not have them).
TRT_API_FULL_ONLY: Dict[str, Tuple[str, ...]] = {"": ("init_libnvinfer_plugins",)}
# Names needed only from a TensorRT version on (the others exist in 8.5 and later):
# engine_host_code_allowed is set for version-compatible plans, which need TensorRT >= 8.6.
# DataType.INT64 (a class-label input of a plan built by TensorRT >= 9) is read with getattr:
# 8.x does not bind it (compat._label_dtypes).
TRT_API_SINCE: Dict[Tuple[str, str], Tuple[int, int]] = {("Runtime", "engine_host_code_allowed"): (8, 6),
                                                         ("DataType", "INT64"): (9, 0)}

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


def deserialize(trt: Any, kind: str, data: bytes, allow_host_code: bool, path: str,
                engine_info: Dict[str, Any]) -> Tuple[Any, Any]:
    """(runtime, engine) for the plan bytes; the plugins first, the host-code flag only on opt-in."""
    logger = shared_logger(trt)
    if kind == FULL:
        # The creators of TensorRT's bundled plugins (InstanceNormalization_TRT among them) are
        # registered only by this call, once per process; harmless when the plan holds none.
        trt.init_libnvinfer_plugins(logger, "")
    runtime = trt.Runtime(logger)
    if engine_info["version_compatible"]:
        if not allow_host_code:  # checked in __init__; never set the flag without it
            raise HostCodeNotAllowed(host_code_refusal(path))
        runtime.engine_host_code_allowed = True  # the caller trusts this plan
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        why = ("the file is damaged, or it is not the plan its NAME.json describes (the manifest "
               "said it fits this TensorRT and GPU)")
        if kind != FULL and engine_info.get("native_instancenorm") is False:
            why = (f"the plan holds TensorRT plugin layers (built without the native InstanceNorm) "
                   f"and the {kind} runtime has no plugins: install the full TensorRT")
        raise PlanNotLoadable(f"{path}: TensorRT {trt.__version__} ({kind} runtime) could not "
                              f"deserialize it: {why}; TensorRT's log above has the details. "
                              f"Rebuild it with 'ddpm-export build'")
    return runtime, engine


# --- the runners ---------------------------------------------------------------
class PlanExecution(Activatable):
    """One TensorRT plan on the GPU, whatever its I/O: the checks before TensorRT (module
    docstring, 1-6), deserializing, device buffers for the profile's max batch, one call
    (pad, copy in, set shapes, execute, copy out) and freeing. A subclass names its I/O
    (``_io``) and checks the deserialized engine's (``_check_plan_io``): TensorRTRunner for a
    denoiser (x_t, t, conditions -> eps), TensorRTEncoder for a policy's observation encoder."""

    backend = "tensorrt"

    def _init_plan(self, path: str, engine_info: Dict[str, Any], allow_host_code: bool,
                   verify_sha256: bool) -> None:
        self.path = str(path)
        self.engine_info = engine_info
        self.allow_host_code = bool(allow_host_code)
        if self.engine_info["version_compatible"] and not self.allow_host_code:
            raise HostCodeNotAllowed(host_code_refusal(self.path))
        self.profile = BatchRange.coerce(self.engine_info["profiles"][0])
        self.static = self.profile.min == self.profile.max
        self.batch_range = {"min": 1, "opt": self.profile.opt, "max": self.profile.max}
        self.verify_sha256 = verify_sha256
        self.device: Optional[DeviceInfo] = None
        self.trt_version: Optional[str] = None
        self.runtime_kind: Optional[str] = None
        self._reset()

    # --- what a subclass says ------------------------------------------------
    def _io(self) -> List[Tuple[str, Tuple[int, ...], bool]]:
        """(name, per-sample shape, is_input) of every I/O tensor, inputs first."""
        raise NotImplementedError

    def _check_plan_io(self, engine: Any, trt: Any) -> BatchRange:
        """Check the engine's I/O against the manifest, set ``self._io_dtypes`` (name -> numpy
        dtype of every I/O tensor as the plan takes it) and return the engine's profile."""
        raise NotImplementedError

    # --- shared ------------------------------------------------------------
    def _reset(self) -> None:
        self._runtime = self._engine = self._context = self._stream = None
        self._dev: Dict[str, Any] = {}
        self._io_dtypes: Dict[str, Any] = {}  # I/O tensor -> the numpy dtype the plan takes
        self._dtypes: Dict[str, Any] = {}  # a denoiser's condition inputs only (the same dtypes)
        self._batch = -1

    def _activate(self) -> None:
        self.device = probe_cuda_device()  # before TensorRT: no GPU -> crash inside TensorRT
        trt, kind = import_tensorrt(allow_lean=bool(self.engine_info["version_compatible"]))
        self.trt_version, self.runtime_kind = trt.__version__, kind
        for note in check_engine_compat(self.engine_info, trt.__version__, self.device, kind):
            warnings.warn(note, RuntimeWarning, stacklevel=3)
        data = Path(self.path).read_bytes()  # read once: hashed and deserialized
        want = self.engine_info.get("plan_sha256")
        if self.verify_sha256 and want and hashlib.sha256(data).hexdigest() != want:
            raise ManifestError(f"{self.path}: sha256 differs from its NAME.json's engine."
                                f"plan_sha256: the plan and its manifest come from different "
                                f"builds; rebuild with 'ddpm-export build'")
        cuda = import_polygraphy_cuda()
        try:
            self._load(trt, kind, data, cuda)
        except BaseException:
            self._free()
            raise

    def _load(self, trt, kind: str, data: bytes, cuda) -> None:
        self._runtime, self._engine = deserialize(trt, kind, data, self.allow_host_code,
                                                  self.path, self.engine_info)
        got = self._check_plan_io(self._engine, trt)
        if got != self.profile:
            raise PlanManifestMismatch(f"{self.path}: engine profile {got.to_dict()} differs from "
                                       f"its manifest's {self.profile.to_dict()}; rebuild with "
                                       f"'ddpm-export build'")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise EngineMismatch(f"{self.path}: TensorRT could not create an execution context "
                                 f"(out of GPU memory?); close other GPU programs or rebuild with "
                                 f"a smaller --max-batch")
        self._stream = cuda.Stream()
        n = self.profile.max
        for name, shape, _ in self._io():
            self._dev[name] = cuda.DeviceArray(shape=(n,) + tuple(shape), dtype=self._io_dtypes[name])
            if not self._context.set_tensor_address(name, self._dev[name].ptr):
                raise PlanManifestMismatch(
                    f"{self.path}: set_tensor_address({name!r}) failed: the plan has no such I/O "
                    f"tensor of the contract; rebuild it with 'ddpm-export build'")

    def _set_batch(self, b: int) -> None:
        if b != self._batch:
            for name, shape, is_input in self._io():
                if is_input and not self._context.set_input_shape(name, (b,) + tuple(shape)):
                    raise EngineMismatch(f"set_input_shape({name!r}, {(b,) + tuple(shape)}) failed "
                                         f"(batch {b}); profile {self.profile.to_dict()}")
            self._batch = b

    def _execute(self, feeds: Mapping[str, np.ndarray], b: int) -> Dict[str, np.ndarray]:
        """One call at batch b (<= the profile's max; the caller checked every input): inputs
        are zero-padded up to the profile's min and copied in the plan's dtype (a class label:
        int32 in a TensorRT 8.x plan, exact for a label checked to lie in [0, num_classes]);
        returns every output's first b rows."""
        run_b = max(b, self.profile.min)  # pad up to the profile's min; padded rows are dropped
        io = self._io()
        for name, shape, is_input in io:
            if is_input:
                host = np.zeros((run_b,) + tuple(shape), self._io_dtypes[name])
                host[:b] = feeds[name]
                self._dev[name].copy_from(host, self._stream)
        self._set_batch(run_b)
        if not self._context.execute_async_v3(self._stream.ptr):
            raise RuntimeError("TensorRT execute_async_v3 failed (see its log above)")
        outs = {}
        for name, shape, is_input in io:
            if not is_input:
                outs[name] = np.empty((run_b,) + tuple(shape), self._io_dtypes[name])
                self._dev[name].view(shape=outs[name].shape).copy_to(outs[name], self._stream)
        self._stream.synchronize()
        return {k: v[:b] for k, v in outs.items()}

    def _free(self) -> None:
        """Release everything, each step on its own: one failing call (e.g. after a sticky CUDA
        error) neither leaks the rest nor raises out of close(); failures become one warning."""
        errors = []

        def attempt(what, fn):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - collected and reported below
                errors.append(f"{what}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")

        if self._stream is not None:
            attempt("stream synchronize", self._stream.synchronize)
        # the context uses the device buffers and its own activation memory: it goes first
        self._context = None
        for name, arr in self._dev.items():
            attempt(f"free({name})", arr.free)
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


class TensorRTRunner(PlanExecution, Runner):
    """A denoiser's plan: eps = runner(x_t, t, **cond), as every Runner."""

    backend = "tensorrt"

    def __init__(self, path: str, manifest: Dict[str, Any], verify_sha256: bool = True,
                 allow_host_code: bool = False):
        Runner.__init__(self, path, manifest)
        self._init_plan(path, engine_section(manifest), allow_host_code, verify_sha256)
        # Batches below the profile's min are padded, so every size up to max is accepted.
        self.min_batch, self.max_batch = 1, self.profile.max

    def _io(self) -> List[Tuple[str, Tuple[int, ...], bool]]:
        chw = tuple(self.sample_shape)
        return ([(INPUT_X, chw, True), (INPUT_T, (), True)]
                + [(c.name, tuple(c.shape), True) for c in self.conditions] + [(OUTPUT, chw, False)])

    def _check_plan_io(self, engine: Any, trt: Any) -> BatchRange:
        got = check_engine_io(engine, trt, self.sample_shape, self.conditions)
        self._dtypes = input_dtypes(engine, trt, self.conditions)
        self._io_dtypes = {INPUT_X: np.dtype(np.float32), INPUT_T: np.dtype(np.int32),
                           OUTPUT: np.dtype(np.float32), **self._dtypes}
        return got

    def _infer(self, x_t: np.ndarray, t: np.ndarray, cond=None) -> np.ndarray:
        # checked by Runner.__call__: x_t, t and every condition present, [b, *shape], in range
        return self._execute({INPUT_X: x_t, INPUT_T: t, **(cond or {})}, x_t.shape[0])[OUTPUT]


class TensorRTEncoder(PlanExecution):
    """A policy's observation encoder plan (NAME-encoder.plan, built by ``ddpm-export build``
    beside the denoiser's): the normalized observation history by name -> global_cond
    [B, D], as the ONNX encoder. spec: the manifest's ``policy.encoder`` (its I/O), plan: its
    ``policy.encoder.plan`` (the file, its sha256 and its engine section). Batches above the
    plan's max run in pieces; below its min they are padded."""

    def __init__(self, path: str, spec: Mapping[str, Any], plan: Mapping[str, Any],
                 verify_sha256: bool = True, allow_host_code: bool = False):
        self.spec = spec
        io = encoder_io(spec)
        self.inputs = [(n, s) for n, s, is_input in io if is_input]
        self.outputs = [(n, s) for n, s, is_input in io if not is_input]
        self._init_plan(path, engine_section({"engine": plan.get("engine")}), allow_host_code,
                        verify_sha256)

    def _io(self) -> List[Tuple[str, Tuple[int, ...], bool]]:
        return encoder_io(self.spec)

    def _check_plan_io(self, engine: Any, trt: Any) -> BatchRange:
        got = check_encoder_io(engine, trt, self.spec)
        self._io_dtypes = {n: np.dtype(np.float32) for n, _, _ in self._io()}
        return got

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        if not self.is_active:
            raise RuntimeError(f"encoder plan {self.path} is not active; call encoder.__enter__() first")
        want = dict(self.inputs)
        if sorted(feeds) != sorted(want):
            raise InputError(f"{self.path}: encoder inputs {sorted(feeds)}, expected {sorted(want)}")
        b = None
        for name, shape in want.items():
            v = feeds[name]
            if v.dtype != np.float32 or v.ndim != len(shape) + 1 or tuple(v.shape[1:]) != shape or (
                    b is not None and v.shape[0] != b):
                raise InputError(f"{self.path}: encoder input {name!r} is {v.dtype} {list(v.shape)}, "
                                 f"expected float32 [{b or 'B'}, {', '.join(map(str, shape))}]")
            b = v.shape[0]
        out = self.outputs[0][0]
        n = self.profile.max
        parts = [self._execute({k: v[i:i + n] for k, v in feeds.items()}, min(n, b - i))[out]
                 for i in range(0, b, n)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
