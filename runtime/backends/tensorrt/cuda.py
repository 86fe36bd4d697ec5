"""CUDA through libcudart, for the TensorRT backend: the device probe and the symbols used.

Device memory and streams go through Polygraphy's ``polygraphy.cuda``: it is
pure Python (ctypes over the ``libcudart`` that every CUDA install and JetPack
ships), so it works on JetPack 5's Python 3.8, where cuda-python (recent releases need Python >= 3.9,
and its major version must follow the CUDA driver's) does not install; it is
also what the build already needs. It has no device query, so the probe calls
the few symbols in ``CUDART_API`` through the same ``libcudart`` handle.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Tuple

# libcudart symbols called directly (Polygraphy's wrapper calls cudaMalloc, cudaFree,
# cudaMemcpyAsync, cudaStreamCreate/Synchronize/Destroy itself).
CUDART_API: Tuple[str, ...] = (
    "cudaGetDeviceCount", "cudaGetDevice", "cudaDeviceGetAttribute", "cudaGetErrorName",
    "cudaDriverGetVersion", "cudaRuntimeGetVersion",
)
# cudaGetDeviceProperties: CUDA 12 exports both (the _v2 is the current struct), CUDA 13
# only the unsuffixed name. Only the name (char[256] at offset 0 in every layout) is read.
CUDART_PROPS = ("cudaGetDeviceProperties_v2", "cudaGetDeviceProperties")
_ATTR_CC_MAJOR, _ATTR_CC_MINOR = 75, 76  # cudaDevAttrComputeCapabilityMajor/Minor

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


# --- finding libcudart ---------------------------------------------------------
# Polygraphy (0.53) globs libcudart.so* in LD_LIBRARY_PATH, /usr/local/cuda/lib64, /usr/lib,
# /lib and the CUDA 12 wheel's site-packages/nvidia/cuda_runtime/lib, reading LD_LIBRARY_PATH
# from os.environ when its wrapper is first made; before 0.53 it does not search the wheel
# (polygraphy/cuda/cuda.py at TensorRT v10.16, Polygraphy 0.49.27: the first four only), so
# there the wheel's folder is treated like the ones below. The CUDA 13 wheel
# (nvidia-cuda-runtime, "cu13") installs site-packages/nvidia/cu13/lib/libcudart.so.13, and a
# system libcudart may be known only to the loader cache (ctypes.util.find_library).
_POLYGRAPHY_DIRS = ("/usr/local/cuda/lib64", "/usr/lib", "/lib")
_WHEEL_SUBDIRS = (("nvidia", "cuda_runtime", "lib"), ("nvidia", "cu13", "lib"),
                  ("nvidia", "cu12", "lib"))
CUDART_HINT = (
    "put the directory of libcudart.so on LD_LIBRARY_PATH, or pip install the CUDA runtime "
    "wheel for your CUDA major (CUDA 12: nvidia-cuda-runtime-cu12; CUDA 13: "
    "nvidia-cuda-runtime, which installs nvidia/cu13/lib/libcudart.so.13); Jetson: it comes "
    "with JetPack"
)


def _loaded_path(soname: str) -> Optional[str]:
    """The file the dynamic loader maps for soname (Linux /proc/self/maps), else None.

    The maps list the resolved file (libcudart.so.12 -> libcudart.so.12.4.127), so a mapped
    file matches when the soname in its own folder resolves to it."""
    try:
        ctypes.CDLL(soname)
        with open("/proc/self/maps") as f:
            mapped = {line.split()[-1] for line in f if line.split()[-1:] and "/" in line.split()[-1]}
    except OSError:
        return None
    for path in sorted(mapped):
        candidate = os.path.join(os.path.dirname(path), soname)
        if os.path.exists(candidate) and os.path.realpath(candidate) == os.path.realpath(path):
            return candidate
    return None


POLYGRAPHY_SEARCHES_WHEEL = (0, 53)  # first Polygraphy that globs nvidia/cuda_runtime/lib


def _polygraphy_version() -> Tuple[int, ...]:
    try:
        import polygraphy
    except ImportError:
        return (0,)
    nums = []
    for part in str(getattr(polygraphy, "__version__", "0")).split(".")[:3]:
        digits = part[:len(part) - len(part.lstrip("0123456789"))]
        if not digits:
            break
        nums.append(int(digits))
    return tuple(nums) or (0,)


def find_cudart(search_path: Optional[Iterable[str]] = None,
                find_library: Callable[[str], Optional[str]] = ctypes.util.find_library,
                polygraphy_version: Optional[Tuple[int, ...]] = None
                ) -> Tuple[Optional[str], bool]:
    """(path of a libcudart, whether Polygraphy's own search already finds one).

    search_path: the site-packages folders to look in (default sys.path); polygraphy_version:
    the installed Polygraphy's (default: read), which decides whether it searches the CUDA 12
    wheel's folder itself.
    """
    env_dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d]
    roots = [p for p in (sys.path if search_path is None else search_path) if p and os.path.isdir(p)]
    pv = _polygraphy_version() if polygraphy_version is None else tuple(polygraphy_version)
    own_wheel = pv >= POLYGRAPHY_SEARCHES_WHEEL
    polygraphy_dirs = env_dirs + list(_POLYGRAPHY_DIRS) + (
        [os.path.join(r, *_WHEEL_SUBDIRS[0]) for r in roots] if own_wheel else [])
    for d in polygraphy_dirs:
        hits = sorted(glob.glob(os.path.join(d, "libcudart.so*")))
        if hits:
            return hits[0], True
    for r in roots:
        for sub in _WHEEL_SUBDIRS[(1 if own_wheel else 0):]:
            hits = sorted(glob.glob(os.path.join(r, *sub, "libcudart.so*")))
            if hits:
                return hits[0], False
    soname = find_library("cudart")
    if soname:
        return (soname if os.path.isabs(soname) else _loaded_path(soname)), False
    return None, False


def _make_cudart_findable() -> Optional[str]:
    """Before Polygraphy's first wrapper(): put a libcudart it would miss on LD_LIBRARY_PATH."""
    path, seen = find_cudart()
    if path and not seen:
        d = os.path.dirname(path)
        old = os.environ.get("LD_LIBRARY_PATH", "")
        os.environ["LD_LIBRARY_PATH"] = d + (os.pathsep + old if old else "")
    return path


# --- CUDA device probe ------------------------------------------------------
def _cudart():
    """Polygraphy's ctypes handle to libcudart; NoCudaDevice when there is none."""
    cuda = import_polygraphy_cuda()
    try:
        _make_cudart_findable()  # idempotent: a directory already searched is not added again
        return cuda.wrapper().handle
    except Exception as e:  # OSError from ctypes, or Polygraphy's exception
        raise NoCudaDevice(
            f"no CUDA runtime library (libcudart) found ({str(e).splitlines()[0][:160]}): a "
            f"TensorRT engine needs an NVIDIA GPU with its driver and CUDA; {CUDART_HINT}"
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


