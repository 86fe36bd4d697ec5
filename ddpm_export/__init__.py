"""ddpm-export: a DDPM from PyTorch training to ONNX and TensorRT engines."""

__version__ = "0.1.0"
