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
