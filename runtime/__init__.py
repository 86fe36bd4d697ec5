"""Lightweight NumPy runtime for sampling from exported DDPM engines.

Imports with neither torch nor tensorrt installed.
"""

__version__ = "0.1.0"
