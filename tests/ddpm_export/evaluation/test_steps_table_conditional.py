"""ddpm-export steps-table on a class-conditional engine (fixture cond_digits): --label cycled,
--guidance, both recorded, the label accuracy per run; the refusals."""
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ddpm_export.cli.main import main

pytest.importorskip("diffusers")
ENG = Path(__file__).resolve().parents[3] / "engines"


def _table(*args):
    return CliRunner().invoke(main, ["steps-table", "--samples", "12", "--methods", "ddim", "--steps", "2",
                                     "--no-progress", *map(str, args)])


def test_steps_table_samples_at_the_given_labels_and_guidance_and_records_them(cond_digits, tmp_path):
    import runtime
    from ddpm_export.evaluation.digits import digits_distribution, label_scores, train_digits_classifier

    j = tmp_path / "t.json"
    r = _table("--engine", cond_digits["onnx"], "--label", "3,5", "--guidance", "1.5", "--json", j)
    assert r.exit_code == 0, r.output
    res = json.loads(j.read_text())
    assert (res["condition"], res["labels"], res["labels_cycled"], res["guidance"]) == ("class_labels", [3, 5], True, 1.5)
    (run,) = res["runs"]
    assert run["labels"] == [3, 5] and run["guidance"] == 1.5
    assert res["batch"] == 8 and run["network_calls"] == 2 * 2  # batches of 8 = 16 // 2 (both branches at 16), 2 steps
    assert "class_labels [3, 5] cycled over the samples, guidance 1.5" in r.output and "label accuracy" in r.output
    # the run is exactly the engine's samples at labels 3, 5, 3, 5, ... and w = 1.5
    labels = np.array([3, 5] * 6)
    with runtime.load(cond_digits["onnx"]) as eng:
        x = eng.sample_float(12, seed=0, method="ddim", steps=2, cond={"class_labels": labels}, guidance=1.5).images
    clf = train_digits_classifier()
    assert run["frechet_to_real"] == digits_distribution(clf, {"s": x})["sets"]["s"]["frechet_to_real"]
    assert run["label_accuracy"] == label_scores(clf, {"s": x}, labels)["sets"]["s"]["label_accuracy"]
    assert res["rows"][0]["label_accuracy_mean"] == run["label_accuracy"]
    # resuming at another guidance would mix two tables: refused
    r = _table("--engine", cond_digits["onnx"], "--label", "3,5", "--json", j, "--resume")
    assert r.exit_code == 1 and "resume with the same --label and --guidance" in r.output, r.output


def test_steps_table_defaults_to_every_label_and_the_manifests_guidance(cond_digits, tmp_path):
    j = tmp_path / "t.json"
    r = _table("--engine", cond_digits["onnx"], "--json", j)
    assert r.exit_code == 0, r.output
    res = json.loads(j.read_text())
    assert res["labels"] == list(range(10)) and res["guidance"] == 2.0


@pytest.mark.parametrize("args, message", [
    (["--label", "11"], "received label 11, expected labels in [0, 9] or the null label 10"),
    (["--label", "1;2"], "--label '1;2': expected an int or a comma-separated list"),
    (["--reference-samples", str(ENG / "digits_samples.npz")], "stored samples do not record the labels"),
])
def test_steps_table_conditional_refusals(cond_digits, args, message):
    r = _table("--engine", cond_digits["onnx"], *args)
    assert r.exit_code == 1 and message in r.output, r.output


def test_steps_table_refuses_labels_for_an_unconditional_engine():
    r = _table("--engine", ENG / "digits.onnx", "--label", "3", "--guidance", "2")
    assert r.exit_code == 1 and "--label and --guidance: received for" in r.output \
        and "an unconditional engine" in r.output, r.output
