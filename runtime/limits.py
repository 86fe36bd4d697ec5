"""Bounds on sizes that come from untrusted input: how many images a request may hold in memory.

``python -m runtime.sample --num N`` and the sampling loop keep all N images in memory at
once, so N is a memory request. :func:`check_images_fit` compares what N images need with
the memory available now (``/proc/meminfo`` MemAvailable, capped by a cgroup limit, or
``os.sysconf``) and refuses a request that cannot fit, pointing to ``runtime.sample_many``,
which writes shards and holds one at a time. A server applies the same check per request.
Standard library only (Python 3.8).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

# Bytes per image value (one channel of one pixel) held at once:
LOOP_BYTES_PER_VALUE = 8  # the loop: float32 batches, then their float32 concatenation
# runtime.sample: the float32 samples, the two float64 temporaries alive at the peak of the
# uint8 conversion (runtime.io.to_uint8), the uint8 images, the padded grid (< 2 per value)
SAMPLE_CLI_BYTES_PER_VALUE = 4 + 16 + 1 + 2

SHARDS_HINT = ("draw them in shards with 'python -m runtime.sample_many --num {num} --out DIR' "
               "(one shard in memory at a time, resumable)")


class MemoryLimitError(ValueError):
    """A request for more images than the memory available can hold at once."""


def _meminfo_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _read_int(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (v2): no limit


def _cgroup_room() -> Optional[int]:
    """Limit minus usage of this process's memory cgroup (v2, then v1), None if unlimited."""
    root = Path("/sys/fs/cgroup")
    for limit, usage in ((root / "memory.max", root / "memory.current"),
                         (root / "memory" / "memory.limit_in_bytes", root / "memory" / "memory.usage_in_bytes")):
        lim, used = _read_int(limit), _read_int(usage)
        if lim is not None and used is not None and lim < (1 << 60):  # v1 says 'unlimited' with ~2^63
            return max(0, lim - used)
    return None


def available_memory() -> Optional[int]:
    """Bytes of memory this process can still get now (None: the system does not say)."""
    found = [v for v in (_meminfo_available(), _cgroup_room()) if v is not None]
    return min(found) if found else None


def images_bytes(num: int, image_shape: Sequence[int], bytes_per_value: int) -> int:
    values = 1
    for d in image_shape:
        values *= int(d)
    return int(num) * values * int(bytes_per_value)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def check_images_fit(num: int, image_shape: Sequence[int], bytes_per_value: int = LOOP_BYTES_PER_VALUE,
                     name: str = "num", available: Optional[int] = None) -> int:
    """Raise MemoryLimitError when ``num`` images of ``image_shape`` (C, H, W) need more memory
    than is available (``available`` bytes, default: :func:`available_memory`); returns the
    bytes they need. ``name`` is how the caller's user spells the number (e.g. "--num")."""
    need = images_bytes(num, image_shape, bytes_per_value)
    room = available_memory() if available is None else available
    if room is None or need <= room:
        return need
    per_image = images_bytes(1, image_shape, bytes_per_value)
    shape = "x".join(str(int(d)) for d in image_shape)
    raise MemoryLimitError(
        f"{name} {num}: {num} images of {shape} held in memory at once need about {_size(need)}, "
        f"but {_size(room)} is available (at most about {room // per_image} images fit); "
        + SHARDS_HINT.format(num=num)
    )
