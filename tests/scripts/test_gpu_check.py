"""scripts/gpu_check.py in CPU smoke mode (CI), its report bookkeeping, and gpu_check.sh's arguments.

The smoke run uses the tiny model: every section either runs or says
"skipped: needs CUDA/TensorRT", and any other error fails the run (exit 1).
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("device", "precision", "onnx", "torch", "host", "tensorrt", "torch_compile")


def _gpu_check_module():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return gpu_check


def test_gpu_check_smoke_runs_every_section_or_says_why_not(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--smoke",
                        "--out", str(out), "--budget", "300"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    rep = json.loads(out.read_text())
    assert rep["mode"] == "smoke"
    for name in SECTIONS:
        sec = rep[name]
        assert "error" not in sec, (name, sec)
        if "skipped" in sec:
            assert sec["skipped"].startswith("skipped: needs CUDA/TensorRT"), (name, sec)
    assert rep["device"]["tf32"] == {"matmul": False, "cudnn": False}  # off before any section
    rows = rep["precision"]["rows"]  # the naive .half() crash (a Float/Half error) would be here
    assert [r_["t"] for r_ in rows] == [0, 500, 999]
    assert all(np.isfinite(r_["fp16_islands_max"]) and r_["naive_half_finite"] for r_ in rows)
    assert [r_["graph"] for r_ in rep["onnx"]["rows"]] == ["fp32", "fp16"]
    assert rep["onnx"]["rows"][0]["max_vs_torch_fp32"] < 1e-4
    assert all(r_["fresh_process_max_diff"] < 1e-5 for r_ in rep["onnx"]["rows"])  # a new process
    assert "incomplete" not in rep and '"incomplete": "no: every section and step ran"' in r.stdout


def test_naive_half_runs_the_float32_timestep_embedding_in_half():
    torch = pytest.importorskip("torch")
    from ddpm_export.model.config import PRESETS
    from ddpm_export.model.unet import UNet

    gc = _gpu_check_module()
    model = UNet(PRESETS["tiny"].unet).eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0, 999], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="(?i)half|dtype|float"):  # the bug: a bare .half()
        with torch.no_grad():
            __import__("copy").deepcopy(model).half()(x.half(), t)
    with torch.no_grad():
        y = gc.naive_half(model)(x.half(), t)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()


def test_report_keeps_finished_rows_and_fails_the_run_on_a_section_error(tmp_path):
    gc = _gpu_check_module()
    out = tmp_path / "r.json"
    rep = gc.Report(out, started="now")

    def rows_then_crash(sec):
        rep.row(sec, {"batch": 1})
        assert json.loads(out.read_text())["s"]["rows"] == [{"batch": 1}]  # on disk already
        raise RuntimeError("killed mid-section")
    rep.section("s", rows_then_crash, deadline=float("inf"))
    rep.section("n", lambda sec: None, deadline=float("inf"), skip=gc.NEEDS)
    data = json.loads(out.read_text())
    assert data["s"]["rows"] == [{"batch": 1}] and "killed mid-section" in data["s"]["error"]
    assert data["n"]["skipped"] == "skipped: needs CUDA/TensorRT"
    assert rep.errors() == ["s"]


def test_gpu_check_sh_takes_an_option_first_argument_as_an_option(tmp_path):
    """'bash scripts/gpu_check.sh --budget 5' must not write a report called '--budget'."""
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--budget", "5"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    has_gpu = r.returncode == 0 and "no Python with a CUDA" not in r.stderr
    if has_gpu:
        pytest.skip("a CUDA device is visible: this checks the argument handling without one")
    assert r.returncode == 1 and "no Python with a CUDA-enabled torch" in r.stderr
    assert (tmp_path / "gpu_check.json").exists() and not (tmp_path / "--budget").exists()
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path / "mine.json")],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 1 and (tmp_path / "mine.json").exists()


# --- issue 20: gates on TensorRT numbers, incomplete runs, fresh-process loading -------------
def test_tensorrt_gates_fail_on_bad_numbers():
    """Defect 4: rows were recorded but nothing failed on them."""
    gc = _gpu_check_module()
    good = {"validate_batch": 64, "finite": True, "max_vs_torch": 0.01}
    assert gc.gate_failures([good], 0.02, "dynamic") == []
    bad = [dict(good, finite=False), dict(good, max_vs_torch=0.5), dict(good, max_vs_torch=float("nan"))]
    got = gc.gate_failures(bad, 0.02, "static64")
    assert len(got) == 3 and "non-finite" in got[0] and "0.5 > 0.02" in got[1] and "nan" in got[2]
    assert gc.fp16_limit(0.02, 0.005) == (0.02, "the export's FP16 gate (FP16_ATOL = 0.02)")
    limit, basis = gc.fp16_limit(0.02, 0.05)  # random weights: PyTorch's own FP16 error is larger
    assert limit == 0.1 and "random weights" in basis


def test_a_run_cut_short_by_the_budget_is_reported_incomplete(tmp_path):
    """Defect 11: a section reached after the deadline did not fail or mark the run."""
    gc = _gpu_check_module()
    rep = gc.Report(tmp_path / "r.json", started="now")
    rep.section("a", lambda sec: None, deadline=float("inf"))
    assert rep.exit_status() == 0
    rep.section("late", lambda sec: None, deadline=0)
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["late"]["skipped"] == "time budget spent"
    assert data["incomplete"] == ["late: not run (time budget spent)"] and rep.exit_status() == 2
    rep.section("broken", lambda sec: 1 / 0, deadline=float("inf"))
    assert rep.exit_status() == 1  # a failure outranks an incomplete run


def test_fresh_process_loader_matches_the_in_process_runtime(tmp_path):
    """Defect 10's helper on the shipped ONNX export (a plan takes the same path on a GPU)."""
    pytest.importorskip("onnxruntime")
    import runtime

    gc = _gpu_check_module()
    engine = ROOT / "engines" / "digits.onnx"
    rng = np.random.default_rng(0)
    with runtime.load(engine, providers=["CPUExecutionProvider"]) as eng:
        shape = eng.image_shape
        batches = [(rng.standard_normal((b, *shape)).astype(np.float32),
                    rng.integers(0, 1000, b).astype(np.int32)) for b in (1, 3)]
        want = [eng(x, t) for x, t in batches]
    got, info = gc.eps_in_fresh_process(engine, batches, tmp_path)
    assert info["backend"] == "onnxruntime"
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-5)
    ran = gc.sample_in_fresh_process(engine, tmp_path)
    assert ran["rc"] == 0, ran["tail"]
    assert (tmp_path / "digits-samples.png").exists()


