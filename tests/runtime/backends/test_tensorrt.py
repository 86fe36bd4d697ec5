"""runtime/backends/tensorrt/: what can be checked without a GPU, against the real lean bindings.

The lean runtime wheels (tensorrt-lean-cu12-libs/-bindings) are real TensorRT
runtime libraries: every attribute the runner touches (TRT_API) is looked up
in them, not in a mock, and in the name lists extracted from TensorRT's binding
sources at 8.5.3, 8.6.1 and 10.3 (trt_api/, scripts/trt_api_names.py). Checks that
could reach TensorRT's deserializer run in a subprocess: without a GPU it segfaults
(docs/deployment.md, "Known failure modes").
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
from trt_fakes import (TRT_API_VERSIONS, TRT_LEAN_API_VERSIONS, FakeCudaMemory, FakeEngine,
                       fake_plan_bytes, fake_tensorrt, missing_trt_names, trt_api_list)

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
    running = rt.parse_version(trt.__version__)[:2]
    for owner, names in rt.TRT_API.items():
        obj = getattr(trt, owner) if owner else trt
        missing += [f"{owner or 'tensorrt'}.{n}" for n in names if not hasattr(obj, n)
                    and rt.runner.TRT_API_SINCE.get((owner, n), (0, 0)) <= running]
    assert not missing, f"not in tensorrt_lean_bindings {trt.__version__}: {missing}"
    assert rt.parse_version(trt.__version__) >= (8, 5, 0)
    # what the fakes model: the lean bindings cannot register plugins (full bindings only)
    full_only = [n for n in rt.TRT_API_FULL_ONLY[""] if hasattr(trt, n)]
    assert full_only == [], f"{full_only} unexpectedly in the lean bindings {trt.__version__}"
    assert not hasattr(trt, "TensorFormat")  # why Polygraphy's TrtRunner cannot run on lean


def test_import_tensorrt_falls_back_to_lean_only_for_version_compatible_plans(monkeypatch):
    trt = _lean()
    for name in ("tensorrt", "tensorrt_dispatch", "tensorrt_dispatch_bindings", "tensorrt_lean"):
        monkeypatch.setitem(sys.modules, name, None)  # as on this CI: only the lean 11.x wheel
    mod, kind = rt.import_tensorrt(allow_lean=True)
    assert mod is trt and kind == rt.LEAN
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
        eng = runtime.load({str(plan)!r}, allow_host_code=True)
        try:
            eng.__enter__()
        except NoCudaDevice as e:
            print("NoCudaDevice:", e)
        """)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "NoCudaDevice: no CUDA" in r.stdout and "ONNX Runtime" in r.stdout, r.stdout
    r = _run(f"import sys; from runtime.sample import main; "
             f"sys.exit(main(['--engine', {str(plan)!r}, '--num', '1', '--no-progress', "
             f"'--allow-host-code']))")
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
    assert rt.parse_version("10.3.0.30") == (10, 3, 0, 30)
    assert rt.parse_version("8.5") == (8, 5, 0)
    with pytest.raises(ValueError, match="MAJOR.MINOR"):
        rt.parse_version("ten")


def test_a_tagged_tensorrt_version_parses_and_must_match_exactly():
    """Issue 28 item 9: TensorRT 10.0 EA reports '10.0.0b6'; int('0b6') was a raw ValueError."""
    assert rt.parse_version("10.0.0b6") == (10, 0, 0)
    assert rt.parse_version("8.6.1.post1") == (8, 6, 1)
    assert rt.compat.version_tag("10.0.0b6") == "b6" and rt.compat.version_tag("10.3.0.30") == ""
    for bad in ("", "10", "10.x", None):
        with pytest.raises(ValueError, match=r"expected MAJOR\.MINOR"):
            rt.parse_version(bad)
    e = _engine(tensorrt_version="10.0.0b6")
    assert rt.check_engine_compat(e, "10.0.0b6", ORIN) == []
    with pytest.raises(rt.EngineMismatch, match=r"built with TensorRT 10\.0\.0b6 and this is TensorRT 10\.0\.0\.6"):
        rt.check_engine_compat(e, "10.0.0.6", ORIN)  # EA plan on the GA release: not the same build
    with pytest.raises(rt.BackendMissing, match=r"reports the version 'unknown'.*reinstall TensorRT"):
        rt.check_engine_compat(e, "unknown", ORIN)


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
    with pytest.raises(rt.EngineMismatch, match="that version or later.*10.2.0"):
        rt.check_engine_compat(e, "10.2.0", ORIN)


@pytest.mark.parametrize("built,running,ok", [
    ("8.6.1", "8.6.2", True), ("8.6.1", "9.3.0", True), ("8.6.1", "10.3.0", True),
    ("8.6.1", "11.4.0", False),  # not in the documented matrix (8 -> 9, 10)
    ("9.3.0", "9.4.0", True),
    ("9.3.0", "10.0.0", False),  # issue 28 item 8: no document lists 9 -> 10 (11.4.1 matrix: 8 -> 10, 10 -> 11 only)
    ("9.3.0", "11.0.0", False),
    ("10.3.0", "11.4.0", True), ("10.3.0", "12.0.0", False),
    ("11.0.0", "11.4.0", True), ("11.4.0", "11.0.0", False), ("10.3.0", "8.6.1", False),
])
def test_compat_version_compatible_matrix(built, running, ok):
    e = _engine(version_compatible=True, tensorrt_version=built)
    if ok:
        assert rt.check_engine_compat(e, running, ORIN) == []
    else:
        with pytest.raises(rt.EngineMismatch, match=f"built with TensorRT {built}.*{running}"):
            rt.check_engine_compat(e, running, ORIN)


def test_compat_lean_runs_only_its_own_version_and_dispatch_the_matrix():
    """Defect 7: a loaded lean runtime runs plans built by its own version (NvInferRuntime.h,
    IRuntime::loadRuntime); the dispatch runtime gets the cross-version matrix."""
    e = _engine(version_compatible=True, tensorrt_version="10.3.0.30")
    with pytest.raises(rt.EngineMismatch, match=r"lean runtime 11\.4\.0.*own version.*tensorrt-dispatch"):
        rt.check_engine_compat(e, "11.4.0.106", ORIN, kind=rt.LEAN)
    assert rt.check_engine_compat(e, "10.3.0.30", ORIN, kind=rt.LEAN) == []
    assert rt.check_engine_compat(e, "11.4.0.106", ORIN, kind=rt.DISPATCH) == []
    with pytest.raises(rt.EngineMismatch, match="through 11.x"):
        rt.check_engine_compat(e, "12.0.0", ORIN, kind=rt.DISPATCH)
    with pytest.raises(rt.EngineMismatch, match="dispatch runtime.*version-compatible plans only"):
        rt.check_engine_compat(_engine(), "10.3.0", ORIN, kind=rt.DISPATCH)


def test_import_tensorrt_tries_dispatch_before_lean(monkeypatch):
    import types

    dispatch = types.ModuleType("tensorrt_dispatch")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_dispatch", dispatch)
    assert rt.import_tensorrt(allow_lean=True) == (dispatch, rt.DISPATCH)
    with pytest.raises(rt.BackendMissing, match="tensorrt: "):
        rt.import_tensorrt(allow_lean=False)


