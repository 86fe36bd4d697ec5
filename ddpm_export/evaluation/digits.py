"""Do samples of the digits model look like digits? A classifier's opinion.

A small MLP (256 -> 32 -> 10) trained on half of the sklearn digits (same 16x16
[-1, 1] preprocessing as training) does two jobs:

* classifier score: the share of samples it labels with probability >= 0.9
  next to the same share for held-out real digits, and the class histogram
  (class coverage);
* feature extractor: its 32 last-hidden-layer activations play the role
  Inception's pool3 features play in FID. ``digits_distribution`` reports the
  Frechet distance of each sample set to held-out real digits, with the
  real-vs-real floor at the same sample count.

The held-out half is split again: ``real_b`` is the reference every set is
compared with; ``real_a`` (never seen by the classifier, disjoint from
``real_b``) gives the floor. Deterministic: fixed splits and seeds.

A Frechet distance is biased upwards by a term that shrinks with the sample
count, so distances are comparable only at equal counts: every set is cut to
the same n here, and the real-vs-real distance at that n (the floor) is the
scale of that bias and of the sampling noise.

A second, independent feature space (``train_digits_conv``): a small
convolutional net in PyTorch (two 3x3 conv layers, a 64-unit hidden layer),
trained on a different half of the digits (split seed 1, not 0) from a
different initialisation, with its own held-out real_a/real_b. Settings chosen
by one feature space's Frechet distance fit that space; a choice that holds on
both is less likely to be an artefact of either. ``FEATURE_SPACES`` names both;
``digits_distribution`` takes either.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, Mapping, Optional

import numpy as np

from ddpm_export.training.data import digits_images, digits_labels

HIDDEN = (256, 32)
DIGITS_SHAPE = (1, 16, 16)  # C, H, W of the digits model: what the classifier scores
FLOOR = "real (held-out, floor)"  # the name of the real-vs-real row in digits_distribution
CONV_SEED = 1  # the conv extractor's split, initialisation and shuffling seed: not the MLP's 0
CONV_EPOCHS = 30


@dataclass
class DigitsClassifier:
    model: object  # sklearn MLPClassifier
    x_test: np.ndarray  # held-out real digits [N, 256] in [-1, 1] (real_a then real_b)
    y_test: np.ndarray
    test_accuracy: float

    @property
    def real_a(self) -> np.ndarray:
        return self.x_test[: len(self.x_test) // 2]

    @property
    def real_b(self) -> np.ndarray:
        return self.x_test[len(self.x_test) // 2:]

    def _flat(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
        if x.shape[1] != self.x_test.shape[1]:
            raise ValueError(
                f"the digits classifier expects 16x16 single-channel images ({self.x_test.shape[1]} "
                f"pixels), got {x.shape[1]} pixels per image; it only judges the digits model"
            )
        return x

    def proba(self, images: np.ndarray) -> np.ndarray:
        """images [N, 1, 16, 16] (or [N, 256]) in [-1, 1] -> [N, 10] probabilities."""
        return self.model.predict_proba(self._flat(images))

    def features(self, images: np.ndarray) -> np.ndarray:
        """images [N, 1, 16, 16] in [-1, 1] -> [N, 32] last-hidden-layer activations (ReLU)."""
        h = self._flat(images)
        for w, b in zip(self.model.coefs_[:-1], self.model.intercepts_[:-1]):
            h = np.maximum(h @ w + b, 0.0)
        return h


class ConvDigitsClassifier(DigitsClassifier):
    """The same interface over a small PyTorch conv net (``model``: the torch module); its
    ``features`` are the 64 activations (ReLU) before the last layer."""

    def _forward(self, images: np.ndarray, features: bool) -> np.ndarray:
        import torch

        side = int(round(self.x_test.shape[1] ** 0.5))
        x = torch.from_numpy(self._flat(images).astype(np.float32)).reshape(-1, 1, side, side)
        with torch.no_grad():
            h = self.model[:-1](x)
            out = h if features else torch.softmax(self.model[-1](h), dim=1)
        return out.double().numpy()

    def proba(self, images: np.ndarray) -> np.ndarray:
        return self._forward(images, features=False)

    def features(self, images: np.ndarray) -> np.ndarray:
        return self._forward(images, features=True)


def digits_split(size: int = 16, seed: int = 0):
    """(x_train, x_test, y_train, y_test): the classifier's half of the digits and the held-out
    half it never trains on; x [N, size * size] float64 in [-1, 1]."""
    from sklearn.model_selection import train_test_split

    x = digits_images(size).reshape(-1, size * size).astype(np.float64)
    return train_test_split(x, digits_labels(), test_size=0.5, random_state=seed, stratify=digits_labels())


@functools.lru_cache(maxsize=4)
def train_digits_classifier(size: int = 16, seed: int = 0) -> DigitsClassifier:
    """The classifier, trained once per process and (size, seed): deterministic, and every
    caller (validate, steps-table, digits-score) only reads it. Do not modify the result."""
    from sklearn.neural_network import MLPClassifier

    x_tr, x_te, y_tr, y_te = digits_split(size, seed)
    clf = MLPClassifier(hidden_layer_sizes=HIDDEN, alpha=1e-3, max_iter=400, random_state=seed)
    clf.fit(x_tr, y_tr)
    acc = float((clf.predict(x_te) == y_te).mean())
    return DigitsClassifier(clf, x_te, y_te, acc)


def _conv_net(size: int):
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * (size // 4) ** 2, 64), nn.ReLU(),
        nn.Linear(64, 10))


@functools.lru_cache(maxsize=4)
def train_digits_conv(size: int = 16, seed: int = CONV_SEED, epochs: int = CONV_EPOCHS) -> DigitsClassifier:
    """The second feature extractor, trained once per process and (size, seed, epochs) on one
    thread (so the result does not depend on the thread count) without touching torch's
    global random state: deterministic, a few seconds on a CPU. Do not modify the result."""
    import torch

    if size % 4:
        raise ValueError(f"the conv digits extractor pools twice by 2: size must be a multiple of 4, got {size}")
    x_tr, x_te, y_tr, y_te = digits_split(size, seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = _conv_net(size)
        g = torch.Generator().manual_seed(seed)
        x = torch.from_numpy(x_tr.astype(np.float32)).reshape(-1, 1, size, size)
        y = torch.from_numpy(np.asarray(y_tr, dtype=np.int64))
        opt = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-4)
        for _ in range(epochs):
            for idx in torch.randperm(len(x), generator=g).split(64):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
                opt.step()
        net.eval()
    finally:
        torch.set_num_threads(threads)
    clf = ConvDigitsClassifier(net, x_te, y_te, 0.0)
    clf.test_accuracy = float((clf.proba(x_te).argmax(axis=1) == y_te).mean())
    return clf


# The digits feature spaces the project reports a Frechet distance in: name -> trainer.
FEATURE_SPACES = {"mlp": train_digits_classifier, "conv": train_digits_conv}


def confident_share(proba: np.ndarray, threshold: float = 0.9) -> float:
    return float((proba.max(axis=1) >= threshold).mean())


def digits_report(clf: DigitsClassifier, samples: np.ndarray, threshold: float = 0.9) -> Dict[str, object]:
    """Compare samples [N, 1, 16, 16] in [-1, 1] with held-out real digits."""
    p_s = clf.proba(samples)
    p_r = clf.proba(clf.x_test)
    hist = np.bincount(p_s.argmax(axis=1), minlength=10) / len(samples)
    real_share = confident_share(p_r, threshold)
    sample_share = confident_share(p_s, threshold)
    return {
        "num_samples": int(len(samples)),
        "classifier_test_accuracy": clf.test_accuracy,
        "real_confident_share": real_share,
        "sample_confident_share": sample_share,
        "ratio": sample_share / real_share if real_share else float("nan"),
        "class_histogram": [float(h) for h in hist],
    }


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a [N, D] and b [M, D].

    ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), the formula of FID
    (Heusel et al. 2017); like pytorch-fid, a near-singular product is
    regularised with 1e-6 on the diagonal.
    """
    import warnings

    from scipy import linalg

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two feature sets [N>=2, D] of equal D, got {a.shape} and {b.shape}")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():  # singular products are handled just below
        warnings.simplefilter("ignore")
        covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    if not np.isfinite(covmean).all():
        off = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + off) @ (s2 + off))
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def digits_distribution(clf: DigitsClassifier, sets: Mapping[str, np.ndarray], n: Optional[int] = None,
                        reference: Optional[str] = None,
                        threshold: float = 0.9) -> Dict[str, object]:
    """Frechet distances and classifier scores of sample sets against held-out real digits.

    sets: name -> images [N, 1, 16, 16] in [-1, 1]. Every set (and the real
    floor set real_a) is cut to the same n (default: the smallest set, at most
    len(real_a)) and compared with real_b. With ``reference`` naming one of
    the sets, each other set's distance to it is reported too.
    """
    if not sets:
        raise ValueError("digits_distribution needs at least one sample set")
    if reference is not None and reference not in sets:
        raise ValueError(f"reference {reference!r} is not one of the sets {sorted(sets)}")
    n_max = min([len(clf.real_a)] + [len(v) for v in sets.values()])
    n = n_max if n is None else min(int(n), n_max)
    if n < 10:
        raise ValueError(f"a Frechet distance needs at least 10 images per set, got {n}")
    real_b = clf.features(clf.real_b)
    p_real = clf.proba(clf.real_b)
    named = {FLOOR: clf.real_a[:n], **{k: v[:n] for k, v in sets.items()}}
    feats = {name: clf.features(images) for name, images in named.items()}
    rows: Dict[str, Dict[str, object]] = {}
    for name, images in named.items():
        p = clf.proba(images)
        hist = np.bincount(p.argmax(axis=1), minlength=10) / len(p)
        rows[name] = {
            "n": int(len(images)),
            "frechet_to_real": frechet_distance(feats[name], real_b),
            "confident_share": confident_share(p, threshold),
            "class_min_share": float(hist.min()),
            "class_histogram": [float(h) for h in hist],
        }
        if reference is not None and name in sets and name != reference:
            rows[name]["frechet_to_reference"] = frechet_distance(feats[name], feats[reference])
    return {"n": n, "real_reference_n": int(len(real_b)), "classifier_test_accuracy": clf.test_accuracy,
            "real_confident_share": confident_share(p_real, threshold), "sets": rows}


