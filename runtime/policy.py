"""A LeRobot DiffusionPolicy deployed as two engines (work in progress: normalization only).

normalize / unnormalize apply LeRobot 0.4.4's NormalizerProcessorStep formulas in float32
(lerobot/processor/normalize_processor.py), for a feature's ``normalization`` entry of a
manifest's ``policy`` section (runtime.contract.policy_of):
  mean_std:  (x - mean) / (std + eps);          inverse x * std + mean (LeRobot adds no eps)
  min_max:   d = max - min, eps where d == 0;   2 (x - min) / d - 1; inverse (x + 1) / 2 * d + min
  quantiles / quantile10: as min_max with (q01, q99) / (q10, q90)
  identity:  unchanged
load_policy and Policy (select_action, predict_chunk) are not written yet.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

_RANGE = {"min_max": ("min", "max"), "quantiles": ("q01", "q99"), "quantile10": ("q10", "q90")}


def _stat(norm: Mapping[str, Any], key: str) -> np.ndarray:
    return np.asarray(norm[key], dtype=np.float32)


def normalize(x: Any, norm: Mapping[str, Any], inverse: bool = False) -> np.ndarray:
    """x (raw units; normalized units when inverse) -> float32, per LeRobot's formulas."""
    x = np.asarray(x, dtype=np.float32)
    mode = norm["mode"]
    if mode == "identity":
        return x
    eps = np.float32(norm["eps"])
    if mode == "mean_std":
        mean, std = _stat(norm, "mean"), _stat(norm, "std")
        return x * std + mean if inverse else (x - mean) / (std + eps)
    if mode in _RANGE:
        lo_k, hi_k = _RANGE[mode]
        lo, hi = _stat(norm, lo_k), _stat(norm, hi_k)
        d = hi - lo
        d = np.where(d == 0, eps, d).astype(np.float32)
        return (x + 1) / 2 * d + lo if inverse else 2 * (x - lo) / d - 1
    raise ValueError(f"normalization mode {mode!r}: expected one of identity, mean_std, "
                     f"{', '.join(_RANGE)}; re-export the policy")


def unnormalize(x: Any, norm: Mapping[str, Any]) -> np.ndarray:
    """The inverse of normalize (actions back to raw units)."""
    return normalize(x, norm, inverse=True)
