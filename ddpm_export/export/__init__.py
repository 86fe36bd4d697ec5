"""Export: ONNX float32 (``onnx_export``), FP16 with FP32 islands (``fp16``), TensorRT (``tensorrt``).

Export never imports evaluation; ``ort`` holds the ONNX Runtime session the checks share.
"""


class ExportError(ValueError):
    """An export that failed a check; no output file was written."""
