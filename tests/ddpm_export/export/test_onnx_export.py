"""ONNX export: contract I/O, parity through ONNX Runtime, manifest, FP16 islands, errors."""
import json
from collections import Counter

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from ddpm_export.model.checkpoint import CheckpointError  # noqa: E402
from runtime.io import sha256_file  # noqa: E402
from ddpm_export.export.onnx_export import (  # noqa: E402
    FP16_ATOL,
    ExportError,
    export_onnx,
    ort_session,
    torch_to_onnx,
)
from runtime import contract  # noqa: E402
from runtime.schedulers.schedule import ScheduleConfig  # noqa: E402
from tiny_unet import TINY_EXPORT_COMMAND, tiny_model  # noqa: E402



@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture(scope="module")
def fp32(tiny_export):
    return tiny_export["onnx"], tiny_export["manifest"], tiny_export["model"]


@pytest.fixture(scope="module")
def fp16(tiny):
    d, ckpt, model = tiny
    out = d / "engines" / "tiny_fp16.onnx"
    return out, export_onnx(ckpt, out, fp16=True), model


def _run(path, x, t):
    return ort_session(path).run(None, {"x_t": x.numpy(), "t": t.numpy()})[0]


def _elem_types(proto):
    """name -> ONNX elem type of every tensor in the graph (after shape inference)."""
    g = onnx.shape_inference.infer_shapes(proto).graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
    types.update({i.name: i.data_type for i in g.initializer})
    for n in g.node:
        if n.op_type == "Constant":
            types[n.output[0]] = n.attribute[0].t.data_type
    return types


def test_float32_export_follows_the_contract(fp32):
    path, man, _ = fp32
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == 17
    ins = {v.name: v.type.tensor_type for v in proto.graph.input}
    assert list(ins) == ["x_t", "t"] and [o.name for o in proto.graph.output] == ["eps"]
    assert ins["x_t"].elem_type == onnx.TensorProto.FLOAT
    assert ins["t"].elem_type == onnx.TensorProto.INT32
    out = proto.graph.output[0].type.tensor_type
    assert out.elem_type == onnx.TensorProto.FLOAT
    for tt in (ins["x_t"], ins["t"], out):
        assert tt.shape.dim[0].dim_param == contract.BATCH_AXIS
    assert [d.dim_value for d in out.shape.dim[1:]] == [1, 8, 8]
    ops = Counter(n.op_type for n in proto.graph.node)
    # GroupNorm as InstanceNormalization (TensorRT 8.5+), never GroupNormalization (10.9+)
    assert ops["InstanceNormalization"] > 0 and ops["GroupNormalization"] == 0
    assert ops["Softmax"] > 0 and ops["Dropout"] == 0
    producers = {o: n for n in proto.graph.node for o in n.output}
    for n in proto.graph.node:
        if n.op_type == "Pad":  # pads folded to a constant for older TensorRT parsers
            assert producers[n.input[1]].op_type == "Constant"
    p = man["checks"]["parity"]
    assert p["passed"] and p["max_abs_diff"] < 1e-4 and p["batches"] == [1, 8]
    assert p["timesteps"] == [0, 1, 250, 500, 999]


def test_float32_parity_at_batches_1_3_8(fp32):
    path, _, model = fp32
    sess = ort_session(path)
    g = torch.Generator().manual_seed(1)
    for b in (1, 3, 8):
        x = torch.randn(b, 1, 8, 8, generator=g)
        t = torch.randint(0, 1000, (b,), generator=g, dtype=torch.int32)
        got = sess.run(None, {"x_t": x.numpy(), "t": t.numpy()})[0]
        with torch.no_grad():
            want = model(x, t).numpy()
        assert got.shape == (b, 1, 8, 8) and got.dtype == np.float32
        assert np.abs(got - want).max() < 1e-4


def test_t_is_int32_and_int64_is_refused(fp32):
    path, _, model = fp32
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([5, 999], dtype=torch.int32)
    with torch.no_grad():
        np.testing.assert_allclose(_run(path, x, t), model(x, t).numpy(), atol=1e-4, rtol=0)
    with pytest.raises(Exception, match="(?i)int64|type"):
        _run(path, x, t.long())


