"""ddpm-export validate on the shipped digits engines (ONNX float32 and FP16).

The first test is CI's validation run: its report (report.json, report.md and
the plots) is kept in reports/validate-digits/ as the test artifact (the
distribution level's run in reports/validate-digits/distribution/).
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ddpm_export.cli.main import main
from ddpm_export.evaluation.digits import frechet_distance, train_digits_classifier
from ddpm_export.evaluation.fidelity import INCEPTION_WEIGHTS_FILE
from ddpm_export.evaluation.validate import (Thresholds, _open_onnx_reference, distribution_level,
                                  distribution_skip_reason, profile_batches)

ROOT = Path(__file__).resolve().parents[3]
ENG = ROOT / "engines"
ARTIFACT = ROOT / "reports" / "validate-digits"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


CI_SAMPLES = 32  # per set: enough to run and score the distribution level end to end


def _validate(report: Path, *options: str) -> dict:
    """'ddpm-export validate' of both shipped engines; the checks every run must pass."""
    shutil.rmtree(report, ignore_errors=True)
    r = CliRunner().invoke(main, [
        "validate", "--checkpoint", str(ENG / "digits.pt"), "--engine", str(ENG / "digits.onnx"),
        "--engine", str(ENG / "digits-fp16.onnx"), "--report", str(report),
        "--reference-samples", str(ENG / "digits_samples.npz"), "--no-progress", *options])
    print("\n" + r.output)
    assert r.exit_code == 0, r.output
    rep = json.loads((report / "report.json").read_text())
    fp32, fp16 = rep["engines"]
    assert fp32["precision"] == "fp32" and fp16["precision"] == "fp16"
    assert fp32["checks"]["eps_max_abs"]["value"] < Thresholds().eps_fp32
    # FP16 rounding is visible but bounded; float32 sits orders of magnitude below it
    assert 1e-5 < fp16["checks"]["eps_max_abs"]["value"] < Thresholds().eps_fp16
    assert rep["passed"] is True
    return rep


def _check_chain(report: Path, rep: dict) -> None:
    """The trajectory level: x_t compared at every one of the 1000 DDPM steps."""
    fp32 = rep["engines"][0]
    assert len(fp32["trajectory"]["drift"]) == 1000
    assert fp32["trajectory"]["final_max_abs"] < Thresholds().final_fp32
    assert fp32["checks"]["final_max_abs"]["passed"] is True
    for name in ("eps_error.png", "drift.png", "progressive.png"):
        assert (report / name).read_bytes()[:8] == PNG_MAGIC, name


def _check_distribution(report: Path, rep: dict, n: int) -> None:
    """The distribution level end to end: every set scored, both gates passed, the plots."""
    assert rep["distribution"]["n"] == n
    assert set(rep["distribution"]["sets"]) == {
        "real (held-out, floor)", "reference", "digits.onnx", "digits-fp16.onnx"}
    for e in rep["engines"]:
        assert e["checks"]["distribution_frechet_excess"]["passed"] is True
        assert e["checks"]["distribution_confident_ratio"]["passed"] is True
    assert "Frechet to real" in (report / "report.md").read_text()
    assert (report / "samples.png").read_bytes()[:8] == PNG_MAGIC


def _validate_both_engines(report: Path, *options: str) -> dict:
    """Every level at once, DDPM over all 1000 steps (the slow tests)."""
    rep = _validate(report, *options)
    _check_chain(report, rep)
    _check_distribution(report, rep, rep["distribution"]["n"])
    return rep


@pytest.fixture
def one_thread(monkeypatch):
    """ONNX Runtime and PyTorch on one thread each. With their default pools (a second thread
    that spins while it waits) a run on a shared, busy 2-core machine took many times its CPU
    time; the numbers compared are the same computations either way."""
    import runtime
    import torch

    real_load = runtime.load
    monkeypatch.setattr(runtime, "load", lambda path, **kw: real_load(
        path, **({"threads": 1, **kw} if str(path).endswith(".onnx") else kw)))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_validate_shipped_digits_engines_all_levels(one_thread):
    """CI's validation run, every level on both engines, at a cost the default suite carries.
    Two runs of the CLI:

    - one step at every default batch (the manifest's profile points 1/8/64 and the midpoints
      4 and 36) at t = 0, 500, 999, against the FP32 and FP16 limits;
    - the trajectory level on the paper's chain, DDPM over all 1000 steps, for 1 image: the
      drift at every step and the FP32 final-image gate;
    - the likelihood level on 2 held-out digits at 10 timesteps each (the bound's gate);
    - (second run) the distribution level end to end on CI_SAMPLES samples per set drawn with
      UniPC at 10 engine calls (the few-step sampler docs/results.md recommends): sampling,
      classifier features, Frechet to the real and the reference sets, the confident ratio,
      both gates and samples.png; the reference set is the stored DDPM-1000 samples.

    The former CI size (one step every 100 timesteps, a 2-image chain, CI_SAMPLES DDPM-1000
    samples per set, the default likelihood level) is test_validate_ci_size_ddpm_1000 below
    (slow), the full default run the slow test after it. The report of the first run is kept in
    reports/validate-digits/, that of the distribution run in reports/validate-digits/distribution/.
    ONNX Runtime and PyTorch run on one thread each (one_thread).
    """
    rep = _validate(ARTIFACT, "--t-stride", "500", "--trajectory-images", "1", "--samples", "0",
                    "--likelihood-images", "2", "--likelihood-t-samples", "10")
    _check_chain(ARTIFACT, rep)
    fp32 = rep["engines"][0]
    # default batches: the profile points 1/8/64 of the manifest and the midpoints 4 and 36
    assert sorted({row["batch"] for row in fp32["one_step"]}) == [1, 4, 8, 36, 64]
    assert len(fp32["one_step"]) == 5 * 3  # t = 0, 500, 999 at five batch sizes
    assert rep["likelihood"]["num_images"] == 2 and rep["likelihood"]["t_samples"] == 10
    assert all(e["checks"]["likelihood_bpd_diff"]["passed"] is True for e in rep["engines"])
    dist = ARTIFACT / "distribution"
    rep = _validate(dist, "--t-stride", "999", "--batch", "1", "--trajectory-images", "0",
                    "--likelihood-images", "0", "--samples", str(CI_SAMPLES),
                    "--method", "unipc", "--steps", "10")
    _check_distribution(dist, rep, CI_SAMPLES)


@pytest.mark.slow
def test_validate_ci_size_ddpm_1000(tmp_path):
    """The former default-suite CI run (~450 s of a busy 2-core machine): one step every 100
    timesteps at every default batch, the 1000-step chain of 2 images, CI_SAMPLES samples per
    set drawn with DDPM over all 1000 steps through the whole distribution path, and the
    default likelihood level (8 images, 50 timesteps)."""
    rep = _validate_both_engines(tmp_path / "report", "--t-stride", "100", "--trajectory-images", "2",
                                 "--samples", str(CI_SAMPLES))
    fp32 = rep["engines"][0]
    assert sorted({row["batch"] for row in fp32["one_step"]}) == [1, 4, 8, 36, 64]
    assert len(fp32["one_step"]) == 5 * 11  # t = 0, 100, ..., 900, 999 at five batch sizes
    assert rep["distribution"]["n"] == CI_SAMPLES


@pytest.mark.slow
def test_validate_default_run_passes_on_the_shipped_engines(tmp_path):
    """``ddpm-export validate`` with every default (450 samples per set, t stride 50, 4
    trajectory images), as the figures of docs/validation.md are made."""
    rep = _validate_both_engines(tmp_path / "report")
    assert rep["distribution"]["n"] == 450
    assert len(rep["engines"][0]["one_step"]) == 5 * 21  # t = 0, 50, ..., 950, 999


def test_validate_fails_on_a_threshold_and_exits_nonzero():
    r = CliRunner().invoke(main, [
        "validate", "--checkpoint", str(ENG / "digits.pt"), "--engine", str(ENG / "digits-fp16.onnx"),
        "--t-stride", "500", "--batch", "2", "--trajectory-images", "0", "--samples", "0",
        "--eps-atol-fp16", "1e-7"])
    assert r.exit_code == 1 and "FAIL" in r.output


def test_validate_refuses_an_engine_from_another_checkpoint(tmp_path):
    import torch

    ck = torch.load(ENG / "digits.pt", weights_only=False)
    ck["provenance"] = {**ck.get("provenance", {}), "note": "a copy"}
    torch.save(ck, tmp_path / "other.pt")
    r = CliRunner().invoke(main, ["validate", "--checkpoint", str(tmp_path / "other.pt"),
                                  "--engine", str(ENG / "digits.onnx"), "--trajectory-images", "0"])
    assert r.exit_code == 1 and "was not made from" in r.output and "--force" in r.output
    r = CliRunner().invoke(main, ["validate", "--checkpoint", str(tmp_path / "other.pt"), "--force",
                                  "--engine", str(ENG / "digits.onnx"), "--t-stride", "999",
                                  "--batch", "1", "--trajectory-images", "0", "--samples", "0"])
    assert r.exit_code == 0 and "WARNING" in r.output and "names another checkpoint" in r.output


def test_validate_refuses_an_engine_of_another_image_shape(tmp_path):
    shutil.copy(ENG / "digits.onnx", tmp_path / "digits.onnx")
    m = json.loads((ENG / "digits.json").read_text())
    m["image_shape"] = [3, 32, 32]  # a consistent manifest of a 3x32x32 model
    for io in m["io"]["inputs"][:1] + m["io"]["outputs"]:
        io["shape"] = ["batch", 3, 32, 32]
    (tmp_path / "digits.json").write_text(json.dumps(m))
    r = CliRunner().invoke(main, ["validate", "--checkpoint", str(ENG / "digits.pt"),
                                  "--engine", str(tmp_path / "digits.onnx"), "--samples", "0"])
    assert r.exit_code == 1 and "image shape" in r.output and "[3, 32, 32]" in r.output


def test_validate_names_the_missing_inception_weights_file(tmp_path):
    r = CliRunner().invoke(main, ["validate", "--checkpoint", str(ENG / "digits.pt"),
                                  "--engine", str(ENG / "digits.onnx"),
                                  "--inception-weights", str(tmp_path / "nope.pth")])
    assert r.exit_code != 0 and INCEPTION_WEIGHTS_FILE in r.output


def test_profile_batches_are_the_profile_points_and_midpoints():
    assert profile_batches({"min": 1, "opt": 8, "max": 64}) == [1, 4, 8, 36, 64]
    assert profile_batches({"min": 4, "opt": 4, "max": 4}) == [4]


def test_a_plan_is_also_compared_with_its_float32_onnx():
    # a plan built from digits-fp16.onnx: the ONNX Runtime reference is its float32 sibling
    manifest = json.loads((ENG / "digits-fp16.json").read_text())
    manifest["engine"] = {"onnx": "digits-fp16.onnx"}
    ref = _open_onnx_reference(str(ENG / "digits-fp16.plan"), manifest, None)
    assert ref is not None and ref.manifest["precision"] == "fp32"
    assert Path(ref.runner.path).name == "digits.onnx"
    assert _open_onnx_reference(str(ENG / "digits.onnx"), manifest, None) is None
    with pytest.raises(ValueError, match="give the float32 ONNX"):
        _open_onnx_reference(str(ENG / "x.plan"), manifest, str(ENG / "digits-fp16.onnx"))


def test_frechet_distance_matches_the_closed_form_for_gaussians():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((20000, 2))
    b = rng.standard_normal((20000, 2)) * 2.0 + np.array([1.0, 0.0])
    # N(0, I) vs N((1, 0), 4I): |mu|^2 + tr(I + 4I - 2 * 2I) = 1 + 2 = 3
    assert abs(frechet_distance(a, b) - 3.0) < 0.1
    assert abs(frechet_distance(a, a)) < 1e-8
    with pytest.raises(ValueError, match="equal D"):
        frechet_distance(a, b[:, :1])


@pytest.fixture(scope="module")
def shipped_samples():
    with np.load(ENG / "digits_samples.npz") as z:
        return z["samples"]


def test_distribution_gate_passes_good_samples_and_fails_damaged_ones(shipped_samples):
    ref, good = shipped_samples[:250], shipped_samples[250:]
    rng = np.random.default_rng(0)
    damaged = {  # what broken engines produce: washed-out images, noise
        "dim": (good * 0.6).astype(np.float32),
        "noisy": np.clip(good + 0.5 * rng.standard_normal(good.shape), -1, 1).astype(np.float32),
    }
    rep = distribution_level((1, 16, 16), ref, {"good": good, **damaged}, Thresholds())
    print({k: round(v["frechet_to_real"], 2) for k, v in rep["sets"].items()})
    assert rep["checks"]["good"]["frechet_excess"]["passed"] is True
    for name in damaged:
        assert rep["checks"][name]["frechet_excess"]["passed"] is False, name
    # the floor (449 held-out real digits vs the other 450) is far below any damaged set's
    # distance; a good model's 250 samples can land on either side of it by sampling noise
    # (seen: 2.9 vs a floor of 3.8), so the floor is not asserted to be below them
    floor = rep["sets"]["real (held-out, floor)"]["frechet_to_real"]
    assert 0 < floor < min(rep["sets"][name]["frechet_to_real"] for name in damaged) / 5


def test_distribution_level_says_when_it_is_skipped():
    x = np.zeros((20, 3, 32, 32), np.float32)
    rep = distribution_level((3, 32, 32), x, {"e": x}, Thresholds())
    assert "--inception-weights" in rep["skipped"]
    # validate asks before drawing any sample: digits and models with Inception weights are scored
    assert distribution_skip_reason((3, 32, 32), None) == rep["skipped"]
    assert distribution_skip_reason((1, 16, 16), None) is None
    assert distribution_skip_reason((3, 32, 32), "weights.pth") is None


def test_digits_classifier_splits_are_disjoint_and_held_out():
    clf = train_digits_classifier()
    a, b = clf.real_a, clf.real_b
    assert len(a) + len(b) == len(clf.x_test) and min(len(a), len(b)) >= 440
    assert not (a[:, None, :] == b[None, :, :]).all(-1).any()


def test_steps_table_command_runs_and_rejects_bad_steps(tmp_path):
    r = CliRunner().invoke(main, ["steps-table", "--engine", str(ENG / "digits.onnx"), "--samples", "12",
                                  "--methods", "both", "--steps", "2,4", "--json", str(tmp_path / "t.json"),
                                  "--no-progress"])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    # rows in the registry's method order
    assert [(x["method"], x["steps"]) for x in rows] == [("ddpm", 2), ("ddpm", 4), ("ddim", 2), ("ddim", 4)]
    assert all(x["frechet_mean"] > 0 and x["seconds_mean"] > 0 for x in rows)
    r = CliRunner().invoke(main, ["steps-table", "--engine", str(ENG / "digits.onnx"), "--steps", "0,x"])
    assert r.exit_code == 2 and "comma-separated" in r.output


def test_frontier_smoke_every_method_seeds_reference_row_and_plot(tmp_path):
    """A small frontier: every method at 5 engine calls, 2 seeds (mean and spread), the
    reference DDPM-1000 row from the shipped samples, the JSON and the PNG; --resume reuses it."""
    j, png = tmp_path / "f.json", tmp_path / "f.png"
    args = ["steps-table", "--engine", str(ENG / "digits.onnx"), "--samples", "12", "--steps", "5",
            "--seeds", "0,1", "--reference-samples", str(ENG / "digits_samples.npz"), "--json", str(j),
            "--no-progress"]
    r = CliRunner().invoke(main, args + ["--plot", str(png)])
    assert r.exit_code == 0, r.output
    res = json.loads(j.read_text())
    from runtime.schedulers import METHODS

    assert [x["method"] for x in res["rows"]] == list(METHODS) + ["ddpm-reference"]
    for row in res["rows"]:
        assert row["seeds"] == 2 and len(row["frechet_per_seed"]) == 2 and row["frechet_std"] > 0
        assert abs(row["frechet_mean"] - sum(row["frechet_per_seed"]) / 2) < 1e-9
    ref = res["rows"][-1]
    assert ref["engine_calls"] == 1000 and ref["seconds_mean"] is None
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| unipc | 5 |" in r.output and "ddpm-reference | 1000" in r.output
    r2 = CliRunner().invoke(main, args + ["--resume", "--methods", "unipc"])  # nothing new to sample
    assert r2.exit_code == 0 and ": 12 samples" not in r2.output, r2.output
    assert json.loads(j.read_text())["runs"] == res["runs"]


def test_validate_trajectory_and_distribution_with_a_solver():
    """--method: the trajectory level drives the engine and the PyTorch model through the same
    runtime scheduler on the same noise; the distribution level samples with it."""
    r = CliRunner().invoke(main, [
        "validate", "--checkpoint", str(ENG / "digits.pt"), "--engine", str(ENG / "digits.onnx"),
        "--t-stride", "500", "--batch", "1", "--trajectory-images", "2", "--samples", "20",
        "--reference-samples", str(ENG / "digits_samples.npz"), "--method", "unipc", "--steps", "5",
        "--no-progress"])
    assert r.exit_code in (0, 1), r.output  # 20 samples may miss the distribution gate
    assert "unipc trajectory" in r.output
    r = CliRunner().invoke(main, ["validate", "--checkpoint", str(ENG / "digits.pt"), "--engine",
                                  str(ENG / "digits.onnx"), "--method", "heun"])
    assert r.exit_code == 1 and "expected one of ddpm, ddim, dpmsolver++" in r.output


def test_trajectory_level_same_scheduler_drift_is_small():
    import runtime
    from ddpm_export.evaluation.validate import trajectory
    from ddpm_export.model.checkpoint import load_model
    from runtime.schedulers.schedule import ScheduleConfig

    model, ckpt = load_model(ENG / "digits.pt")
    with runtime.load(ENG / "digits.onnx") as engine:
        part, frames = trajectory(engine, model, ScheduleConfig.from_dict(ckpt["schedule_config"]), 2, 0,
                                  "dpmsolver++", 5, {"order": 3})
    assert part["method"] == "dpmsolver++" and part["steps"] == 5 and len(part["drift"]) == 5
    assert part["final_max_abs"] < 1e-3 and len(frames["engine"]) == len(frames["reference"]) == 5
