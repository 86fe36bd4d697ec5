"""Conditions for a sampling run, and classifier-free guidance (Ho & Salimans 2021).

``prepare_conditions`` turns what a caller passes (one value for every sample, or one per
sample) into [num, *shape] arrays checked against the manifest's conditions.
``GuidedDenoiser`` is what the sampling loop calls instead of the engine:

    out = out_uncond + w * (out_cond - out_uncond)

with w the guidance scale as diffusers writes it (``guidance_scale``; the paper's w is
w - 1): w = 1 is the conditional model alone (one call, no null branch), w = 0 the
unconditional model alone. The mix is taken on the network's raw output, whatever it
predicts (eps, x0 or v), before any clipping or thresholding, as diffusers' pipelines do.
At a fixed x_t every conversion between eps, x0 and v is affine in the output and the two
weights (1 - w, w) sum to 1, so the mix is the same in all three spaces. The unconditional
branch replaces every condition by its manifest's null (a null label, zeros).

By default both branches go through one engine call at batch 2N ([uncond; cond]); when 2N
is past the engine's batch range, two calls at batch N. Either way a sample's noise comes
from its own stream, so a seed gives the same sample at any batch size, with or without
guidance batching.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import numpy as np

from runtime.contract import NULL_ZEROS, Condition

Cond = Dict[str, np.ndarray]


class ConditionError(ValueError):
    """Conditions that do not fit the model's manifest."""


def _labels_text(c: Condition) -> str:
    extra = f" or the null label {c.null}" if c.null is not None and c.null >= c.num_classes else ""
    return f"labels in [0, {c.num_classes - 1}]{extra}"


def check_condition(c: Condition, value: Any, batch: int) -> np.ndarray:
    """One condition input for ``batch`` samples: [batch, *shape] in the engine's dtype.

    A class label must be an integer array (or int) with values in range; a float condition
    a float32 array. Raises ConditionError saying what was received and what was expected."""
    a = np.asarray(value)
    want = (batch,) + tuple(c.shape)
    if c.kind == "class_label":
        if a.dtype.kind not in "iu":
            raise ConditionError(
                f"condition {c.name!r}: received dtype {a.dtype}, expected integer class labels "
                f"({_labels_text(c)})")
        if a.shape != want:
            raise ConditionError(
                f"condition {c.name!r}: received shape {a.shape}, expected {want} (one label per sample)")
        bad = a[(a < 0) | ((a >= c.num_classes) & (a != (-1 if c.null is None else c.null)))]
        if bad.size:
            raise ConditionError(
                f"condition {c.name!r}: received label {int(bad.flat[0])}, expected {_labels_text(c)}")
        return a.astype(np.int64, copy=False)
    if a.dtype != np.float32:
        raise ConditionError(
            f"condition {c.name!r}: received dtype {a.dtype}, expected float32; use x.astype(np.float32)")
    if a.shape != want:
        raise ConditionError(f"condition {c.name!r}: received shape {a.shape}, expected {want}")
    if not np.isfinite(a).all():
        raise ConditionError(f"condition {c.name!r}: received NaN or Inf values, expected finite floats")
    return np.ascontiguousarray(a)


def check_conditions(conditions: Sequence[Condition], cond: Optional[Mapping[str, Any]], batch: int) -> Cond:
    """Every condition input for one engine call; refuses missing and unknown names."""
    cond = dict(cond or {})
    names = [c.name for c in conditions]
    missing = [n for n in names if n not in cond]
    unknown = sorted(set(cond) - set(names))
    if missing or unknown:
        takes = f"takes conditions {names}" if names else "is unconditional (it takes no conditions)"
        raise ConditionError(
            f"this model {takes}; received {sorted(cond)}"
            + (f": missing {missing}" if missing else "") + (f", unknown {unknown}" if unknown else ""))
    return {c.name: check_condition(c, cond[c.name], batch) for c in conditions}


