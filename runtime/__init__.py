"""Lightweight NumPy runtime for sampling from exported DDPM engines.

Imports with neither torch nor tensorrt installed::

    import runtime
    with runtime.load("engines/digits.onnx") as engine:
        images = engine.sample(16, seed=0, steps=100, method="ddim")  # uint8 [16, H, W, C]
"""

from runtime.api import Engine, load
from runtime.loop import METHODS, NonFiniteError, SampleResult
from runtime.policy import Policy, load_policy

__version__ = "0.1.0"
__all__ = ["Engine", "load", "load_policy", "Policy", "METHODS", "NonFiniteError", "SampleResult"]
