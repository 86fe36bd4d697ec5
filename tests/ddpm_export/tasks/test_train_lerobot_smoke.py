"""The LeRobot training script at tiny size: finite loss, and a stop + rerun resumes bit-equal."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

LEROBOT_PY = Path("/work/main/.venv-lerobot/bin/python")
ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.skipif(not LEROBOT_PY.exists(), reason="no LeRobot venv (make setup-lerobot)")

CHECK = r"""
import sys, json, shutil, torch
sys.argv = ["x"]
sys.path.insert(0, "scripts")
import train_lerobot_policy as t
base = ["--episodes", "8", "--steps", "12", "--batch", "8", "--down-dims", "16", "32",
        "--embed-dim", "16", "--warmup", "3", "--eval", "0", "--log-every", "4"]
out = "{tmp}"
full = t.main(base + ["--out", out + "/a"])
part = t.main(base + ["--out", out + "/b", "--stop-after", "5"])
rest = t.main(base + ["--out", out + "/b"])
sa = torch.load(out + "/a/train_state.pt", weights_only=False)["model"]
sb = torch.load(out + "/b/train_state.pt", weights_only=False)["model"]
print(json.dumps({{"full": full["losses"], "resumed": part["losses"] + rest["losses"],
                  "equal": all(torch.equal(sa[k], sb[k]) for k in sa)}}))
"""


def test_tiny_training_resumes_bit_equal(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([str(LEROBOT_PY), "-c", CHECK.format(tmp=tmp_path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    import json
    import math

    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(d["full"]) == 12 and all(math.isfinite(x) for x in d["full"])
    assert d["resumed"] == d["full"]
    assert d["equal"]
    assert (tmp_path / "a" / "pretrained_model" / "config.json").exists()
    assert (tmp_path / "a" / "pretrained_model" / "policy_preprocessor.json").exists()