def prepare_conditions(conditions: Sequence[Condition], cond: Optional[Mapping[str, Any]],
                       num: int) -> Cond:
    """[num, *shape] arrays for a run of ``num`` samples: each value is either one per sample
    ([num, *shape]) or one for all (the per-sample shape: an int label, a [D] vector)."""
    out = {}
    for c in conditions:
        if cond is not None and c.name in cond:
            a = np.asarray(cond[c.name])
            if a.shape == tuple(c.shape):  # one value for every sample
                a = np.broadcast_to(a, (num,) + tuple(c.shape))
            out[c.name] = a
    for name in (cond or {}):
        if name not in out:
            out[name] = cond[name]  # unknown: check_conditions names it
    return check_conditions(conditions, out, num)


def null_conditions(conditions: Sequence[Condition], batch: int) -> Cond:
    """The unconditional branch's inputs; refuses conditions that have no null form."""
    missing = [c.name for c in conditions if c.null is None]
    if not conditions or missing:
        why = (f"its conditions {missing} have no null form in the manifest (a null label, zeros)"
               if conditions else "the model is unconditional")
        raise ConditionError(
            f"guidance needs the model's unconditional prediction, and {why}; sample with "
            f"guidance 1 (the conditional model alone), or re-export naming the null "
            f"(for an imported class-conditional model: --null-label K)")
    out = {}
    for c in conditions:
        if c.kind == "class_label":
            out[c.name] = np.full((batch,), int(c.null), dtype=np.int64)
        else:
            assert c.null == NULL_ZEROS
            out[c.name] = np.zeros((batch,) + tuple(c.shape), dtype=np.float32)
    return out


def check_guidance(w: Any) -> float:
    if isinstance(w, bool) or not isinstance(w, (int, float, np.integer, np.floating)) or not np.isfinite(w):
        raise ConditionError(
            f"guidance: received {w!r}, expected a finite number (1 = no guidance, the conditional "
            f"model alone; 0 = the unconditional model; > 1 guides toward the condition)")
    return float(w)


class GuidedDenoiser:
    """``out = denoiser(x_t, t, cond)`` for the sampling loop: the runner with the run's
    conditions, mixed by classifier-free guidance (module docstring). ``calls`` counts the
    engine calls made."""

    def __init__(self, runner: Callable[..., np.ndarray], conditions: Sequence[Condition],
                 guidance: float = 1.0, max_batch: Optional[int] = None):
        self.runner = runner
        self.conditions = tuple(conditions)
        self.guidance = check_guidance(guidance)
        self.max_batch = max_batch
        self.calls = 0
        self._null: Dict[int, Cond] = {}
        if self.guidance != 1.0:
            null_conditions(self.conditions, 1)  # refuse now, not at the first step

    @property
    def branches(self) -> int:
        """Network evaluations per sample and step: 1, or 2 with guidance."""
        return 1 if self.guidance in (0.0, 1.0) else 2

    def _call(self, x: np.ndarray, t: np.ndarray, cond: Cond) -> np.ndarray:
        self.calls += 1
        return self.runner(x, t, **cond)

    def null(self, n: int) -> Cond:
        if n not in self._null:
            self._null[n] = null_conditions(self.conditions, n)
        return self._null[n]

    def __call__(self, x: np.ndarray, t: np.ndarray, cond: Cond) -> np.ndarray:
        w, n = self.guidance, x.shape[0]
        if w == 1.0:
            return self._call(x, t, cond)
        if w == 0.0:
            return self._call(x, t, self.null(n))
        null = self.null(n)
        if self.max_batch is None or 2 * n <= self.max_batch:
            both = {k: np.concatenate([null[k], cond[k]]) for k in cond}
            out = self._call(np.concatenate([x, x]), np.concatenate([t, t]), both)
            out_u, out_c = out[:n], out[n:]
        else:
            out_u, out_c = self._call(x, t, null), self._call(x, t, cond)
        return out_u + np.float32(w) * (out_c - out_u)
