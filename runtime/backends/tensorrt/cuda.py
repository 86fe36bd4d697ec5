"""CUDA through libcudart, for the TensorRT backend: the device probe and the symbols used.

Device memory goes through Polygraphy's ``polygraphy.cuda``: it is pure Python
(ctypes over the ``libcudart`` that every CUDA install and JetPack ships), so it
works on JetPack 5's Python 3.8, where cuda-python (Python >= 3.9, and its major
version must follow the CUDA driver's) does not install; it is also what the
build already needs. It has no pinned memory, device query or CUDA graph calls,
so those few go through the same ``libcudart`` handle (``CUDART_API``).
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Optional, Tuple

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
_ATTR_CC_MAJOR, _ATTR_CC_MINOR = 75, 76  # cudaDevAttrComputeCapabilityMajor/Minor
_CAPTURE_MODE_THREAD_LOCAL = 1  # cudaStreamCaptureModeThreadLocal

class BackendMissing(ImportError):
    """TensorRT or Polygraphy is not installed."""


class NoCudaDevice(RuntimeError):
    """No usable CUDA device (no GPU, no driver, or a driver older than libcudart)."""


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


