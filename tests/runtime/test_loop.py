import json
import shutil

import numpy as np
import pytest

import runtime
from runtime.backends.base import InputError
from runtime.sample import main as sample_main
from runtime.loop import NonFiniteError, sample

torch = pytest.importorskip("torch")


def _copy(tiny, tmp_path):
    """A private copy of the tiny engine + its manifest, safe to damage."""
    onnx = tmp_path / "m.onnx"
    shutil.copy(tiny["onnx"], onnx)
    shutil.copy(tiny["onnx"].with_suffix(".json"), tmp_path / "m.json")
    return onnx


def test_engine_eps_matches_pytorch(tiny_export):
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    t = np.array([0, 500, 999], dtype=np.int32)
    with runtime.load(tiny_export["onnx"]) as engine:
        eps = engine(x, t)
    ref = tiny_export["model"](torch.from_numpy(x), torch.from_numpy(t).long()).detach().numpy()
    assert np.abs(eps - ref).max() < 1e-4


def test_runtime_loop_reproduces_the_pytorch_reference_over_1000_steps(tiny_export):
    from ddpm_export.model.reference_sampler import sample_images
    from runtime.schedulers.schedule import ScheduleConfig

    seed = 7
    with runtime.load(tiny_export["onnx"]) as engine:
        res = engine.sample_float(2, seed=seed)
    # the reference sampler draws from the same per-image streams (runtime.seeding)
    ref, _ = sample_images(tiny_export["model"], ScheduleConfig(), 2, seed=seed, batch_size=2,
                           progress=False)
    diff = np.abs(res.images - ref).max()
    print(f"runtime (ONNX Runtime fp32) vs PyTorch reference, 1000 steps: "
          f"max abs diff {diff:.2e}")
    assert diff < 1e-3


