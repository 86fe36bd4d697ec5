"""File I/O shared by runtime/ and ddpm_export/: atomic writes, sha256, images, npz.

Every file the project writes goes through ``atomic_write``: the bytes land in a
temporary next to the target, are fsynced, and are renamed over it, so a crash
leaves either the old file or the new one, never half of one. The temporary is
named ``.NAME.<pid>.<random>.ddpm-tmp`` so that a later process can tell a
temporary whose writer died (``kill -9``, power loss) from one being written
now, and remove it: ``stale_temporaries`` / ``remove_stale_temporaries``.
``load_npz`` reads .npz files without ever unpickling. NumPy + Pillow only (no torch).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

TEMP_SUFFIX = ".ddpm-tmp"
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]*" + re.escape(TEMP_SUFFIX) + r"$")


def atomic_write(path: PathLike, write: Callable[[str], Any], mode: int = 0o644) -> Path:
    """Call ``write(tmp_path)``, fsync, then rename over ``path``; returns ``path``.

    A crash never leaves a half file at ``path``; an exception removes the
    temporary. ``write`` gets a path (str) in the target's folder, so the rename
    is atomic. The file gets ``mode`` (mkstemp's is 0600; results are shared).
    """
    path = Path(path)
    tmp = str(temporary_path(path))
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, str(path))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def temporary_path(path: PathLike) -> Path:
    """A new empty file ``.NAME.<pid>.<random>.ddpm-tmp`` next to ``path`` (folder made).

    For writers that cannot hand their output to ``atomic_write`` in one call:
    write it, then ``os.replace`` it over ``path``, and unlink it on failure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=f".{path.name}.{os.getpid()}.",
                               suffix=TEMP_SUFFIX)
    os.close(fd)
    return Path(tmp)


def write_bytes(path: PathLike, data: bytes) -> Path:
    """``data`` to exactly ``path``, atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text(path: PathLike, text: str) -> Path:
    """UTF-8 ``text`` to exactly ``path``, atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, obj: Any, sort_keys: bool = False, allow_nan: bool = False) -> Path:
    """``obj`` as indented JSON plus a newline, atomically. NaN/Inf are not JSON: they
    raise unless ``allow_nan`` (then written as Python's json writes them)."""
    return write_text(path, json.dumps(obj, indent=2, allow_nan=allow_nan, sort_keys=sort_keys) + "\n")


def temporary_writer_pid(path: PathLike) -> Optional[int]:
    """The pid in an ``atomic_write`` temporary's name, or None for any other file."""
    m = _TEMP_RE.match(Path(path).name)
    return int(m.group("pid")) if m else None


def _process_start_time(pid: int) -> Optional[float]:
    """A process's start as a Unix time (Linux /proc; None elsewhere or when gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        start_ticks = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22: starttime
        return btime + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _writer_may_be_alive(pid: int, mtime: float) -> bool:
    """False when the process that wrote a temporary last modified at ``mtime`` is gone.

    A pid that no longer exists is gone. So is one that belongs to a process
    started after the file was last written (the pid was reused, e.g. by the
    restarted job on a preempted machine). Our own pid counts as gone: call this
    before this process starts writing.
    """
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return True
    started = _process_start_time(pid)
    return started is None or started <= mtime + 1.0  # btime has 1 s resolution


def stale_temporaries(folder: PathLike) -> List[Path]:
    """The ``atomic_write`` temporaries directly in ``folder`` whose writer is gone."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = []
    for p in sorted(folder.iterdir()):
        pid = temporary_writer_pid(p)
        if pid is None or not p.is_file():
            continue
        try:
            mtime = p.stat().st_mtime
        except FileNotFoundError:
            continue  # its writer just renamed or removed it
        if not _writer_may_be_alive(pid, mtime):
            stale.append(p)
    return stale


def remove_stale_temporaries(folder: PathLike) -> List[Tuple[Path, int]]:
    """Delete ``stale_temporaries(folder)``; returns (path, size in bytes) of each removed."""
    removed = []
    for p in stale_temporaries(folder):
        try:
            size = p.stat().st_size
            p.unlink()
        except FileNotFoundError:
            continue
        removed.append((p, size))
    return removed


class FolderLocked(RuntimeError):
    """Another live process holds the folder's lock."""


@contextlib.contextmanager
def folder_lock(folder: PathLike, what: str, name: str = ".lock") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (made if missing) for the ``with`` block.

    An ``fcntl.flock`` on FOLDER/NAME: the kernel drops it when its holder exits
    in any way (``kill -9`` included), so a killed process never leaves the
    folder locked. A second process raises FolderLocked naming the holder's pid.
    ``what`` names the holder's kind in the message (e.g. "a training").
    Where fcntl does not exist (Windows) the block runs unlocked.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / name
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks of this kind
        yield lock_path
        return
    f = open(lock_path, "a+")
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise FolderLocked(
                f"{folder} is in use by {what} (pid {holder}, lock {lock_path}): two writers would "
                f"overwrite each other's files; wait for it to finish, stop it, or choose another "
                f"folder"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield lock_path
    finally:
        f.close()  # releases the lock


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[-1, 1] float [N, C, H, W] -> uint8 [N, H, W, C] (clipped, rounded to nearest)."""
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

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    atomic_write(path, write)


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
    atomic_write(path, lambda tmp: im.save(tmp, format="PNG"))


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
