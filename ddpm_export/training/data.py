"""Training data, loaded whole into memory as float32 [N, C, H, W] in [-1, 1].

Sources: the sklearn digits (shipped with scikit-learn, no download), a local
CIFAR-10 ``cifar-10-batches-py`` folder, or a folder of PNG/JPEG images.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CIFAR10_URL_HINT = (
    "download 'CIFAR-10 python version' (cifar-10-python.tar.gz) from the "
    "CIFAR-10 page of the University of Toronto (www.cs.toronto.edu/~kriz/cifar.html), "
    "extract it, and pass the cifar-10-batches-py folder with --data"
)


class DataError(ValueError):
    """Data that is missing or not in the expected format."""


# Every global the official cifar-10-batches-py pickles name: the ndarray reconstruction
# of b"data" (numpy 2 writes numpy._core for numpy.core). Dicts, lists, bytes, ints need none.
_reconstruct = np.zeros(0).__reduce__()[0]  # numpy's array-rebuilding function, either name
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR-10 python batch holds; any other global is refused, so
    a crafted batch cannot run code."""

    def find_class(self, module, name):
        try:
            return _CIFAR_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load {module}.{name}: a CIFAR-10 batch holds only dicts, lists, bytes, "
                f"numbers and numpy arrays, and loading anything else could run code"
            ) from None


def read_cifar_batch(path: Path) -> np.ndarray:
    """One cifar-10-batches-py batch as uint8 [N, 3, 32, 32], through _CifarUnpickler;
    raises DataError naming the file."""
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
        data = d[b"data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"b'data' is {getattr(data, 'dtype', type(data).__name__)} "
                             f"{getattr(data, 'shape', '')}, expected uint8 [N, 3072]")
        return data.reshape(-1, 3, 32, 32)
    except pickle.UnpicklingError as e:
        if str(e).startswith("refused"):
            raise DataError(f"{path}: {e}; re-extract cifar-10-python.tar.gz from the official "
                            f"archive") from None
        raise DataError(f"{path}: not a CIFAR-10 python batch (UnpicklingError: {e}); "
                        f"re-extract cifar-10-python.tar.gz") from e
    except Exception as e:  # pickle raises many kinds on a damaged file
        raise DataError(
            f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e}); "
            f"re-extract cifar-10-python.tar.gz"
        ) from e


def digits_images(size: int = 16) -> np.ndarray:
    """The 1797 sklearn digits (8x8, 0..16) resized to size x size: [N, 1, size, size] float32 in [-1, 1]."""
    from sklearn.datasets import load_digits

    return preprocess_digits(load_digits().images, size)


def digits_labels() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().target.astype(np.int64)


def preprocess_digits(images: np.ndarray, size: int = 16) -> np.ndarray:
    """[N, 8, 8] values 0..16 -> [N, 1, size, size] float32 in [-1, 1] (bilinear resize)."""
    from PIL import Image

    images = np.asarray(images, dtype=np.float32) / 16.0
    if images.shape[-2:] != (size, size):
        images = np.stack(
            [
                np.asarray(Image.fromarray(im, mode="F").resize((size, size), Image.BILINEAR))
                for im in images
            ]
        )
    return np.clip(images * 2.0 - 1.0, -1.0, 1.0)[:, None].astype(np.float32)


