"""Do samples of the digits model look like digits? A classifier's opinion.

A small MLP trained on the sklearn digits (same 16x16 [-1, 1] preprocessing as
training) labels samples; we report the share it labels with probability
>= 0.9 next to the same share for held-out real digits, and the class
histogram. Deterministic: fixed split and fixed seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import numpy as np

from .data import digits_images, digits_labels


@dataclass
class DigitsClassifier:
    model: object  # sklearn MLPClassifier
    x_test: np.ndarray  # held-out real digits [N, 256] in [-1, 1]
    y_test: np.ndarray
    test_accuracy: float

    def proba(self, images: np.ndarray) -> np.ndarray:
        """images [N, 1, 16, 16] (or [N, 256]) in [-1, 1] -> [N, 10] probabilities."""
        x = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
        if x.shape[1] != self.x_test.shape[1]:
            raise ValueError(
                f"classifier expects images of {self.x_test.shape[1]} pixels (16x16), got {x.shape[1]}"
            )
        return self.model.predict_proba(x)


def train_digits_classifier(size: int = 16, seed: int = 0) -> DigitsClassifier:
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    x = digits_images(size).reshape(-1, size * size).astype(np.float64)
    y = digits_labels()
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    clf = MLPClassifier(hidden_layer_sizes=(256,), alpha=1e-3, max_iter=400, random_state=seed)
    clf.fit(x_tr, y_tr)
    acc = float((clf.predict(x_te) == y_te).mean())
    return DigitsClassifier(clf, x_te, y_te, acc)


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
