"""The embedding API: load an engine, sample images.

    import runtime
    with runtime.load("engines/digits.onnx") as engine:
        images = engine.sample(16, seed=0)          # uint8 [16, H, W, C]
        eps = engine(x_t, t)                        # one network call

    with runtime.load("engines/digits-cond.onnx") as engine:   # a conditional model
        threes = engine.sample(16, seed=0, cond={"class_labels": 3}, guidance=2.0)
        eps = engine(x_t, t, class_labels=labels)

``load`` picks the backend from the file name (.onnx: ONNX Runtime; .plan /
.engine: TensorRT) and reads the manifest that travels with it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from runtime.contract import (default_guidance, plan_options, plan_steps, read_manifest, sample_kind_of,
                              sampling_plan)
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
        self.sample_shape = runner.sample_shape
        self.image_shape = runner.image_shape  # the older name of sample_shape
        self.sample_kind = sample_kind_of(self.manifest)  # "image" or "array"
        self.conditions = runner.conditions  # runtime.contract.Condition, in input order

    def __enter__(self) -> "Engine":
        self.runner.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.runner.__exit__(*exc)

    def __call__(self, x_t: np.ndarray, t: np.ndarray, **cond: Any) -> np.ndarray:
        return self.runner(x_t, t, **cond)

    @property
    def batch_range(self) -> Dict[str, int]:
        # a TensorRT runner accepts its plan's profile, which may differ from the ONNX export's
        return dict(getattr(self.runner, "batch_range", None) or self.manifest["batch_range"])

    def sample_float(
        self, num: int, seed: int = 0, steps: Optional[int] = None, method: Optional[str] = None,
        eta: Optional[float] = None, spacing: Optional[str] = None, batch: Optional[int] = None,
        callback: Optional[StepCallback] = None, trajectory_frames: int = 0, progress: bool = False,
        first_image: int = 0, cond: Optional[Dict[str, Any]] = None, guidance: Optional[float] = None,
        **options: Any,
    ) -> SampleResult:
        """Float samples [num, *sample_shape] ([num, C, H, W] in [-1, 1] for images) plus timing;
        see runtime.loop.sample. Samples first_image, ... of ``seed``: the same at any ``batch``.

        cond: a conditional model's inputs by name (``self.conditions``), each one value for
        all samples (an int label, a [D] vector) or one per sample ([num, ...]). guidance: the
        classifier-free guidance scale (runtime.guidance; None: the manifest's default, else 1
        = none); with guidance the default batch is half the engine's largest, so that both
        branches go through one call at batch 2N.

        method: any of runtime.METHODS; method options (order=, variant=, corrector=,
        karras=, clip=, ...) as keywords, see runtime.schedulers. method/steps None: the
        manifest's ``sampling`` section when it has one, else ddpm over all T. A distilled
        student's section is binding: it refuses what it was not trained for, and samples the
        timesteps its manifest lists for the call count. A non-binding one (a diffusers
        DDIMPipeline folder's) is a default: its method, steps and options (eta, variant, ...)
        where none are given (runtime.contract.sampling_plan, plan_options)."""
        plan = sampling_plan(self.manifest, method, steps)
        opts = plan_options(plan, dict(options, eta=eta, spacing=spacing))
        if guidance is None:
            guidance = default_guidance(self.manifest)
        if batch is None:
            guided = guidance not in (0, 1) and self.runner.max_batch >= 2
            batch = min(num, self.runner.max_batch // 2 if guided else self.runner.max_batch)
        opened_here = not self.runner.is_active  # outside 'with engine:' we open and close
        self.runner.__enter__()
        try:
            return sample(self.runner, self.sample_shape, self.manifest["schedule"], num, seed=seed,
                          method=plan["method"], **plan_steps(plan), batch=batch,
                          callback=callback, trajectory_frames=trajectory_frames,
                          progress=progress, first_image=first_image, conditions=self.conditions,
                          cond=cond, guidance=guidance, max_batch=self.runner.max_batch, **opts)
        finally:
            if opened_here:
                self.runner.close()

    def sample(self, num: int, seed: int = 0, **kw) -> np.ndarray:
        """uint8 images [num, H, W, C] of an image model; an array model's float samples
        [num, *sample_shape] as they are. Keyword arguments as in sample_float."""
        samples = self.sample_float(num, seed, **kw).images
        return to_uint8(samples) if self.sample_kind == "image" else samples


def missing_engine_message(path) -> str:
    """What to run to get the engine file at path (which does not exist)."""
    p = Path(path)
    head = f"{path}: no such engine file"
    if p.suffix in TRT_SUFFIXES:
        onnx = [q for q in (p.with_suffix(".onnx"), p.with_name(p.stem + "-fp16.onnx"))
                if q.is_file()]
        if onnx:
            return (f"{head}; build it from the export beside it: ddpm-export build --fp16 "
                    f"--onnx {onnx[0]} (needs TensorRT on this GPU machine)")
        name = p.stem[:-5] if p.stem.endswith("-fp16") else p.stem
        ckpt = p.with_name(name + ".pt")
        if name == "cifar10" and not ckpt.is_file():
            return (f"{head}, and no {ckpt} to build it from. The official CIFAR-10 model: "
                    f"download google/ddpm-cifar10-32 (diffusers format), then 'ddpm-export import "
                    f"--format diffusers ddpm-cifar10-32/ --out {ckpt}', 'ddpm-export export "
                    f"--checkpoint {ckpt}', 'ddpm-export build --fp16' (TensorRT on this GPU "
                    f"machine); or use engines/digits.onnx, which ships with the project")
        return (f"{head}; make it from a checkpoint with 'ddpm-export export --checkpoint "
                f"{ckpt}' then 'ddpm-export build --fp16 --onnx {p.with_suffix('.onnx')}' "
                f"(needs TensorRT)")
    return (f"{head}; expected NAME.onnx (from 'ddpm-export export') or NAME.plan (from "
            f"'ddpm-export build')")


def load(path, backend: Optional[str] = None, providers: Optional[Sequence[str]] = None,
         threads: Optional[int] = None, allow_host_code: bool = False) -> Engine:
    """Open NAME.onnx or NAME.plan with its manifest (NAME.json or embedded).

    Load engines only from sources you trust: an ONNX model or a TensorRT plan is
    a program. allow_host_code (TensorRT only): a version-compatible plan embeds
    TensorRT's lean runtime, host code that runs in this process; such a plan is
    refused unless you pass allow_host_code=True for a plan you trust.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(missing_engine_message(path))
    manifest = read_manifest(p)
    kind = backend or ("onnxruntime" if p.suffix in ONNX_SUFFIXES else
                       "tensorrt" if p.suffix in TRT_SUFFIXES else None)
    if kind == "onnxruntime":
        from runtime.backends.onnxrt import OnnxRuntimeRunner

        return Engine(OnnxRuntimeRunner(str(p), manifest, providers=providers, threads=threads))
    if kind == "tensorrt":
        from runtime.backends.tensorrt import TensorRTRunner  # providers/threads are ONNX Runtime's

        return Engine(TensorRTRunner(str(p), manifest, allow_host_code=allow_host_code))
    raise ValueError(
        f"{path}: unknown engine type {p.suffix!r}; expected one of "
        f"{ONNX_SUFFIXES + TRT_SUFFIXES} or backend='onnxruntime'"
    )
