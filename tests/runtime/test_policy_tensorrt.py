"""runtime.load_policy("NAME.plan"): the denoiser and the encoder plans through the TensorRT runner.

Everything here runs on stand-ins (tests/trt_fakes.py): a fake TensorRT module whose two fake
plans compute what the policy's two ONNX graphs compute (through ONNX Runtime on the host), and
fake CUDA memory. That tests our control and data flow (which plan, which inputs in which order,
padding and splitting to the profile, copies, frees, refusals); it is no evidence that TensorRT
builds or runs these plans: nothing in this project has run TensorRT.
"""
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("polygraphy", reason="polygraphy not installed (its CUDA wrapper carries the copies)")

import runtime  # noqa: E402
from runtime.backends import tensorrt as rt  # noqa: E402
from runtime.contract import ManifestError  # noqa: E402
from runtime.policy import PolicyError  # noqa: E402
from trt_fakes import fake_policy_plans, fake_tensorrt, install_fake_gpu  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "engines" / "obstacle-policy.onnx"
FAST = dict(method="ddim", steps=3, threads=1)


@pytest.fixture
def plans(tmp_path, monkeypatch):
    trt = fake_tensorrt("10.3.0.30")
    mem = install_fake_gpu(monkeypatch, trt)
    # static profile 2: a batch of 3 runs as 2 + 1 (the 1 padded to 2) in both plans
    return fake_policy_plans(tmp_path, POLICY, profile=(2, 2, 2)), trt, mem


def _episode(b, ticks, seed=0):
    rng = np.random.default_rng(seed)
    return [{"observation.state": rng.uniform(-1, 1, (b, 2)).astype(np.float32),
             "observation.environment_state": rng.uniform(-1, 1, (b, 5)).astype(np.float32)}
            for _ in range(ticks)]


def test_a_policy_plan_runs_both_plans_and_acts_as_its_onnx_export(plans):
    plan, trt, mem = plans
    onnx = plan.with_suffix(".onnx")
    policy = runtime.load_policy(plan, seed=4, **FAST)
    ref = runtime.load_policy(onnx, seed=4, **FAST)
    try:
        assert isinstance(policy.engine.runner, rt.TensorRTRunner)
        assert isinstance(policy.encoder, rt.TensorRTEncoder) and policy.encoder.is_active
        for obs in _episode(3, 10):  # two chunks (n_action_steps 8), the queue as the ONNX policy fills it
            np.testing.assert_allclose(policy.select_action(obs), ref.select_action(obs), rtol=0, atol=1e-5)
        assert policy.chunks == ref.chunks == 2
        # every engine call ran at the plan's static batch 2 (3 = 2 + padded 1), in both plans
        runs = [r for ctx in trt._state["contexts"] for r in ctx.runs]
        assert runs and {b for b, _ in runs} == {2}
        enc_ctx, den_ctx = trt._state["contexts"]  # the encoder loads first
        assert len(enc_ctx.runs) == 2 * policy.chunks and len(den_ctx.runs) == 2 * 3 * policy.chunks
    finally:
        policy.close()
    assert not policy.encoder.is_active and not policy.engine.runner.is_active
    assert mem.buffers == {}  # both plans' device buffers freed


def test_the_encoder_plan_changes_the_actions(plans):
    """The fakes can fail: an encoder plan of other weights (the denoiser's ONNX with the
    encoder's name would not even load) gives other actions."""
    plan, _, _ = plans
    hist = {"observation.state": np.full((1, 2, 2), 0.2, np.float32),
            "observation.environment_state": np.full((1, 2, 5), -0.4, np.float32)}
    policy = runtime.load_policy(plan, **FAST)
    try:
        a = policy.predict_chunk(hist, seed=0)
        real = policy.encoder._execute
        policy.encoder._execute = lambda feeds, b: {k: v + 1 for k, v in real(feeds, b).items()}
        assert not np.allclose(policy.predict_chunk(hist, seed=0), a, atol=1e-3)
    finally:
        policy.close()


