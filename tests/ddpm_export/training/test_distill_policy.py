"""ddpm-export distill with a policy teacher: observation histories in, a few-call policy out.

The teacher is a tiny random-init LeRobot DiffusionPolicy (our modules under LeRobot's names,
built from the shipped obstacle policy's config with small down_dims), so no LeRobot install is
needed: what is tested is the distillation around it (conditions, resume, export, runtime).
"""
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import ddpm_export.training.distill as distill_mod
from ddpm_export.cli.main import main
from ddpm_export.model.checkpoint import build_model, load_checkpoint, save_checkpoint
from ddpm_export.model.external import build_external, weights_module
from ddpm_export.training.distill import DistillConfig, DistillError, distill, sample_student
from checkpoint_tensors import assert_bit_equal, crash_after_first_checkpoint  # noqa: E402  (beside this file)

REPO = Path(__file__).resolve().parents[3]
N_OBS, HORIZON, N_ACT = 2, 8, 4


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("policy_teacher")
    ck = load_checkpoint(REPO / "engines" / "obstacle-policy.pt")
    cfg = dict(ck["model_config"]["config"], down_dims=[16, 32], diffusion_step_embed_dim=16, n_groups=4,
               horizon=HORIZON, n_action_steps=N_ACT, kernel_size=3)
    mc = dict(ck["model_config"], config=cfg, image_shape=[HORIZON, 2])
    torch.manual_seed(0)
    net = build_external(mc)
    with torch.no_grad():  # a random init whose output depends on t and global_cond at a usable scale
        for p in weights_module(net).parameters():
            p.add_(0.05 * torch.randn_like(p))
    pol = copy.deepcopy(ck["policy"])
    pol["lerobot_config"] = cfg
    tiny = {"format": ck["format"], "model_config": mc, "schedule_config": ck["schedule_config"],
            "ema": weights_module(net).state_dict(), "provenance": {"command": "test"}, "policy": pol}
    path = root / "teacher.pt"
    save_checkpoint(tiny, path)
    rng = np.random.default_rng(0)
    obs = {"observation.state": rng.uniform(-1, 1, (12, N_OBS, 2)).astype(np.float32),
           "observation.environment_state": rng.uniform(-0.1, 0.4, (12, N_OBS, 5)).astype(np.float32)}
    np.savez(root / "obs.npz", **obs)
    return path, root / "obs.npz", obs


def _cfg(teacher, obs, out, **kw):
    base = dict(teacher=str(teacher), out=str(out), observations=str(obs), teacher_steps=4, student_steps=(1, 2, 4),
                default_steps=2, trajectories=16, chunk=8, steps=6, batch_size=4, warmup=2, sample_every=3,
                ckpt_every=3, log_every=2, seed=1)
    base.update(kw)
    return DistillConfig(**base)


