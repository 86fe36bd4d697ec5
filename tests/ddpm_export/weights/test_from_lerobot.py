"""Our LeRobot DiffusionPolicy modules against LeRobot 0.4.4's own (through the LeRobot venv).

Needs the LeRobot python: $DDPM_LEROBOT_PYTHON or <repo>/.venv-lerobot/bin/python
(``make setup-lerobot``); skipped with that reason otherwise.
"""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_export.model.lerobot_diffusion import (action_dim, build_lerobot, env_feature, image_features,
                                                 split_state_dict)

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "scripts" / "lerobot_policy_reference.py"


def lerobot_python():
    p = os.environ.get("DDPM_LEROBOT_PYTHON") or str(REPO / ".venv-lerobot" / "bin" / "python")
    return p if Path(p).exists() else None


LR = lerobot_python()
pytestmark = pytest.mark.skipif(LR is None, reason="no LeRobot python: set DDPM_LEROBOT_PYTHON or run "
                                                   "`make setup-lerobot` (makes .venv-lerobot)")


def _ref(*args):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1", "HOME": os.environ.get("HOME", "/tmp")}
    subprocess.run([LR, str(SCRIPT), *args], check=True, env=env, capture_output=True)


@pytest.fixture(scope="session")
def lerobot_folders(tmp_path_factory):
    """Made once: a state-only policy, a one-camera and a two-camera (separate encoders) image policy."""
    root = tmp_path_factory.mktemp("lerobot")
    kinds = {"state": ["--kind", "state"], "image": ["--kind", "image"],
             "image2": ["--kind", "image", "--cameras", "2"]}
    out = {}
    for name, a in kinds.items():
        _ref("make", *a, "--seed", "0", "--out", str(root / name))
        out[name] = root / name
    return out


@pytest.mark.parametrize("kind", ["state", "image", "image2"])
def test_modules_equal_lerobot(lerobot_folders, kind):
    d = lerobot_folders[kind]
    cfg = json.loads((d / "config.json").read_text())
    enc, unet = build_lerobot(cfg)
    from safetensors.torch import load_file

    e_sd, u_sd = split_state_dict(load_file(str(d / "model.safetensors")))
    enc.load_state_dict(e_sd, strict=True)
    unet.load_state_dict(u_sd, strict=True)
    rng = np.random.default_rng(1)
    b, n = 3, cfg["n_obs_steps"]
    inp = {"observation.state": rng.standard_normal((b, n, 3)).astype(np.float32)}
    if image_features(cfg):
        inp["observation.images"] = rng.standard_normal((b, n, len(image_features(cfg)), 3, 32, 32)).astype(np.float32)
    if env_feature(cfg):
        inp["observation.environment_state"] = rng.standard_normal((b, n, 4)).astype(np.float32)
    inp["x_t"] = rng.standard_normal((b, cfg["horizon"], action_dim(cfg))).astype(np.float32)
    inp["t"] = np.array([0, 37, 99])
    np.savez(d / "in.npz", **inp)
    _ref("chunk", "--policy", str(d), "--inputs", str(d / "in.npz"), "--out", str(d / "out.npz"))
    ref = np.load(d / "out.npz")
    with torch.no_grad():
        gc = enc(*[torch.from_numpy(inp[k]) for k in enc.input_names])
        eps = unet(torch.from_numpy(inp["x_t"]), torch.from_numpy(inp["t"]).float(), gc)
    # the same float32 ops in the same order on the same CPU: measured 0.0; 1e-5 leaves room for a
    # different BLAS/thread split between the two torch builds (2.13 here, 2.14 there)
    assert gc.shape == ref["global_cond"].shape and np.abs(gc.numpy() - ref["global_cond"]).max() <= 1e-5
    assert eps.shape == ref["eps"].shape and np.abs(eps.numpy() - ref["eps"]).max() <= 1e-5
    assert np.abs(ref["eps"]).max() > 0.1  # a non-trivial output was compared


def test_import_reads_stats_exactly_and_rebuilds(lerobot_folders, tmp_path):
    from safetensors.numpy import load_file

    from ddpm_export.model.checkpoint import load_model
    from ddpm_export.weights.from_lerobot import import_lerobot

    d = lerobot_folders["image"]
    import_lerobot(d, tmp_path / "p.pt")
    ckpt = torch.load(tmp_path / "p.pt", weights_only=True)
    pre = load_file(str(d / "policy_preprocessor_step_3_normalizer_processor.safetensors"))
    post = load_file(str(d / "policy_postprocessor_step_0_unnormalizer_processor.safetensors"))
    obs = {o["name"]: o for o in ckpt["policy"]["observations"]}
    st = obs["observation.state"]["normalization"]
    assert st["mode"] == "min_max" and st["eps"] == 1e-8
    np.testing.assert_array_equal(np.float32(st["min"]), pre["observation.state.min"])
    np.testing.assert_array_equal(np.float32(st["max"]), pre["observation.state.max"])
    im = obs["observation.image"]["normalization"]
    assert im["mode"] == "mean_std" and obs["observation.image"]["camera_index"] == 0
    np.testing.assert_array_equal(np.float32(im["std"]), pre["observation.image.std"])
    act = ckpt["policy"]["action"]["normalization"]
    np.testing.assert_array_equal(np.float32(act["min"]), post["action.min"])
    model, _ = load_model(tmp_path / "p.pt")
    assert [c.name for c in model.conditions] == ["global_cond"] and model.sample_kind == "array"
    assert ckpt["schedule_config"]["kind"] == "squaredcos_cap_v2"


def test_import_refuses_in_one_line_with_every_reason(lerobot_folders, tmp_path):
    from ddpm_export.weights.from_lerobot import import_lerobot

    bad = tmp_path / "bad"
    bad.mkdir()
    cfg = json.loads((lerobot_folders["image"] / "config.json").read_text())
    cfg.update(resize_shape=[40, 40], vision_backbone="resnet50", use_group_norm=False, type="act")
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError) as e:
        import_lerobot(bad, tmp_path / "x.pt")
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("resize_shape", "resnet50", "use_group_norm", "'act'", "model.safetensors is missing",
                 "policy_preprocessor.json is missing", "policy_postprocessor.json is missing"):
        assert part in msg, part
    assert not (tmp_path / "x.pt").exists()
