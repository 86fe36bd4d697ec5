"""Export of an imported LeRobot DiffusionPolicy: denoiser + NAME-encoder.onnx + the policy section.

Needs the LeRobot python to make the tiny policy folder ($DDPM_LEROBOT_PYTHON or
<repo>/.venv-lerobot/bin/python, `make setup-lerobot`); skipped with that reason otherwise.
"""
import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]
LR = os.environ.get("DDPM_LEROBOT_PYTHON") or str(REPO / ".venv-lerobot" / "bin" / "python")
pytestmark = pytest.mark.skipif(not Path(LR).exists(), reason="no LeRobot python: set DDPM_LEROBOT_PYTHON "
                                                               "or run `make setup-lerobot`")


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    from ddpm_export.export.onnx_export import export_onnx
    from ddpm_export.weights.from_lerobot import import_lerobot

    root = tmp_path_factory.mktemp("policy_export")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1", "HOME": str(root)}
    subprocess.run([LR, str(REPO / "scripts" / "lerobot_policy_reference.py"), "make", "--kind", "image",
                    "--seed", "0", "--out", str(root / "lr")], check=True, env=env, capture_output=True)
    import_lerobot(root / "lr", root / "p.pt")
    out = {}
    for fp16, name in ((False, "p.onnx"), (True, "p-fp16.onnx")):
        m = export_onnx(root / "p.pt", root / name, fp16=fp16)  # a policy checkpoint: both engines
        assert m["policy"]["encoder"]["file"] == name[:-5] + "-encoder.onnx"
        out[fp16] = root / name
    return out


def test_export_writes_both_files_and_manifest_validates(exported):
    from runtime.contract import validate_manifest

    onnx_path = exported[False]
    man = json.loads(onnx_path.with_suffix(".json").read_text())
    validate_manifest(man)
    pol = man["policy"]
    enc = onnx_path.with_name(pol["encoder"]["file"])
    assert enc.name == "p-encoder.onnx" and enc.exists()
    assert pol["encoder"]["sha256"] == hashlib.sha256(enc.read_bytes()).hexdigest()
    assert [i["name"] for i in pol["encoder"]["inputs"]] == ["observation.state", "observation.images"]
    assert pol["encoder"]["inputs"][1]["shape"] == ["batch", 2, 1, 3, 32, 32]
    assert pol["image_features"] == ["observation.image"] and pol["image_preprocess"]["crop"] == [28, 28]
    assert pol["action_start"] == 1 and man["sample_kind"] == "array" and man["sample_shape"] == [8, 2]
    assert [c["name"] for c in man["conditions"]] == ["global_cond"]
    assert man["conditions"][0]["shape"] == pol["encoder"]["outputs"][0]["shape"][1:]
    # parity through ONNX Runtime, measured 2.4e-07 (float32 encoder) and ~1e-06 (denoiser)
    assert pol["encoder"]["parity"]["max_abs_diff"] <= 1e-4
    assert man["checks"]["parity"]["max_abs_diff"] <= 1e-4


def test_encoder_onnx_runs_at_another_batch(exported):
    import onnxruntime as ort

    enc = exported[False].with_name("p-encoder.onnx")
    s = ort.InferenceSession(str(enc), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    out = s.run(None, {"observation.state": rng.standard_normal((5, 2, 3)).astype(np.float32),
                       "observation.images": rng.standard_normal((5, 2, 1, 3, 32, 32)).astype(np.float32)})[0]
    man = json.loads(exported[False].with_suffix(".json").read_text())
    assert out.shape == (5, man["conditions"][0]["shape"][0]) and np.isfinite(out).all()


def test_fp16_denoiser_keeps_groupnorm_and_step_embedding_in_float32(exported):
    import onnx

    from ddpm_export.export.fp16 import node_precisions

    p = exported[True]
    man = json.loads(p.with_suffix(".json").read_text())
    assert man["precision"] == "fp16" and man["policy"]["encoder"]["file"] == "p-fp16-encoder.onnx"
    rows = node_precisions(onnx.load(str(p)))
    norms = [r for r in rows if r["op_type"] in ("GroupNormalization", "InstanceNormalization")]
    sins = [r for r in rows if r["op_type"] in ("Sin", "Cos")]
    assert norms and all(r["dtype"] == "float32" for r in norms), norms[:3]
    assert sins and all(r["dtype"] == "float32" for r in sins), sins
    assert any(r["dtype"] == "float16" for r in rows if r["op_type"] == "Conv")
    assert man["checks"]["fp16_error"]["max_abs"] < 0.02
