"""A distilled student deploys like any model: its exported ONNX, sampled by the runtime with no
method flags, equals the PyTorch student's own sampler; the manifest's 'sampling' section sets the
defaults and refuses what the student was not trained for."""
import json

import numpy as np
import pytest

import runtime
from runtime.contract import ManifestError, plan_steps, sampling_plan, validate_manifest

# the default, 2 calls, is not consistency_timesteps(2) = [999, 500]: every path below must sample the
# manifest's own list (a student's lists may be chosen by measurement after training)
SAMPLING = {"method": "consistency", "steps": 2, "allowed_steps": [1, 2, 4],
            "timesteps": {"1": [999], "2": [999, 250], "4": [999, 749, 500, 250]}}


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """The tiny model saved as a v-prediction student with a sampling section, exported (fp32)."""
    pytest.importorskip("onnx")
    from ddpm_export.export.onnx_export import export_onnx
    from ddpm_export.model.checkpoint import save_checkpoint
    from ddpm_export.model.config import PRESETS
    from runtime.schedulers.schedule import ScheduleConfig
    from tiny_unet import tiny_model

    d = tmp_path_factory.mktemp("student")
    model = tiny_model(seed=3)
    ckpt = d / "student.pt"
    save_checkpoint({"model_config": PRESETS["tiny"].unet.to_dict(),
                     "schedule_config": ScheduleConfig(prediction="v").to_dict(), "ema": model.state_dict(),
                     "step": 6, "provenance": {"command": "ddpm-export distill --teacher tiny.pt"},
                     "sampling": SAMPLING}, ckpt)
    onnx = d / "student.onnx"
    manifest = export_onnx(ckpt, onnx, command="ddpm-export export --checkpoint student.pt")
    return {"model": model, "onnx": onnx, "manifest": manifest, "checkpoint": ckpt}


def test_manifest_carries_prediction_and_sampling(student):
    m = student["manifest"]
    assert m["schedule"]["prediction"] == "v" and m["sampling"] == SAMPLING
    on_disk = json.loads(student["onnx"].with_suffix(".json").read_text())
    assert on_disk["sampling"] == SAMPLING


def test_runtime_without_flags_equals_the_pytorch_students_sampler(student):
    from ddpm_export.training.distill import sample_student
    from runtime.schedulers.schedule import ScheduleConfig

    with runtime.load(student["onnx"]) as engine:
        for steps in (None, 1, 4):
            seen = []
            res = engine.sample_float(5, seed=7, steps=steps, callback=lambda i, t, x, x0: seen.append(t))
            n = 2 if steps is None else steps
            assert res.network_calls == n and seen == SAMPLING["timesteps"][str(n)]
            ref = sample_student(student["model"], ScheduleConfig(prediction="v"), 5, seed=7,
                                 timesteps=SAMPLING["timesteps"][str(n)])
            diff = np.abs(res.images - ref).max()
            assert diff < 1e-4, f"{n} calls: runtime vs PyTorch student max abs diff {diff:.2e}"


def test_sampling_plan_defaults_and_refusals():
    plain = {"schedule": {}}
    assert sampling_plan(plain) == {"method": "ddpm", "steps": None, "timesteps": None, "options": {}}
    assert sampling_plan(plain, "ddim", 20) == {"method": "ddim", "steps": 20, "timesteps": None, "options": {}}
    assert plan_steps(sampling_plan(plain, "ddim", 20)) == {"steps": 20, "timesteps": None}
    sched = {"kind": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_timesteps": 1000,
             "variance_type": "fixedlarge", "clip_denoised": True, "prediction": "v"}
    m = {"schedule": sched, "sampling": SAMPLING}
    assert sampling_plan(m) == {"method": "consistency", "steps": 2, "timesteps": [999, 250], "options": {}}
    assert sampling_plan(m, steps=4) == {"method": "consistency", "steps": 4, "timesteps": [999, 749, 500, 250], "options": {}}
    assert plan_steps(sampling_plan(m)) == {"steps": None, "timesteps": [999, 250]}
    for method, steps in (("ddpm", None), ("unipc", 10), (None, 3), ("consistency", 8)):
        with pytest.raises(ValueError, match=r"few-step student: it was trained to be sampled with method "
                                             r"consistency at 1, 2, 4 calls.*drop --method/--steps"):
            sampling_plan(m, method, steps)


@pytest.mark.parametrize("bad, field", [
    (dict(SAMPLING, method="heun"), "sampling.method"),
    (dict(SAMPLING, steps=3), "sampling.steps"),
    (dict(SAMPLING, allowed_steps=[]), "sampling.allowed_steps"),
    (dict(SAMPLING, timesteps={"1": [999], "2": [999, 500]}), "sampling.timesteps"),
    (dict(SAMPLING, timesteps=dict(SAMPLING["timesteps"], **{"2": [500, 999]})), "sampling.timesteps"),
    (dict(SAMPLING, timesteps=dict(SAMPLING["timesteps"], **{"1": [1000]})), "sampling.timesteps"),
])
def test_a_bad_sampling_section_is_refused(student, bad, field):
    m = dict(student["manifest"], sampling=bad)
    with pytest.raises(ManifestError, match=f"manifest {field}"):
        validate_manifest(m)