def test_compat_compares_the_build_number_for_plans_that_are_not_version_compatible():
    """Defect 13: TensorRT's own check includes the build number."""
    assert rt.parse_version("10.3.0.30") == (10, 3, 0, 30)
    e = _engine(tensorrt_version="10.3.0.30")
    assert rt.check_engine_compat(e, "10.3.0.30", ORIN) == []
    with pytest.raises(rt.EngineMismatch, match=r"10\.3\.0\.30 and this is TensorRT 10\.3\.0\.31"):
        rt.check_engine_compat(e, "10.3.0.31", ORIN)
    assert rt.check_engine_compat(_engine(tensorrt_version="10.3.0"), "10.3.0.31", ORIN) == []  # no build recorded


def test_compat_version_compatible_claim_before_8_6_refused():
    with pytest.raises(rt.EngineMismatch, match="version compatibility exists from TensorRT 8.6"):
        rt.check_engine_compat(_engine(version_compatible=True, tensorrt_version="8.5.2"), "10.3.0", ORIN)


def test_compat_lean_runtime_refuses_plans_not_version_compatible():
    with pytest.raises(rt.EngineMismatch, match="lean runtime.*version-compatible"):
        rt.check_engine_compat(_engine(), "10.3.0", ORIN, kind=rt.LEAN)


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
    with pytest.raises(rt.PlanManifestMismatch, match="'t' is .*expected .*int32"):
        rt.check_engine_io(FakeEngine(bad), trt, (3, 32, 32))
    with pytest.raises(rt.PlanManifestMismatch, match=r"shape \(-1, 3, 32, 32\)"):
        rt.check_engine_io(FakeEngine(good), trt, (1, 16, 16))
    renamed = {("x" if k == "x_t" else k): v for k, v in good.items()}
    with pytest.raises(rt.PlanManifestMismatch, match="I/O tensors"):
        rt.check_engine_io(FakeEngine(renamed), trt, (3, 32, 32))
    # issue 28 item 7: plan and manifest mixed up is not "built for another TensorRT or GPU"
    assert not issubclass(rt.PlanManifestMismatch, rt.EngineMismatch)
    assert issubclass(rt.PlanManifestMismatch, rt.PlanNotLoadable)


# --- the runner before activation, and the order of its checks ----------------------
def test_load_plan_gives_a_tensorrt_runner_with_the_plans_profile(tmp_path):
    import runtime

    eng = runtime.load(_plan(tmp_path, profiles=[{"min": 4, "opt": 16, "max": 128}]))
    r = eng.runner
    assert isinstance(r, rt.TensorRTRunner) and not r.is_active
    assert (r.min_batch, r.max_batch, r.static) == (1, 128, False)  # min padded
    assert eng.batch_range == {"min": 1, "opt": 16, "max": 128}
    static = rt.TensorRTRunner(str(tmp_path / "m.plan"), _manifest(profiles=[{"min": 16, "opt": 16, "max": 16}]))
    assert static.static and static.batch_range == {"min": 1, "opt": 16, "max": 16}
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
    lean = _lean()
    for name in ("tensorrt", "tensorrt_dispatch", "tensorrt_dispatch_bindings", "tensorrt_lean"):
        monkeypatch.setitem(sys.modules, name, None)
    r = rt.TensorRTRunner(str(_plan(tmp_path)), _manifest())  # not version-compatible
    with pytest.raises(rt.BackendMissing, match="JetPack"):
        r.__enter__()
    r = rt.TensorRTRunner(str(_plan(tmp_path)), _manifest(version_compatible=True, tensorrt_version="99.0.0"),
                          allow_host_code=True)
    with pytest.raises(rt.EngineMismatch, match="99.0.0"):
        r.__enter__()
    ok = dict(version_compatible=True, tensorrt_version=lean.__version__, plan_sha256="0" * 64)
    r = rt.TensorRTRunner(str(_plan(tmp_path, **ok)), _manifest(**ok), allow_host_code=True)
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
    # the same plan loaded in a fresh process (nothing of the build's process carries over),
    # then an FP16 builder-flag plan, where TensorRT still has the flag (< 11)
    np.savez(tmp_path / "in.npz", x=x, t=t)
    code = ("import sys, numpy as np, runtime; d = np.load(sys.argv[1]); "
            "eng = runtime.load(sys.argv[2]).__enter__(); np.save(sys.argv[3], eng(d['x'], d['t']))")
    plans = [onnx.with_suffix(".plan")]
    import tensorrt

    if rt.parse_version(tensorrt.__version__) < (11, 0):
        fp16 = tmp_path / "tiny-flag.plan"
        shutil.copy(exp["onnx"], fp16.with_suffix(".onnx"))
        shutil.copy(contract.sidecar_path(exp["onnx"]), contract.sidecar_path(fp16))
        build_engine(BuildConfig(onnx=str(fp16.with_suffix(".onnx")), fp16=True, max_batch=8),
                     log=lambda s: None)
        plans.append(fp16)
    for plan in plans:
        r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "in.npz"), str(plan),
                            str(tmp_path / "out.npy")], capture_output=True, text=True, cwd=ROOT,
                           timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert r.returncode == 0, (plan, r.stderr[-2000:])
        fresh = np.load(tmp_path / "out.npy")
        assert np.isfinite(fresh).all() and np.abs(fresh - want).max() < 2e-2, plan


@pytest.mark.gpu
@pytest.mark.trt
def test_build_and_run_a_class_conditional_plan_matches_onnxruntime(tmp_path):
    """Issue 25 item 5 on real TensorRT (never run yet: no machine here has had a GPU with
    TensorRT): a class-conditional diffusers export builds with a profile for class_labels,
    its labels (INT32 on 8.x, INT64 from 9/10) give ONNX Runtime's eps, and a guided chain
    runs at 2N and stays close to ONNX Runtime's."""
    pytest.importorskip("tensorrt", reason="needs the full TensorRT (pip install tensorrt-cu12; "
                                           "Jetson: JetPack's python3-libnvinfer)")
    pytest.importorskip("polygraphy", reason="pip install polygraphy")
    pytest.importorskip("diffusers", reason="the class-conditional test model is a diffusers UNet2DModel")
    import runtime
    from cond_engines import K, class_cond_engine
    from ddpm_export.export.tensorrt import BuildConfig, build_engine

    onnx = class_cond_engine(tmp_path, batch_range=(1, 4, 16))
    m = build_engine(BuildConfig(onnx=str(onnx), min_batch=1, opt_batch=4, max_batch=8), log=lambda s: None)
    assert m["engine"]["profiles"] == [{"min": 1, "opt": 4, "max": 8}]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 1, 8, 8)).astype(np.float32)
    t = np.array([0, 1, 20, 35, 49], np.int32)
    labels = np.array([0, 1, 2, 3, K], np.int64)  # K: the null label
    with runtime.load(onnx) as ref, runtime.load(onnx.with_suffix(".plan")) as plan:
        assert plan.runner._dtypes["class_labels"] in (np.int32, np.int64)
        want, got = ref(x, t, class_labels=labels), plan(x, t, class_labels=labels)
        assert np.abs(got - want).max() < 1e-2
        other = plan(x, t, class_labels=(labels + 1) % (K + 1))
        assert np.abs(other - got).max() > 10 * np.abs(got - want).max()  # labels reach the plan
        a = ref.sample_float(4, seed=0, steps=4, method="ddim", cond={"class_labels": 3}, guidance=2.0)
        b = plan.sample_float(4, seed=0, steps=4, method="ddim", cond={"class_labels": 3}, guidance=2.0)
        assert b.image_steps == 4 * 8 and np.abs(a.images - b.images).max() < 5e-2