def test_manifest_embedded_equals_sidecar_and_hashes_match(fp32, tiny):
    path, man, _ = fp32
    _, ckpt, _ = tiny
    side = json.loads(path.with_suffix(".json").read_text())
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    embedded = json.loads(meta[contract.MANIFEST_KEY])
    assert embedded["onnx_sha256"] is None  # a file cannot hold its own hash
    assert side["onnx_sha256"] == sha256_file(path) == man["onnx_sha256"]
    assert {**embedded, "onnx_sha256": side["onnx_sha256"]} == side == man
    assert json.loads(contract.read_embedded_manifest(path)) == embedded
    assert contract.read_manifest(path) == side
    src = side["source"]
    assert src["checkpoint_sha256"] == sha256_file(ckpt) and src["weights"] == "ema"
    assert src["step"] == 20 and src["provenance"]["command"] == "ddpm-export train --preset tiny"
    assert side["schedule"] == ScheduleConfig().to_dict() and side["image_shape"] == [1, 8, 8]
    assert side["precision"] == "fp32" and side["batch_range"] == {"min": 1, "opt": 8, "max": 64}
    assert side["command"] == TINY_EXPORT_COMMAND
    assert side["tools"]["torch"] == torch.__version__ and side["tools"]["onnxruntime"]
    assert side["onnx"]["opset"] == 17


def test_fp16_graph_has_fp32_islands_as_casts(fp16):
    path, man, _ = fp16
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    g = proto.graph
    # float32 I/O, cast at the edges inside the graph
    assert [v.type.tensor_type.elem_type for v in g.input] == [onnx.TensorProto.FLOAT, onnx.TensorProto.INT32]
    assert g.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    casts = Counter(a.i for n in g.node if n.op_type == "Cast" for a in n.attribute if a.name == "to")
    assert casts[onnx.TensorProto.FLOAT16] > 0 and casts[onnx.TensorProto.FLOAT] > 0
    types = _elem_types(proto)
    F16, F32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    seen = Counter()
    for n in g.node:
        if n.op_type == "Conv":  # data and weights in FP16
            assert types[n.input[0]] == F16 and types[n.input[1]] == F16, n.name
        elif n.op_type in ("InstanceNormalization", "Softmax", "Sin", "Cos"):
            assert types[n.input[0]] == F32, n.name  # the FP32 islands
        elif n.op_type == "MatMul":
            assert types[n.input[0]] == F16, n.name
        seen[n.op_type] += 1
    assert seen["Conv"] > 0 and seen["InstanceNormalization"] > 0 and seen["Softmax"] > 0
    assert man["precision"] == "fp16" and man["onnx"]["fp32_islands"]


def test_fp16_runs_in_onnxruntime_within_bound(fp16):
    path, man, model = fp16
    fe = man["checks"]["fp16_error"]
    assert [r["t"] for r in fe["rows"]] == list(range(0, 1000, 50)) + [999]
    # stated bound: max |eps_fp16 - eps_fp32| < FP16_ATOL (0.02; measured ~4e-3 here)
    assert 0 < fe["max_abs"] < FP16_ATOL and fe["mean_abs"] < 2e-3
    assert man["checks"]["parity"]["passed"] and man["checks"]["parity"]["atol"] == FP16_ATOL
    x = torch.randn(3, 1, 8, 8)
    t = torch.tensor([0, 500, 999], dtype=torch.int32)
    got = _run(path, x, t)
    with torch.no_grad():
        err = np.abs(got - model(x, t).numpy()).max()
    assert got.dtype == np.float32 and 1e-6 < err < FP16_ATOL  # really FP16, and close


def test_export_leaves_the_torch_model_untouched(tmp_path):
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for fp16 in (False, True):
        torch_to_onnx(model, tmp_path / "m.onnx", fp16=fp16)
        assert not any(m.training for m in model.modules())  # still eval: dropout stays off
        for k, v in model.state_dict().items():
            assert v.dtype == torch.float32 and torch.equal(v, before[k]), k
    model.train()  # a training-mode model stays in training mode, its graph has no dropout
    torch_to_onnx(model, tmp_path / "t.onnx")
    assert all(m.training for m in model.modules())
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 700], dtype=torch.int32)
    with torch.no_grad():
        want = model.eval()(x, t).numpy()
    np.testing.assert_allclose(_run(tmp_path / "t.onnx", x, t), want, atol=1e-4, rtol=0)


