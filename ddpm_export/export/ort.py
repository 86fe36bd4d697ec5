"""ONNX Runtime CPU sessions for the export's checks (parity and the FP16 error table)."""
from __future__ import annotations

import os
from typing import Any


def ort_session(model: Any):
    """An ONNX Runtime CPU session for a path or serialized model bytes."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError("the export's parity check needs onnxruntime: pip install "
                          "onnxruntime (or 'ddpm-export[onnx]'), or export with check=False") from None
    so = ort.SessionOptions()
    so.log_severity_level = 3
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        so.intra_op_num_threads = int(threads)
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
