"""TensorRT backend: CUDA probe (``cuda``), compatibility policy (``compat``), runner (``runner``).

The names below are re-exported for convenience; import from the submodules in
code that patches them.
"""
from runtime.backends.tensorrt.compat import (DISPATCH, ENGINE_SECTION_VERSION, FULL, LEAN,
                                              LEAN_MODULES, RUNTIME_MODULES, EngineMismatch,
                                              HostCodeNotAllowed, PlanManifestMismatch,
                                              PlanNotLoadable,
                                              VERSION_COMPAT_NEWEST_MAJOR, check_engine_compat,
                                              check_engine_io, engine_section, import_tensorrt,
                                              parse_version)
from runtime.backends.tensorrt.cuda import (CUDART_API, CUDART_PROPS, BackendMissing, DeviceInfo,
                                            NoCudaDevice, _cudart, find_cudart,
                                            import_polygraphy_cuda,
                                            probe_cuda_device)
from runtime.backends.tensorrt.runner import TRT_API, TRT_API_FULL_ONLY, TensorRTEncoder, TensorRTRunner

__all__ = [
    "BackendMissing", "CUDART_API", "CUDART_PROPS", "DISPATCH", "DeviceInfo",
    "ENGINE_SECTION_VERSION", "EngineMismatch", "FULL", "HostCodeNotAllowed", "LEAN",
    "LEAN_MODULES", "PlanManifestMismatch", "PlanNotLoadable", "RUNTIME_MODULES", "VERSION_COMPAT_NEWEST_MAJOR",
    "find_cudart", "NoCudaDevice", "TRT_API", "TRT_API_FULL_ONLY", "TensorRTEncoder", "TensorRTRunner", "_cudart",
    "check_engine_compat", "check_engine_io", "engine_section", "import_polygraphy_cuda",
    "import_tensorrt", "parse_version", "probe_cuda_device",
]
