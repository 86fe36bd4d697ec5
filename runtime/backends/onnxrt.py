"""ONNX Runtime backend: CPU, and CUDA when onnxruntime-gpu is installed."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from runtime.contract import INPUT_T, INPUT_X, OUTPUT
from runtime.backends.base import Runner


class BackendMissing(ImportError):
    pass


def _import_ort():
    try:
        import onnxruntime as ort  # lazy: the runtime imports without it
    except ImportError as e:
        raise BackendMissing(
            "onnxruntime is not installed; pip install onnxruntime (CPU) or "
            "onnxruntime-gpu (CUDA) to run .onnx engines"
        ) from e
    return ort


def default_providers() -> List[str]:
    ort = _import_ort()
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    def __init__(
        self,
        path: str,
        manifest: Dict[str, Any],
        providers: Optional[Sequence[str]] = None,
        threads: Optional[int] = None,
    ):
        super().__init__(path, manifest)
        self.providers = list(providers) if providers else None
        self.threads = threads
        self.session = None

    def _activate(self) -> None:
        ort = _import_ort()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            opts.intra_op_num_threads = int(self.threads)
        providers = self.providers or default_providers()
        try:
            self.session = ort.InferenceSession(self.path, sess_options=opts, providers=providers)
        except Exception as e:
            raise ValueError(
                f"{self.path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:200]}); "
                f"the file is truncated or not an ONNX model: re-export it with 'ddpm-export export'"
            ) from e
        self._check_graph()

    def _check_graph(self) -> None:
        """The graph's I/O must be the manifest's: names, dtypes, image shape."""
        s = self.session
        got = {i.name: (i.type, i.shape) for i in s.get_inputs()}
        outs = {o.name: (o.type, o.shape) for o in s.get_outputs()}
        want = {INPUT_X: "tensor(float)", INPUT_T: "tensor(int32)"}
        want.update({c.name: "tensor(int64)" if c.dtype == "int64" else "tensor(float)"
                     for c in self.conditions})
        for name, typ in want.items():
            if name not in got or got[name][0] != typ:
                raise ValueError(
                    f"{self.path}: the graph's inputs {sorted(got)} ({got}) disagree with the manifest "
                    f"({want}); the .onnx and its .json do not belong together: re-export both"
                )
        if OUTPUT not in outs:
            raise ValueError(f"{self.path}: the graph has no output {OUTPUT!r} (has {sorted(outs)}); re-export it")
        dims = got[INPUT_X][1][1:]
        if [d for d in dims if isinstance(d, int)] and tuple(dims) != self.sample_shape:
            raise ValueError(
                f"{self.path}: the graph takes samples of shape {tuple(dims)}, its manifest says "
                f"{self.sample_shape}; the .onnx and its .json do not belong together: re-export both"
            )
        self._outputs = [OUTPUT]

    @property
    def active_providers(self) -> List[str]:
        return self.session.get_providers() if self.session is not None else []

    def _infer(self, x_t: np.ndarray, t: np.ndarray, cond: Dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(self._outputs, {INPUT_X: x_t, INPUT_T: t, **cond})[0]

    def _deactivate(self) -> None:
        self.session = None