def test_parity_failure_raises_and_writes_nothing(tiny, tmp_path):
    _, ckpt, _ = tiny
    out = tmp_path / "out" / "bad.onnx"
    out.parent.mkdir()
    with pytest.raises(ExportError, match="failed parity.*nothing was written"):
        export_onnx(ckpt, out, fp16=True, parity_atol=1e-6)  # FP16 can't match 1e-6
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert list(out.parent.iterdir()) == []  # no temporary files left behind


def test_no_check_still_validates_graph_and_records_batch_range(tiny, tmp_path):
    _, ckpt, _ = tiny
    man = export_onnx(ckpt, tmp_path / "m.onnx", check=False, batch_range=(1, 4, 16), opset=13)
    assert man["checks"]["parity"] is None and man["checks"]["onnx_checker"]
    assert man["batch_range"] == {"min": 1, "opt": 4, "max": 16} and man["onnx"]["opset"] == 13
    assert contract.read_manifest(tmp_path / "m.onnx")["batch_range"]["max"] == 16
    assert "export_onnx(" in man["command"]  # no command given: the API call is recorded


def test_bad_arguments_raise_clear_errors(tiny, tmp_path):
    _, ckpt, _ = tiny
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        export_onnx(tmp_path / "missing.pt", tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"must end in \.onnx"):
        export_onnx(ckpt, tmp_path / "m.plan")
    for bad in (12, 21, "17"):
        with pytest.raises(ValueError, match="opset .* is not supported; expected 13..20"):
            export_onnx(ckpt, tmp_path / "m.onnx", opset=bad)
    with pytest.raises(ValueError, match="1 <= min <= opt <= max"):
        export_onnx(ckpt, tmp_path / "m.onnx", batch_range=(8, 1, 64))
    with pytest.raises(ValueError, match="weights must be 'ema' or 'model'"):
        export_onnx(ckpt, tmp_path / "m.onnx", weights="raw")
    with pytest.raises(TypeError, match="expected a ddpm_export.model.unet.UNet"):
        torch_to_onnx(torch.nn.Linear(2, 2), tmp_path / "m.onnx")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a ddpm-export checkpoint"):
        export_onnx(tmp_path / "foreign.pt", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


# ---------------------------------------------------------------------------
# a network we did not write: diffusers' UNet2DModel behind the contract
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def diffusers_fp16(tmp_path_factory):
    diffusers = pytest.importorskip("diffusers")
    from ddpm_export.export.onnx_export import export_module
    from ddpm_export.model.external import DiffusersUNet

    torch.manual_seed(0)
    # the train_unconditional structure, two levels, 2 heads of 8 at the attention level
    net = diffusers.UNet2DModel(
        sample_size=(8, 16), in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, attention_head_dim=8).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model = DiffusersUNet(net)
    out = tmp_path_factory.mktemp("diffusers") / "d16.onnx"
    man = export_module(model, ScheduleConfig(), None, out, fp16=True, batch_range=(1, 1, 2))
    return out, man, model


def test_fp16_islands_on_the_diffusers_network(diffusers_fp16):
    from ddpm_export.export.fp16 import node_precisions

    path, man, _ = diffusers_fp16
    proto = onnx.load(str(path))
    types = _elem_types(proto)
    F16, F32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    seen = Counter()
    for n in proto.graph.node:
        if n.op_type == "Conv":
            assert types[n.input[0]] == F16 and types[n.input[1]] == F16, n.name
        elif n.op_type in ("InstanceNormalization", "Softmax", "Sin", "Cos"):
            assert types[n.input[0]] == F32, n.name
        seen[n.op_type] += 1
    assert seen["Conv"] > 0 and seen["InstanceNormalization"] > 0 and seen["Softmax"] > 0 and seen["Sin"] > 0
    # the time embedding MLP (diffusers' time_embedding.linear_1/2) computes in float32, and the
    # attention's score and value products around the softmax too; the projections do not
    rows = node_precisions(proto)
    temb = [r for r in rows if "time_embedding" in r["name"] and r["op_type"] in ("Gemm", "MatMul")]
    assert len(temb) == 2 and {r["dtype"] for r in temb} == {"float32"}
    proj = [r for r in rows if "to_q" in r["name"] and r["op_type"] in ("Gemm", "MatMul")]
    assert proj and {r["dtype"] for r in proj} == {"float16"}
    assert man["onnx"]["network"] == "diffusers.UNet2DModel"
    assert "time_embedding (timestep embedding)" in man["onnx"]["fp32_islands"]


def test_fp16_diffusers_network_within_bound(diffusers_fp16):
    path, man, model = diffusers_fp16
    fe = man["checks"]["fp16_error"]
    # stated bound as for our U-Net: max |eps_fp16 - eps_fp32| < FP16_ATOL = 0.02
    assert 0 < fe["max_abs"] < FP16_ATOL
    x = torch.randn(2, 3, 8, 16)
    t = torch.tensor([0, 999], dtype=torch.int32)
    got = _run(path, x, t)
    with torch.no_grad():
        err = np.abs(got - model(x, t).numpy()).max()
    assert got.dtype == np.float32 and 1e-6 < err < FP16_ATOL
    assert man["image_shape"] == [3, 8, 16] and len(man["source"]["checkpoint_sha256"]) == 64


def _tiny_diffusers(seed=0):
    diffusers = pytest.importorskip("diffusers")
    from ddpm_export.model.external import DiffusersUNet

    torch.manual_seed(seed)
    net = diffusers.UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, attention_head_dim=8).eval()
    return DiffusersUNet(net)