# --- names against TensorRT binding sources (every version of trt_fakes.TRT_API_VERSIONS) --------
@pytest.mark.parametrize("version", TRT_API_VERSIONS)
def test_every_tensorrt_name_the_runner_touches_is_bound_in_that_version(version):
    api = trt_api_list(version)
    assert api["source"]["repository"] == "https://github.com/NVIDIA/TensorRT"
    assert api["source"]["tag"].lstrip("v") == version and len(api["source"]["commit"]) == 40
    used = dict(rt.TRT_API, **{"": rt.TRT_API[""] + rt.TRT_API_FULL_ONLY[""]})
    missing = missing_trt_names(api, used, rt.runner.TRT_API_SINCE, version)
    assert not missing, f"not bound in TensorRT {version} ({api['source']['tag']}): {missing}"


@pytest.mark.parametrize("version", TRT_LEAN_API_VERSIONS)
def test_the_lean_and_dispatch_bindings_have_what_the_runner_uses_and_no_plugins(version):
    """What the fakes model, from the sources: no init_libnvinfer_plugins and no TensorFormat
    (Polygraphy's TrtRunner needs it) without EXPORT_ALL_BINDINGS."""
    api = trt_api_list(version, "lean")
    assert api["source"]["variant"] == "lean" and api["source"]["tag"].lstrip("v") == version
    assert missing_trt_names(api, rt.TRT_API, rt.runner.TRT_API_SINCE, version) == []
    assert missing_trt_names(api, rt.TRT_API_FULL_ONLY, {}, version) == ["tensorrt.init_libnvinfer_plugins"]
    assert missing_trt_names(api, {"": ("TensorFormat",)}, {}, version) == ["tensorrt.TensorFormat"]
    full = trt_api_list(version)
    assert missing_trt_names(full, {"": ("TensorFormat", "init_libnvinfer_plugins")}, {}, version) == []


def test_name_extractor_keeps_the_export_all_bindings_branch_of_its_variant():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import trt_api_names as x
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    code = textwrap.dedent("""
        void bindPlugin(py::module& m) {
        #if EXPORT_ALL_BINDINGS
            m.def("init_libnvinfer_plugins", &initLibNvInferPlugins);
        #else
            m.def("lean_only", &f);
        #endif // EXPORT_ALL_BINDINGS
        #ifdef _MSC_VER
            m.def("kept_either_way", &g);
        #endif
        }
        """)
    assert "init_libnvinfer_plugins" in x.preprocess(code, full=True)
    lean = x.preprocess(code, full=False)
    assert "init_libnvinfer_plugins" not in lean and "lean_only" in lean and "kept_either_way" in lean
    top = "void bind(py::module& m) {\n bindPlugin(m);\n#if EXPORT_ALL_BINDINGS\n bindGraph(m);\n#endif\n}\n"
    files = {"pyPlugin.cpp": "void bindPlugin(py::module& m) {}", "pyGraph.cpp": "void bindGraph(py::module& m) {}"}
    assert list(x.lean_files(files, top)) == ["pyPlugin.cpp"]


def test_the_version_lists_tell_versions_apart():
    """The lists are specific enough to fail: host-code control arrived in 8.6."""
    used = {"Runtime": ("engine_host_code_allowed",)}
    assert missing_trt_names(trt_api_list("8.5.3"), used, {}, "8.5.3") == ["Runtime.engine_host_code_allowed"]
    assert missing_trt_names(trt_api_list("8.6.1"), used, {}, "8.6.1") == []
    assert missing_trt_names(trt_api_list("10.3.0"), {"ICudaEngine": ("num_bindings",)}, {}, "10.3.0") \
        == ["ICudaEngine.num_bindings"]  # the binding-index API removed in 10
    assert missing_trt_names(trt_api_list("8.5.3"), {"ICudaEngine": ("num_bindings",)}, {}, "8.5.3") == []


