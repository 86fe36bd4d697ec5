"""FID / KID / IS through torch-fidelity, with a local Inception weights file.

``ddpm-export fid --samples S --reference R --inception-weights W``

The metrics themselves are torch-fidelity's (``torch_fidelity.calculate_metrics``):
its TensorFlow-compatible InceptionV3 (``inception-v3-compat``: pool3 2048-d
features for FID and KID, the unbiased 1008-way logits for IS), its Frechet
distance, its unbiased polynomial-kernel MMD over random subsets (KID) and its
split Inception Score. This module only

* loads the images (arrays, .npz, image folders, sample shards, a CIFAR-10
  ``cifar-10-batches-py`` folder) as uint8 [N, H, W, 3] and hands them to
  torch-fidelity as Datasets of uint8 [3, H, W] tensors;
* never lets torch-fidelity download anything: the Inception weights are a
  local file (``INCEPTION_WEIGHTS_FILE`` from ``INCEPTION_WEIGHTS_URL``); a
  missing or wrong file is an error that names the file and where to get it;
* reports only what torch-fidelity computed, with the counts, the feature
  extractor and the weights file's SHA-256 next to the numbers.

torch-fidelity imports torchvision at import time (its dataset registry and its
VGG/CLIP/DINOv2 extractors), so it needs a torchvision built for the installed
torch; a mismatch is reported with both versions.

Comparable numbers: published CIFAR-10 FIDs are 50,000 samples against the
50,000 training images (``--reference`` the cifar-10-batches-py folder). FID
from fewer than 2,048 images per set (the feature dimension) is biased upward
and only good for comparing runs of the same size. On a CPU the Inception
pass is ~0.1-0.5 s per image and torch-fidelity's Frechet distance (eigenvalues
of a 2048x2048 product) ~20 s on 2 cores.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union


import numpy as np

from runtime.io import sha256_file, to_uint8

from ddpm_export.training.data import (IMAGE_SUFFIXES, DataError, cifar10_uint8, image_files,
                                       is_cifar10_folder, read_images)

# torch-fidelity's InceptionV3 weights (torch_fidelity/feature_extractor_inceptionv3.py,
# URL_INCEPTION_V3; converted from TensorFlow's 2015-12-05 Inception graph).
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_WEIGHTS_FILE
)
INCEPTION_EXTRACTOR = "inception-v3-compat"
METRICS = ("fid", "kid", "isc")
FID_FEATURE_DIM = 2048  # pool3 of the Inception: fewer images than this -> singular covariance
DEFAULT_BATCH_SIZE = 64
DEFAULT_KID_SUBSET_SIZE = 1000  # torch-fidelity's default (and the KID paper's)
DEFAULT_KID_SUBSETS = 100
DEFAULT_ISC_SPLITS = 10
RNG_SEED = 2020  # torch-fidelity's default: KID subsets and IS shuffling

_INSTALL_FID = (
    "install torchvision from the same index as your torch build first (a CPU torch needs the "
    "CPU torchvision of the same release), then pip install 'ddpm-export[fid]'"
)

PathOrArray = Union[str, os.PathLike, np.ndarray]


class FidelityError(ValueError):
    """Inputs, weights or installation that keep the metrics from being computed."""


def weights_help() -> str:
    return (
        f"FID/KID/IS use torch-fidelity's InceptionV3 weights, the file {INCEPTION_WEIGHTS_FILE} "
        f"(about 92 MB) from {INCEPTION_WEIGHTS_URL}; download it on a machine with internet "
        f"access and pass its path with --inception-weights PATH (this toolkit never downloads it)"
    )


# ---------------------------------------------------------------------------------------------
# torch-fidelity import


def import_torch_fidelity():
    """``torch_fidelity``, or a FidelityError that says what to install."""
    try:
        import torch_fidelity  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "torch_fidelity":
            raise FidelityError(
                f"torch-fidelity is not installed: {_INSTALL_FID}"
            ) from e
        raise FidelityError(_import_failure_message(e)) from e
    except Exception as e:  # torchvision's C ops failing to load raise RuntimeError / OSError
        raise FidelityError(_import_failure_message(e)) from e
    return torch_fidelity


def _installed_version(dist: str) -> Optional[str]:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # Python < 3.8
        return None
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _import_failure_message(e: BaseException) -> str:
    try:
        import torch

        torch_version = torch.__version__
    except Exception:
        torch_version = _installed_version("torch") or "not installed"
    tv = _installed_version("torchvision")
    cause = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    if tv is None:
        what = "torchvision is not installed"
    else:
        what = f"torchvision {tv} does not load with torch {torch_version}"
    return (
        f"torch-fidelity cannot be imported ({cause}): {what}; torch-fidelity imports torchvision, "
        f"which must be built for the installed torch ({torch_version}): install torchvision from "
        f"the same index as torch (pip install torchvision --index-url <the index torch came from>)"
    )


# ---------------------------------------------------------------------------------------------
# images


def as_rgb_uint8(images: np.ndarray, what: str = "images") -> np.ndarray:
    """uint8 [N, H, W, C] (C 1 or 3) or [N, H, W] -> uint8 [N, H, W, 3] (grayscale repeated)."""
    x = np.asarray(images)
    if x.dtype != np.uint8:
        raise FidelityError(
            f"{what}: dtype {x.dtype}; expected uint8 images 0..255 [N, H, W, C] "
            f"(runtime.io.to_uint8 converts float samples in [-1, 1])"
        )
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise FidelityError(
            f"{what}: shape {tuple(x.shape)}; expected [N, H, W, C] with C 1 or 3"
        )
    if x.shape[0] == 0:
        raise FidelityError(f"{what}: no images (N = 0)")
    if x.shape[1] < 1 or x.shape[2] < 1:
        raise FidelityError(f"{what}: empty images of shape {tuple(x.shape[1:])}")
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return np.ascontiguousarray(x)


def _load_npz(path: Path) -> np.ndarray:
    from runtime.io import NpzError, load_npz

    what = ("images: 'images' or a lone 'arr_0' (uint8 [N, H, W, C]), or 'samples' (float "
            "[N, C, H, W] in [-1, 1])")
    try:
        z = load_npz(path, what)
    except NpzError as e:
        raise FidelityError(str(e)) from e
    keys = list(z)
    if "images" in keys:
        return np.asarray(z["images"])
    if keys == ["arr_0"]:  # np.savez(path, x); runtime.shards.write_merged; guided-diffusion
        return np.asarray(z["arr_0"])
    if "samples" in keys:  # runtime.sample --npz: float [N, C, H, W] in [-1, 1]
        s = np.asarray(z["samples"])
        if s.ndim == 4 and np.issubdtype(s.dtype, np.floating) and s.shape[1] in (1, 3):
            return to_uint8(s)
        return s
    raise FidelityError(
        f"{path}: no 'images' or lone 'arr_0' (uint8 [N, H, W, C]), nor 'samples' (float "
        f"[N, C, H, W] in [-1, 1]) array; it holds {', '.join(keys) or 'nothing'}"
    )


def _load_image_folder(root: Path) -> np.ndarray:
    files = image_files(root)
    if not files:
        raise FidelityError(
            f"{root}: no images (files ending in {', '.join(IMAGE_SUFFIXES)}), no .npz sample "
            f"shards and no CIFAR-10 batches"
        )
    out: Optional[np.ndarray] = None
    try:  # RGB, as torch-fidelity reads folders
        for i, (p, a) in enumerate(read_images(files, lambda im: np.asarray(im.convert("RGB"), dtype=np.uint8))):
            if out is None:
                out = np.empty((len(files),) + a.shape, dtype=np.uint8)
            elif a.shape != out.shape[1:]:
                raise FidelityError(
                    f"{p}: {a.shape[1]}x{a.shape[0]} pixels, but {files[0].name} is "
                    f"{out.shape[2]}x{out.shape[1]}; all images of a set must have one size"
                )
            out[i] = a
    except DataError as e:
        raise FidelityError(str(e)) from e
    return out


def cifar10_train_uint8(folder: Union[str, Path]) -> np.ndarray:
    """The 50,000 CIFAR-10 training images as uint8 [N, 32, 32, 3] (data.cifar10_uint8's files and checks)."""
    try:
        x = cifar10_uint8(str(folder))
    except DataError as e:
        raise FidelityError(str(e)) from e
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _is_shards_folder(root: Path) -> bool:
    """runtime.shards' layout: run.json + shard-NNNNN.npz (or .npz files and no images)."""
    if (root / "run.json").is_file() or any(root.glob("shard-*.npz")):
        return True
    names = [p.suffix.lower() for p in root.iterdir()]
    return ".npz" in names and not any(n in IMAGE_SUFFIXES for n in names)


def _load_shards(root: Path) -> np.ndarray:
    try:
        from runtime.shards import load_shards
    except ImportError as e:
        raise FidelityError(
            f"{root}: holds .npz files but no images, and this install has no runtime.shards to "
            f"read sample shards ({e}); pass one .npz file or a folder of PNG images"
        ) from e
    try:
        return np.asarray(load_shards(str(root)))
    except Exception as e:
        raise FidelityError(f"{root}: cannot read sample shards ({type(e).__name__}: {e})") from e


def load_image_set(source: PathOrArray, what: str = "images") -> Tuple[np.ndarray, Dict[str, Any]]:
    """uint8 [N, H, W, 3] + a description, from an array or a path.

    Paths: a .npz (key ``images``, or a lone ``arr_0`` as np.savez and
    runtime.shards.write_merged write: uint8 [N, H, W, C]; or ``samples``: the
    float [N, C, H, W] in [-1, 1] of ``runtime.sample --npz``), a CIFAR-10
    ``cifar-10-batches-py`` folder (its 50,000 training images), a folder of
    sample shards (run.json + shard-NNNNN.npz, read by runtime.shards.load_shards),
    or a folder of PNG/JPEG images (read recursively, converted to RGB).
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise FidelityError(f"{what} {path}: no such file or folder")
        if path.is_dir():
            if is_cifar10_folder(path):
                x, kind = cifar10_train_uint8(path), "cifar-10 training set"
            elif _is_shards_folder(path):
                x, kind = _load_shards(path), "sample shards"
            else:
                x, kind = _load_image_folder(path), "image folder"
        elif path.suffix.lower() == ".npz":
            x, kind = _load_npz(path), "npz"
        else:
            raise FidelityError(
                f"{what} {path}: expected a .npz, a folder of PNG/JPEG images, a folder of sample "
                f"shards, or a cifar-10-batches-py folder"
            )
        label = f"{what} ({path})"
        desc: Dict[str, Any] = {"path": str(path), "kind": kind}
    else:
        x, label, desc = source, what, {"path": None, "kind": "array"}
    arr = np.asarray(x)
    channels = arr.shape[-1] if arr.ndim == 4 else (1 if arr.ndim == 3 else None)
    rgb = as_rgb_uint8(arr, label)
    desc.update(n=int(rgb.shape[0]), height=int(rgb.shape[1]), width=int(rgb.shape[2]),
                channels=channels)
    return rgb, desc


# ---------------------------------------------------------------------------------------------
# weights


def check_inception_weights(path: Optional[Union[str, Path]]) -> str:
    """The weights file's path, after checking it holds torch-fidelity's InceptionV3 state dict."""
    if path is None:
        raise FidelityError(f"no --inception-weights: {weights_help()}")
    p = Path(path)
    if not p.is_file():
        raise FidelityError(f"--inception-weights {p}: no such file. {weights_help()}")
    import torch

    try:
        sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        raise FidelityError(
            f"--inception-weights {p}: not a PyTorch weights file ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}). {weights_help()}"
        ) from e
    expected = {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "fc.weight": (1008, 2048)}
    bad = [
        k for k, shape in expected.items()
        if not isinstance(sd, dict) or k not in sd or tuple(getattr(sd[k], "shape", ())) != shape
    ]
    if bad:
        raise FidelityError(
            f"--inception-weights {p}: not torch-fidelity's InceptionV3 state dict ({', '.join(bad)} "
            f"missing or of another shape; pytorch-fid's pt_inception-*.pth and torchvision's "
            f"inception_v3 weights are different files). {weights_help()}"
        )
    return str(p)


# ---------------------------------------------------------------------------------------------
# metrics


def parse_metrics(metrics: Union[str, Iterable[str]]) -> Tuple[str, ...]:
    items = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    names = []
    for m in items:
        m = str(m).strip().lower()
        if m in ("is", "inception_score"):
            m = "isc"
        if not m:
            continue
        if m not in METRICS:
            raise FidelityError(f"unknown metric {m!r}; choose from {', '.join(METRICS)}")
        if m not in names:
            names.append(m)
    if not names:
        raise FidelityError(f"no metrics asked for; choose from {', '.join(METRICS)}")
    return tuple(names)


def _uint8_dataset(images: np.ndarray):
    """uint8 [N, H, W, 3] -> a torch Dataset of uint8 [3, H, W] tensors (torch-fidelity's input)."""
    import torch
    from torch.utils.data import Dataset

    class _Images(Dataset):
        def __init__(self, x: np.ndarray):
            self.x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

        def __len__(self) -> int:
            return int(self.x.shape[0])

        def __getitem__(self, i):
            return self.x[i]

    return _Images(images)


def _registered_extractor_module(name: str) -> Optional[str]:
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    cls = FEATURE_EXTRACTORS_REGISTRY.get(name)
    return None if cls is None else cls.__module__


def fidelity_metrics(
    samples: PathOrArray,
    reference: Optional[PathOrArray] = None,
    inception_weights: Optional[Union[str, Path]] = None,
    metrics: Union[str, Sequence[str]] = METRICS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    cuda: Optional[bool] = None,
    feature_extractor: Optional[str] = None,
    kid_subset_size: Optional[int] = None,
    verbose: bool = False,
) -> Dict[str, Any]:
    """FID / KID (samples vs reference) and IS (samples) from torch-fidelity.

    samples, reference: uint8 [N, H, W, C] arrays (C 1 or 3; grayscale is
    repeated to RGB) or paths (see load_image_set). reference is needed for
    fid and kid only. inception_weights: the local file INCEPTION_WEIGHTS_FILE
    (required with the default feature extractor). feature_extractor: another
    name registered with torch_fidelity.register_feature_extractor (tests, or
    your own); torch-fidelity's other built-in extractors download weights and
    are refused. kid_subset_size: default 1000, torch-fidelity's; both sets
    need at least that many images.

    Returns fid, kid_mean, kid_std, isc_mean, isc_std (those asked for), the
    counts, the extractor and the weights file with its SHA-256.
    """
    wanted = parse_metrics(metrics)
    if batch_size < 1:
        raise FidelityError(f"batch size {batch_size}: must be >= 1")
    needs_reference = "fid" in wanted or "kid" in wanted
    if needs_reference and reference is None:
        raise FidelityError("FID and KID compare two sets: pass a reference (--reference PATH)")

    # Cheap checks first: weights and inputs before torch-fidelity's import (1-2 s) and
    # before minutes of feature extraction.
    extractor = feature_extractor or INCEPTION_EXTRACTOR
    weights_path = None
    if extractor == INCEPTION_EXTRACTOR:
        weights_path = check_inception_weights(inception_weights)
    elif inception_weights is not None:
        raise FidelityError(
            f"--inception-weights is for the {INCEPTION_EXTRACTOR} feature extractor, "
            f"not {extractor!r}"
        )

    x1, d1 = load_image_set(samples, "samples")
    x2, d2 = (None, None)
    if needs_reference:
        x2, d2 = load_image_set(reference, "reference")
        if x1.shape[1:3] != x2.shape[1:3]:
            raise FidelityError(
                f"samples are {x1.shape[2]}x{x1.shape[1]} pixels, the reference "
                f"{x2.shape[2]}x{x2.shape[1]}; compare images of one size (resize one set first)"
            )
    n1, n2 = x1.shape[0], (x2.shape[0] if x2 is not None else None)
    if "fid" in wanted and min(n1, n2) < 2:
        raise FidelityError(f"FID needs >= 2 images per set (a covariance); samples {n1}, reference {n2}")
    subset = None
    if "kid" in wanted:
        subset = DEFAULT_KID_SUBSET_SIZE if kid_subset_size is None else int(kid_subset_size)
        if subset < 2:
            raise FidelityError(f"KID subset size {subset}: must be >= 2")
        if subset > min(n1, n2):
            raise FidelityError(
                f"KID subset size {subset} exceeds the images available (samples {n1}, reference "
                f"{n2}); pass --kid-subset-size {min(n1, n2)} or less, or more images "
                f"(or leave kid out of --metrics)"
            )
    if "isc" in wanted and n1 < DEFAULT_ISC_SPLITS:
        raise FidelityError(
            f"IS splits the samples into {DEFAULT_ISC_SPLITS} parts: needs >= {DEFAULT_ISC_SPLITS} "
            f"samples, got {n1}"
        )

    tf = import_torch_fidelity()
    module = _registered_extractor_module(extractor)
    if module is None:
        raise FidelityError(
            f"feature extractor {extractor!r} is not registered with torch-fidelity "
            f"(torch_fidelity.register_feature_extractor)"
        )
    if extractor != INCEPTION_EXTRACTOR and module.startswith("torch_fidelity."):
        raise FidelityError(
            f"feature extractor {extractor!r} downloads its weights at run time; this toolkit "
            f"uses {INCEPTION_EXTRACTOR} with a local --inception-weights file"
        )

    import torch

    if cuda is None:
        cuda = bool(torch.cuda.is_available())
    elif cuda and not torch.cuda.is_available():
        raise FidelityError(f"--device cuda: torch {torch.__version__} sees no CUDA GPU; use --device cpu")
    kwargs: Dict[str, Any] = dict(
        input1=_uint8_dataset(x1),
        input2=_uint8_dataset(x2) if x2 is not None else None,
        fid="fid" in wanted,
        kid="kid" in wanted,
        isc="isc" in wanted,
        cuda=cuda,
        batch_size=int(batch_size),
        feature_extractor=extractor,
        cache=False,  # nothing written under TORCH_HOME
        save_cpu_ram=True,  # no DataLoader worker processes for in-memory arrays
        datasets_download=False,
        rng_seed=RNG_SEED,
        verbose=verbose,
    )
    if weights_path is not None:
        kwargs["feature_extractor_weights_path"] = weights_path
    if subset is not None:
        kwargs.update(kid_subset_size=subset, kid_subsets=DEFAULT_KID_SUBSETS)
    if "isc" in wanted:
        kwargs["isc_splits"] = DEFAULT_ISC_SPLITS
    try:
        # torch-fidelity's progress goes to stderr, but a few of its remarks are print()s:
        # keep stdout for our table
        with contextlib.redirect_stdout(sys.stderr):
            raw = tf.calculate_metrics(**kwargs)
    except ValueError as e:  # torch-fidelity's vassert
        raise FidelityError(f"torch-fidelity: {e}") from e

    out: Dict[str, Any] = {}
    keys = {
        "fid": [("fid", tf.KEY_METRIC_FID)],
        "kid": [("kid_mean", tf.KEY_METRIC_KID_MEAN), ("kid_std", tf.KEY_METRIC_KID_STD)],
        "isc": [("isc_mean", tf.KEY_METRIC_ISC_MEAN), ("isc_std", tf.KEY_METRIC_ISC_STD)],
    }
    for m in wanted:
        for ours, theirs in keys[m]:
            if theirs not in raw:
                raise FidelityError(f"torch-fidelity returned no {theirs} (it returned {sorted(raw)})")
            out[ours] = float(raw[theirs])
    out.update(
        metrics=list(wanted),
        n_samples=int(n1),
        n_reference=None if n2 is None else int(n2),
        samples=d1,
        reference=d2,
        feature_extractor=extractor,
        inception=extractor == INCEPTION_EXTRACTOR,
        inception_weights=weights_path,
        inception_weights_sha256=sha256_file(weights_path) if weights_path else None,
        kid_subset_size=subset,
        kid_subsets=DEFAULT_KID_SUBSETS if subset is not None else None,
        isc_splits=DEFAULT_ISC_SPLITS if "isc" in wanted else None,
        rng_seed=RNG_SEED,
        torch_fidelity_version=getattr(tf, "__version__", None),
        device="cuda" if cuda else "cpu",
        notes=_notes(wanted, extractor, n1, n2),
    )
    return out


def _notes(wanted: Sequence[str], extractor: str, n1: int, n2: Optional[int]) -> List[str]:
    notes = []
    if extractor != INCEPTION_EXTRACTOR:
        notes.append(
            f"features from {extractor!r}, not the Inception: these numbers are not comparable "
            f"to published FID/KID/IS"
        )
    elif "fid" in wanted and min(n1, n2 or n1) < FID_FEATURE_DIM:
        notes.append(
            f"FID from fewer than {FID_FEATURE_DIM} images per set (the feature dimension) is "
            f"biased upward: compare it only with runs of the same sizes; published CIFAR-10 FIDs "
            f"use 50,000 samples against the 50,000 training images"
        )
    return notes


# ---------------------------------------------------------------------------------------------
# CLI


def format_table(r: Dict[str, Any]) -> str:
    rows = []
    if "fid" in r:
        rows.append(("FID", f"{r['fid']:.4f}"))
    if "kid_mean" in r:
        rows.append((f"KID (subsets of {r['kid_subset_size']})",
                     f"{r['kid_mean']:.6f} +- {r['kid_std']:.6f}"))
    if "isc_mean" in r:
        rows.append((f"IS ({r['isc_splits']} splits)", f"{r['isc_mean']:.4f} +- {r['isc_std']:.4f}"))
    w = max(len(a) for a, _ in rows)
    lines = [f"{a:<{w}}  {b}" for a, b in rows]

    def describe(d):
        gray = ", grayscale repeated to RGB" if d.get("channels") == 1 else ""
        src = f" from {d['path']}" if d.get("path") else ""
        return f"{d['n']} images {d['width']}x{d['height']}{gray}{src}"

    lines.append(f"samples:   {describe(r['samples'])}")
    if r.get("reference"):
        lines.append(f"reference: {describe(r['reference'])}")
    fe = r["feature_extractor"]
    if r.get("inception_weights"):
        fe += f" ({r['inception_weights']}, sha256 {r['inception_weights_sha256'][:16]}...)"
    lines.append(f"features:  {fe}; torch-fidelity {r['torch_fidelity_version']} on {r['device']}")
    lines += [f"note: {n}" for n in r.get("notes", [])]
    return "\n".join(lines)
