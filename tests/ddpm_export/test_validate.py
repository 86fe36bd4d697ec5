"""ddpm-export validate on the shipped digits engines (ONNX float32 and FP16)."""
import json
from pathlib import Path

from click.testing import CliRunner

from ddpm_export.cli import main

ROOT = Path(__file__).resolve().parents[2]
ENG = ROOT / "engines"


def test_validate_shipped_digits_engines(tmp_path):
    r = CliRunner().invoke(main, [
        "validate", "--checkpoint", str(ENG / "digits.pt"), "--engine", str(ENG / "digits.onnx"),
        "--engine", str(ENG / "digits-fp16.onnx"), "--report", str(tmp_path), "--t-stride", "100",
        "--batch", "1", "--batch", "3", "--trajectory-images", "2"])
    print("\n" + r.output)
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "report.json").read_text())
    fp32, fp16 = rep["engines"]
    assert fp32["precision"] == "fp32" and fp16["precision"] == "fp16"
    assert len(fp32["one_step"]) == 2 * 11  # t = 0, 100, ..., 900, 999 at two batch sizes
    assert fp32["checks"]["eps_max_abs"]["value"] < 1e-4
    # FP16 rounding is visible but bounded; float32 sits orders of magnitude below it
    assert 1e-5 < fp16["checks"]["eps_max_abs"]["value"] < 2e-2
    assert len(fp32["trajectory"]["drift"]) == 1000
    assert fp32["trajectory"]["final_max_abs"] < 1e-3

def test_validate_fails_on_a_threshold_and_exits_nonzero(tmp_path):
    r = CliRunner().invoke(main, [
        "validate", "--checkpoint", str(ENG / "digits.pt"), "--engine", str(ENG / "digits-fp16.onnx"),
        "--t-stride", "500", "--batch", "2", "--trajectory-images", "0", "--eps-atol-fp16", "1e-7"])
    assert r.exit_code == 1 and "FAIL" in r.output

def test_validate_refuses_an_engine_from_another_checkpoint(tmp_path):
    import torch

    ck = torch.load(ENG / "digits.pt", weights_only=False)
    ck["provenance"] = {**ck.get("provenance", {}), "note": "a copy"}
    torch.save(ck, tmp_path / "other.pt")
    r = CliRunner().invoke(main, ["validate", "--checkpoint", str(tmp_path / "other.pt"),
                                  "--engine", str(ENG / "digits.onnx"), "--trajectory-images", "0"])
    assert r.exit_code == 1 and "was not made from" in r.output and "--force" in r.output