def test_name_extractor_reads_pybind11_as_nvidia_writes_it(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import trt_api_names as x
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    cpp = textwrap.dedent('''
        namespace tensorrt {
        void bindCore(py::module& m) {
            py::class_<ILogger, PyLogger> base{m, "ILogger", "doc; with ; semicolons"};
            py::enum_<ILogger::Severity>(base, "Severity", py::arithmetic())
                .value("WARNING", ILogger::Severity::kWARNING)
                .export_values();
            py::class_<DefaultLogger, ILogger>(m, "Logger").def(py::init<>());
            py::class_<IRuntime>(m, "Runtime")
                .def("deserialize_cuda_engine", [](IRuntime& self, py::buffer b) { int x; return x; })
                .def_property("engine_host_code_allowed", &IRuntime::a, &IRuntime::b);
            m.def("get_plugin_registry", &getPluginRegistry);
        }
        }
        ''')
    got = x.extract({"pyCore.cpp": cpp}, "__version__ = '1'\ndef nptype(t):\n    pass\n")
    c = got["classes"]
    assert c["ILogger"] == ["Severity", "WARNING"] and got["bases"] == {"Logger": ["ILogger"]}
    assert c["Runtime"] == ["deserialize_cuda_engine", "engine_host_code_allowed"]
    assert {"ILogger", "Logger", "Runtime", "get_plugin_registry", "__version__", "nptype"} <= set(c[""])
    used = {"Logger": ("WARNING",), "Runtime": ("engine_host_code_allowed",)}
    assert missing_trt_names(got, used, {}, "10.0") == []


# --- libcudart search (CUDA 13 wheel, loader cache) --------------------------------------
def test_find_cudart_finds_the_cuda13_wheel_and_the_loader_cache(tmp_path, monkeypatch):
    from runtime.backends.tensorrt import cuda

    monkeypatch.setattr(cuda, "_POLYGRAPHY_DIRS", ())
    monkeypatch.setenv("LD_LIBRARY_PATH", "")
    site = tmp_path / "site-packages"
    assert cuda.find_cudart([str(site)], find_library=lambda n: None) == (None, False)
    lib13 = site / "nvidia" / "cu13" / "lib" / "libcudart.so.13"
    lib13.parent.mkdir(parents=True)
    lib13.write_bytes(b"")
    assert cuda.find_cudart([str(site)], find_library=lambda n: None) == (str(lib13), False)
    lib12 = site / "nvidia" / "cuda_runtime" / "lib" / "libcudart.so.12"  # Polygraphy's own
    lib12.parent.mkdir(parents=True)
    lib12.write_bytes(b"")
    assert cuda.find_cudart([str(site)], find_library=lambda n: None, polygraphy_version=(0, 53, 6)) == (str(lib12), True)
    # issue 28 item 4: Polygraphy before 0.53 does not search that wheel: it must be added for it
    assert cuda.find_cudart([str(site)], find_library=lambda n: None, polygraphy_version=(0, 49, 27)) == (str(lib12), False)
    absolute = str(tmp_path / "libcudart.so.12")
    assert cuda.find_cudart([], find_library=lambda n: absolute) == (absolute, False)
    assert "cu12" in cuda.CUDART_HINT and "cu13" in cuda.CUDART_HINT


def test_loaded_path_finds_a_library_whose_soname_is_a_symlink(tmp_path):
    """Defect 6: /proc/self/maps lists the resolved file (libX.so.7 -> libX.so.7.0.1)."""
    import _ctypes
    import shutil

    if not os.path.exists("/proc/self/maps"):
        pytest.skip("no /proc/self/maps (not Linux)")
    real = tmp_path / "libddpmcheck.so.7.0.1"
    shutil.copy(_ctypes.__file__, real)  # any shared object the loader can map
    (tmp_path / "libddpmcheck.so.7").symlink_to(real.name)
    env = dict(os.environ, LD_LIBRARY_PATH=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", "from runtime.backends.tensorrt.cuda import _loaded_path; "
                        "print(_loaded_path('libddpmcheck.so.7'))"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == str(tmp_path / "libddpmcheck.so.7"), r.stdout


def test_make_cudart_findable_puts_the_cuda13_wheel_on_ld_library_path(tmp_path, monkeypatch):
    from runtime.backends.tensorrt import cuda

    lib13 = tmp_path / "nvidia" / "cu13" / "lib" / "libcudart.so.13"
    lib13.parent.mkdir(parents=True)
    lib13.write_bytes(b"")
    monkeypatch.setattr(cuda, "_POLYGRAPHY_DIRS", ())
    monkeypatch.setattr(cuda.sys, "path", [str(tmp_path)])
    monkeypatch.setattr(cuda.ctypes.util, "find_library", lambda n: None)
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/x")
    assert cuda._make_cudart_findable() == str(lib13)
    assert os.environ["LD_LIBRARY_PATH"] == f"{lib13.parent}{os.pathsep}/opt/x"
    cuda._make_cudart_findable()  # idempotent
    assert os.environ["LD_LIBRARY_PATH"] == f"{lib13.parent}{os.pathsep}/opt/x"


# --- host code: version-compatible plans only with an explicit opt-in -----------------------
def test_version_compatible_plan_needs_allow_host_code(tmp_path):
    import runtime

    plan = _plan(tmp_path, version_compatible=True)
    with pytest.raises(rt.HostCodeNotAllowed) as e:
        runtime.load(plan)
    msg = str(e.value)
    assert "embeds TensorRT's lean runtime as host code" in msg and "trust" in msg
    assert "allow_host_code=True" in msg and "--allow-host-code" in msg
    assert runtime.load(plan, allow_host_code=True).runner.allow_host_code
    assert not runtime.load(_plan(tmp_path)).runner.allow_host_code  # not VC: no opt-in needed


@pytest.mark.parametrize("cli", ["runtime.sample", "runtime.sample_many"])
def test_sample_clis_refuse_version_compatible_plans_without_the_flag(tmp_path, cli):
    plan = _plan(tmp_path, version_compatible=True)
    extra = ", '--out', " + repr(str(tmp_path / "o")) if cli.endswith("many") else ""
    r = _run(f"import sys; from {cli} import main; "
             f"sys.exit(main(['--engine', {str(plan)!r}, '--num', '1', '--no-progress'{extra}]))")
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "version-compatible" in last and "--allow-host-code" in last
    r = _run(f"from {cli} import build_parser; build_parser().print_help()")
    assert "--allow-host-code" in r.stdout and "trust" in r.stdout


def test_host_code_flag_is_never_set_without_the_opt_in(tmp_path, monkeypatch):
    """Even if engine_info is changed after construction, _load refuses before setting it."""
    r = rt.TensorRTRunner(str(_plan(tmp_path)), _manifest())
    r.engine_info["version_compatible"] = True
    trt = fake_tensorrt("10.3.0.30", kind="lean")
    made = []
    real_runtime = trt.Runtime
    trt.Runtime = lambda logger: made.append(real_runtime(logger)) or made[-1]
    monkeypatch.setattr(rt.runner, "_LOGGERS", {})
    with pytest.raises(rt.HostCodeNotAllowed):
        r._load(trt, rt.LEAN, fake_plan_bytes(version_compatible=True), None)
    assert [m.engine_host_code_allowed for m in made] == [False]


def test_missing_plan_says_how_to_get_it(tmp_path):
    import runtime

    with pytest.raises(FileNotFoundError) as e:
        runtime.load(tmp_path / "cifar10.plan")
    msg = str(e.value)
    assert "no such engine file" in msg and "import --format diffusers" in msg
    assert "ddpm-export export --checkpoint" in msg and "ddpm-export build --fp16" in msg
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"ddpm-export build --fp16 --onnx .*m\.onnx"):
        runtime.load(tmp_path / "m.plan")
    r = _run(f"import sys; from runtime.sample import main; "
             f"sys.exit(main(['--engine', {str(tmp_path / 'cifar10.plan')!r}, '--num', '1']))")
    assert r.returncode == 1 and "import --format diffusers" in r.stderr.strip().splitlines()[-1]


# --- one TensorRT logger per process ------------------------------------------------------
def test_runner_logger_is_polygraphys_for_tensorrt_and_one_per_module():
    _lean()
    pytest.importorskip("polygraphy", reason="polygraphy not installed")
    # The lean bindings stand in for 'tensorrt' in a subprocess, so Polygraphy's logger (the
    # one the build uses) is really made from them: same object for runner and Polygraphy.
    r = _run("""
        import sys, tensorrt_lean_bindings as lean
        sys.modules["tensorrt"] = lean
        lean.__name__ = "tensorrt"
        from polygraphy.backend.trt.util import get_trt_logger
        from runtime.backends.tensorrt.runner import shared_logger
        a, b = shared_logger(lean), shared_logger(lean)
        print(a is b, a is get_trt_logger(), isinstance(a, lean.ILogger))
        """)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["True", "True", "True"], r.stdout


def test_runner_logger_for_the_lean_module_is_made_once(monkeypatch):
    trt = _lean()
    monkeypatch.setattr(rt.runner, "_LOGGERS", {})
    a = rt.runner.shared_logger(trt)
    assert a is rt.runner.shared_logger(trt) and isinstance(a, trt.Logger)


# --- the runner on a fake TensorRT and fake CUDA memory (control and data flow only) --------
@pytest.fixture
def fake_gpu(monkeypatch):
    """The runner's CUDA side on host memory: Polygraphy's own DeviceArray/Stream code runs."""
    pytest.importorskip("polygraphy", reason="polygraphy not installed")
    import polygraphy.cuda.cuda as pc

    mem = FakeCudaMemory()
    monkeypatch.setattr(pc, "wrapper", lambda: mem)
    monkeypatch.setattr(rt.runner, "probe_cuda_device", lambda: ORIN)
    monkeypatch.setattr(rt.runner, "_LOGGERS", {})
    return mem


def _fake_plan(tmp_path, trt, plugins=False, vc=False, profile=(2, 4, 8), **engine_over):
    data = fake_plan_bytes(trt.__version__ if not vc else engine_over.get("tensorrt_version", trt.__version__),
                           plugins=plugins, version_compatible=vc, profile=profile)
    plan = tmp_path / "m.plan"
    plan.write_bytes(data)
    import hashlib

    over = dict(tensorrt_version=trt.__version__, version_compatible=vc,
                profiles=[dict(zip(("min", "opt", "max"), profile))],
                plan_sha256=hashlib.sha256(data).hexdigest(), native_instancenorm=not plugins)
    over.update(engine_over)
    m = _manifest(**over)
    contract.write_manifest(plan, m)
    return plan, m


def _use(monkeypatch, trt, kind):
    monkeypatch.setattr(rt.runner, "import_tensorrt", lambda allow_lean=False: (trt, kind))


def test_runner_data_path_pads_to_the_profile_min_and_returns_the_batch(tmp_path, monkeypatch, fake_gpu):
    trt = fake_tensorrt()
    _use(monkeypatch, trt, rt.FULL)
    plan, m = _fake_plan(tmp_path, trt, profile=(2, 4, 8))
    rng = np.random.default_rng(0)
    with rt.TensorRTRunner(str(plan), m) as r:
        for b in (1, 3, 8, 3):
            x = rng.standard_normal((b, 3, 32, 32)).astype(np.float32)
            t = rng.integers(0, 1000, b).astype(np.int32)
            got = r(x, t)
            np.testing.assert_allclose(got, 0.5 * x + t[:, None, None, None], rtol=1e-6)
            assert got.shape == (b, 3, 32, 32)
        ctx = trt._state["contexts"][0]
        assert [n for n, _ in ctx.runs] == [2, 3, 8, 3]  # batch 1 ran padded to the min, 2
    assert not r.is_active and len(fake_gpu.freed) == 3 and fake_gpu.buffers == {}


def _runner_on_fakes(tmp_path, monkeypatch, profile=(2, 4, 8)):
    trt = fake_tensorrt()
    _use(monkeypatch, trt, rt.FULL)
    plan, m = _fake_plan(tmp_path, trt, profile=profile)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    t = rng.integers(0, 1000, 3).astype(np.int32)
    return rt.TensorRTRunner(str(plan), m), x, t, 0.5 * x + t[:, None, None, None]


def test_the_fake_cuda_is_asynchronous_so_a_missing_synchronize_fails(tmp_path, monkeypatch, fake_gpu):
    """Issue 28 item 6: the fakes copied and ran at the call, so a runner that never waited for
    its stream would pass. Copies and execute_async_v3 now run when their stream is synchronized."""
    r, x, t, want = _runner_on_fakes(tmp_path, monkeypatch)
    with r:
        np.testing.assert_allclose(r(x, t), want, rtol=1e-6)  # the runner as it is: it waits
        assert r._stream.ptr in fake_gpu.synchronized
        monkeypatch.setattr(r._stream, "synchronize", lambda: None)  # a runner that forgets to
        stale = r(x + 1, t)
        assert not np.allclose(stale, want + 0.5)
        fake_gpu.stream_synchronize(r._stream.ptr)  # let the stream finish before it is freed


def test_the_fake_cuda_catches_a_copy_on_another_stream(tmp_path, monkeypatch, fake_gpu):
    import polygraphy.cuda as cuda

    r, x, t, want = _runner_on_fakes(tmp_path, monkeypatch)
    with r:
        other = cuda.Stream()
        arr = r._dev["x_t"]
        real_copy = arr.copy_from
        monkeypatch.setattr(arr, "copy_from", lambda host, stream=None: real_copy(host, other))
        got = r(x, t)  # x_t's copy still pending on the other stream when the engine ran
        assert not np.allclose(got, want)
        other.free()


def test_the_fake_tensorrt_needs_every_input_shape_set(tmp_path, monkeypatch, fake_gpu):
    """execute_async_v3 fails unless set_input_shape was called for every input (x_t and t) with
    shapes inside that input's own profile, as enqueueV3 does."""
    r, x, t, want = _runner_on_fakes(tmp_path, monkeypatch)
    with r:
        ctx = r._context
        assert ctx.set_input_shape("t", (9,)) is False  # above t's profile max, 8
        assert ctx.set_input_shape("t", (3, 1)) is False  # t is 1-D
        assert ctx.set_input_shape("x_t", (3, 1, 32, 32)) is False  # a static dim changed
        assert ctx.set_input_shape("eps", (3, 3, 32, 32)) is False  # not an input
        real = ctx.set_input_shape
        monkeypatch.setattr(ctx, "set_input_shape", lambda name, shape: True if name == "t" else real(name, shape))
        with pytest.raises(RuntimeError, match="execute_async_v3 failed"):
            r(x, t)  # t's shape never set
        monkeypatch.setattr(ctx, "set_input_shape", real)
        r._batch = -1
        np.testing.assert_allclose(r(x, t), want, rtol=1e-6)
        ctx.shapes["t"] = (4,)  # x_t and t disagree on the batch
        with pytest.raises(RuntimeError, match="execute_async_v3 failed"):
            r(x, t)
        r._batch = -1


def test_runner_data_path_imports_no_torch(tmp_path):
    """Polygraphy's array helpers could pull torch in; the runtime must not (Jetson memory)."""
    pytest.importorskip("polygraphy", reason="polygraphy not installed")
    trt = fake_tensorrt()
    plan, m = _fake_plan(tmp_path, trt)
    r = _run(f"""
        import sys
        sys.path.insert(0, "tests")
        import numpy as np
        import polygraphy.cuda.cuda as pc
        from trt_fakes import FakeCudaMemory, fake_tensorrt
        from runtime.backends.tensorrt import runner as R, DeviceInfo
        from runtime.contract import read_manifest
        mem = FakeCudaMemory()
        pc.wrapper = lambda: mem
        R.probe_cuda_device = lambda: DeviceInfo(0, "Orin", (8, 7))
        trt = fake_tensorrt()
        R.import_tensorrt = lambda allow_lean=False: (trt, "full")
        with R.TensorRTRunner({str(plan)!r}, read_manifest({str(plan)!r})) as r:
            y = r(np.ones((3, 3, 32, 32), np.float32), np.full(3, 2, np.int32))
        print(float(y.max()), "torch" in sys.modules)
        """)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["2.5", "False"], r.stdout


def test_plan_with_a_plugin_layer_loads_in_a_fresh_process_with_the_full_runtime(tmp_path, monkeypatch, fake_gpu):
    """Defect 1: nothing else in this 'process' (a fresh fake module) registered the plugins."""
    trt = fake_tensorrt("8.5.2.2")
    _use(monkeypatch, trt, rt.FULL)
    plan, m = _fake_plan(tmp_path, trt, plugins=True, profile=(1, 1, 4))
    assert trt._state["plugins"] is False
    with rt.TensorRTRunner(str(plan), m) as r:
        assert trt._state["plugins"] is True
        np.testing.assert_allclose(r(np.ones((1, 3, 32, 32), np.float32), np.array([3], np.int32)), 3.5)


def test_lean_runtime_has_no_plugins_and_says_so(tmp_path, monkeypatch, fake_gpu):
    trt = fake_tensorrt("10.3.0.30", kind="lean")
    assert not hasattr(trt, "init_libnvinfer_plugins")
    _use(monkeypatch, trt, rt.LEAN)
    plan, m = _fake_plan(tmp_path, trt, vc=True)  # version-compatible: native InstanceNorm
    with rt.TensorRTRunner(str(plan), m, allow_host_code=True) as r:
        assert r.runtime_kind == rt.LEAN and r(np.zeros((2, 3, 32, 32), np.float32), np.zeros(2, np.int32)).shape[0] == 2
    plan, m = _fake_plan(tmp_path, trt, vc=True, plugins=True)  # a hand-made plan with plugins
    with pytest.raises(rt.PlanNotLoadable, match="plugin layers.*lean runtime has no plugins"):
        rt.TensorRTRunner(str(plan), m, allow_host_code=True).__enter__()
    assert fake_gpu.buffers == {}


def test_a_plan_tensorrt_refuses_is_not_called_a_version_mismatch(tmp_path, monkeypatch, fake_gpu):
    trt = fake_tensorrt()
    _use(monkeypatch, trt, rt.FULL)
    plan, m = _fake_plan(tmp_path, trt, plan_sha256=None)
    plan.write_bytes(b"damaged")
    with pytest.raises(rt.PlanNotLoadable, match="could not deserialize it: the file is damaged") as e:
        rt.TensorRTRunner(str(plan), m).__enter__()
    assert not isinstance(e.value, rt.EngineMismatch)


def test_runner_reads_the_plan_once(tmp_path, monkeypatch, fake_gpu):
    trt = fake_tensorrt()
    _use(monkeypatch, trt, rt.FULL)
    plan, m = _fake_plan(tmp_path, trt)
    reads = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or real(self))
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: opened.append(str(f)) or real_open(f, *a, **k))
    with rt.TensorRTRunner(str(plan), m):
        pass
    assert [p.name for p in reads] == ["m.plan"] and str(plan) not in opened