def test_runtime_sample_cli_needs_no_flags_and_refuses_another_method(student, tmp_path, capsys):
    from runtime.sample import main as sample_main

    out = tmp_path / "s.png"
    assert sample_main(["--engine", str(student["onnx"]), "--num", "3", "--out", str(out), "--no-progress"]) == 0
    assert out.is_file() and "2 engine calls" in capsys.readouterr().out  # one batch of 3, 2 calls
    assert sample_main(["--engine", str(student["onnx"]), "--num", "3", "--out", str(tmp_path / "x.png"),
                        "--method", "ddpm", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "few-step student" in err and not (tmp_path / "x.png").exists()


def test_sample_many_takes_the_students_defaults(student, tmp_path):
    from runtime.sample_many import main as many_main
    from runtime.shards import load_shards

    out = tmp_path / "shards"
    assert many_main(["--engine", str(student["onnx"]), "--num", "5", "--out", str(out), "--shard-size", "3",
                      "--no-progress"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["method"] == "consistency" and run["config"]["steps"] == 2
    with runtime.load(student["onnx"]) as engine:
        np.testing.assert_array_equal(load_shards(out), engine.sample(5, seed=0))


def test_validate_takes_the_student(student):
    from ddpm_export.evaluation.validate import validate

    rep, _ = validate(str(student["checkpoint"]), [str(student["onnx"])], t_stride=250, batches=[1, 3],
                      trajectory_images=2, samples=0, likelihood_images=4)
    e = rep["engines"][0]
    assert e["trajectory"]["method"] == "consistency" and e["trajectory"]["steps"] == 2
    assert e["trajectory"]["final_max_abs"] < 1e-4 and rep["passed"]
    assert "no variational bound" in rep["likelihood"]["skipped"]


def test_the_jetson_app_takes_the_student_with_no_flags(student, capsys):
    import importlib.util
    from pathlib import Path

    app_py = Path(__file__).resolve().parents[2] / "examples" / "jetson_app" / "app.py"
    spec = importlib.util.spec_from_file_location("jetson_app_under_test", app_py)
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    assert app.main(["--engine", str(student["onnx"]), "--num", "2", "--requests", "1", "--threads", "1"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["requests"][0]["network_calls"] == 2  # the manifest's default: 2 calls


class _FakeTensor:
    def __init__(self, name, value):
        self.name, self.value = name, value

    def as_numpy(self):
        return self.value


def test_the_triton_sampler_takes_the_students_defaults_and_refuses_another_method(student, tmp_path,
                                                                                   monkeypatch):
    """The generated Triton sampler (inprocess), driven through a stand-in for Triton's
    triton_python_backend_utils: a request without method/steps gets the runtime's images."""
    import importlib.util
    import sys
    import types

    from ddpm_export.serving.triton_repo import RepositoryConfig, write_repository

    repo = tmp_path / "repo"
    write_repository(RepositoryConfig(engine=str(student["onnx"]), out=str(repo), mode="inprocess", name="s"))
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor = _FakeTensor
    pb.get_input_tensor_by_name = lambda req, name: req.get(name)
    pb.InferenceResponse = lambda tensors=None, error=None: {"tensors": tensors, "error": error}
    class TritonError:  # the real one carries a message and a code (INVALID_ARG for a client's mistake)
        CANCELLED, INTERNAL, INVALID_ARG = 1, 2, 3

        def __init__(self, msg, code=None):
            self.msg, self.code = msg, code

    pb.TritonError = TritonError
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    version = repo / "s_sampler" / "1"
    monkeypatch.syspath_prepend(str(version))
    spec = importlib.util.spec_from_file_location("sampler_model_under_test", version / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # the check guards Triton's real stub (NumPy 1 only); our stand-in passes arrays through unchanged
    monkeypatch.setattr(mod, "check_numpy", lambda: None)
    config = json.dumps({"parameters": {k: {"string_value": v} for k, v in
                                        {"mode": "inprocess", "max_num": "8", "max_batch": "8",
                                         "engine_file": "model.onnx"}.items()}})
    model = mod.TritonPythonModel()
    model.initialize({"model_config": config, "model_name": "s_sampler", "model_repository": str(repo / "s_sampler"),
                      "model_version": "1"})

    class Req(dict):
        def is_cancelled(self):
            return False

    num_seed = {"num": _FakeTensor("num", np.array([3], np.int32)), "seed": _FakeTensor("seed", np.array([4]))}
    ok, bad = model.execute([Req(num_seed), Req(num_seed, method=_FakeTensor("method", np.array([b"ddpm"],
                                                                                               dtype=object)))])
    with runtime.load(student["onnx"]) as engine:
        np.testing.assert_array_equal(ok["tensors"][0].value, engine.sample(3, seed=4))
    assert "few-step student" in bad["error"].msg and bad["error"].code == TritonError.INVALID_ARG
    model.finalize()


def test_nll_refuses_a_student_in_one_line(student):
    from click.testing import CliRunner

    from ddpm_export.cli.main import main

    r = CliRunner().invoke(main, ["nll", "--engine", str(student["onnx"]), "--num", "2"])
    assert r.exit_code == 1 and r.output.count("\n") == 1
    assert "few-step student" in r.output and "no variational bound" in r.output
