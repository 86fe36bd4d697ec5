"""The shipped digits model (engines/digits.pt) makes digits.

engines/digits_samples.npz holds 500 reference samples drawn from it by
``ddpm-export digits-score --checkpoint engines/digits.pt --num 500 --seed 0
--batch 25 --save engines/digits_samples.npz``. Regenerating all 500 takes
minutes (slow test); the default run regenerates the first images (each image's
noise is its own stream, so any batch gives them) to prove the stored samples come
from this model and this sampler, then scores all 500.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_export.model.checkpoint import load_model
from ddpm_export.evaluation.digits import digits_report, train_digits_classifier
from ddpm_export.model.reference_sampler import sample_images
from runtime.schedulers.schedule import ScheduleConfig

ROOT = Path(__file__).resolve().parents[3]
CKPT = ROOT / "engines" / "digits.pt"
SAMPLES = ROOT / "engines" / "digits_samples.npz"


@pytest.fixture(scope="module")
def shipped():
    model, ckpt = load_model(CKPT)
    with np.load(SAMPLES) as z:
        samples, seed, batch = z["samples"], int(z["seed"]), int(z["batch"])
    return model, ckpt, samples, seed, batch


@pytest.fixture(scope="module")
def classifier():
    return train_digits_classifier()


def test_provenance_records_how_it_was_made(shipped):
    _, ckpt, samples, _, _ = shipped
    prov = ckpt["provenance"]
    assert prov["command"].startswith("ddpm-export train --preset digits")
    assert prov["seed"] == 0 and ckpt["step"] == ckpt["train_config"]["steps"]
    assert samples.shape == (500, 1, 16, 16)


REGENERATED = 4  # the network cost is per image; each image's noise is its own stream


def test_stored_samples_regenerate(shipped):
    """Images 0..REGENERATED-1 of the stored run's seed: with per-image noise streams they are
    the same at any batch size, so a small batch regenerates them exactly."""
    model, ckpt, samples, seed, batch = shipped
    k = REGENERATED
    x, _ = sample_images(model, ScheduleConfig.from_dict(ckpt["schedule_config"]), k,
                         seed=seed, batch_size=k, progress=False)
    diff = np.abs(x - samples[:k]).max()
    print(f"regenerated images 0..{k - 1} (stored with batch {batch}): max abs difference {diff:.2e}")
    # Same code, same noise: identical up to float32 rounding, which depends on the CPU's
    # SIMD paths and the batch size; 1000 chained network calls let it grow slightly.
    assert diff < 1e-2, diff


def test_classifier_is_strong_enough(classifier):
    assert classifier.test_accuracy >= 0.97


def test_samples_look_like_digits(shipped, classifier):
    _, _, samples, _, _ = shipped
    r = digits_report(classifier, samples)
    print(
        f"\nclassifier held-out accuracy {r['classifier_test_accuracy']:.4f}; confident (p>=0.9) "
        f"share: samples {r['sample_confident_share']:.3f} vs real {r['real_confident_share']:.3f} "
        f"-> ratio {r['ratio']:.3f}; class histogram {np.round(r['class_histogram'], 3).tolist()}"
    )
    assert r["ratio"] >= 0.85
    assert min(r["class_histogram"]) >= 0.05 and max(r["class_histogram"]) <= 0.15


@pytest.mark.slow
def test_all_500_samples_regenerate(shipped):
    model, ckpt, samples, seed, batch = shipped
    x, _ = sample_images(model, ScheduleConfig.from_dict(ckpt["schedule_config"]), len(samples),
                         seed=seed, batch_size=batch, progress=False)
    assert np.abs(x - samples).max() < 1e-2