def test_free_is_exception_safe_and_drops_the_context_first(tmp_path, monkeypatch, fake_gpu):
    trt = fake_tensorrt()
    _use(monkeypatch, trt, rt.FULL)
    plan, m = _fake_plan(tmp_path, trt)
    r = rt.TensorRTRunner(str(plan), m).__enter__()
    order = []

    class Ctx:
        def __del__(self):
            order.append("context dropped")
    r._context = Ctx()
    real_free = fake_gpu.free

    def free(ptr):
        order.append("free")
        real_free(ptr)
        if len(order) == 2:
            raise RuntimeError("CUDA Error: 700")
    fake_gpu.free = free

    def sync():
        raise RuntimeError("sticky error")
    r._stream.synchronize = sync
    with pytest.warns(RuntimeWarning, match=r"stream synchronize: RuntimeError: sticky error.*free\(x_t\)"):
        r.close()  # never raises
    assert order == ["context dropped", "free", "free", "free"]
    assert not r.is_active and r._context is None and r._engine is None and r._dev == {}


def test_sample_float_closes_what_it_opened(tmp_path):
    from runtime.api import Engine
    from runtime.backends.base import Runner

    class Counting(Runner):
        opened = closed = 0

        def _activate(self):
            Counting.opened += 1

        def _deactivate(self):
            Counting.closed += 1

        def _infer(self, x_t, t, cond):
            return np.zeros_like(x_t)

    m = _manifest()
    m["schedule"]["num_timesteps"] = 10
    eng = Engine(Counting("m", m))
    eng.sample_float(2, steps=2, method="ddim")
    assert (Counting.opened, Counting.closed, eng.runner.is_active) == (1, 1, False)
    with eng:
        eng.sample_float(2, steps=2, method="ddim")
        assert eng.runner.is_active  # inside 'with': the caller's to close
    assert (Counting.opened, Counting.closed) == (2, 2)


