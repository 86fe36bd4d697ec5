"""Test images for the likelihood bound, as uint8 on the model's own grid (no resizing).

``digits``: the held-out half of the sklearn digits that the digits classifier never
trains on (``evaluation.digits.digits_split``), saved to uint8 as a PNG would be. The
diffusion model itself trained on all 1797 digits, so for it these are training images.
``cifar10``: the CIFAR-10 test batch (``data/cifar-10-batches-py`` unless a folder with
``test_batch`` is given). Any other folder: its PNG/JPEG files, which must already have
the engine's size and channel count (resizing would change the data being scored).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from ddpm_export.training.data import IMAGE_SUFFIXES, DataError, cifar10_test_uint8

CIFAR10_DEFAULT = Path("data") / "cifar-10-batches-py"
#: Images scored when --num is not given for the built-in sets (digits, cifar10); a folder is scored whole.
BUILTIN_DEFAULT_NUM = 16


def _is_cifar10(data: str) -> bool:
    return data == "cifar10" or (Path(data).is_dir() and (
        (Path(data) / "test_batch").is_file() or (Path(data) / "cifar-10-batches-py").is_dir()))


def default_num(data: str) -> Optional[int]:
    """How many images --data scores without --num: all of a folder, BUILTIN_DEFAULT_NUM of a built-in set.

    The built-in sets are large (899 digits, 10,000 CIFAR-10 images) and every image costs T network
    calls, so they default to a small prefix; a folder is what the user chose to score.
    """
    return BUILTIN_DEFAULT_NUM if data == "digits" or _is_cifar10(data) else None


def load_test_images(data: str, image_shape: Sequence[int], num: Optional[int] = None) -> Tuple[np.ndarray, str]:
    """(uint8 [N, C, H, W], description) for --data, cut to the first ``num`` images (None: all)."""
    shape = tuple(int(s) for s in image_shape)
    if data == "digits":
        from ddpm_export.evaluation.digits import DIGITS_SHAPE, digits_split

        if shape != DIGITS_SHAPE:
            raise DataError(f"--data digits gives 1x16x16 images; the engine expects "
                            f"{'x'.join(map(str, shape))}: pass a folder of matching images")
        x_te = digits_split()[1]
        x = np.clip(np.round((x_te + 1.0) * 127.5), 0, 255).astype(np.uint8).reshape((-1,) + shape)
        what = "held-out sklearn digits (the classifier's test half)"
    elif _is_cifar10(data):
        x = cifar10_test_uint8(str(CIFAR10_DEFAULT if data == "cifar10" else data))
        if shape != x.shape[1:]:
            raise DataError(f"CIFAR-10 images are 3x32x32; the engine expects {'x'.join(map(str, shape))}")
        what = "CIFAR-10 test batch"
    else:
        x = folder_uint8(data, shape)
        what = f"images in {data}"
    if num is not None:
        if num > len(x):
            raise DataError(f"--num {num} is more than the {len(x)} images of {what}; "
                            f"pass --num {len(x)} or fewer")
        x = x[:num]
    return x, what


def test_labels(data: str, num: Optional[int] = None) -> np.ndarray:
    """The class labels (int64 [N]) of the images ``load_test_images(data, ..., num)`` returns, for a
    class-conditional model's p(x | y); only the digits set has them here."""
    if data != "digits":
        raise DataError(f"--data {data}: these images have no class labels here (only --data digits has "
                        f"them), and a class-conditional model's likelihood is p(x | y), which needs each "
                        f"image's label; score it with --data digits")
    from ddpm_export.evaluation.digits import digits_split

    y = np.asarray(digits_split()[3], dtype=np.int64)
    return y if num is None else y[:num]


def folder_uint8(folder: str, shape: Tuple[int, int, int]) -> np.ndarray:
    """Every PNG/JPEG under folder as uint8 [N, C, H, W]; each must be C x H x W already."""
    from PIL import Image

    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"--data {folder}: not 'digits', 'cifar10' or a folder; expected one of those")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no images found; expected files ending in {', '.join(IMAGE_SUFFIXES)}")
    c, h, w = shape
    modes = {1: ("L",), 3: ("RGB",)}.get(c, ())
    out = np.empty((len(files),) + shape, dtype=np.uint8)
    for i, p in enumerate(files):
        try:
            with Image.open(p) as im:
                im.load()
        except Exception as e:
            raise DataError(f"{p}: cannot read image ({e}); remove it or fix the file") from e
        if im.mode not in modes:
            got = {"L": 1, "RGB": 3, "RGBA": 4, "LA": 2}.get(im.mode)
            raise DataError(f"{p}: {got or im.mode} channel{'s' if got != 1 else ''} ({im.mode} image); "
                            f"the engine expects {c} (8-bit {' or '.join(modes) or '?'} images)")
        if im.size != (w, h):
            raise DataError(f"{p}: {im.size[0]}x{im.size[1]} pixels; the engine expects {w}x{h} "
                            f"(images are scored as they are, never resized)")
        out[i] = np.asarray(im, dtype=np.uint8).reshape(h, w, c).transpose(2, 0, 1)
    return out
