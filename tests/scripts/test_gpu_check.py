"""scripts/gpu_check.py in CPU smoke mode (CI), its report bookkeeping, and gpu_check.sh's arguments.

The smoke run uses the tiny model: every section either runs or says
"skipped: needs CUDA/TensorRT", and any other error fails the run (exit 1).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

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