# --- the precision an engine computes in (issue 20, defect 3) --------------------------------
def _builder_flag_manifest():
    """An FP16 builder-flag plan of the float32 graph: top-level fp32, engine.precision fp16."""
    m = _manifest(precision="fp16", precision_mode="fp16_builder_flag")
    m["precision"] = "fp32"
    return m


def test_compute_precision_reads_the_engine_section_of_a_builder_flag_plan():
    assert contract.compute_precision(_builder_flag_manifest(), "m.plan") == "fp16"
    onnx_only = _builder_flag_manifest()
    del onnx_only["engine"]
    assert contract.compute_precision(onnx_only, "m.onnx") == "fp32"
    bad = _builder_flag_manifest()
    bad["engine"]["precision"] = "int8"
    with pytest.raises(ManifestError, match=r"engine\.precision: received 'int8'.*ddpm-export build"):
        contract.compute_precision(bad, "m.plan")


def test_the_float32_onnx_under_a_builder_flag_plans_manifest_computes_in_fp32():
    """Issue 28 item 1: 'build --fp16 --onnx NAME.onnx' writes the plan's engine section into
    NAME.json, which NAME.onnx reads too; the ONNX model still computes in float32."""
    m = _builder_flag_manifest()
    assert contract.compute_precision(m, "engines/m.onnx") == "fp32"
    assert contract.compute_precision(m, Path("engines/m.plan")) == "fp16"
    with pytest.raises(ValueError, match=r"artifact 'm\.json': expected the NAME\.onnx or NAME\.plan"):
        contract.compute_precision(m, "m.json")  # a manifest path cannot say which file computes


def test_sample_many_run_json_labels_a_builder_flag_plan_fp16(tmp_path):
    import json

    from runtime.api import Engine
    from runtime.backends.base import Runner
    from runtime.shards import RUN_FILE, sample_shards

    class Zeros(Runner):
        backend = "tensorrt"

        def _activate(self):
            pass

        def _deactivate(self):
            pass

        def _infer(self, x_t, t, cond):
            return np.zeros_like(x_t)

    m = _builder_flag_manifest()
    m["schedule"]["num_timesteps"] = 10
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"plan")
    sample_shards(Engine(Zeros(str(plan), m)), tmp_path / "out", 2, shard_size=2, method="ddim",
                  steps=2, progress=False, log=lambda s: None)
    run = json.loads((tmp_path / "out" / RUN_FILE).read_text())
    assert run["engine"]["precision"] == "fp16"
    # the float32 ONNX the plan was built from, reading the same NAME.json: an FP32 run
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"onnx")
    sample_shards(Engine(Zeros(str(onnx), m)), tmp_path / "out32", 2, shard_size=2, method="ddim",
                  steps=2, progress=False, log=lambda s: None)
    run = json.loads((tmp_path / "out32" / RUN_FILE).read_text())
    assert run["engine"]["precision"] == "fp32"


