"""Export: ONNX float32 (``onnx_export``), FP16 with FP32 islands (``fp16``), TensorRT (``tensorrt``).

Export never imports evaluation; ``ort`` holds the ONNX Runtime session the checks share.
``export_module`` (in ``onnx_export``) exports any PyTorch denoiser with its schedule.
"""


class ExportError(ValueError):
    """An export that failed a check; no output file was written."""


def export_module(*args, **kwargs):
    """See :func:`ddpm_export.export.onnx_export.export_module` (imported on first use)."""
    from ddpm_export.export.onnx_export import export_module as _export_module

    return _export_module(*args, **kwargs)