def test_plan_refusals(plans):
    plan, _, mem = plans
    side = plan.with_suffix(".json")
    m = json.loads(side.read_text())
    enc_plan = plan.with_name(m["policy"]["encoder"]["plan"]["file"])

    tie = m["policy"]["encoder"].pop("plan")
    side.write_text(json.dumps(m))
    with pytest.raises(PolicyError, match=r"ties no encoder plan .*ddpm-export build --onnx obstacle-policy.onnx"):
        runtime.load_policy(plan, **FAST)
    m["policy"]["encoder"]["plan"] = tie
    side.write_text(json.dumps(m))

    data = enc_plan.read_bytes()
    enc_plan.unlink()
    with pytest.raises(PolicyError, match="encoder plan is missing"):
        runtime.load_policy(plan, **FAST)
    enc_plan.write_bytes(data + b" ")  # not the plan its NAME.json describes
    with pytest.raises(ManifestError, match="sha256 differs"):
        runtime.load_policy(plan, **FAST)
    enc_plan.write_bytes(data)
    assert mem.buffers == {}  # the denoiser was closed each time


def test_an_encoder_plan_for_another_gpu_is_an_engine_mismatch_and_frees_the_denoiser(plans):
    """EngineMismatch: what the Jetson app falls back to the ONNX export on."""
    plan, _, mem = plans
    side = plan.with_suffix(".json")
    m = json.loads(side.read_text())
    m["policy"]["encoder"]["plan"]["engine"]["compute_capability"] = "9.0"
    side.write_text(json.dumps(m))
    with pytest.raises(rt.EngineMismatch, match="compute capability 9.0"):
        runtime.load_policy(plan, **FAST)
    assert mem.buffers == {}


def test_the_encoder_runner_checks_its_inputs(plans):
    plan, _, _ = plans
    policy = runtime.load_policy(plan, **FAST)
    try:
        good = {"observation.state": np.zeros((1, 2, 2), np.float32),
                "observation.environment_state": np.zeros((1, 2, 5), np.float32)}
        with pytest.raises(rt.runner.InputError, match=r"encoder inputs \['observation.state'\], expected"):
            policy.encoder({"observation.state": good["observation.state"]})
        with pytest.raises(rt.runner.InputError, match="'observation.environment_state' is float32 \\[1, 2, 4\\]"):
            policy.encoder(dict(good, **{"observation.environment_state": np.zeros((1, 2, 4), np.float32)}))
        assert policy.encoder(good).shape == (1, 14)
    finally:
        policy.close()


# --- on a GPU with TensorRT (never run here: no GPU with TensorRT on this project's machines) --
@pytest.mark.gpu
@pytest.mark.trt
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_the_shipped_policy_builds_and_acts_as_its_onnx_export_on_tensorrt(tmp_path, fp16):
    """The real check the stand-ins above cannot make: both plans of engines/obstacle-policy
    built by TensorRT (float32, and --fp16: the builder flag below TensorRT 11, where it still
    exists) give the ONNX policy's chunk within FP16's error on raw actions."""
    pytest.importorskip("tensorrt", reason="needs the full TensorRT (pip install tensorrt-cu12; "
                                           "Jetson: JetPack's python3-libnvinfer)")
    pytest.importorskip("onnx", reason="pip install onnx (the FP16 builder-flag build reads the graph)")
    import shutil

    import tensorrt

    from ddpm_export.export.tensorrt import BuildConfig, build_engine

    if fp16 and rt.parse_version(tensorrt.__version__) >= (11, 0):
        pytest.skip("TensorRT 11 has no FP16 builder flag; the FP16 export is strongly typed there")
    for f in (POLICY, POLICY.with_name("obstacle-policy-encoder.onnx"), POLICY.with_suffix(".json")):
        shutil.copy(f, tmp_path / f.name)
    onnx = tmp_path / POLICY.name
    m = build_engine(BuildConfig(onnx=str(onnx), fp16=fp16, max_batch=8), log=lambda s: None)
    assert m["policy"]["encoder"]["plan"]["engine"]["precision_mode"] == "fp32"  # state-only encoder
    hist = {"observation.state": np.array([[[-1.0, 0.02], [-0.95, 0.03]]] * 3, np.float32),
            "observation.environment_state": np.array([[[1.0, 0.0, 0.0, 0.0, 0.35]] * 2] * 3, np.float32)}
    want = runtime.load_policy(onnx, method="ddim", steps=10).predict_chunk(hist, seed=0)
    policy = runtime.load_policy(onnx.with_suffix(".plan"), method="ddim", steps=10)
    try:
        assert isinstance(policy.encoder, rt.TensorRTEncoder)
        got = policy.predict_chunk(hist, seed=0)
    finally:
        policy.close()
    # raw actions of scale ~1; limits set before any run (none yet): a GPU run should report the
    # measured differences and tighten them
    assert np.abs(got - want).max() < (5e-2 if fp16 else 1e-3)