def test_validate_judges_a_builder_flag_plan_by_the_fp16_limits(tmp_path, monkeypatch):
    """Defect 3 in validate: the plan (here the digits ONNX export under a builder-flag plan's
    manifest) was judged against the FP32 limit and labelled fp32."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    import json

    import runtime
    from ddpm_export.evaluation.validate import Thresholds, validate
    from runtime.api import Engine
    from runtime.backends.onnxrt import OnnxRuntimeRunner

    onnx = ROOT / "engines" / "digits.onnx"
    m = json.loads(onnx.with_suffix(".json").read_text())
    m["engine"] = _engine(precision="fp16", precision_mode="fp16_builder_flag",
                          profiles=[m["batch_range"]])
    assert m["precision"] == "fp32"
    plan = tmp_path / "digits.plan"
    real_load = runtime.load
    monkeypatch.setattr(runtime, "load", lambda p, **kw: Engine(OnnxRuntimeRunner(
        str(onnx), m, providers=["CPUExecutionProvider"], threads=1)) if str(p) == str(plan)
        else real_load(p, **kw))
    report, _ = validate(str(ROOT / "engines" / "digits.pt"), [str(plan)], Thresholds(),
                         t_stride=500, batches=(1,), trajectory_images=0)
    e = report["engines"][0]
    assert e["precision"] == "fp16"
    assert e["checks"]["eps_max_abs"]["limit"] == Thresholds().eps_fp16


def test_validate_judges_the_float32_onnx_of_a_builder_flag_build_by_the_fp32_limits(tmp_path):
    """Issue 28 item 1: after 'build --fp16 --onnx digits.onnx' (TensorRT 8.5-10) digits.json
    carries the plan's engine section; 'validate --engine digits.onnx' applied the FP16 limit
    (200x looser) and dropped the final-image gate, for a model that computes in float32."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    import json
    import shutil

    from ddpm_export.evaluation.validate import Thresholds, validate

    onnx = tmp_path / "digits.onnx"
    shutil.copy(ROOT / "engines" / "digits.onnx", onnx)
    m = json.loads((ROOT / "engines" / "digits.json").read_text())
    m["engine"] = _engine(precision="fp16", precision_mode="fp16_builder_flag",
                          profiles=[m["batch_range"]])
    contract.write_manifest(onnx, m)
    report, _ = validate(str(ROOT / "engines" / "digits.pt"), [str(onnx)], Thresholds(),
                         t_stride=999, batches=(1,), trajectory_images=0)
    e = report["engines"][0]
    assert e["precision"] == "fp32"
    assert e["checks"]["eps_max_abs"]["limit"] == Thresholds().eps_fp32


# --- conditional plans (issue 25 item 5): every condition input fed, checked and profiled -----
LABELS = contract.Condition("class_labels", "class_label", (), 4, 4)  # K = 4, null label 4
VECTOR = contract.Condition("global_cond", "vector", (5,), null="zeros")
SCHED10 = {"kind": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_timesteps": 10,
           "variance_type": "fixedsmall", "clip_denoised": True}


def _plan_conds(conds, label_dtype="INT64"):
    return [{"name": c.name, "kind": c.kind, "shape": list(c.shape),
             "dtype": label_dtype if c.kind == "class_label" else "FLOAT"} for c in conds]


def _cond_plan(tmp_path, trt, conds=(LABELS, VECTOR), label_dtype="INT64", plan_conds=None,
               profile=(2, 4, 8), sample_shape=(1, 8, 8), guidance=None):
    """A fake conditional plan (its head carries plan_conds, default: the manifest's conditions
    with labels in label_dtype) and the manifest of a conditional export built into it."""
    import hashlib

    plan_conds = _plan_conds(conds, label_dtype) if plan_conds is None else plan_conds
    data = fake_plan_bytes(trt.__version__, profile=profile, image_shape=sample_shape,
                           conditions=plan_conds)
    plan = tmp_path / "c.plan"
    plan.write_bytes(data)
    m = contract.manifest_dict(
        image_shape=sample_shape, schedule=SCHED10, precision="fp32", batch_range=profile,
        source={"checkpoint": "c.pt", "checkpoint_sha256": SHA}, tools={}, command="test",
        conditions=list(conds), guidance=guidance)
    m["engine"] = _engine(tensorrt_version=trt.__version__, precision="fp32",
                          profiles=[dict(zip(("min", "opt", "max"), profile))],
                          plan_sha256=hashlib.sha256(data).hexdigest(), native_instancenorm=True)
    contract.write_manifest(plan, m)
    return plan, m


def _cond_inputs(rng, b, sample_shape):
    x = rng.standard_normal((b,) + sample_shape).astype(np.float32)
    t = rng.integers(0, 10, b).astype(np.int32)
    cond = {"class_labels": rng.integers(0, 5, b).astype(np.int64),  # 4: the null label
            "global_cond": rng.standard_normal((b, 5)).astype(np.float32)}
    return x, t, cond


@pytest.mark.parametrize("version,label_dtype,np_dtype", [("10.3.0.30", "INT64", np.int64),
                                                          ("8.6.1.6", "INT32", np.int32)])
@pytest.mark.parametrize("sample_shape", [(1, 8, 8), (6, 2)])
def test_runner_feeds_every_condition_input_in_the_plans_dtype(tmp_path, monkeypatch, fake_gpu,
                                                               version, label_dtype, np_dtype,
                                                               sample_shape):
    """eps = 0.5 x_t + t + label + mean(vector) from the fake plan, which reads every input from
    its bound address in the plan's dtype (a TensorRT 8.x plan takes labels as INT32)."""
    from trt_fakes import fake_cond_eps

    trt = fake_tensorrt(version)
    assert hasattr(trt.DataType, "INT64") == (label_dtype == "INT64")  # 8.x binds no INT64
    _use(monkeypatch, trt, rt.FULL)
    plan, m = _cond_plan(tmp_path, trt, label_dtype=label_dtype, sample_shape=sample_shape)
    rng = np.random.default_rng(0)
    kinds = {"class_labels": "class_label", "global_cond": "vector"}
    with rt.TensorRTRunner(str(plan), m) as r:
        assert r._dtypes == {"class_labels": np.dtype(np_dtype), "global_cond": np.dtype(np.float32)}
        assert r._dev["class_labels"].nbytes == 8 * np.dtype(np_dtype).itemsize  # the profile max, 8
        for b in (1, 3, 8, 3):  # 1 runs padded to the profile min, 2
            x, t, cond = _cond_inputs(rng, b, sample_shape)
            got = r(x, t, **cond)
            assert got.shape == (b,) + sample_shape
            np.testing.assert_allclose(got, fake_cond_eps(x, t, cond, kinds), rtol=1e-6, atol=1e-6)
        other = dict(cond, class_labels=(cond["class_labels"] + 1) % 5)
        diff = r(x, t, **other) - got  # a label moves eps by exactly its change
        np.testing.assert_allclose(diff, (other["class_labels"] - cond["class_labels"]).astype(
            np.float32).reshape((3,) + (1,) * len(sample_shape)) * np.ones_like(got), atol=1e-5)
        ctx = trt._state["contexts"][0]
        assert [n for n, _ in ctx.runs] == [2, 3, 8, 3, 3]
        assert ctx.shapes["global_cond"] == (3, 5) and ctx.shapes["class_labels"] == (3,)
        from runtime.backends.base import InputError

        with pytest.raises(InputError, match="missing .'class_labels'"):
            r(x, t, global_cond=cond["global_cond"])  # a condition missing: refused before the GPU
    assert not r.is_active and len(fake_gpu.freed) == 5 and fake_gpu.buffers == {}


