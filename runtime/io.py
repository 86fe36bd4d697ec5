"""Image grids and PNG writing for samples (NumPy + Pillow, no torch); .npz reading that
never unpickles (load_npz)."""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[-1, 1] float [N, C, H, W] -> uint8 [N, H, W, C]."""
    x = np.clip((np.asarray(x, dtype=np.float64) + 1.0) * 127.5, 0, 255)
    return np.rint(x).astype(np.uint8).transpose(0, 2, 3, 1)


def make_grid(images: np.ndarray, nrow: Optional[int] = None, pad: int = 2) -> np.ndarray:
    """uint8 [N, H, W, C] -> one uint8 [rows*(H+pad)+pad, cols*(W+pad)+pad, C] picture."""
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(
            f"make_grid expects uint8 [N, H, W, C], got {images.dtype} {images.shape}"
        )
    n, h, w, c = images.shape
    cols = nrow or max(1, int(math.ceil(math.sqrt(n))))
    rows = int(math.ceil(n / cols))
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y : y + h, x : x + w] = images[i]
    return grid


def require_pillow() -> None:
    """Fail early, before minutes of sampling, when PNGs cannot be written."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise ImportError(
            "writing PNGs needs Pillow: pip install pillow (or pip install 'ddpm-export[runtime]')"
        ) from None


def save_npz(path, **arrays) -> None:
    """np.savez_compressed, atomically, to exactly ``path`` (no '.npz' appended)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_png(picture: np.ndarray, path, scale: int = 1) -> None:
    """Write uint8 [H, W, C] as PNG atomically (temporary file + rename)."""
    require_pillow()
    from PIL import Image

    picture = np.asarray(picture)
    if picture.ndim == 3 and picture.shape[2] == 1:
        picture = picture[:, :, 0]
    im = Image.fromarray(picture)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        im.save(tmp, format="PNG")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_grid(x: np.ndarray, path, nrow: Optional[int] = None, scale: int = 1) -> None:
    """Samples in [-1, 1] float [N, C, H, W] -> one PNG grid."""
    save_png(make_grid(to_uint8(x), nrow), path, scale)


def save_trajectory(trajectory, path, rows: int = 8, scale: int = 1) -> None:
    """Progressive generation (paper fig. 6): one row per image, one column per
    recorded step. trajectory: [(t, x0_hat float [N, C, H, W])], oldest first."""
    if not trajectory:
        raise ValueError("empty trajectory: sample with trajectory frames to record one")
    rows = min(rows, trajectory[0][1].shape[0])
    frames = np.stack([to_uint8(np.asarray(a)[:rows]) for _, a in trajectory], axis=1)
    save_png(make_grid(frames.reshape((-1,) + frames.shape[2:]), nrow=len(trajectory)), path, scale)


class NpzError(ValueError):
    """A .npz that is missing, damaged, lacks an array, or holds pickled Python objects.

    ``str(e)`` starts with the file; ``e.reason`` is the rest (what is wrong and what was
    expected), for callers that name the file themselves."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def load_npz(path, what: str, keys: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
    """The arrays of a .npz: those named in ``keys`` (each required), or all of them.

    Read with ``allow_pickle=False``: an array of Python objects (or a pickle passed off
    as a .npz) is refused, never unpickled, so loading a file cannot run code. ``what``
    says what the file should be (e.g. "samples from 'ddpm-export sample --npz'"); every
    error is an NpzError that names the file and ``what``.
    """
    p = Path(path)
    if not p.is_file():
        raise NpzError(path, f"no such file; expected {what}")
    try:
        z = np.load(p, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e):  # a pickle, not a .npz
            raise NpzError(path, f"refused: the file is a Python pickle, and loading it could run "
                                 f"code; expected {what} (a .npz of numeric arrays)") from None
        raise NpzError(path, f"not a readable .npz ({_first_line(e)}); expected {what}") from e
    except Exception as e:  # truncated zip, bad CRC, not a numpy file at all
        raise NpzError(path, f"not a readable .npz ({_first_line(e)}); expected {what}") from e
    if not hasattr(z, "files"):  # a lone .npy array
        raise NpzError(path, f"is a .npy array, not a .npz; expected {what}")
    with z:
        names = list(z.files) if keys is None else list(keys)
        missing = [k for k in names if k not in z.files]
        if missing:
            raise NpzError(path, f"no {missing[0]!r} array (has {sorted(z.files)}); expected {what}")
        out = {}
        for k in names:
            try:
                out[k] = z[k]
            except ValueError as e:
                if "allow_pickle" in str(e):
                    raise NpzError(path, f"refused: array {k!r} holds Python objects, and loading "
                                         f"them could run code; expected {what} (numeric arrays)") from None
                raise NpzError(path, f"array {k!r} is unreadable ({_first_line(e)}); expected {what}") from e
            except Exception as e:
                raise NpzError(path, f"array {k!r} is unreadable ({_first_line(e)}); expected {what}") from e
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__
