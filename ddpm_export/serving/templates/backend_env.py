"""Checks on the Python environment a Triton Python-backend model runs in (copied beside model.py)."""
import numpy as np


def check_numpy():
    """Refuse to load under NumPy 2, which the backend stub we test on cannot exchange data with.

    The Python-backend stub of Triton 2.51 (24.10, the one nvidia-pytriton ships) is built
    against NumPy 1.x. Under NumPy 2 it builds wrong arrays from request tensors (observed:
    a UINT8 input read back as its first byte repeated; a BYTES input crashes the stub, taking
    the model instance down). Fail at load with the fix rather than serve wrong images.
    """
    if int(np.__version__.split(".")[0]) >= 2:
        raise RuntimeError(
            f"the backend's Python has NumPy {np.__version__}; Triton's Python-backend stub (2.51) "
            f"needs numpy<2 in the Python environment it runs: pip install 'numpy<2' there")
