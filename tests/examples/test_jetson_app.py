"""examples/jetson_app/app.py runs as a user would run it: on the shipped ONNX engine,
and, given a TensorRT plan this machine cannot run, by falling back to its ONNX export."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "examples" / "jetson_app" / "app.py"
ENGINE = ROOT / "engines" / "digits.onnx"
FAST = ["--num", "2", "--requests", "2", "--steps", "3", "--threads", "1"]


def _run(*args, stdin=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's runtime, not an installed one
    return subprocess.run([sys.executable, str(APP), *map(str, args)], input=stdin, capture_output=True,
                          text=True, env=env, timeout=300, cwd=str(ROOT))


def _summary(proc):
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_samples_on_request_and_reports_latency_and_memory(tmp_path):
    proc = _run("--engine", ENGINE, *FAST, "--out", tmp_path)
    s = _summary(proc)
    assert s["backend"] == "onnxruntime" and s["fallback_reason"] is None
    assert [r["seed"] for r in s["requests"]] == [0, 1]
    for r in s["requests"]:
        assert r["num"] == 2 and r["network_calls"] == 3 and r["latency_s"] > 0
        assert r["peak_rss_mb"] > 10 and r["python_heap_peak_mb"] > 0
    assert "request 1: 2 images, seed 1:" in proc.stdout and "peak RSS" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["request-000.png", "request-001.png"]


def test_a_request_gives_the_images_of_the_runtime_api():
    import runtime

    proc = _run("--engine", ENGINE, "--stdin", "--steps", "3", "--threads", "1", stdin="3 42\n\n1 7\n")
    s = _summary(proc)
    assert [(r["num"], r["seed"]) for r in s["requests"]] == [(3, 42), (1, 7)]
    # the app's first request, redrawn through the API: same sampler, same seed, same images
    sys.path.insert(0, str(APP.parent))
    try:
        import app
    finally:
        sys.path.remove(str(APP.parent))
    a = app.SamplerApp(str(ENGINE), threads=1).open()
    try:
        got = a.handle(3, 42, method="unipc", steps=3)["images"]
    finally:
        a.close()
    with runtime.load(ENGINE, threads=1) as engine:
        np.testing.assert_array_equal(got, engine.sample(3, seed=42, method="unipc", steps=3))


def test_a_plan_that_cannot_run_here_falls_back_to_its_onnx(tmp_path):
    onnx = tmp_path / "digits.onnx"
    shutil.copy(ENGINE, onnx)
    m = json.loads(ENGINE.with_suffix(".json").read_text())
    # a plan from a TensorRT version no machine has: whatever this machine has (no GPU, no
    # TensorRT, or another TensorRT), the runtime refuses it before deserializing
    m["engine"] = {"section_version": 1, "tensorrt_version": "0.0.1", "device_name": "Orin",
                   "compute_capability": "8.7", "precision": "fp32", "precision_mode": "fp32",
                   "version_compatible": False, "profiles": [{"min": 1, "opt": 8, "max": 64}],
                   "hardware_compatibility": "none", "plan_sha256": None}
    (tmp_path / "digits.json").write_text(json.dumps(m))
    (tmp_path / "digits.plan").write_bytes(b"not a real plan")
    proc = _run("--engine", tmp_path / "digits.plan", *FAST)
    s = _summary(proc)
    assert s["backend"] == "onnxruntime" and s["fallback_reason"]
    assert "falling back to ONNX Runtime on" in proc.stderr and str(onnx) in proc.stderr
    assert len(s["requests"]) == 2

    onnx.unlink()  # nothing to fall back to: one clear line, exit 1
    proc = _run("--engine", tmp_path / "digits.plan", *FAST)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: cannot run the TensorRT plan")
    assert "pass --onnx" in proc.stderr


@pytest.mark.parametrize("script", [APP, APP.with_name("control_loop.py")], ids=["app", "control_loop"])
def test_the_app_runs_on_jetpack_5_python_3_8(script):
    vermin = shutil.which("vermin") or str(Path(sys.executable).parent / "vermin")
    if not Path(vermin).exists():
        pytest.skip("vermin not installed (pip install -e '.[test]')")
    r = subprocess.run([vermin, "--no-tips", "--violations", "-t=3.8-", "--eval-annotations", "--backport",
                        "typing", "--no-parse-comments", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _plan_beside_digits(tmp_path, **engine_over):
    onnx = tmp_path / "digits.onnx"
    shutil.copy(ENGINE, onnx)
    m = json.loads(ENGINE.with_suffix(".json").read_text())
    m["engine"] = {"section_version": 1, "tensorrt_version": "10.3.0.30", "device_name": "Orin",
                   "compute_capability": "8.7", "precision": "fp32", "precision_mode": "fp32",
                   "version_compatible": False, "profiles": [{"min": 1, "opt": 8, "max": 64}],
                   "hardware_compatibility": "none", "plan_sha256": None, **engine_over}
    (tmp_path / "digits.json").write_text(json.dumps(m))
    (tmp_path / "digits.plan").write_bytes(b"not a real plan")
    return tmp_path / "digits.plan"


def test_a_version_compatible_plan_runs_only_with_allow_host_code(tmp_path):
    """Defect 12: without the flag the app could never load a version-compatible plan."""
    plan = _plan_beside_digits(tmp_path, version_compatible=True)
    proc = _run("--engine", plan, *FAST)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and last.startswith("error: ") and "--allow-host-code" in last
    proc = _run("--engine", plan, "--allow-host-code", *FAST)
    assert proc.returncode == 0, proc.stderr  # past the opt-in; on to the GPU/TensorRT checks
    s = _summary(proc)
    assert "HostCodeNotAllowed" not in (s["fallback_reason"] or "")


def test_a_plan_tensorrt_refuses_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    """Defect 12: 'could not deserialize' is a broken plan, not this machine's version or GPU."""
    import importlib.util

    from runtime.backends.tensorrt import EngineMismatch, PlanNotLoadable

    spec = importlib.util.spec_from_file_location("jetson_app", APP)
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    assert not issubclass(PlanNotLoadable, app.PLAN_UNAVAILABLE)
    plan = _plan_beside_digits(tmp_path)

    def load(path, **kw):
        if Path(path).suffix == ".plan":
            raise PlanNotLoadable(f"{path}: TensorRT 10.3.0.30 (full runtime) could not deserialize it")
        raise AssertionError("fell back to the ONNX export")
    monkeypatch.setattr(app.runtime, "load", load)
    with pytest.raises(PlanNotLoadable, match="could not deserialize"):
        app.SamplerApp(str(plan), log=lambda s: None).open()
    monkeypatch.setattr(app.runtime, "load", lambda p, **kw: (_ for _ in ()).throw(
        EngineMismatch("built for compute capability 8.7")) if Path(p).suffix == ".plan"
        else type("E", (), {"__enter__": lambda self: self, "runner": None})())
    opened = app.SamplerApp(str(plan), log=lambda s: None).open()
    assert "EngineMismatch" in opened.fallback_reason  # a real mismatch still falls back


