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


def test_fp16_image_encoder_computes_in_fp16_with_groupnorm_and_spatial_softmax_float32(exported):
    """Issue 26 item 2 (FP16): the image encoder of an --fp16 export is an FP16 graph whose
    GroupNorms and spatial softmax compute in float32, its I/O float32, checked against float32
    PyTorch at the FP16 limit (the measured difference is in the manifest)."""
    import onnx
    import onnxruntime as ort

    from ddpm_export.export.fp16 import node_precisions

    man = json.loads(exported[True].with_suffix(".json").read_text())
    enc = man["policy"]["encoder"]
    assert enc["precision"] == "fp16" and enc["fp32_islands"][:2] == ["GroupNorm", "spatial softmax"]
    assert 0 < enc["parity"]["max_abs_diff"] <= enc["parity"]["atol"] == 2e-2
    path = exported[True].with_name(enc["file"])
    assert enc["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    model = onnx.load(str(path))
    rows = node_precisions(model)
    norms = [r for r in rows if r["op_type"] in ("GroupNormalization", "InstanceNormalization")]
    soft = [r for r in rows if r["op_type"] == "Softmax"]
    assert norms and all(r["dtype"] == "float32" for r in norms), norms[:3]
    assert soft and all(r["dtype"] == "float32" for r in soft), soft
    convs = [r for r in rows if r["op_type"] == "Conv"]
    assert convs and all(r["dtype"] == "float16" for r in convs)  # the backbone computes in FP16
    elem = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}
    assert set(elem.values()) == {onnx.TensorProto.FLOAT}  # float32 I/O: the runtime feeds the same arrays
    # the FP16 graph against the float32 export's encoder on other inputs, at batch 5
    rng = np.random.default_rng(7)
    feeds = {"observation.state": rng.standard_normal((5, 2, 3)).astype(np.float32),
             "observation.images": rng.standard_normal((5, 2, 1, 3, 32, 32)).astype(np.float32)}
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)[0]  # noqa: E731
    half, full = run(path), run(exported[False].with_name("p-encoder.onnx"))
    assert np.abs(half - full).max() <= 2e-2 and not np.array_equal(half, full)
    np.testing.assert_array_equal(half[:, :3], full[:, :3])  # the state part of global_cond stays float32


def test_a_state_only_encoder_stays_float32_with_fp16_and_says_why():
    from ddpm_export.export.policy_export import encoder_precision
    from ddpm_export.model.checkpoint import load_checkpoint
    from ddpm_export.model.lerobot_diffusion import build_lerobot_encoder

    enc = build_lerobot_encoder(load_checkpoint(REPO / "engines" / "obstacle-policy.pt"))
    precision, islands, note = encoder_precision(enc, fp16=True)
    assert (precision, islands) == ("fp32", []) and "state-only" in note and "gain nothing" in note
    assert encoder_precision(enc, fp16=False) == ("fp32", [], None)


def test_builder_flag_islands_of_the_float32_image_encoder_are_the_fp16_exports(exported):
    """An FP16 builder-flag build of the float32 image encoder (TensorRT 8.5-10) pins the same
    islands the FP16 export keeps float32: every GroupNorm's nodes and the spatial softmax; on
    the layers TensorRT's ONNX parser makes (tests/trt_fakes.py parsed_network, a stand-in)
    every one is found, so the build would not stop."""
    from types import SimpleNamespace

    import onnx

    from ddpm_export.export import tensorrt as B
    from trt_fakes import parsed_network

    path = exported[False].with_name("p-encoder.onnx")
    graph = onnx.load(str(path)).graph
    islands = B.fp32_island_nodes(graph)
    ops = {n.name: n.op_type for n in graph.node}
    must = {n for n, op in ops.items() if op in ("InstanceNormalization", "GroupNormalization", "Softmax")}
    assert must and must <= set(islands)
    assert not any(ops[n] == "Conv" for n in islands)  # the backbone's convolutions go FP16
    trt = SimpleNamespace(DataType=SimpleNamespace(FLOAT="FLOAT", HALF="HALF"),
                          LayerType=SimpleNamespace(SHAPE="SHAPE", CONSTANT="CONSTANT", SHUFFLE="SHUFFLE"))
    outs = {n.name: [o for o in n.output if o] for n in graph.node}
    tensors = {o for v in outs.values() for o in v} | {i.name for i in graph.input} | {i.name for i in graph.initializer}
    pinned, located = B.pin_fp32_islands(parsed_network(path), trt, islands, list(ops), outs, tensors)
    assert pinned and B.unpinned_island_nodes(ops, islands, pinned, located) == []


def test_an_fp16_image_policy_runs_as_plans_on_the_stand_in_tensorrt(exported, tmp_path, monkeypatch):
    """The camera input [B, n_obs, n_cam, C, H, W] through the encoder plan's runner: its two fake
    plans (computing the FP16 ONNX graphs, tests/trt_fakes.py) act as the ONNX export does.
    Control and data flow only: no evidence that TensorRT runs these plans."""
    pytest.importorskip("polygraphy", reason="polygraphy not installed")
    import runtime
    from trt_fakes import fake_policy_plans, fake_tensorrt, install_fake_gpu

    install_fake_gpu(monkeypatch, fake_tensorrt("10.3.0.30"))
    plan = fake_policy_plans(tmp_path, exported[True], profile=(1, 2, 2))
    rng = np.random.default_rng(5)
    hist = {"observation.state": rng.uniform(-1, 1, (3, 2, 3)).astype(np.float32),
            "observation.image": rng.uniform(0, 1, (3, 2, 3, 32, 32)).astype(np.float32)}
    kw = dict(method="ddim", steps=2, threads=1)
    trt_policy, onnx_policy = runtime.load_policy(plan, **kw), runtime.load_policy(exported[True], **kw)
    try:
        np.testing.assert_allclose(trt_policy.predict_chunk(hist, seed=2), onnx_policy.predict_chunk(hist, seed=2),
                                   rtol=0, atol=1e-5)
    finally:
        trt_policy.close()