def test_policy_distill_trains_on_the_encoded_histories_and_resumes_bit_equal(teacher, tmp_path, monkeypatch):
    path, obs_path, obs = teacher
    a = tmp_path / "whole"
    s = distill(_cfg(path, obs_path, a), progress=False)
    assert s["step"] == 6
    losses = [json.loads(x)["loss"] for x in (a / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert not (a / "samples").exists() or not list((a / "samples").iterdir())  # chunks are not pictures
    # trajectory i is solved at history i mod 12, its global_cond the teacher encoder's
    d = np.load(a / "teacher" / "chunk00001.npz")
    ck = load_checkpoint(path)
    from ddpm_export.model.lerobot_diffusion import build_lerobot_encoder
    from runtime.policy import normalize

    enc = build_lerobot_encoder(ck)
    feats = {f["name"]: f["normalization"] for f in ck["policy"]["observations"]}
    idx = np.arange(8, 16) % 12
    with torch.no_grad():
        want = enc(*[torch.from_numpy(normalize(obs[k][idx], feats[k])) for k in enc.input_names]).numpy()
    np.testing.assert_allclose(d["cond"], want, rtol=0, atol=1e-6)
    model = load_checkpoint(a / "model.pt")
    assert model["policy"]["lerobot_config"]["horizon"] == HORIZON and model["schedule_config"]["prediction"] == "v"
    assert model["sampling"]["timesteps"] == {"1": [99], "2": [99, 50], "4": [99, 74, 50, 25]}
    assert "policy observations: 12 histories" in model["provenance"]["conditioning"]

    b = tmp_path / "crashed"
    crash_after_first_checkpoint(monkeypatch, distill_mod, lambda: distill(_cfg(path, obs_path, b), progress=False))
    distill(_cfg(path, obs_path, b, resume=True), progress=False)
    assert_bit_equal(load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt"))

    # other observations on --resume: refused (the teacher data would not be this run's)
    other = tmp_path / "other.npz"
    np.savez(other, **{k: v + 0.01 for k, v in obs.items()})
    with pytest.raises(DistillError, match="teacher data made with"):
        distill(_cfg(path, other, b, resume=True, steps=8), progress=False)


def test_student_policy_exports_and_the_runtime_samples_it_as_the_pytorch_student(teacher, tmp_path):
    from ddpm_export.export.onnx_export import export_onnx
    from ddpm_export.model.lerobot_diffusion import build_lerobot_encoder
    from runtime import load_policy
    from runtime.policy import encoder_feeds, unnormalize

    path, obs_path, obs = teacher
    run = tmp_path / "run"
    distill(_cfg(path, obs_path, run, steps=3), progress=False)
    m = export_onnx(run / "model.pt", tmp_path / "student.onnx")
    assert m["sampling"]["method"] == "consistency" and m["policy"]["encoder"]["file"] == "student-encoder.onnx"
    ck = load_checkpoint(run / "model.pt")
    student, _, sched = build_model(ck, run / "model.pt")
    enc = build_lerobot_encoder(ck)
    hist = {k: v[:5] for k, v in obs.items()}
    for calls in (1, 2, 4):
        pol = load_policy(tmp_path / "student.onnx", seed=3, steps=calls)
        assert pol.engine_calls_per_chunk == calls and pol.plan["method"] == "consistency"
        got = pol.predict_chunk(hist, seed=3)
        feeds = encoder_feeds(pol.spec, hist)
        with torch.no_grad():
            g = enc(*[torch.from_numpy(feeds[k]) for k in enc.input_names]).numpy()
        x = sample_student(student, sched, 5, seed=3, cond=g, timesteps=ck["sampling"]["timesteps"][str(calls)])
        want = unnormalize(x[:, N_OBS - 1:N_OBS - 1 + N_ACT], pol.spec["action"]["normalization"])
        # ORT float32 vs PyTorch float32 kernels (~1e-6 per call), float64 step math in both
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
        pol.close()


def test_policy_distill_refusals_name_what_was_received(teacher, tiny_checkpoint, tmp_path):
    path, obs_path, obs = teacher
    with pytest.raises(DistillError, match="is a policy .* pass --observations FILE.npz"):
        distill(_cfg(path, obs_path, tmp_path / "a", observations=None), progress=False)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{"observation.state": obs["observation.state"][:, :1]})
    with pytest.raises(DistillError, match=r"missing \['observation.environment_state'\]"):
        distill(_cfg(path, bad, tmp_path / "b"), progress=False)
    np.savez(bad, **dict(obs, **{"observation.state": obs["observation.state"][:, :1]}))
    with pytest.raises(DistillError, match=r"observation.state has shape \[12, 1, 2\], expected \[N, 2, 2\]"):
        distill(_cfg(path, bad, tmp_path / "c"), progress=False)
    nan = dict(obs)
    nan["observation.state"] = obs["observation.state"].copy()
    nan["observation.state"][0, 0, 0] = np.nan
    np.savez(bad, **nan)
    with pytest.raises(DistillError, match="1 non-finite values"):
        distill(_cfg(path, bad, tmp_path / "d"), progress=False)
    _, image_teacher, _ = tiny_checkpoint
    with pytest.raises(DistillError, match="--observations is for policy teachers"):
        distill(_cfg(image_teacher, obs_path, tmp_path / "e"), progress=False)
    r = CliRunner().invoke(main, ["distill", "--teacher", str(path), "--out", str(tmp_path / "f"),
                                  "--teacher-steps", "4", "--student-steps", "1,2", "--default-steps", "2"])
    assert r.exit_code != 0 and "pass --observations" in r.output and len(r.output.strip().splitlines()) == 1


def test_rollout_records_the_histories_the_policy_predicted_from(tmp_path):
    out = tmp_path / "obs.npz"
    r = CliRunner().invoke(main, ["rollout", "--policy", str(REPO / "engines" / "obstacle-policy.onnx"),
                                  "--method", "ddim", "--steps", "2", "--episodes", "3", "--max-steps", "17",
                                  "--record-observations", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    d = np.load(out)
    # chunks at ticks 0, 8 and 16 for the episodes still running; the first history is the
    # first observation twice (the policy's queue semantics)
    n = d["observation.state"].shape[0]
    assert d["observation.state"].shape[1:] == (2, 2) and d["observation.environment_state"].shape == (n, 2, 5)
    assert 3 <= n <= 9
    np.testing.assert_array_equal(d["observation.state"][:3, 0], d["observation.state"][:3, 1])
    assert not np.array_equal(d["observation.state"][3:, 0], d["observation.state"][3:, 1])


def test_shipped_student_engine_equals_its_pytorch_student_at_every_call_count():
    from ddpm_export.model.lerobot_diffusion import build_lerobot_encoder
    from ddpm_export.tasks.obstacle import ObstacleTask
    from runtime import load_policy
    from runtime.policy import encoder_feeds, unnormalize

    ck = load_checkpoint(REPO / "engines" / "obstacle-student.pt")
    student, _, sched = build_model(ck, "engines/obstacle-student.pt")
    enc = build_lerobot_encoder(ck)
    obs = ObstacleTask(3, seed=5).reset()
    for calls in (1, 2, 4):
        pol = load_policy(REPO / "engines" / "obstacle-student.onnx", steps=calls, threads=1)
        assert pol.plan["method"] == "consistency" and pol.engine_calls_per_chunk == calls
        hist = {k: np.repeat(v[:, None], pol.n_obs_steps, axis=1) for k, v in obs.items()}
        got = pol.predict_chunk(hist, seed=11)
        feeds = encoder_feeds(pol.spec, hist)
        with torch.no_grad():
            g = enc(*[torch.from_numpy(feeds[k]) for k in enc.input_names]).numpy()
        x = sample_student(student, sched, 3, seed=11, cond=g, timesteps=ck["sampling"]["timesteps"][str(calls)])
        s = pol.action_start
        want = unnormalize(x[:, s:s + pol.n_action_steps], pol.spec["action"]["normalization"])
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)  # as the tiny student's test: ORT vs torch
        pol.close()
