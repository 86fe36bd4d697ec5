"""The shipped student engines/digits-distilled*: made from engines/digits-distilled.pt, sampled the
way its manifest says, and the runtime reproduces the PyTorch student's own sampler."""
import hashlib
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime.contract import read_manifest

ENGINES = Path(__file__).resolve().parents[2] / "engines"


@pytest.mark.parametrize("name", ["digits-distilled.onnx", "digits-distilled-fp16.onnx"])
def test_manifest_says_how_the_student_samples(name):
    m = read_manifest(ENGINES / name)  # also verifies the .onnx sha256 against the sidecar
    ckpt_sha = hashlib.sha256((ENGINES / "digits-distilled.pt").read_bytes()).hexdigest()
    assert m["source"]["checkpoint_sha256"] == ckpt_sha and m["checks"]["parity"]["passed"]
    assert m["schedule"]["prediction"] == "v"
    assert m["sampling"]["method"] == "consistency" and m["sampling"]["steps"] == 4
    assert m["sampling"]["allowed_steps"] == [1, 2, 4, 8]
    # distill's own lists, round(linspace(0, 999, N + 1)) without the 0: none was chosen by a
    # search on any seed (docs/distillation.md), so the provenance records no change to them
    assert m["sampling"]["timesteps"] == {"1": [999], "2": [999, 500], "4": [999, 749, 500, 250],
                                          "8": [999, 874, 749, 624, 500, 375, 250, 125]}
    assert "sampling_changes" not in m["source"]["provenance"]
    assert "--trajectories 16384" in m["source"]["provenance"]["commands"][0]
    teacher_sha = hashlib.sha256((ENGINES / "digits.pt").read_bytes()).hexdigest()
    assert m["source"]["provenance"]["teacher_sha256"] == teacher_sha


def test_runtime_reproduces_the_pytorch_student():
    pytest.importorskip("torch")
    from ddpm_export.model.checkpoint import load_model
    from ddpm_export.training.distill import sample_student
    from runtime.schedulers.schedule import ScheduleConfig

    model, ckpt = load_model(ENGINES / "digits-distilled.pt")
    schedule = ScheduleConfig.from_dict(ckpt["schedule_config"])
    with runtime.load(ENGINES / "digits-distilled.onnx") as engine:
        for steps in (1, 4):
            res = engine.sample_float(4, seed=3, steps=None if steps == 4 else steps)
            assert res.network_calls == steps
            ref = sample_student(model, schedule, 4, seed=3,
                                 timesteps=engine.manifest["sampling"]["timesteps"][str(steps)])
            diff = np.abs(res.images - ref).max()
            assert diff < 1e-3, f"{steps} calls: runtime vs PyTorch student, max abs diff {diff:.2e}"