def test_the_fake_plan_sees_a_wrong_label_dtype_or_a_missing_condition_copy(tmp_path, monkeypatch, fake_gpu):
    """The fakes can fail: int64 labels written into an INT32 plan's buffer, or a condition
    copy that never happened (the buffer still zero), give eps other than the formula."""
    from trt_fakes import fake_cond_eps

    trt = fake_tensorrt("8.6.1.6")
    _use(monkeypatch, trt, rt.FULL)
    plan, m = _cond_plan(tmp_path, trt, label_dtype="INT32")
    kinds = {"class_labels": "class_label", "global_cond": "vector"}
    x, t, cond = _cond_inputs(np.random.default_rng(1), 2, (1, 8, 8))
    cond["class_labels"] = np.array([3, 2], np.int64)
    want = fake_cond_eps(x, t, cond, kinds)
    with rt.TensorRTRunner(str(plan), m) as r:
        np.testing.assert_allclose(r(x, t, **cond), want, rtol=1e-6, atol=1e-6)
        monkeypatch.setitem(r._io_dtypes, "class_labels", np.dtype(np.int64))  # ignores the plan's dtype
        assert not np.allclose(r(x, t, **cond), want, atol=1e-3)
        monkeypatch.setitem(r._io_dtypes, "class_labels", np.dtype(np.int32))
        arr = r._dev["global_cond"]
        monkeypatch.setattr(arr, "copy_from", lambda host, stream=None: arr)  # the copy forgotten
        fresh = dict(cond, global_cond=cond["global_cond"] + 1.0)
        assert not np.allclose(r(x, t, **fresh), fake_cond_eps(x, t, fresh, kinds), atol=1e-3)


def test_a_plan_missing_a_condition_input_is_a_plan_manifest_mismatch(tmp_path, monkeypatch, fake_gpu):
    trt = fake_tensorrt()
    _use(monkeypatch, trt, rt.FULL)
    plan, m = _cond_plan(tmp_path, trt, plan_conds=_plan_conds([LABELS]))  # no global_cond
    with pytest.raises(rt.PlanManifestMismatch, match=r"missing \['global_cond'\].*rebuild"):
        rt.TensorRTRunner(str(plan), m).__enter__()
    assert fake_gpu.buffers == {}
    # an unconditional manifest beside a conditional plan
    plan, m = _cond_plan(tmp_path, trt, conds=(), plan_conds=_plan_conds([LABELS]))
    with pytest.raises(rt.PlanManifestMismatch, match=r"not in the manifest \['class_labels'\]"):
        rt.TensorRTRunner(str(plan), m).__enter__()
    plan, m = _cond_plan(tmp_path, trt, plan_conds=[dict(c, dtype="FLOAT") if c["kind"] == "class_label"
                                                    else c for c in _plan_conds([LABELS, VECTOR])])
    with pytest.raises(rt.PlanManifestMismatch, match=r"'class_labels' is INPUT FLOAT, expected INPUT int32 or int64"):
        rt.TensorRTRunner(str(plan), m).__enter__()


def test_check_engine_io_checks_every_condition_tensor_against_the_real_enums():
    """With the real lean bindings' enums: labels INT32 (a TensorRT 8.x plan) or INT64 pass;
    any other dtype, a wrong per-sample shape or a profile off x_t's batches is refused."""
    trt = _lean()
    M, D = trt.TensorIOMode, trt.DataType
    good = {"x_t": (M.INPUT, D.FLOAT, (-1, 6, 2)), "t": (M.INPUT, D.INT32, (-1,)),
            "class_labels": (M.INPUT, D.INT64, (-1,)), "global_cond": (M.INPUT, D.FLOAT, (-1, 5)),
            "eps": (M.OUTPUT, D.FLOAT, (-1, 6, 2))}
    prof = ((1, 6, 2), (8, 6, 2), (64, 6, 2))
    conds = (LABELS, VECTOR)
    assert rt.check_engine_io(FakeEngine(good, prof), trt, (6, 2), conds) == BatchRange(1, 8, 64)
    as_int32 = dict(good, class_labels=(M.INPUT, D.INT32, (-1,)))
    assert rt.check_engine_io(FakeEngine(as_int32, prof), trt, (6, 2), conds) == BatchRange(1, 8, 64)
    assert rt.runner.input_dtypes(FakeEngine(as_int32, prof), trt, conds) == {
        "class_labels": np.dtype(np.int32), "global_cond": np.dtype(np.float32)}
    for bad, match in ((dict(good, class_labels=(M.INPUT, D.HALF, (-1,))), "'class_labels' is"),
                       (dict(good, global_cond=(M.INPUT, D.INT64, (-1, 5))), "'global_cond' is"),
                       (dict(good, global_cond=(M.INPUT, D.FLOAT, (-1, 4))), r"\(batch, 5\)"),
                       (dict(good, class_labels=(M.OUTPUT, D.INT64, (-1,))), "'class_labels' is")):
        with pytest.raises(rt.PlanManifestMismatch, match=match):
            rt.check_engine_io(FakeEngine(bad, prof), trt, (6, 2), conds)

    class OffProfile(FakeEngine):
        def get_tensor_profile_shape(self, n, i):
            return ((1, 5), (8, 5), (32, 5)) if n == "global_cond" else super().get_tensor_profile_shape(n, i)
    with pytest.raises(rt.PlanManifestMismatch, match=r"'global_cond' has the profile .*\(32, 5\)"):
        rt.check_engine_io(OffProfile(good, prof), trt, (6, 2), conds)


def test_guided_sample_float_through_the_tensorrt_runner_runs_at_2n_in_one_call(tmp_path, monkeypatch, fake_gpu):
    """engine.sample_float with guidance: the default batch is half the plan's max, and each
    step is one execute_async_v3 at 2N (conditional rows, then the null label / zero vector);
    the samples equal those of a host runner computing the same formula."""
    import runtime
    from runtime.api import Engine
    from runtime.backends.base import Runner
    from trt_fakes import fake_cond_eps

    trt = fake_tensorrt()
    _use(monkeypatch, trt, rt.FULL)
    plan, m = _cond_plan(tmp_path, trt, profile=(2, 4, 8), guidance={"default": 2.0})
    kinds = {"class_labels": "class_label", "global_cond": "vector"}
    cond = {"class_labels": np.array([0, 3, 1, 2]), "global_cond": np.linspace(-1, 1, 5).astype(np.float32)}
    eng = runtime.load(plan)
    assert isinstance(eng.runner, rt.TensorRTRunner)
    got = eng.sample_float(4, seed=0, steps=3, method="ddim", cond=cond)  # guidance: manifest's 2
    runs = [n for n, _ in trt._state["contexts"][0].runs]
    assert runs == [8, 8, 8]  # 3 steps, each one call at 2N = 8

    class Host(Runner):
        calls = []

        def _activate(self):
            pass

        def _infer(self, x_t, t, cond):
            Host.calls.append(x_t.shape[0])
            return fake_cond_eps(x_t, t, cond, kinds)

    ref = Engine(Host(str(plan), m)).sample_float(4, seed=0, steps=3, method="ddim", cond=cond)
    assert Host.calls == [8, 8, 8]
    np.testing.assert_allclose(got.images, ref.images, rtol=1e-5, atol=1e-5)
    unguided = eng.sample_float(4, seed=0, steps=3, method="ddim", cond=cond, guidance=1.0)
    assert not np.allclose(unguided.images, got.images, atol=1e-3)  # guidance changed the samples