def label_scores(clf: DigitsClassifier, sets: Mapping[str, np.ndarray], labels: np.ndarray,
                 min_per_class: int = 10, threshold: float = 0.9) -> Dict[str, object]:
    """Class-conditional sample sets against the labels they were drawn for.

    sets: name -> images [N, 1, 16, 16] in [-1, 1], image i drawn for ``labels[i]`` (0..9).
    Per set: the label accuracy (the share of samples the classifier assigns to the requested
    label) overall and per class, and per class the Frechet distance to the held-out real
    digits of that class (real_b), next to the real-vs-real floor of that class (real_a of the
    class cut to the same count). Classes with fewer than ``min_per_class`` samples get no
    Frechet distance (None): too few to fit a covariance. Every set is cut to the same n."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1 or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise ValueError(f"labels: received {labels.shape} values in [{labels.min(initial=0)}, "
                         f"{labels.max(initial=0)}], expected one digit label 0..9 per sample")
    n = min([len(labels)] + [len(v) for v in sets.values()])
    labels = labels[:n]
    half = len(clf.x_test) // 2
    y_a, y_b = clf.y_test[:half], clf.y_test[half:]
    real_b = {k: clf.features(clf.real_b[y_b == k]) for k in range(10)}
    counts = np.bincount(labels, minlength=10)
    floor = []
    for k in range(10):
        n_k = int(min(counts[k], (y_a == k).sum()))
        floor.append(frechet_distance(clf.features(clf.real_a[y_a == k][:n_k]), real_b[k])
                     if n_k >= min_per_class else None)
    rows: Dict[str, Dict[str, object]] = {}
    for name, images in sets.items():
        images = images[:n]
        p = clf.proba(images)
        hit = p.argmax(axis=1) == labels
        feats = clf.features(images)
        per_class = []
        for k in range(10):
            sel = labels == k
            if not sel.any():
                continue
            per_class.append({
                "label": k, "n": int(sel.sum()), "accuracy": float(hit[sel].mean()),
                "confident_share": confident_share(p[sel], threshold),
                "frechet_to_real_class": (frechet_distance(feats[sel], real_b[k])
                                          if sel.sum() >= min_per_class else None),
                "floor": floor[k]})
        rows[name] = {"n": n, "label_accuracy": float(hit.mean()), "per_class": per_class}
    return {"n": n, "classifier_test_accuracy": clf.test_accuracy, "min_per_class": min_per_class,
            "sets": rows}