def cifar10_uint8(folder: Optional[str]) -> np.ndarray:
    """The 50,000 CIFAR-10 training images as stored: [N, 3, 32, 32] uint8."""
    if folder is None:
        raise DataError(f"CIFAR-10 needs --data PATH: {CIFAR10_URL_HINT}")
    root = Path(folder)
    if root.is_dir() and (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    batches = [root / f"data_batch_{i}" for i in range(1, 6)]
    missing = [b.name for b in batches if not b.is_file()]
    if missing:
        raise DataError(
            f"{root}: no CIFAR-10 training batches ({', '.join(missing)} missing); "
            f"expected the cifar-10-batches-py folder: {CIFAR10_URL_HINT}"
        )
    return np.concatenate([read_cifar_batch(b) for b in batches])


def cifar10_test_uint8(folder: str) -> np.ndarray:
    """The 10,000 CIFAR-10 test images (``test_batch``) as stored: [N, 3, 32, 32] uint8."""
    root = Path(folder)
    if root.is_dir() and (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    if not (root / "test_batch").is_file():
        raise DataError(f"{root}: no CIFAR-10 test batch (test_batch missing); expected the "
                        f"cifar-10-batches-py folder: {CIFAR10_URL_HINT}")
    return read_cifar_batch(root / "test_batch")


def cifar10_images(folder: Optional[str]) -> np.ndarray:
    """The 50,000 CIFAR-10 training images: [N, 3, 32, 32] float32 in [-1, 1]."""
    return cifar10_uint8(folder).astype(np.float32) / 127.5 - 1.0


def is_cifar10_folder(path: Path) -> bool:
    """A cifar-10-batches-py folder, or a folder holding one."""
    return (path / "data_batch_1").is_file() or (path / "cifar-10-batches-py").is_dir()


def image_files(folder: Path) -> List[Path]:
    """Every PNG/JPEG file under folder (recursively), sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_images(files: Iterable[Path], convert: Callable[[Any], np.ndarray]) -> Iterator[Tuple[Path, np.ndarray]]:
    """(path, convert(PIL image)) per file; a file Pillow cannot read raises DataError naming it."""
    from PIL import Image

    for p in files:
        try:
            with Image.open(p) as im:
                a = convert(im)
        except Exception as e:
            raise DataError(f"{p}: cannot read image ({e}); remove it or fix the file") from e
        yield p, a


def folder_images(folder: str, size: int, channels: int) -> np.ndarray:
    """Every PNG/JPEG under folder, center-cropped and resized: [N, C, size, size] in [-1, 1]."""
    from PIL import Image

    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{folder}: not a folder; expected a folder of PNG/JPEG images")
    files = image_files(root)
    if not files:
        raise DataError(
            f"{folder}: no images found; expected files ending in {', '.join(IMAGE_SUFFIXES)}"
        )
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise DataError(f"image folders need 1 or 3 channels, the model has {channels}")

    def convert(im) -> np.ndarray:
        im = im.convert(mode)
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        return np.asarray(im.resize((size, size), Image.BICUBIC), dtype=np.float32)

    out = np.empty((len(files), channels, size, size), dtype=np.float32)
    for i, (_, a) in enumerate(read_images(files, convert)):
        out[i] = (a.reshape(size, size, channels).transpose(2, 0, 1) / 127.5) - 1.0
    return out


def load_labelled_images(
    source: str, data: Optional[str], size: int, channels: int, num_classes: int = 0
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(images, labels) for training: ``load_images``, and with ``num_classes`` > 0 (a
    class-conditional model) the class of each image, int64 [N] in 0..num_classes-1.

    Only the sklearn digits (the ``digits`` source with no ``data`` folder) carry labels
    here; a conditional model on any other source raises DataError. Unconditional:
    labels is None.
    """
    if num_classes == 0:
        return load_images(source, data, size, channels), None
    if source != "digits" or data is not None:  # refused before reading a whole folder
        where = data if data is not None else f"the {source!r} source"
        raise DataError(
            f"a class-conditional model ({num_classes} classes) needs labelled data, and {where} "
            f"has no labels here (only the sklearn digits, the digits presets' own data, carry "
            f"them); drop --data to train on the digits, or train an unconditional preset"
        )
    x = load_images(source, data, size, channels)
    y = digits_labels()
    if len(y) != len(x):  # the same load_digits() call order: cannot differ unless sklearn changed
        raise DataError(f"the digits have {len(x)} images but {len(y)} labels")
    if int(y.max()) >= num_classes:
        raise DataError(
            f"the digits have labels 0..{int(y.max())}, the model has num_classes={num_classes}; "
            f"use a preset with num_classes={int(y.max()) + 1} (digits-cond)"
        )
    return x, y


def load_images(source: str, data: Optional[str], size: int, channels: int) -> np.ndarray:
    """Images for training, checked against the model's shape.

    ``data`` None: the preset's own source (``digits``: sklearn; ``cifar10``: an
    error saying where to get it). ``data`` a path: a cifar-10-batches-py folder,
    or else a folder of PNG/JPEG images.
    """
    if data is None:
        if source == "digits":
            x = digits_images(size)
        elif source == "cifar10":
            x = cifar10_images(None)
        else:
            raise DataError(f"unknown data source {source!r}; expected digits or cifar10")
    elif Path(data).is_dir() and is_cifar10_folder(Path(data)):
        x = cifar10_images(data)
    elif source == "cifar10" and not Path(data).exists():
        x = cifar10_images(data)  # raises with the download hint
    else:
        x = folder_images(data, size, channels)
    if x.shape[1:] != (channels, size, size):
        raise DataError(
            f"data has images of shape {tuple(x.shape[1:])}, the model expects "
            f"{(channels, size, size)}; pick the preset that matches the data"
        )
    return x