def test_a_plan_that_is_not_its_manifests_plan_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    """Issue 28 item 7: the runner's "engine profile differs from its manifest's" (plan and
    NAME.json mixed up) was an EngineMismatch, so the app fell back to ONNX Runtime; the README
    calls that an error. Here the real runner loads a fake plan (tests/trt_fakes.py) built for
    the batch profile 1/4/8 under a NAME.json that says 1/8/64."""
    pytest.importorskip("polygraphy", reason="polygraphy not installed")
    import hashlib
    import importlib.util

    import polygraphy.cuda.cuda as pc

    from runtime.backends import tensorrt as rt
    from trt_fakes import FakeCudaMemory, fake_plan_bytes, fake_tensorrt

    spec = importlib.util.spec_from_file_location("jetson_app", APP)
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    trt = fake_tensorrt("10.3.0.30")
    mem = FakeCudaMemory()
    monkeypatch.setattr(pc, "wrapper", lambda: mem)
    monkeypatch.setattr(rt.runner, "probe_cuda_device", lambda: rt.DeviceInfo(0, "Orin", (8, 7)))
    monkeypatch.setattr(rt.runner, "import_tensorrt", lambda allow_lean=False: (trt, rt.FULL))
    monkeypatch.setattr(rt.runner, "_LOGGERS", {})
    plan = _plan_beside_digits(tmp_path)
    data = fake_plan_bytes("10.3.0.30", profile=(1, 4, 8), image_shape=(1, 16, 16))
    plan.write_bytes(data)
    m = json.loads((tmp_path / "digits.json").read_text())
    m["engine"]["plan_sha256"] = hashlib.sha256(data).hexdigest()
    (tmp_path / "digits.json").write_text(json.dumps(m))
    with pytest.raises(rt.PlanManifestMismatch, match="engine profile .* differs from its manifest"):
        app.SamplerApp(str(plan), log=lambda s: None).open()
    # the same plan under a NAME.json with its own profile runs on the (fake) TensorRT
    m["engine"]["profiles"] = [{"min": 1, "opt": 4, "max": 8}]
    (tmp_path / "digits.json").write_text(json.dumps(m))
    opened = app.SamplerApp(str(plan), log=lambda s: None).open()
    try:
        assert opened.backend == "tensorrt" and opened.fallback_reason is None
    finally:
        opened.close()


