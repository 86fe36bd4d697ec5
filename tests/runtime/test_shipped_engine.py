"""The shipped engines/digits.onnx: made from engines/digits.pt, and the runtime
reproduces the PyTorch reference sampler over all 1000 steps on identical noise."""
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime.contract import read_manifest

ROOT = Path(__file__).resolve().parents[2]
ENGINES = ROOT / "engines"


@pytest.mark.parametrize("name", ["digits.onnx", "digits-fp16.onnx"])
def test_manifest_points_at_the_shipped_checkpoint(name):
    import hashlib

    m = read_manifest(ENGINES / name)  # also verifies the .onnx sha256 against the sidecar
    ckpt_sha = hashlib.sha256((ENGINES / "digits.pt").read_bytes()).hexdigest()
    assert m["source"]["checkpoint_sha256"] == ckpt_sha
    assert m["image_shape"] == [1, 16, 16] and m["schedule"]["variance_type"] == "fixedlarge"
    assert m["checks"]["parity"]["passed"]
    assert m["precision"] == ("fp16" if "fp16" in name else "fp32")


# In make test-slow: make test covers the same comparison (the runtime's ONNX engine against
# the PyTorch reference over all 1000 DDPM steps, final images within 1e-3) through validate's
# trajectory level in tests/ddpm_export/evaluation/test_validate.py, which CI keeps as its artifact.
@pytest.mark.slow
def test_runtime_reproduces_the_reference_for_the_digits_model():
    pytest.importorskip("torch")
    from ddpm_export.model.checkpoint import load_model
    from ddpm_export.model.reference_sampler import sample_images
    from runtime.schedulers.schedule import ScheduleConfig

    n, seed = 4, 11
    with runtime.load(ENGINES / "digits.onnx") as engine:
        res = engine.sample_float(n, seed=seed)
    model, ckpt = load_model(ENGINES / "digits.pt")
    # the reference sampler draws from the same per-image streams (runtime.seeding)
    ref, _ = sample_images(model, ScheduleConfig.from_dict(ckpt["schedule_config"]), n, seed=seed,
                           batch_size=n, progress=False)
    diff = np.abs(res.images - ref).max()
    print(f"\ndigits: runtime (ONNX Runtime fp32) vs PyTorch reference, 1000 steps, {n} images: "
          f"max abs diff of final images {diff:.2e}")
    assert diff < 1e-3
