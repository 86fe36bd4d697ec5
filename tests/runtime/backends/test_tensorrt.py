"""runtime/backends/tensorrt/: what can be checked without a GPU, against the real lean bindings.

The lean runtime wheels (tensorrt-lean-cu12-libs/-bindings) are real TensorRT
runtime libraries: every attribute the runner touches (TRT_API) is looked up
in them, not in a mock. Checks that could reach TensorRT's deserializer run in
a subprocess: without a GPU it segfaults (docs/deployment.md, "Known failure modes").
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from runtime import contract
from runtime.backends import tensorrt as rt  # noqa: E402
from runtime.contract import BatchRange, ManifestError
from trt_fakes import FakeEngine

ROOT = Path(__file__).resolve().parents[3]
SHA = "ab" * 32
H100 = rt.DeviceInfo(0, "NVIDIA H100 80GB HBM3", (9, 0))
ORIN = rt.DeviceInfo(0, "Orin", (8, 7))


def _lean():
    return pytest.importorskip(
        "tensorrt_lean_bindings",
        reason="TensorRT lean runtime not installed: pip install tensorrt-lean-cu12-libs "
               "tensorrt-lean-cu12-bindings (in the 'test' extra)")


def _engine(**over):
    e = {"section_version": 1, "tensorrt_version": "10.3.0", "device_name": "Orin",
         "compute_capability": "8.7", "precision": "fp16", "precision_mode": "strongly_typed",
         "version_compatible": False, "profiles": [{"min": 1, "opt": 8, "max": 64}],
         "hardware_compatibility": "none", "plan_sha256": None}
    e.update(over)
    return e


def _manifest(**engine_over):
    m = contract.manifest_dict(
        image_shape=(3, 32, 32),
        schedule={"kind": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_timesteps": 1000,
                  "variance_type": "fixedlarge", "clip_denoised": True},
        precision="fp16", source={"checkpoint": "m.pt", "checkpoint_sha256": SHA},
        tools={}, command="test")
    m["engine"] = _engine(**engine_over)
    return m


def _plan(tmp_path, **engine_over):
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"not a real plan")
    contract.write_manifest(plan, _manifest(**engine_over))
    return plan


# --- the real lean bindings ---------------------------------------------------
def test_every_tensorrt_name_the_runner_touches_exists_in_the_lean_bindings():
    trt = _lean()
    missing = []
    for owner, names in rt.TRT_API.items():
        obj = getattr(trt, owner) if owner else trt
        missing += [f"{owner or 'tensorrt'}.{n}" for n in names if not hasattr(obj, n)]
    assert not missing, f"not in tensorrt_lean_bindings {trt.__version__}: {missing}"
    assert trt.nptype(trt.DataType.FLOAT) is np.float32
    assert trt.nptype(trt.DataType.INT32) is np.int32
    assert rt.parse_version(trt.__version__) >= (8, 5, 0)


def test_import_tensorrt_falls_back_to_lean_only_for_version_compatible_plans(monkeypatch):
    trt = _lean()
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on this CI: no full TensorRT
    monkeypatch.setitem(sys.modules, "tensorrt_lean", None)
    mod, lean = rt.import_tensorrt(allow_lean=True)
    assert mod is trt and lean
    with pytest.raises(rt.BackendMissing) as e:
        rt.import_tensorrt(allow_lean=False)
    msg = str(e.value)
    assert "pip install tensorrt-cu12" in msg and "JetPack" in msg and "python3-libnvinfer" in msg


def test_every_cudart_symbol_exists_in_the_libcudart_polygraphy_finds():
    pytest.importorskip("polygraphy", reason="polygraphy not installed (pip install polygraphy)")
    try:
        h = rt._cudart()
    except rt.NoCudaDevice as e:
        pytest.skip(f"no libcudart on this machine: {e}")
    used_by_polygraphy = ("cudaMalloc", "cudaFree", "cudaMemcpyAsync", "cudaStreamCreate",
                          "cudaStreamSynchronize", "cudaStreamDestroy")
    missing = [s for s in rt.CUDART_API + used_by_polygraphy if not hasattr(h, s)]
    assert not missing, f"not in {h}: {missing}"
    assert any(hasattr(h, s) for s in rt.CUDART_PROPS)


def _run(code, timeout=60):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout, env=env)


def _has_gpu():
    r = _run("from runtime.backends.tensorrt import probe_cuda_device as p; p()")
    return r.returncode == 0


def test_runner_without_a_gpu_ends_in_our_no_cuda_device_error(tmp_path):
    """runtime.load + __enter__, and the sample CLI, in a subprocess (a crash would show as -11)."""
    _lean()
    pytest.importorskip("polygraphy", reason="polygraphy not installed (pip install polygraphy)")
    if _has_gpu():
        pytest.skip("a CUDA device is visible: this checks the GPU-less path")
    # version-compatible and older than the lean runtime: nothing but the GPU is missing
    plan = _plan(tmp_path, version_compatible=True, tensorrt_version="10.0.0")
    r = _run(f"""
        import runtime
        from runtime.backends.tensorrt import NoCudaDevice
        eng = runtime.load({str(plan)!r})
        try:
            eng.__enter__()
        except NoCudaDevice as e:
            print("NoCudaDevice:", e)
        """)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "NoCudaDevice: no CUDA" in r.stdout and "ONNX Runtime" in r.stdout, r.stdout
    r = _run(f"import sys; from runtime.sample import main; "
             f"sys.exit(main(['--engine', {str(plan)!r}, '--num', '1', '--no-progress']))")
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert r.stderr.strip().splitlines()[-1].startswith("error: no CUDA"), r.stderr


def test_probe_without_gpu_names_the_cuda_error():
    pytest.importorskip("polygraphy", reason="polygraphy not installed (pip install polygraphy)")
    r = _run("""
        from runtime.backends.tensorrt import probe_cuda_device, NoCudaDevice
        try:
            print("device", probe_cuda_device())
        except NoCudaDevice as e:
            print("NoCudaDevice:", e)
        """)
    assert r.returncode == 0, r.stderr[-2000:]
    if r.stdout.startswith("device"):
        pytest.skip(f"a CUDA device is visible: {r.stdout.strip()}")
    assert "NoCudaDevice: no C" in r.stdout, r.stdout  # no CUDA device / no CUDA runtime library


# --- engine section and compatibility (pure) ----------------------------------------
def test_engine_section_is_required_and_checked():
    m = _manifest()
    assert rt.engine_section(m)["tensorrt_version"] == "10.3.0"
    del m["engine"]
    with pytest.raises(ManifestError, match="no 'engine' section.*ddpm-export build"):
        rt.engine_section(m)
    for over, match in (({"tensorrt_version": 10}, "tensorrt_version"),
                        ({"version_compatible": "no"}, "version_compatible"),
                        ({"profiles": []}, "exactly 1"),
                        ({"profiles": [{"min": 8, "opt": 1, "max": 64}]}, "min <= opt"),
                        ({"compute_capability": "sm87"}, "version")):
        with pytest.raises(ManifestError, match=match):
            rt.engine_section(_manifest(**over))


def test_parse_version():
    assert rt.parse_version("10.3.0.30") == (10, 3, 0)
    assert rt.parse_version("8.5") == (8, 5, 0)
    with pytest.raises(ValueError, match="MAJOR.MINOR"):
        rt.parse_version("ten")


def test_compat_same_version_and_gpu_passes():
    assert rt.check_engine_compat(_engine(), "10.3.0.30", ORIN) == []


@pytest.mark.parametrize("running", ["10.3.1", "10.4.0", "8.6.2", "11.0.0"])
def test_compat_other_tensorrt_version_refused(running):
    with pytest.raises(rt.EngineMismatch, match=r"built with TensorRT 10\.3\.0 and this is "
                                                r"TensorRT .*rebuild.*--version-compatible"):
        rt.check_engine_compat(_engine(), running, ORIN)


def test_compat_version_compatible_plans_run_forward_only():
    e = _engine(version_compatible=True)
    assert rt.check_engine_compat(e, "10.4.0", ORIN) == []
    assert rt.check_engine_compat(e, "11.4.0", ORIN, lean=True) == []
    with pytest.raises(rt.EngineMismatch, match="that version or later.*10.2.0"):
        rt.check_engine_compat(e, "10.2.0", ORIN)


def test_compat_lean_runtime_refuses_plans_not_version_compatible():
    with pytest.raises(rt.EngineMismatch, match="lean runtime.*version-compatible"):
        rt.check_engine_compat(_engine(), "10.3.0", ORIN, lean=True)


def test_compat_compute_capability_and_device_name():
    with pytest.raises(rt.EngineMismatch, match=r"compute capability 8\.7 \(Orin\).*H100.*9\.0"):
        rt.check_engine_compat(_engine(), "10.3.0", H100)
    notes = rt.check_engine_compat(_engine(), "10.3.0", rt.DeviceInfo(0, "Jetson AGX Orin", (8, 7)))
    assert len(notes) == 1 and "timed on the other GPU" in notes[0]
    hw = _engine(hardware_compatibility="ampere_plus")
    assert rt.check_engine_compat(hw, "10.3.0", H100)  # runs (name differs: a note)
    with pytest.raises(rt.EngineMismatch, match="Ampere"):
        rt.check_engine_compat(hw, "10.3.0", rt.DeviceInfo(0, "Tesla T4", (7, 5)))


def test_check_engine_io():
    trt = _lean()
    M, D = trt.TensorIOMode, trt.DataType
    good = {"x_t": (M.INPUT, D.FLOAT, (-1, 3, 32, 32)), "t": (M.INPUT, D.INT32, (-1,)),
            "eps": (M.OUTPUT, D.FLOAT, (-1, 3, 32, 32))}
    assert rt.check_engine_io(FakeEngine(good), trt, (3, 32, 32)) == BatchRange(1, 8, 64)
    bad = dict(good, t=(M.INPUT, D.FLOAT, (-1,)))
    with pytest.raises(rt.EngineMismatch, match="'t' is .*expected .*int32"):
        rt.check_engine_io(FakeEngine(bad), trt, (3, 32, 32))
    with pytest.raises(rt.EngineMismatch, match=r"shape \(-1, 3, 32, 32\)"):
        rt.check_engine_io(FakeEngine(good), trt, (1, 16, 16))
    renamed = {("x" if k == "x_t" else k): v for k, v in good.items()}
    with pytest.raises(rt.EngineMismatch, match="I/O tensors"):
        rt.check_engine_io(FakeEngine(renamed), trt, (3, 32, 32))


# --- the runner before activation, and the order of its checks ----------------------
def test_load_plan_gives_a_tensorrt_runner_with_the_plans_profile(tmp_path):
    import runtime

    eng = runtime.load(_plan(tmp_path, profiles=[{"min": 4, "opt": 16, "max": 128}]))
    r = eng.runner
    assert isinstance(r, rt.TensorRTRunner) and not r.is_active
    assert (r.min_batch, r.max_batch, r.use_cuda_graph) == (1, 128, False)  # min padded
    assert eng.batch_range == {"min": 1, "opt": 16, "max": 128}
    static = rt.TensorRTRunner(str(tmp_path / "m.plan"), _manifest(profiles=[{"min": 16, "opt": 16, "max": 16}]))
    assert static.static and static.use_cuda_graph
    with pytest.raises(ValueError, match="static-batch"):
        rt.TensorRTRunner("m.plan", _manifest(), cuda_graph=True)
    with pytest.raises(RuntimeError, match="not active"):
        eng(np.zeros((1, 3, 32, 32), np.float32), 0)


def test_load_plan_without_engine_section_says_rebuild(tmp_path):
    import runtime

    plan = tmp_path / "m.plan"
    plan.write_bytes(b"x")
    m = _manifest()
    del m["engine"]
    contract.write_manifest(plan, m)
    with pytest.raises(ManifestError, match="no 'engine' section"):
        runtime.load(plan)


def test_activation_order_without_touching_tensorrt_objects(tmp_path, monkeypatch):
    """GPU probe (stubbed here: control flow only) -> import -> compat -> sha, all before TensorRT."""
    _lean()
    pytest.importorskip("polygraphy", reason="polygraphy not installed")
    monkeypatch.setattr(rt.runner, "probe_cuda_device", lambda: ORIN)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_lean", None)
    r = rt.TensorRTRunner(str(_plan(tmp_path)), _manifest())  # not version-compatible
    with pytest.raises(rt.BackendMissing, match="JetPack"):
        r.__enter__()
    r = rt.TensorRTRunner(str(_plan(tmp_path)), _manifest(version_compatible=True, tensorrt_version="99.0.0"))
    with pytest.raises(rt.EngineMismatch, match="99.0.0"):
        r.__enter__()
    ok = dict(version_compatible=True, tensorrt_version="10.0.0", plan_sha256="0" * 64)
    r = rt.TensorRTRunner(str(_plan(tmp_path, **ok)), _manifest(**ok))
    with pytest.raises(ManifestError, match="plan_sha256"):
        r.__enter__()
    assert not r.is_active


# --- on a GPU with TensorRT ----------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.trt
def test_build_and_run_tiny_engine_matches_onnxruntime(request, tmp_path):
    pytest.importorskip("tensorrt", reason="needs the full TensorRT (pip install tensorrt-cu12; "
                                           "Jetson: JetPack's python3-libnvinfer)")
    pytest.importorskip("polygraphy", reason="pip install polygraphy")
    import shutil

    import runtime
    from ddpm_export.export.tensorrt import BuildConfig, build_engine

    exp = request.getfixturevalue("tiny_export")
    onnx = tmp_path / "tiny.onnx"
    shutil.copy(exp["onnx"], onnx)
    shutil.copy(contract.sidecar_path(exp["onnx"]), contract.sidecar_path(onnx))
    m = build_engine(BuildConfig(onnx=str(onnx), min_batch=1, opt_batch=4, max_batch=8),
                     log=lambda s: None)
    assert m["engine"]["precision_mode"] == "fp32"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, *m["image_shape"])).astype(np.float32)
    t = np.array([0, 1, 250, 500, 999], np.int32)
    with runtime.load(onnx) as ref, runtime.load(onnx.with_suffix(".plan")) as trt_engine:
        want, got = ref(x, t), trt_engine(x, t)
        assert np.abs(got - want).max() < 1e-2
        got1 = trt_engine(x[:1], t[:1])  # another batch size: set_input_shape again
        assert np.abs(got1 - want[:1]).max() < 1e-2
