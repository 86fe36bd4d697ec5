"""One seeding scheme for every sampler: image i of seed s has its own noise stream.

Image i's randomness (x_T, then every z the scheduler adds, in the order the
scheduler draws them) comes from ``numpy.random.Generator(PCG64(SeedSequence(s,
spawn_key=(i,))))``, whatever batch the image is drawn in. So a seed gives the
same images at batch 1, 8 or 64, on a Jetson engine with a small batch profile
and a desktop one alike; sample-many's shard k holds exactly the images
k*shard_size, ... of a single run; and the PyTorch reference sampler fed the same
streams follows the same chain as the runtime.

``ImageStreams`` is what the schedulers receive as ``rng``: its
``standard_normal(shape, dtype)`` fills row j from image ``first + j``'s stream
(the schedulers' ``check_rng`` accepts it next to a plain Generator).

Cost: one Generator per image (about 10 us to create) and one standard_normal
call per image per noisy step; ``python scripts/bench_seeding.py`` prints it
against a digits engine call (see docs/numerics.md, "Seeding").
"""
from __future__ import annotations

from typing import Any, List, Sequence

import numpy as np


def image_generator(seed: int, index: int) -> np.random.Generator:
    """Image ``index``'s own Generator for ``seed`` (both ints >= 0)."""
    for name, v in (("seed", seed), ("index", index)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name}={v!r}: expected an int >= 0")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(int(index),))))


class ImageStreams:
    """The noise streams of images first, ..., first + count - 1 of ``seed``.

    Use it where a scheduler takes ``rng``: every ``standard_normal`` draw must
    have ``count`` rows (one per image); row j comes from image first + j's stream.
    """

    def __init__(self, seed: int, first: int, count: int):
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise ValueError(f"count={count!r}: expected an int >= 1 (images in the batch)")
        self.seed, self.first, self.count = int(seed), int(first), int(count)
        self._gens: List[np.random.Generator] = [image_generator(seed, i) for i in
                                                 range(self.first, self.first + self.count)]

    def __len__(self) -> int:
        return self.count

    def standard_normal(self, shape: Sequence[int], dtype: Any = np.float32) -> np.ndarray:
        """N(0, 1) samples of ``shape`` = (count, ...): row j from image first + j's stream."""
        shape = tuple(int(d) for d in shape)
        if not shape or shape[0] != self.count:
            raise ValueError(
                f"draw of shape {shape} from the streams of {self.count} images "
                f"{self.first}..{self.first + self.count - 1}: the first axis must be the batch "
                f"({self.count}); make one ImageStreams per batch"
            )
        out = np.empty(shape, dtype=dtype)
        for g, row in zip(self._gens, out.reshape(self.count, -1)):  # rows are contiguous views
            g.standard_normal(dtype=dtype, out=row)
        return out