def test_seeded_sampling_is_reproducible_and_api_returns_uint8(tiny_export):
    calls = []
    with runtime.load(tiny_export["onnx"]) as engine:
        a = engine.sample(3, seed=1, steps=10, method="ddim", batch=2,
                          callback=lambda i, t, x, x0: calls.append((i, t)))
        b = engine.sample(3, seed=1, steps=10, method="ddim", batch=2)
        c = engine.sample(3, seed=2, steps=10, method="ddim", batch=2)
    assert a.dtype == np.uint8 and a.shape == (3, 8, 8, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(calls) == 20 and calls[0] == (0, 900) and calls[-1] == (9, 0)


def test_bad_inputs_say_what_was_expected(tiny_export):
    with runtime.load(tiny_export["onnx"]) as engine:
        x = np.zeros((2, 1, 8, 8), np.float32)
        with pytest.raises(InputError, match="dtype float64, expected float32"):
            engine(x.astype(np.float64), np.array([1, 2]))
        with pytest.raises(InputError, match=r"shape \(2, 3, 8, 8\), expected \('B', 1, 8, 8\)"):
            engine(np.zeros((2, 3, 8, 8), np.float32), np.array([1, 2]))
        with pytest.raises(InputError, match="outside the engine's range"):
            engine(np.zeros((65, 1, 8, 8), np.float32), 5)
        with pytest.raises(InputError, match="int32"):
            engine(x, np.array([1.5, 2.5]))
        with pytest.raises(InputError, match=r"\[0, 999\]"):
            engine(x, np.array([0, 1000]))
        with pytest.raises(ValueError, match="method 'euler' is unknown"):
            engine.sample(1, method="euler")
        with pytest.raises(ValueError, match=r"expected an int in \[1, 1000\]"):
            engine.sample(1, steps=1001)


def test_nan_stops_with_the_step_and_a_hint():
    def nan_after_3(x, t, calls=[0]):
        calls[0] += 1
        return np.full_like(x, np.nan) if calls[0] > 3 else np.zeros_like(x)

    sched = {"kind": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_timesteps": 1000,
             "variance_type": "fixedlarge", "clip_denoised": True}
    with pytest.raises(NonFiniteError, match=r"step 4/1000 \(t=996.*FP16"):
        sample(nan_after_3, (1, 8, 8), sched, 1)


def test_cli_writes_png_and_reports_speed(tiny_export, tmp_path, capsys):
    out, traj = tmp_path / "s.png", tmp_path / "t.png"
    rc = sample_main(["--engine", str(tiny_export["onnx"]), "--num", "4", "--steps", "20",
                      "--method", "ddim", "--out", str(out), "--trajectory", str(traj), "--no-progress"])
    assert rc == 0 and out.is_file() and traj.is_file()
    assert "images/s" in capsys.readouterr().out.strip().splitlines()[-1]


def test_cli_nan_leaves_no_png(tiny_export, tmp_path, capsys, monkeypatch):
    from runtime.backends.onnxrt import OnnxRuntimeRunner

    monkeypatch.setattr(OnnxRuntimeRunner, "_infer", lambda self, x, t, cond: np.full_like(x, np.inf))
    out = tmp_path / "s.png"
    rc = sample_main(["--engine", str(tiny_export["onnx"]), "--num", "2", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "NaN/Inf" in err[0] and "step 1/1000" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("damage", ["missing", "truncated", "not_onnx", "shape_mismatch", "no_manifest"])
def test_cli_bad_engine_files(tiny_export, tmp_path, capsys, damage):
    onnx = _copy(tiny_export, tmp_path)
    if damage == "missing":
        onnx = tmp_path / "nope.onnx"
    elif damage == "truncated":
        data = onnx.read_bytes()
        onnx.write_bytes(data[: len(data) // 3])
        m = json.loads((tmp_path / "m.json").read_text())
        m["onnx_sha256"] = None  # so loading the graph, not the hash check, is what fails
        (tmp_path / "m.json").write_text(json.dumps(m))
    elif damage == "not_onnx":
        onnx.write_text("hello")
        (tmp_path / "m.json").unlink()
    elif damage == "shape_mismatch":
        m = json.loads((tmp_path / "m.json").read_text())
        m["image_shape"] = [3, 8, 8]
        m["io"]["inputs"][0]["shape"] = ["batch", 3, 8, 8]
        m["io"]["outputs"][0]["shape"] = ["batch", 3, 8, 8]
        (tmp_path / "m.json").write_text(json.dumps(m))
    elif damage == "no_manifest":
        (tmp_path / "m.json").unlink()
        onnx.write_bytes(b"\x08\x07")  # valid-looking protobuf, no metadata
    rc = sample_main(["--engine", str(onnx), "--num", "1", "--steps", "2", "--method", "ddim",
                      "--out", str(tmp_path / "s.png"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("error:"), err
    assert not (tmp_path / "s.png").exists()
    print(damage, "->", err[0])


def test_the_loop_takes_explicit_timesteps():
    """timesteps=[...] runs exactly those (a student's manifest list), in order; the default
    list passed explicitly gives the same images as steps=N, another list other images."""
    from runtime.schedulers.schedule import ScheduleConfig

    seen = []

    def runner(x, t):  # a v-model stand-in that depends on t, recording the calls
        seen.append(int(t[0]))
        return np.tanh(x) * (t[:, None, None, None] / 1000.0).astype(np.float32)

    sched = ScheduleConfig(prediction="v").to_dict()
    kw = dict(num=3, seed=5, method="consistency", batch=3)
    by_steps = sample(runner, (1, 4, 4), sched, steps=4, **kw).images
    assert seen == [999, 749, 500, 250]
    seen.clear()
    same = sample(runner, (1, 4, 4), sched, timesteps=[999, 749, 500, 250], **kw).images
    np.testing.assert_array_equal(same, by_steps)
    seen.clear()
    other = sample(runner, (1, 4, 4), sched, timesteps=[999, 500, 250, 125], **kw)
    assert seen == [999, 500, 250, 125] and other.network_calls == 4
    assert not np.array_equal(other.images, by_steps)
    with pytest.raises(ValueError, match="given together"):
        sample(runner, (1, 4, 4), sched, steps=4, timesteps=[999, 500], **kw)
