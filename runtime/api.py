"""The embedding API: load an engine, sample images.

    import runtime
    with runtime.load("engines/digits.onnx") as engine:
        images = engine.sample(16, seed=0)          # uint8 [16, H, W, C]
        eps = engine(x_t, t)                        # one network call

``load`` picks the backend from the file name (.onnx: ONNX Runtime; .plan /
.engine: TensorRT) and reads the manifest that travels with it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from runtime.contract import read_manifest
from runtime.io import to_uint8
from runtime.backends.base import Runner
from runtime.loop import SampleResult, StepCallback, sample

ONNX_SUFFIXES = (".onnx",)
TRT_SUFFIXES = (".plan", ".engine", ".trt")


class Engine:
    """A runner plus its manifest; a context manager."""

    def __init__(self, runner: Runner):
        self.runner = runner
        self.manifest: Dict[str, Any] = runner.manifest
        self.image_shape = runner.image_shape

    def __enter__(self) -> "Engine":
        self.runner.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.runner.__exit__(*exc)

    def __call__(self, x_t: np.ndarray, t: np.ndarray) -> np.ndarray:
        return self.runner(x_t, t)

    @property
    def batch_range(self) -> Dict[str, int]:
        # a TensorRT runner accepts its plan's profile, which may differ from the ONNX export's
        return dict(getattr(self.runner, "batch_range", None) or self.manifest["batch_range"])

    def sample_float(
        self, num: int, seed: int = 0, steps: Optional[int] = None, method: str = "ddpm",
        eta: float = 0.0, spacing: str = "uniform", batch: Optional[int] = None,
        callback: Optional[StepCallback] = None, trajectory_frames: int = 0, progress: bool = False,
        first_image: int = 0,
    ) -> SampleResult:
        """Float samples [num, C, H, W] in [-1, 1] plus timing; see runtime.loop.sample.
        Images first_image, ... of ``seed``: the same at any ``batch``."""
        if batch is None:
            batch = min(num, self.runner.max_batch)
        self.runner.__enter__()
        return sample(self.runner, self.image_shape, self.manifest["schedule"], num, seed=seed,
                      steps=steps, method=method, eta=eta, spacing=spacing, batch=batch,
                      callback=callback, trajectory_frames=trajectory_frames, progress=progress,
                      first_image=first_image)

    def sample(self, num: int, seed: int = 0, **kw) -> np.ndarray:
        """uint8 images [num, H, W, C]; keyword arguments as in sample_float."""
        return to_uint8(self.sample_float(num, seed, **kw).images)


def load(path, backend: Optional[str] = None, providers: Optional[Sequence[str]] = None,
         threads: Optional[int] = None) -> Engine:
    """Open NAME.onnx or NAME.plan with its manifest (NAME.json or embedded)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"{path}: no such engine file; expected NAME.onnx (from 'ddpm-export export') "
            f"or NAME.plan (from 'ddpm-export build')"
        )
    manifest = read_manifest(p)
    kind = backend or ("onnxruntime" if p.suffix in ONNX_SUFFIXES else
                       "tensorrt" if p.suffix in TRT_SUFFIXES else None)
    if kind == "onnxruntime":
        from runtime.backends.onnxrt import OnnxRuntimeRunner

        return Engine(OnnxRuntimeRunner(str(p), manifest, providers=providers, threads=threads))
    if kind == "tensorrt":
        from runtime.backends.tensorrt import TensorRTRunner  # providers/threads are ONNX Runtime's

        return Engine(TensorRTRunner(str(p), manifest))
    raise ValueError(
        f"{path}: unknown engine type {p.suffix!r}; expected one of "
        f"{ONNX_SUFFIXES + TRT_SUFFIXES} or backend='onnxruntime'"
    )
