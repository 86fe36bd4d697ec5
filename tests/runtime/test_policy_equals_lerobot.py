"""runtime.load_policy(...).select_action equals LeRobot 0.4.4's own select_action.

LeRobot runs in its own venv (make setup-lerobot) through scripts/lerobot_policy_reference.py:
it makes tiny random-init DiffusionPolicy folders (nudged weights, made-up normalization stats)
and runs its select_action with its pre/post processors over an episode, fed the noise that the
runtime drew (x_T through ``noise=``, each DDPM step's z by patching diffusers' randn_tensor).
The runtime side: ``ddpm-export import --format lerobot`` -> export (denoiser + encoder ONNX) ->
runtime.load_policy on ONNX Runtime, recording its noise draws per chunk.

Tolerance 1e-4 on raw actions (their scale here is about 1-2): the two sides share the noise
but not the arithmetic: float32 ONNX Runtime vs PyTorch 2.14 kernels (a network step differs by
about 1e-6) and the NumPy scheduler vs diffusers' (float64 coefficients vs float32 tensors),
accumulated over up to 100 steps; the chain contracts (clip to [-1, 1], alphas < 1), so the
difference stays near 1e-6-1e-5 (the measured values are printed).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
LR = os.environ.get("DDPM_LEROBOT_PYTHON") or str(REPO / ".venv-lerobot" / "bin" / "python")
pytestmark = pytest.mark.skipif(not Path(LR).is_file(),
                                reason=f"no LeRobot python at {LR} (make setup-lerobot builds .venv-lerobot)")
SCRIPT = str(REPO / "scripts" / "lerobot_policy_reference.py")
ATOL = 1e-4
T_EPISODE, B = 10, 3  # 10 ticks at n_action_steps 4: chunks at ticks 0, 4, 8


def _lerobot(*args, home):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1", "HOME": str(home)}
    r = subprocess.run([LR, SCRIPT, *map(str, args)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]


def _episode(policy, rng):
    obs = {}
    for name, shape in policy.observation_shapes.items():
        if len(shape) == 3:  # an image in [0, 1]
            obs[name] = rng.uniform(0, 1, (T_EPISODE, B) + shape).astype(np.float32)
        else:
            obs[name] = rng.uniform(-2, 2, (T_EPISODE, B) + shape).astype(np.float32)
    return obs


class _Recorder:
    """Wraps runtime.loop's ImageStreams: every draw of every chunk, in order."""

    def __init__(self, monkeypatch):
        import runtime.loop
        from runtime.seeding import ImageStreams

        self.chunks = []
        rec = self

        class Recording(ImageStreams):
            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                rec.chunks.append([])

            def standard_normal(self, shape, dtype=np.float32):
                out = super().standard_normal(shape, dtype)
                rec.chunks[-1].append(np.array(out, dtype=np.float32))
                return out

        monkeypatch.setattr(runtime.loop, "ImageStreams", Recording)

    def noise_npz(self, path, steps):
        arrays = {}
        for k, draws in enumerate(self.chunks):
            arrays[f"x_T_{k}"] = draws[0]
            z = draws[1:] or [np.zeros_like(draws[0])]
            arrays[f"z_{k}"] = np.stack(z + [np.zeros_like(draws[0])] * (steps - len(z)))
        np.savez(path, **arrays)


# make test keeps one case per policy kind and per scheduler (state with DDPM-100, image with
# DDIM-10, about 25 s each); the other two pairings are in make test-slow.
@pytest.mark.parametrize("kind,scheduler,steps", [
    ("state", "DDPM", None), pytest.param("state", "DDIM", 10, marks=pytest.mark.slow),
    pytest.param("image", "DDPM", None, marks=pytest.mark.slow), ("image", "DDIM", 10)])
def test_select_action_equals_lerobots(kind, scheduler, steps, tmp_path, monkeypatch):
    import runtime
    from ddpm_export.export.onnx_export import export_onnx
    from ddpm_export.weights.from_lerobot import import_lerobot

    folder = tmp_path / "lerobot"
    args = ["make", "--kind", kind, "--seed", "3", "--out", folder, "--scheduler", scheduler]
    _lerobot(*(args + (["--steps", steps] if steps else [])), home=tmp_path)
    import_lerobot(folder, tmp_path / "p.pt")
    export_onnx(tmp_path / "p.pt", tmp_path / "p.onnx")

    policy = runtime.load_policy(tmp_path / "p.onnx", seed=11)  # the manifest's sampler: LeRobot's
    n_steps = policy.engine_calls_per_chunk
    assert n_steps == (steps or 100)
    obs = _episode(policy, np.random.default_rng(5))
    rec = _Recorder(monkeypatch)
    ours = np.stack([policy.select_action({k: v[i] for k, v in obs.items()}) for i in range(T_EPISODE)])
    assert len(rec.chunks) == 3  # a chunk at ticks 0, 4 and 8
    assert len(rec.chunks[0]) == (n_steps if scheduler == "DDPM" else 1)  # x_T + 99 z (none at t = 0)

    np.savez(tmp_path / "episode.npz", **obs)
    rec.noise_npz(tmp_path / "noise.npz", n_steps)
    _lerobot("run", "--policy", folder, "--obs", tmp_path / "episode.npz", "--noise", tmp_path / "noise.npz",
             "--out", tmp_path / "actions.npz", home=tmp_path)
    ref = np.load(tmp_path / "actions.npz")
    theirs = ref["actions"]
    assert list(ref["draws"]) == [n_steps - 1 if scheduler == "DDPM" else 0] * 3
    assert ours.shape == theirs.shape == (T_EPISODE, B, 2)
    diff = float(np.abs(ours - theirs).max())
    print(f"{kind} {scheduler}-{n_steps}: max abs raw action difference {diff:.2e} "
          f"(action scale {float(np.abs(theirs).max()):.2f})")
    assert diff < ATOL, diff
    # the k-th chunk is predict_chunk(history, seed + k): tick 4's chunk from the history of ticks 3-4
    hist = {k: np.stack([v[3], v[4]], axis=1) for k, v in obs.items()}
    chunk = policy.predict_chunk(hist, seed=12)
    np.testing.assert_array_equal(chunk, ours[4:8].transpose(1, 0, 2))