def test_fp16_overflow_of_the_weights_is_named(tmp_path):
    """The real-size tutorial U-Net's NaN FP16 eps (issue 18): deploy_table's weights (init +
    0.05 N(0, 1) on every parameter) drive float32 activations to 1.5e5 at 128 px, first at
    up_blocks.2.upsamplers.0.conv; in FP16 that is inf, and the GroupNorm island after it
    makes NaN. The same mechanism at toy size: an upsampler conv whose float32 output is past
    65504. The gate fails, and says which module and why, instead of only 'non-finite'."""
    from ddpm_export.export.onnx_export import export_module

    model = _tiny_diffusers()
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([500], dtype=torch.int32)
    healthy = _tiny_diffusers()
    with torch.no_grad():
        model.net.up_blocks[0].upsamplers[0].conv.weight.mul_(1e6)
        assert torch.isfinite(model(x, t)).all()  # float32 is fine
    out = tmp_path / "o.onnx"
    with pytest.raises(ExportError, match=r"non-finite.*exceeds FP16's range \(65504\): "
                                          r"up_blocks\.0\.upsamplers\.0\.conv \(Conv2d\) outputs"):
        export_module(model, ScheduleConfig(), None, out, fp16=True, batch_range=(1, 1, 2))
    assert not out.exists()
    from ddpm_export.export.fp16 import FP16_MAX, fp16_overflow

    assert fp16_overflow(healthy, x, t) is None  # the plain init fits in FP16
    hit = fp16_overflow(model, x, t)
    assert hit["module"] == "up_blocks.0.upsamplers.0.conv" and hit["max_abs"] > FP16_MAX


def test_fp16_trace_in_channels_last_gives_the_same_graph(monkeypatch):
    """The FP16 export traces in channels-last (CPU half convs are ~75x faster there: the
    real-size tutorial export took 2205 s in NCHW); the graph must not depend on it."""
    from ddpm_export.export import onnx_export as oe

    model = _tiny_diffusers()
    conv2d = torch.nn.functional.conv2d
    half_inputs = []

    def spy(x, *a, **k):
        if x.dtype == torch.float16:
            half_inputs.append(x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))
        return conv2d(x, *a, **k)

    monkeypatch.setattr(torch.nn.functional, "conv2d", spy)
    oe._export_proto(model, True, 17)
    assert half_inputs and all(half_inputs)  # every half conv of the trace ran channels-last
    graphs = {}
    for cl in (False, True):
        monkeypatch.setattr(oe, "_FP16_TRACE_CHANNELS_LAST", cl, raising=False)
        torch.manual_seed(1)
        graphs[cl] = oe._export_proto(model, True, 17).graph.SerializeToString()
    assert graphs[True] == graphs[False]