def test_onnxruntime_fp32_reference_turns_tf32_off():
    """Defect 5: ONNX Runtime's CUDA provider defaults to use_tf32 on."""
    pytest.importorskip("onnxruntime")
    import runtime

    gc = _gpu_check_module()
    assert ("CUDAExecutionProvider", {"use_tf32": "0"}) in gc.ORT_FP32_PROVIDERS
    with runtime.load(ROOT / "engines" / "digits.onnx", providers=gc.ORT_FP32_PROVIDERS) as eng:
        assert eng.runner.active_providers[-1] == "CPUExecutionProvider"  # accepted as given


def _section_on_stand_ins(tmp_path, monkeypatch, trt_version="10.3.0.30", corrupt=None, deadline=float("inf"),
                          pinned=7):
    """gpu_check's tensorrt section with the shipped digits ONNX export standing in for every
    plan (build, fresh-process load and runtime.sample stubbed): its control flow, rows, gates
    and bookkeeping run here; TensorRT itself does not (that needs the GPU check)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    import runtime
    from ddpm_export.export import tensorrt as B
    from ddpm_export.model.checkpoint import build_model, load_checkpoint

    gc = _gpu_check_module()
    ckpt = ROOT / "engines" / "digits.pt"
    model = build_model(load_checkpoint(ckpt), ckpt, "ema")[0].eval()
    tmp_path.mkdir(parents=True, exist_ok=True)
    exports = {}
    for prec, name in (("fp32", "digits.onnx"), ("fp16", "digits-fp16.onnx")):  # batches up to 256
        exports[prec] = tmp_path / name
        shutil.copy(ROOT / "engines" / name, exports[prec])
        m = json.loads((ROOT / "engines" / name).with_suffix(".json").read_text())
        m["batch_range"] = {"min": 1, "opt": 64, "max": 256}
        exports[prec].with_suffix(".json").write_text(json.dumps(m))
    onnx32, real_load = exports["fp32"], runtime.load
    built, loaded = [], []

    def build_engine(cfg, log=print, command=""):
        built.append(cfg)
        Path(cfg.out).write_bytes(b"stand-in plan")
        mode = B.precision_mode(trt_version, cfg.fp16, "fp16" if "-fp16" in cfg.onnx else "fp32")
        e = {"version_compatible": cfg.version_compatible, "static_batch": cfg.static_batch,
             "precision_mode": mode}
        if mode == "fp16_builder_flag":
            e["fp32_pinned_layers"] = pinned
        return {"engine": e}

    def eps_fresh(plan, batches, work, allow_host_code=False, timeout=300):
        loaded.append((Path(plan).name, allow_host_code))
        with real_load(onnx32, providers=["CPUExecutionProvider"]) as eng:
            eps = [eng(x, t) for x, t in batches]
        if corrupt and corrupt in Path(plan).name:
            eps[-1][0, 0, 0, 0] = np.nan
        return eps, {"backend": "stand-in", "runtime_kind": "full", "trt_version": trt_version}

    monkeypatch.setattr(B, "build_engine", build_engine)
    monkeypatch.setattr(gc, "eps_in_fresh_process", eps_fresh)
    monkeypatch.setattr(gc, "sample_in_fresh_process", lambda plan, work, allow=False: {"rc": 0, "seconds": 0, "tail": ""})
    monkeypatch.setattr(runtime, "load", lambda p, **kw: real_load(onnx32 if str(p).endswith(".plan") else p,
                                                                   providers=["CPUExecutionProvider"]))
    # the real plans' build options; small batches (the real ones take minutes on a busy CPU)
    small = {"dynamic": ((1, 3), (1,)), "static64": ((2,), (2,)), "version_compatible": ((1, 2), None),
             "builder_flag_fp16": ((2,), None)}
    monkeypatch.setattr(gc, "TRT_PLANS", tuple((n, kw) + small[n] + (host,)
                                               for n, kw, _, _, host in gc.TRT_PLANS))
    rep = gc.Report(tmp_path / "r.json", started="now")
    sec = rep.data["tensorrt"] = {}
    ctx = SimpleNamespace(onnx_files=exports,
                          tmp=tmp_path, preset="digits", c=1, s=16, dev=torch.device("cpu"),
                          m32=model, m16=model, batches=(1,), deadline=deadline)  # FP16 on CPU: slow
    return gc, rep, sec, lambda: gc.tensorrt_section(sec, rep, ctx, trt_version), built, loaded


def test_tensorrt_section_builds_loads_fresh_validates_and_gates(tmp_path, monkeypatch):
    gc, rep, sec, run, built, loaded = _section_on_stand_ins(tmp_path, monkeypatch)
    run()
    assert [(c.min_batch, c.max_batch, c.static_batch, c.version_compatible) for c in built] == \
        [(1, 256, None, False), (None, None, 64, False), (1, 64, None, True), (1, 64, None, False)]
    # issue 28 item 5: on TensorRT 10 also the float32 graph with the FP16 builder flag
    assert [Path(c.onnx).name for c in built] == ["digits-fp16.onnx"] * 3 + ["digits.onnx"]
    assert sec["builds"]["builder_flag_fp16"]["precision_mode"] == "fp16_builder_flag"
    assert loaded == [("digits-dynamic.plan", False), ("digits-static64.plan", False),
                      ("digits-version_compatible.plan", True), ("digits-builder_flag_fp16.plan", False)]
    rows = [r for r in sec["rows"] if "validate_batch" in r]
    assert [r["validate_batch"] for r in rows] == [1, 3, 2, 1, 2, 2]
    assert [r["bench_batch"] for r in sec["rows"] if "bench_batch" in r] == [1, 2]
    assert all(r["finite"] and r["max_vs_onnxruntime_fp32"] < 1e-5 for r in rows)
    assert sec["gate_failures"] == [] and set(sec["limits"]) == {
        "dynamic", "static64", "version_compatible", "builder_flag_fp16"}
    assert rep.exit_status() == 0
    # what ran and what never does, in the report
    done = sec["paths"]["exercised"]
    assert "builder_flag_fp16: built from digits.onnx (fp16_builder_flag)" in done
    assert any(p.startswith("dynamic: loaded in a fresh process by the full runtime") for p in done)
    assert any(p.startswith("dynamic: FP16 gate") and "FP16_ATOL" in p for p in done)
    assert any("lean runtime" in p and "dispatch" in p for p in sec["paths"]["not_exercised"])


def test_a_builder_flag_build_that_pins_nothing_fails_the_section(tmp_path, monkeypatch):
    def only_builder_flag(gc):  # the other plans are the test above's
        monkeypatch.setattr(gc, "TRT_PLANS", tuple(x for x in gc.TRT_PLANS if x[0] == "builder_flag_fp16"))

    gc, rep, sec, run, built, loaded = _section_on_stand_ins(tmp_path, monkeypatch, pinned=0)
    only_builder_flag(gc)
    with pytest.raises(RuntimeError, match="builder_flag_fp16: FP16 builder-flag build pinned no FP32-island layer"):
        run()
    gc, rep, sec, run, built, loaded = _section_on_stand_ins(tmp_path / "11", monkeypatch, "11.1.0.1")
    only_builder_flag(gc)
    run()
    assert "no FP16 builder flag" in sec["builder_flag_fp16"]["skipped"]
    assert any("builder_flag_fp16" in p for p in sec["paths"]["not_exercised"])


def test_a_cuda_machine_without_tensorrt_is_never_all_passed(tmp_path):
    """Issue 28 item 2: the tensorrt section was only "skipped" when import tensorrt failed, so
    a GPU run without TensorRT exited 0, "complete, all passed"."""
    gc = _gpu_check_module()

    def missing():
        raise ModuleNotFoundError("No module named 'tensorrt'")

    def broken():
        raise OSError("libnvinfer.so.10: cannot open shared object file")

    rep = gc.Report(tmp_path / "a.json", started="now")
    run, skip = gc.tensorrt_plan(True, None, rep, importer=missing)
    rep.section("tensorrt", run, float("inf"), skip=skip)
    assert rep.exit_status() == 2 and "not installed" in rep.incomplete()[0]
    rep = gc.Report(tmp_path / "b.json", started="now")
    run, skip = gc.tensorrt_plan(True, None, rep, importer=broken)
    rep.section("tensorrt", run, float("inf"), skip=skip)
    assert rep.exit_status() == 1 and "libnvinfer.so.10" in rep.data["tensorrt"]["error"]
    rep = gc.Report(tmp_path / "c.json", started="now")  # smoke mode on a CPU: skipped, as before
    run, skip = gc.tensorrt_plan(False, gc.NEEDS, rep, importer=missing)
    rep.section("tensorrt", run, float("inf"), skip=skip)
    assert rep.exit_status() == 0 and rep.data["tensorrt"]["skipped"].startswith(gc.NEEDS)


def test_tensorrt_section_fails_on_a_non_finite_plan_and_marks_time_cuts(tmp_path, monkeypatch):
    gc, rep, sec, run, built, loaded = _section_on_stand_ins(tmp_path, monkeypatch, corrupt="static64")
    with pytest.raises(RuntimeError, match="1 TensorRT gate.*static64 batch 2: non-finite"):
        run()
    gc, rep, sec, run, built, loaded = _section_on_stand_ins(tmp_path / "late", monkeypatch, deadline=0)
    run()
    assert sec["static64"] == {"skipped": "time budget"} and rep.exit_status() == 2
    assert rep.incomplete() == ["tensorrt: static64 build/load not run (time budget spent)",
                                "tensorrt: version_compatible build/load not run (time budget spent)",
                                "tensorrt: builder_flag_fp16 build/load not run (time budget spent)"]
    gc, rep, sec, run, built, loaded = _section_on_stand_ins(tmp_path / "85", monkeypatch, "8.5.2.2")
    run()
    assert "no version compatibility" in sec["version_compatible"]["skipped"] and rep.exit_status() == 0
    assert "is the FP16 builder-flag build" in sec["builder_flag_fp16"]["skipped"]
    assert sec["builds"]["dynamic"]["precision_mode"] == "fp16_builder_flag"
