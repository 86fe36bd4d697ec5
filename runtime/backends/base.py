"""The one interface every backend implements: ``eps = runner(x_t, t, **cond)``
(``cond``: the model's condition inputs by name; none for an unconditional model).

A runner is a context manager (Polygraphy ``backend/base/runner.py``): entering
loads the engine, leaving frees it. Before each call it checks the inputs
against the manifest (shape, dtype, batch range) and says what it received,
what it expected and how to fix it.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from runtime.contract import INPUT_T, INPUT_X, conditions_of, sample_shape_of
from runtime.guidance import ConditionError, check_conditions


class InputError(ConditionError):
    """An input that does not fit the engine's manifest (a ConditionError: a wrong
    condition input is one too)."""


class Activatable:
    """The lifecycle every engine holder shares: entering loads (``_activate``), leaving frees
    (``_deactivate``); a denoiser's Runner and a policy's encoder runner are both one."""

    is_active = False

    # --- lifecycle -------------------------------------------------------
    def __enter__(self) -> "Activatable":
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def _activate(self) -> None:
        raise NotImplementedError

    def _deactivate(self) -> None:
        pass


class Runner(Activatable):
    """Base class: subclasses implement ``_activate``, ``_infer`` and ``_deactivate``."""

    backend = "base"

    def __init__(self, path: str, manifest: Dict[str, Any]):
        self.path = str(path)
        self.manifest = manifest
        self.sample_shape: Tuple[int, ...] = sample_shape_of(manifest)
        self.image_shape = self.sample_shape  # the older name ([C, H, W] for an image model)
        self.conditions = conditions_of(manifest)
        br = manifest["batch_range"]
        self.min_batch, self.max_batch = int(br["min"]), int(br["max"])
        self.num_timesteps = int(manifest["schedule"]["num_timesteps"])
        self.is_active = False

    # --- inference -------------------------------------------------------
    def __call__(self, x_t: np.ndarray, t: np.ndarray, **cond: Any) -> np.ndarray:
        """x_t: float32 [B, *sample_shape] ([B, C, H, W] for images); t: int32 [B] (an int is
        broadcast); cond: every condition input by name ([B, *shape], int64 labels or
        float32) -> eps float32 [B, *sample_shape]."""
        if not self.is_active:
            raise RuntimeError(
                f"{self.backend} runner for {self.path} is not active; use it as "
                f"'with runtime.load(path) as runner:' or call runner.__enter__()"
            )
        x_t, t = self.check_inputs(x_t, t)
        try:
            feeds = check_conditions(self.conditions, cond, x_t.shape[0])
        except ConditionError as e:
            raise InputError(f"{self.path}: {e}") from None
        return self._infer(x_t, t, feeds)

    def check_inputs(self, x_t: Any, t: Any) -> Tuple[np.ndarray, np.ndarray]:
        x_t = np.asarray(x_t)
        if x_t.dtype != np.float32:
            raise InputError(
                f"input {INPUT_X!r} has dtype {x_t.dtype}, expected float32; use x.astype(np.float32)"
            )
        expected = ("B",) + self.image_shape
        if x_t.ndim != len(self.sample_shape) + 1 or tuple(x_t.shape[1:]) != self.sample_shape:
            raise InputError(
                f"input {INPUT_X!r} has shape {tuple(x_t.shape)}, expected {expected} "
                f"(the engine {self.path} was exported for samples of shape {self.sample_shape})"
            )
        b = x_t.shape[0]
        if not self.min_batch <= b <= self.max_batch:
            raise InputError(
                f"batch {b} is outside the engine's range [{self.min_batch}, {self.max_batch}]; "
                f"sample in batches within it (--batch) or re-export with another batch range"
            )
        t = np.asarray(t)
        if t.ndim == 0:
            t = np.full((b,), t, dtype=np.int32)
        if not np.issubdtype(t.dtype, np.integer) or t.shape != (b,):
            raise InputError(
                f"input {INPUT_T!r} has dtype {t.dtype} and shape {t.shape}, expected int32 [{b}] "
                f"(one integer timestep per image)"
            )
        T = self.num_timesteps
        if t.min() < 0 or t.max() >= T:
            raise InputError(f"timesteps must lie in [0, {T - 1}], got min {t.min()} max {t.max()}")
        return np.ascontiguousarray(x_t), t.astype(np.int32, copy=False)

    # --- backend hooks (and _activate, _deactivate) ----------------------
    def _infer(self, x_t: np.ndarray, t: np.ndarray, cond: Dict[str, np.ndarray]) -> np.ndarray:
        """cond: the checked condition inputs by name ({} for an unconditional model)."""
        raise NotImplementedError
