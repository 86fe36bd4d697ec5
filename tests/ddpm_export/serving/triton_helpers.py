"""Shared by the Triton tests: a fake plan's manifest and request builders for the sampler."""
import json
import shutil
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
DIGITS = ROOT / "engines" / "digits.onnx"


def fake_plan(tmp_path, profile=(1, 8, 32), version_compatible=False) -> Path:
    """A NAME.plan (not a real engine: no TensorRT builder here) with a build's manifest."""
    m = json.loads(DIGITS.with_suffix(".json").read_text())
    m["engine"] = {"section_version": 1, "format": "tensorrt-plan", "plan": "digits.plan",
                   "tensorrt_version": "10.3.0", "compute_capability": "8.7",
                   "device_name": "Orin", "precision": "fp32", "version_compatible": version_compatible,
                   "profiles": [dict(zip(("min", "opt", "max"), profile))]}
    plan = tmp_path / "digits.plan"
    plan.write_bytes(b"not a real TensorRT plan")
    plan.with_suffix(".json").write_text(json.dumps(m))
    return plan


def merge_repos(dest: Path, *repos: Path) -> Path:
    """Move the model folders of several repositories into one."""
    dest.mkdir(parents=True, exist_ok=True)
    for r in repos:
        for model in r.iterdir():
            shutil.move(str(model), str(dest / model.name))
    return dest


def sampler_inputs(client_module, num, seed, method="ddim", steps=3, eta=None, skip=(), dtypes=None):
    """tritonclient InferInputs for NAME_sampler (http or grpc module)."""
    values = {"num": (np.array([num], np.int32), "INT32"), "seed": (np.array([seed], np.int64), "INT64"),
              "method": (np.array([method.encode()], dtype=object), "BYTES"),
              "steps": (np.array([steps], np.int32), "INT32")}
    if eta is not None:
        values["eta"] = (np.array([eta], np.float32), "FP32")
    for name, (arr, dt) in (dtypes or {}).items():
        values[name] = (arr, dt)
    out = []
    for name, (arr, dt) in values.items():
        if name in skip:
            continue
        i = client_module.InferInput(name, list(arr.shape), dt)
        i.set_data_from_numpy(arr)
        out.append(i)
    return out
