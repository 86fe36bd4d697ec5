"""ddpm-export validate on a class-conditional engine (fixture cond_digits: 10 labels + null,
1x16x16, T = 100, default guidance 2): every level at fixed conditions on both sides, the
per-class digits scores, the refusals; and that the checks see a wrong label or guidance."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from ddpm_export.cli.main import main

pytest.importorskip("diffusers")


def _run(*args):
    return CliRunner().invoke(main, ["validate", "--no-progress", *map(str, args)])


def test_validate_conditional_engine_records_conditions_and_checks_every_branch(cond_digits, tmp_path):
    out = tmp_path / "rep"
    r = _run("--checkpoint", cond_digits["checkpoint"], "--engine", cond_digits["onnx"], "--batch", "1",
             "--batch", "4", "--trajectory-images", "3", "--samples", "10", "--method", "ddim", "--steps", "4",
             "--likelihood-images", "2", "--likelihood-t-samples", "3", "--report", out)
    assert r.exit_code in (0, 1) and "error:" not in r.output, r.output  # an untrained net may miss the FD gate
    rep = json.loads((out / "report.json").read_text())
    cond = rep["conditioning"]
    assert cond["guidance"] == 2.0  # the manifest's default
    assert cond["conditions"][0]["values"] == {"labels": list(range(10)), "cycled": True}
    e = rep["engines"][0]
    # one step: the labels, the null label and the guided mix, each against PyTorch
    assert all({"max_abs_null", "max_abs_guided"} <= set(row) for row in e["one_step"])
    assert e["checks"]["eps_max_abs"]["passed"] and e["checks"]["eps_guided_max_abs"]["passed"]
    assert e["checks"]["eps_guided_max_abs"]["limit"] == pytest.approx(3 * e["checks"]["eps_max_abs"]["limit"])
    assert e["trajectory"]["final_max_abs"] < 1e-4 and e["trajectory"]["method"] == "ddim"
    per = rep["distribution"]["per_class"]
    assert set(per["sets"]) == {"reference", "cond.onnx"}
    assert [c["label"] for c in per["sets"]["cond.onnx"]["per_class"]] == list(range(10))
    assert "distribution_label_accuracy_ratio" in e["checks"]
    assert "p(x | y)" in rep["likelihood"]["data"]
    assert abs(rep["likelihood"]["checks"]["cond.onnx"]["value"]) < 1e-6
    md = (out / "report.md").read_text()
    assert md.startswith("Conditions (both sides, every level): class_labels [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] cycled; "
                         "guidance 2") and "label accuracy" in md


def test_validate_ddpm_chain_with_labels_and_guidance_given(cond_digits, tmp_path):
    """The full DDPM chain: the reference is GaussianDiffusion.sample through GuidedModel."""
    out = tmp_path / "rep"
    r = _run("--checkpoint", cond_digits["checkpoint"], "--engine", cond_digits["onnx"], "--batch", "2",
             "--t-stride", "99", "--trajectory-images", "2", "--samples", "0", "--likelihood-images", "0",
             "--label", "3,7", "--guidance", "3.5", "--report", out)
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["conditioning"]["guidance"] == 3.5
    assert rep["conditioning"]["conditions"][0]["values"]["labels"] == [3, 7]
    traj = rep["engines"][0]["trajectory"]
    assert len(traj["drift"]) == 100 and traj["final_max_abs"] < 1e-4


def test_the_checks_see_a_wrong_label_and_a_wrong_guidance(cond_digits):
    """An engine fed other labels than the reference, or sampled at another guidance, fails."""
    import runtime
    from ddpm_export.evaluation.validate import Conditioning, one_step, trajectory
    from runtime.schedulers.schedule import ScheduleConfig

    model, conds = cond_digits["model"], tuple(cond_digits["model"].conditions)
    c2 = Conditioning(conds, None, 2.0, seed=0)
    with runtime.load(cond_digits["onnx"]) as eng:
        class Shifted:  # the engine sees label + 1
            image_shape = eng.image_shape

            def __call__(self, x, t, class_labels):
                return eng(x, t, class_labels=np.where(class_labels < 10, (class_labels + 1) % 10, 10))

        good = one_step(eng, model, 100, 99, (2,), conditioning=c2)
        bad = one_step(Shifted(), model, 100, 99, (2,), conditioning=c2)
        assert max(r["max_abs"] for r in good) < 1e-5 < 1e-2 < max(r["max_abs"] for r in bad)
        assert max(r["max_abs_null"] for r in bad) < 1e-5  # the null branch is untouched by the shift
        schedule = ScheduleConfig.from_dict(eng.manifest["schedule"])
        ok, _ = trajectory(eng, model, schedule, 2, 0, "ddim", 4, None, c2)
        c1 = Conditioning(conds, None, 1.0, seed=0)

        class OtherGuidance:  # samples at w = 1 while the reference mixes at w = 2
            image_shape, manifest, conditions = eng.image_shape, eng.manifest, eng.conditions

            def sample_float(self, *a, guidance=None, **kw):
                return eng.sample_float(*a, guidance=1.0, **kw)

        wrong, _ = trajectory(OtherGuidance(), model, schedule, 2, 0, "ddim", 4, None, c2)
        same, _ = trajectory(OtherGuidance(), model, schedule, 2, 0, "ddim", 4, None, c1)
    assert ok["final_max_abs"] < 1e-4 and same["final_max_abs"] < 1e-4 < 1e-2 < wrong["final_max_abs"]


def test_label_accuracy_is_the_share_classified_as_the_requested_label():
    from ddpm_export.evaluation.digits import label_scores, train_digits_classifier

    clf = train_digits_classifier()
    half = len(clf.x_test) // 2
    real, y = clf.real_b.reshape(-1, 1, 16, 16), clf.y_test[half:]
    s = label_scores(clf, {"right": real, "shifted": real}, y)["sets"]
    assert s["right"]["label_accuracy"] > 0.9
    s = label_scores(clf, {"shifted": real}, (y + 1) % 10)["sets"]
    assert s["shifted"]["label_accuracy"] < 0.1
    per = label_scores(clf, {"right": real}, y)["sets"]["right"]["per_class"]
    assert all(c["frechet_to_real_class"] is not None and c["floor"] is not None for c in per)
    with pytest.raises(ValueError, match=r"expected one digit label 0..9 per sample"):
        label_scores(clf, {"x": real}, y + 10)


@pytest.mark.parametrize("extra, message", [
    (["--label", "12"], "received label 12, expected labels in [0, 9] or the null label 10"),
    (["--guidance", "nan"], "guidance: received nan, expected a finite number"),
    (["--label", "x"], "--label 'x': expected an int"),
    (["--samples", "20", "--reference-samples", "REF"], "stored samples do not say which conditions"),
])
def test_validate_conditional_refusals_are_one_line(cond_digits, extra, message):
    from pathlib import Path

    ref = Path(__file__).resolve().parents[3] / "engines" / "digits_samples.npz"
    r = _run("--checkpoint", cond_digits["checkpoint"], "--engine", cond_digits["onnx"],
             *[str(ref) if a == "REF" else a for a in extra])
    assert r.exit_code == 1 and message in r.output, r.output
    assert len([ln for ln in r.output.splitlines() if ln.startswith("error:")]) == 1


def test_validate_refuses_conditions_an_unconditional_engine_cannot_take(cond_digits):
    from pathlib import Path

    eng = Path(__file__).resolve().parents[3] / "engines"
    r = _run("--checkpoint", eng / "digits.pt", "--engine", eng / "digits.onnx", "--label", "3")
    assert r.exit_code == 1 and "--label: received for an unconditional model" in r.output, r.output
    r = _run("--checkpoint", eng / "digits.pt", "--engine", eng / "digits.onnx", "--guidance", "2")
    assert r.exit_code == 1 and "--guidance: received for an unconditional model" in r.output, r.output
    # a conditional engine against an unconditional checkpoint of the same image shape
    r = _run("--checkpoint", eng / "digits.pt", "--engine", cond_digits["onnx"], "--force")
    assert r.exit_code == 1 and "conditions [{'name': 'class_labels'" in r.output \
        and "are not the checkpoint's model's none" in r.output, r.output


def test_guidance_without_a_null_form_is_refused_up_front():
    from ddpm_export.evaluation.validate import _conditioning
    from runtime.contract import Condition
    from runtime.guidance import ConditionError

    no_null = (Condition("class_labels", "class_label", (), 10, None),)
    assert _conditioning(no_null, None, None, {1.0}, 0).guidance == 1.0
    with pytest.raises(ConditionError, match="no null form"):
        _conditioning(no_null, None, 2.0, {1.0}, 0)
    with pytest.raises(ValueError, match=r"different default guidance scales \[1.0, 2.0\]"):
        _conditioning(no_null, None, None, {1.0, 2.0}, 0)
