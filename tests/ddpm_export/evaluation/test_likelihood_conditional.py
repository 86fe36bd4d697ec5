"""ddpm-export nll on a class-conditional engine (fixture cond_digits): p(x | y) with the
digits' own labels, equal to the PyTorch reference with the same labels; data without labels
refused with the reason."""
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ddpm_export.cli.main import main

pytest.importorskip("diffusers")
ENG = Path(__file__).resolve().parents[3] / "engines"


def test_nll_of_a_conditional_engine_is_p_x_given_the_datas_labels(cond_digits, tmp_path):
    import runtime
    from ddpm_export.evaluation import likelihood as L
    from ddpm_export.evaluation.digits import digits_split
    from ddpm_export.evaluation.likelihood_data import load_test_images
    from runtime.schedulers.schedule import ScheduleConfig

    out = tmp_path / "rep"
    r = CliRunner().invoke(main, ["nll", "--engine", str(cond_digits["onnx"]), "--checkpoint",
                                  str(cond_digits["checkpoint"]), "--num", "4", "--t-samples", "5", "--batch", "4",
                                  "--report", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "nll.json").read_text())
    y = digits_split()[3][:4]
    assert rep["likelihood"].startswith("p(x | y): each image with its own label") and rep["labels"] == y.tolist()
    assert "likelihood: p(x | y)" in r.output
    assert abs(rep["paired_difference"]["mean"]) < 1e-6  # the PyTorch reference got the same labels
    got = rep["results"]["cond.onnx"]["bits_per_dim"]
    x0 = L.from_uint8(load_test_images("digits", (1, 16, 16), 4)[0])
    with runtime.load(cond_digits["onnx"]) as eng:
        schedule = ScheduleConfig.from_dict(eng.manifest["schedule"])
        right = L.compute_bound(eng, x0, schedule, t_samples=5, batch=4, cond={"class_labels": y})
        wrong = L.compute_bound(eng, x0, schedule, t_samples=5, batch=4, cond={"class_labels": (y + 1) % 10})
        with pytest.raises(ValueError, match=r"cond: received \{'class_labels': \(3,\)\}, expected one row per image"):
            L.compute_bound(eng, x0, schedule, t_samples=5, cond={"class_labels": y[:3]})
    assert got == pytest.approx(float(right.total.mean()), abs=1e-12)
    assert abs(float(wrong.total.mean()) - got) > 1e-3  # the labels matter to the bound


def test_nll_refuses_a_conditional_engine_on_data_without_labels(cond_digits, tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("L", (16, 16)).save(folder / "a.png")
    out = tmp_path / "rep"
    r = CliRunner().invoke(main, ["nll", "--engine", str(cond_digits["onnx"]), "--data", str(folder),
                                  "--report", str(out), "--no-progress"])
    assert r.exit_code == 1 and r.output.strip().count("\n") == 0, r.output
    assert "have no class labels here" in r.output and "p(x | y)" in r.output and "--data digits" in r.output
    assert not out.exists()


def test_nll_refuses_a_checkpoint_with_other_conditions(cond_digits):
    r = CliRunner().invoke(main, ["nll", "--engine", str(cond_digits["onnx"]), "--checkpoint",
                                  str(ENG / "digits.pt"), "--num", "2", "--t-samples", "3", "--no-progress"])
    assert r.exit_code == 1 and "(conditions none) does not match" in r.output, r.output