def test_stdout_carries_only_the_apps_lines(monkeypatch, capsys):
    """Issue 28 (style): TensorRT's log reaches Python through Polygraphy's logger, which prints
    to sys.stdout, between the app's lines and its final JSON summary."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("jetson_app", APP)
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    real_load = app.runtime.load

    def chatty_load(path, **kw):
        print("[W] [TRT] a TensorRT warning through Polygraphy's logger")
        return real_load(path, **kw)
    monkeypatch.setattr(app.runtime, "load", chatty_load)
    assert app.main(["--engine", str(ENGINE), "--num", "1", "--requests", "1", "--steps", "3",
                     "--threads", "1"]) == 0
    out, err = capsys.readouterr()
    assert "TensorRT warning" in err and "TensorRT warning" not in out
    lines = out.strip().splitlines()
    assert lines[0].startswith("loaded ") and lines[1].startswith("request 0:")
    assert json.loads(lines[-1])["backend"] == "onnxruntime" and len(lines) == 3


def test_a_conditional_plan_runs_guided_requests_on_the_fake_tensorrt(tmp_path, monkeypatch):
    """Issue 25 item 5: a class-conditional plan as JetPack 5's TensorRT 8.5 builds it (labels
    INT32: 8.x has no INT64 I/O) gets its labels and the guidance batch 2N through the app.
    A stand-in TensorRT and CUDA (tests/trt_fakes.py): our control and data flow only, no
    evidence that TensorRT runs such a plan."""
    pytest.importorskip("polygraphy", reason="polygraphy not installed")
    import hashlib
    import importlib.util

    import polygraphy.cuda.cuda as pc

    from runtime import contract
    from runtime.backends import tensorrt as rt
    from trt_fakes import FakeCudaMemory, fake_plan_bytes, fake_tensorrt

    spec = importlib.util.spec_from_file_location("jetson_app", APP)
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    trt = fake_tensorrt("8.5.2.2")
    mem = FakeCudaMemory()
    monkeypatch.setattr(pc, "wrapper", lambda: mem)
    monkeypatch.setattr(rt.runner, "probe_cuda_device", lambda: rt.DeviceInfo(0, "Orin", (8, 7)))
    monkeypatch.setattr(rt.runner, "import_tensorrt", lambda allow_lean=False: (trt, rt.FULL))
    monkeypatch.setattr(rt.runner, "_LOGGERS", {})
    labels = contract.Condition("class_labels", "class_label", (), 4, 4)
    data = fake_plan_bytes("8.5.2.2", profile=(1, 4, 8), image_shape=(1, 8, 8),
                           conditions=[{"name": "class_labels", "kind": "class_label", "shape": [],
                                        "dtype": "INT32"}])
    plan = tmp_path / "cond.plan"
    plan.write_bytes(data)
    m = contract.manifest_dict(
        image_shape=(1, 8, 8), schedule={"kind": "linear", "beta_start": 1e-4, "beta_end": 0.02,
                                         "num_timesteps": 10, "variance_type": "fixedsmall",
                                         "clip_denoised": True},
        batch_range=(1, 4, 8), source={"checkpoint": "c.pt", "checkpoint_sha256": "ab" * 32},
        tools={}, command="test", conditions=[labels], guidance={"default": 2.0})
    m["engine"] = {"section_version": 1, "tensorrt_version": "8.5.2.2", "device_name": "Orin",
                   "compute_capability": "8.7", "precision": "fp32", "precision_mode": "fp32",
                   "version_compatible": False, "profiles": [{"min": 1, "opt": 4, "max": 8}],
                   "hardware_compatibility": "none", "native_instancenorm": None,
                   "plan_sha256": hashlib.sha256(data).hexdigest()}
    contract.write_manifest(plan, m)
    opened = app.SamplerApp(str(plan), log=lambda s: None).open()
    try:
        assert opened.backend == "tensorrt" and opened.fallback_reason is None
        assert opened.engine.runner._dtypes["class_labels"] == np.int32
        threes = opened.handle(4, 0, cond={"class_labels": 3}, guidance=2.0, method="ddim", steps=2)
        ones = opened.handle(4, 0, cond={"class_labels": 1}, guidance=2.0, method="ddim", steps=2)
        assert threes["images"].shape == (4, 8, 8, 1) and threes["network_calls"] == 2
        assert [b for b, _ in trt._state["contexts"][0].runs] == [8, 8, 8, 8]  # 2N = 8 per call
        assert not np.array_equal(threes["images"], ones["images"])  # the label reached the plan
    finally:
        opened.close()
