"""ddpm_export/export/tensorrt.py: decisions, messages, and the build's control flow.

The control-flow tests replace Polygraphy's loaders and TensorRT with recording
fakes: they check what *we* ask them for and what we write, nothing about
TensorRT itself (that is tests/runtime/backends/test_tensorrt.py's gpu+trt test
and scripts/gpu_check.sh). The fakes are for control flow only: every call's
arguments are first bound to the real installed Polygraphy class's signature
(inspect.signature), so a misspelt keyword fails here; the logger is Polygraphy's
real G_LOGGER; TensorRT names are checked against its binding sources per version.
"""
import hashlib
import inspect
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

click_testing = pytest.importorskip("click.testing", reason="click not installed ('ddpm-export[train]')")

from ddpm_export.export import tensorrt as B  # noqa: E402
from runtime import contract  # noqa: E402
from runtime.backends import tensorrt as rt  # noqa: E402
from runtime.contract import BatchRange  # noqa: E402
from trt_fakes import (TRT_API_VERSIONS, FakeEngine, FakeLayer, FakeNetwork,  # noqa: E402
                       missing_trt_names, parsed_network, trt_api_list)

ROOT = Path(__file__).resolve().parents[3]

SHA = "cd" * 32
DEVICE = rt.DeviceInfo(0, "NVIDIA H100 80GB HBM3", (9, 0), driver_version=12080)


def _export(tmp_path, precision="fp16", name="m-fp16.onnx", batch_range=(1, 8, 64),
            image_shape=(3, 32, 32), conditions=()):
    """A stand-in export: arbitrary bytes + a valid sidecar carrying their sha256."""
    onnx = tmp_path / name
    onnx.write_bytes(b"onnx bytes " + precision.encode())
    m = contract.manifest_dict(
        image_shape=image_shape, conditions=conditions,
        schedule={"kind": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_timesteps": 1000,
                  "variance_type": "fixedlarge", "clip_denoised": True},
        precision=precision, batch_range=batch_range,
        source={"checkpoint": "m.pt", "checkpoint_sha256": SHA}, tools={}, command="export",
        onnx_sha256=hashlib.sha256(onnx.read_bytes()).hexdigest())
    contract.write_manifest(onnx, m)
    return onnx


# --- pure decisions ----------------------------------------------------------------
def test_resolve_profile():
    assert B.resolve_profile(None) == BatchRange(1, 8, 64)
    assert B.resolve_profile({"min": 2, "opt": 8, "max": 32}) == BatchRange(2, 8, 32)
    assert B.resolve_profile(None, max_batch=256, opt_batch=64) == BatchRange(1, 64, 256)
    assert B.resolve_profile(None, min_batch=16) == BatchRange(16, 16, 64)  # opt clamped
    assert B.resolve_profile(None, max_batch=4) == BatchRange(1, 4, 4)
    assert B.resolve_profile(None, static_batch=64) == BatchRange(64, 64, 64)
    with pytest.raises(B.BuildError, match="--static-batch 8 sets min = opt = max; drop --max-batch"):
        B.resolve_profile(None, max_batch=16, static_batch=8)
    with pytest.raises(B.BuildError, match="min=32.*max=16.*--min-batch"):
        B.resolve_profile(None, min_batch=32, max_batch=16)
    with pytest.raises(B.BuildError, match="opt=128"):
        B.resolve_profile(None, opt_batch=128)


@pytest.mark.parametrize("trt,fp16,graph,mode", [
    ("8.5.2", True, "fp32", "fp16_builder_flag"),
    ("8.6.2", True, "fp32", "fp16_builder_flag"),
    ("10.3.0", True, "fp32", "fp16_builder_flag"),
    ("10.3.0", True, "fp16", "strongly_typed"),
    ("10.3.0", False, "fp16", "strongly_typed"),
    ("11.4.0", True, "fp16", "strongly_typed"),
    ("11.4.0", False, "fp32", "fp32"),
    ("8.5.2", False, "fp32", "fp32"),
])
def test_precision_mode(trt, fp16, graph, mode):
    assert B.precision_mode(trt, fp16, graph) == mode


def test_precision_mode_refusals():
    with pytest.raises(B.BuildError, match="no FP16 builder flag.*export --fp16"):
        B.precision_mode("11.0.0", True, "fp32")
    with pytest.raises(B.BuildError, match="strongly typed networks need TensorRT >= 10"):
        B.precision_mode("8.6.2", True, "fp16")
    assert B.export_precision("8.5.2", True) == "fp32"
    assert B.export_precision("10.3.0", True) == "fp16"
    assert B.export_precision("11.4.0", False) == "fp32"


def test_check_config():
    B.check_config(B.BuildConfig(onnx="a.onnx"))
    B.check_config(B.BuildConfig())  # neither: the default export (default_source)
    for cfg, match in ((B.BuildConfig(onnx="a.onnx", checkpoint="a.pt"), "at most one"),
                       (B.BuildConfig(onnx="a.onnx", out="a.onnx"), "NAME.plan"),
                       (B.BuildConfig(onnx="a.onnx", builder_opt_level=7), "0..5"),
                       (B.BuildConfig(onnx="a.onnx", workspace_mb=0), "positive")):
        with pytest.raises(B.BuildError, match=match):
            B.check_config(cfg)
    with pytest.raises(B.BuildError, match="--version-compatible needs TensorRT >= 8.6"):
        B.check_config(B.BuildConfig(onnx="a.onnx", version_compatible=True), "8.5.2.2")
    with pytest.raises(B.BuildError, match="--builder-opt-level needs"):
        B.check_config(B.BuildConfig(onnx="a.onnx", builder_opt_level=1), "8.5.2")
    with pytest.raises(B.BuildError, match="--builder-opt-level needs"):  # issue 28: 0 == False
        B.check_config(B.BuildConfig(onnx="a.onnx", builder_opt_level=0), "8.5.2")
    with pytest.raises(B.BuildError, match="too old"):
        B.check_config(B.BuildConfig(onnx="a.onnx"), "8.4.3")
    # issue 28 item 9: a version this build cannot read is one BuildError, not a traceback
    with pytest.raises(B.BuildError, match=r"reports tensorrt.__version__ 'dev'.*MAJOR\.MINOR.*reinstall"):
        B.check_config(B.BuildConfig(onnx="a.onnx"), "dev")
    B.check_config(B.BuildConfig(onnx="a.onnx"), "10.0.0b6")  # TensorRT 10.0 EA's version
    B.check_config(B.BuildConfig(onnx="a.onnx", version_compatible=True, builder_opt_level=0), "8.6.2")


def test_check_out_path(tmp_path):
    own = _export(tmp_path, name="a.onnx")
    B.check_out_path(tmp_path / "a.plan", own, force=False)  # shares its own export's NAME.json
    other = _export(tmp_path, precision="fp16", name="a-fp16.onnx")
    with pytest.raises(B.BuildError, match=r"a\.json is the manifest of .*a\.onnx.*a-fp16\.plan"):
        B.check_out_path(tmp_path / "a.plan", other, force=True)
    (tmp_path / "b.plan").write_bytes(b"x")
    with pytest.raises(B.BuildError, match="--force"):
        B.check_out_path(tmp_path / "b.plan", other, force=False)
    B.check_out_path(tmp_path / "b.plan", other, force=True)


def test_explain_failure():
    cfg, prof, onnx, log = B.BuildConfig(onnx="m.onnx"), BatchRange(1, 8, 64), Path("m.onnx"), Path("m.build.log")
    parse = ("[I] Loading\n[E] In node 42 with name: /down/GroupNormalization and operator: "
             "GroupNormalization (parseNode): UNSUPPORTED_NODE: No importer\n"
             "[!] Could not parse ONNX correctly\n")
    msg = B.explain_failure(parse, onnx, "10.3.0", cfg, prof, log)
    assert "cannot parse m.onnx: In node 42 with name: /down/GroupNormalization" in msg
    assert "--opset 17" in msg and "m.build.log" in msg
    mem = ("[E] [virtualMemoryBuffer.cpp::resizePhysical] Error Code 2: OutOfMemory (Requested "
           "size was 4294967296 bytes.)\n[!] Invalid Engine.\n")
    msg = B.explain_failure(mem, onnx, "10.3.0", B.BuildConfig(onnx="m", workspace_mb=512), prof, log)
    assert "ran out of memory" in msg and "--workspace (now 512 MB)" in msg and "--max-batch (now 64)" in msg
    msg = B.explain_failure("[!] Invalid Engine. Please ensure\n", onnx, "10.3.0", cfg, prof, log)
    assert "build of m.onnx failed: [!] Invalid Engine" in msg


# --- control flow with recording fakes --------------------------------------------------
class _PolyError(Exception):
    pass


def accepted_keywords(cls):
    """Keyword names cls(...) accepts: its __init__'s, and through **kwargs its bases' too."""
    names = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())[1:]
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


def check_call(real, args, kw):
    """Raise TypeError unless real(*args, **kw) binds (a class: its constructor)."""
    fn = real
    if inspect.isclass(real):
        unknown = set(kw) - accepted_keywords(real)
        if unknown:
            raise TypeError(f"{real.__name__}() got unexpected keywords {sorted(unknown)}")
        fn = real.__init__
        args = (None,) + tuple(args)
        sig = inspect.signature(fn)
        named = {k: v for k, v in kw.items() if k in sig.parameters}
        rest = {k: v for k, v in kw.items() if k not in sig.parameters}
        bound = sig.bind(*args, **named)
        assert not rest or any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
        return bound
    return inspect.signature(fn).bind(*args, **kw)


def _real_polygraphy():
    pytest.importorskip("polygraphy", reason="polygraphy not installed (pip install polygraphy)")
    from polygraphy.backend import common, trt as ptrt
    from polygraphy.logger import G_LOGGER

    return SimpleNamespace(NetworkFromOnnxPath=ptrt.NetworkFromOnnxPath, CreateConfig=ptrt.CreateConfig,
                           PostprocessNetwork=ptrt.PostprocessNetwork,
                           EngineBytesFromNetwork=ptrt.EngineBytesFromNetwork,
                           EngineFromBytes=ptrt.EngineFromBytes, SaveBytes=common.SaveBytes,
                           Profile=ptrt.Profile, G_LOGGER=G_LOGGER)


def _fake_backend(trt_version, calls, fail_parse=False, layers=(), raise_in_build=None):
    real = _real_polygraphy()
    enum = SimpleNamespace
    trt = SimpleNamespace(
        OnnxParserFlag=enum(NATIVE_INSTANCENORM="NATIVE_IN"),
        MemoryPoolType=enum(WORKSPACE="WS"),
        DataType=enum(FLOAT="FLOAT", HALF="HALF", INT32="i32",
                      **({"INT64": "i64"} if int(trt_version.split(".")[0]) >= 9 else {})),
        LayerType=enum(SHAPE="SHAPE", CONSTANT="CONSTANT", SHUFFLE="SHUFFLE"),
        TensorIOMode=enum(INPUT="in", OUTPUT="out"))
    logger = real.G_LOGGER
    prof = calls.setdefault("profile_shapes", {})

    def checked(name, fn):
        def call(*args, **kw):
            check_call(getattr(real, name), args, kw)  # the real class must accept this call
            calls.setdefault("called", []).append(name)
            return fn(*args, **kw)
        return call

    def network(path, **kw):
        calls["network"] = (path, kw)
        calls.setdefault("networks", []).append((path, kw))

        def load():
            calls["building"] = path
            calls["log_file_during_build"] = logger.log_file
            calls["log_handle"] = getattr(logger, "_log_file", None)
            calls["colors_during_build"] = logger.colors
            if fail_parse:
                logger.error("In node 7 with name: /attn/Softmax and operator: Softmax (x): INVALID_NODE")
                raise _PolyError("Could not parse ONNX correctly")
            return "builder", FakeNetwork(list(layers)), "parser"
        return load

    def postprocess(net_loader, func, name=None):
        calls["postprocess"] = name

        def load():
            builder, net, parser = net_loader()
            func(network=net)
            calls["layers"] = net.layers
            return builder, net, parser
        return load

    def config(**kw):
        calls["config"] = kw
        calls.setdefault("configs", []).append(kw)
        return "config"


    def engine_bytes(net_loader, config=None, save_timing_cache=None):
        calls["engine"] = (config, save_timing_cache)

        def build():
            net_loader()
            if raise_in_build:
                raise raise_in_build
            if calls.get("fail_build_of") == calls["building"]:
                logger.error(f"[E] building {calls['building']}: out of memory")
                raise _PolyError("Invalid Engine")
            # the policy's two plans differ (the encoder's name is in its bytes)
            return b"PLAN BYTES" + (b" " + Path(calls["building"]).name.encode() if "policy" in calls else b"")
        return build

    def from_bytes(data, runtime=None):
        calls["deserialized"] = data
        if "x_t" not in prof:  # a policy's observation encoder: its inputs, and global_cond of size D
            io = {n: ("in", "FLOAT", (-1,) + tuple(mn[1:])) for n, (mn, _, _) in prof.items()}
            io["global_cond"] = ("out", "FLOAT", (-1, calls["policy"]["cond_dim"]))
            first = next(iter(prof))
            return lambda: FakeEngine(io, prof[first])
        chw = tuple(prof["x_t"][0][1:])  # the image shape and profile the build set
        io = {"x_t": ("in", "FLOAT", (-1,) + chw), "t": ("in", "i32", (-1,))}
        # every other input the profile names is a condition input of the built network: its
        # dtype as the parser makes it (calls["plan_dtypes"], default FLOAT), its static dims
        for name, (mn, _, _) in prof.items():
            if name not in io and name not in calls.get("plan_drops", ()):
                io[name] = ("in", calls.get("plan_dtypes", {}).get(name, "FLOAT"), (-1,) + tuple(mn[1:]))
        io["eps"] = ("out", "FLOAT", (-1,) + chw)
        return lambda: FakeEngine(io, prof["x_t"])

    def save(obj, path):
        calls["save"] = (obj, path)
        calls.setdefault("saves", []).append(obj)
        return lambda: Path(path).write_bytes(obj)

    def make_profile(dct=None):
        p = real.Profile()
        prof.clear()
        orig = p.add

        def add(name, min, opt, max):
            check_call(real.Profile.add, (p, name), dict(min=min, opt=opt, max=max))
            prof[name] = (min, opt, max)
            calls.setdefault("all_profiles", {})[name] = (min, opt, max)
            return orig(name, min=min, opt=opt, max=max)
        p.add = add
        return p

    return SimpleNamespace(trt=trt, version=trt_version, polygraphy="0.53.6",
                           NetworkFromOnnxPath=checked("NetworkFromOnnxPath", network),
                           PostprocessNetwork=checked("PostprocessNetwork", postprocess),
                           CreateConfig=checked("CreateConfig", config),
                           EngineBytesFromNetwork=checked("EngineBytesFromNetwork", engine_bytes),
                           EngineFromBytes=checked("EngineFromBytes", from_bytes),
                           SaveBytes=checked("SaveBytes", save),
                           Profile=checked("Profile", make_profile),
                           PolygraphyException=_PolyError, G_LOGGER=logger)


@pytest.fixture
def fake(monkeypatch):
    def install(trt_version, fail_parse=False, **kw):
        calls = {}
        monkeypatch.setattr(B, "load_backend", lambda: _fake_backend(trt_version, calls, fail_parse, **kw))
        monkeypatch.setattr(B, "probe_cuda_device", lambda: DEVICE)
        return calls
    return install


def test_build_strongly_typed_fp16_on_trt10(tmp_path, fake):
    calls = fake("10.3.0.30")
    onnx = _export(tmp_path, "fp16")
    m = B.build_engine(B.BuildConfig(onnx=str(onnx), fp16=True, max_batch=256, opt_batch=64,
                                     timing_cache=str(tmp_path / "h100.cache"), workspace_mb=2048),
                       command="ddpm-export build --fp16", log=lambda s: None)
    path, kw = calls["network"]
    assert path == str(onnx) and kw == {"strongly_typed": True}  # NATIVE_INSTANCENORM: parser default
    assert "fp16" not in calls["config"] and "postprocess" not in calls
    assert calls["config"]["memory_pool_limits"] == {"WS": 2048 << 20}
    assert calls["config"]["load_timing_cache"] == calls["engine"][1] == str(tmp_path / "h100.cache")
    assert calls["profile_shapes"]["x_t"] == ((1, 3, 32, 32), (64, 3, 32, 32), (256, 3, 32, 32))
    assert calls["profile_shapes"]["t"] == ((1,), (64,), (256,))
    assert calls["log_file_during_build"] == str(tmp_path / "m-fp16.build.log")
    plan = tmp_path / "m-fp16.plan"
    assert plan.read_bytes() == b"PLAN BYTES" and not list(tmp_path.glob(".*.ddpm-tmp"))
    # bytes built, checked through EngineFromBytes, and written as those bytes (never re-serialized)
    assert calls["called"][-3:] == ["EngineBytesFromNetwork", "EngineFromBytes", "SaveBytes"]
    assert calls["deserialized"] == calls["save"][0] == b"PLAN BYTES"
    # Polygraphy's real logger: uncolored during the build, file closed and colors restored after
    assert calls["colors_during_build"] is False and calls["log_handle"].closed
    assert B.load_backend().G_LOGGER.log_file is None and B.load_backend().G_LOGGER.colors is True
    assert m["engine"]["native_instancenorm"] is True  # TensorRT 10's parser default
    e = rt.engine_section(contract.read_manifest(plan))  # what the runtime will check
    assert e == m["engine"]
    assert (e["tensorrt_version"], e["compute_capability"], e["device_name"]) == ("10.3.0.30", "9.0", DEVICE.name)
    assert (e["precision"], e["precision_mode"], e["profiles"]) == ("fp16", "strongly_typed", [{"min": 1, "opt": 64, "max": 256}])
    assert e["plan_sha256"] == hashlib.sha256(b"PLAN BYTES").hexdigest()
    assert e["onnx_sha256"] == hashlib.sha256(onnx.read_bytes()).hexdigest() and e["onnx"] == onnx.name
    assert e["version_compatible"] is False and e["timing_cache"] == "h100.cache"
    assert contract.read_manifest(onnx)["precision"] == "fp16"  # the shared NAME.json still fits the ONNX
    assert rt.TensorRTRunner(str(plan), m).max_batch == 256


def _digits_copy(tmp_path, name="digits.onnx"):
    """The shipped float32 digits export (a real ONNX graph) with its manifest, in tmp_path."""
    src = ROOT / "engines" / "digits.onnx"
    dst = tmp_path / "digits.onnx"
    shutil.copy(src, dst)
    shutil.copy(contract.sidecar_path(src), contract.sidecar_path(dst))
    return dst


def _layers_of(onnx_path, layer_class=FakeLayer):
    """The layers TensorRT's ONNX parser makes for the graph, named as its importers name them
    (tests/trt_fakes.py parsed_network: Gemm's bias add and Softmax's reshape back unnamed)."""
    return parsed_network(onnx_path, layer_class).layers


def test_build_fp16_flag_on_trt85_static_batch(tmp_path, fake):
    onnx_path = ROOT / "engines" / "digits.onnx"
    calls = fake("8.5.2.2", layers=_layers_of(onnx_path))
    calls_fp32 = _digits_copy(tmp_path)
    m = B.build_engine(B.BuildConfig(onnx=str(calls_fp32), fp16=True, static_batch=32),
                       log=lambda s: None)
    assert calls["network"][1] == {}  # no strongly_typed on 8.5, no parser flags
    assert calls["config"]["fp16"] is True and calls["config"]["precision_constraints"] == "obey"
    assert calls["postprocess"] == "pin FP32 islands"
    assert "version_compatible" not in calls["config"] and "builder_optimization_level" not in calls["config"]
    assert m["engine"]["profiles"] == [{"min": 32, "opt": 32, "max": 32}] and m["engine"]["static_batch"] == 32
    assert m["engine"]["native_instancenorm"] is None
    assert m["engine"]["precision_mode"] == "fp16_builder_flag" and m["precision"] == "fp32"
    assert rt.TensorRTRunner(str(tmp_path / "digits.plan"), m).static
    assert contract.compute_precision(m, tmp_path / "digits.plan") == "fp16"  # validate, sample-many
    # the float32 ONNX shares the NAME.json the build rewrote: it still computes (and is judged) in FP32
    assert contract.compute_precision(contract.read_manifest(calls_fp32), calls_fp32) == "fp32"
    import onnx

    islands = set(B.fp32_island_nodes(onnx.load(str(onnx_path))))
    shuffles = {ly.name for ly in calls["layers"] if ly.type == "SHUFFLE"}
    assert any(n.endswith("/Reshape_1") for n in islands & shuffles)  # GroupNorm's reshape back
    pinned = {ly.name for ly in calls["layers"] if ly.precision == "FLOAT"}
    # issue 28 item 3: the temb Gemms' bias adds, which the parser leaves unnamed, are pinned too
    # (found between the Gemm's inputs and its output tensor); the block Gemms' are not islands
    by_output = {ly.outputs[0].name: ly for ly in calls["layers"]}
    bias_adds = {by_output[f"/model/temb/dense.{k}/Gemm_output_0"].name for k in (0, 1)}
    assert all(b.startswith("(Unnamed Layer* ") and b.endswith(") [ElementWise]") for b in bias_adds)
    assert pinned == (islands - shuffles) | bias_adds
    assert by_output["/model/block.0/temb_proj/Gemm_output_0"].precision is None
    for ly in calls["layers"]:
        assert ly.output_types == ({0: "FLOAT"} if ly.name in pinned else {}), ly.name
    assert m["engine"]["fp32_pinned_layers"] == len(pinned)


def test_build_parse_error_names_the_node_and_writes_nothing(tmp_path, fake):
    fake("10.3.0", fail_parse=True)
    onnx = _export(tmp_path, "fp16")
    before = contract.sidecar_path(onnx).read_text()
    with pytest.raises(B.BuildError, match=r"cannot parse .*In node 7 with name: /attn/Softmax"):
        B.build_engine(B.BuildConfig(onnx=str(onnx)), log=lambda s: None)
    assert not (tmp_path / "m-fp16.plan").exists() and not list(tmp_path.glob(".*.ddpm-tmp"))
    assert contract.sidecar_path(onnx).read_text() == before
    assert "In node 7" in (tmp_path / "m-fp16.build.log").read_text()
    assert B.load_backend().G_LOGGER.log_file is None


def test_build_refuses_fp16_graph_on_trt8_before_building(tmp_path, fake):
    calls = fake("8.6.2")
    with pytest.raises(B.BuildError, match="cannot build the FP16 graph"):
        B.build_engine(B.BuildConfig(onnx=str(_export(tmp_path, "fp16")), fp16=True), log=lambda s: None)
    assert "network" not in calls


# --- the click command ------------------------------------------------------------------
def _invoke(*args):
    from ddpm_export.cli.build import build_command

    return click_testing.CliRunner().invoke(build_command, list(args))


def test_cli_options_reach_the_build_config(tmp_path, monkeypatch):
    """Every option lands in its BuildConfig field; what is not given keeps BuildConfig's default."""
    import dataclasses

    import ddpm_export.cli.build as cli_build

    seen = []

    def record(cfg, command="", log=print):
        seen.append(cfg)
        return {"engine": {"plan": "m.plan", "tensorrt_version": "10.3.0", "precision_mode": "fp16",
                           "profiles": [{}], "device_name": "GPU", "compute_capability": "8.7",
                           "build_seconds": 1.0}}

    monkeypatch.setattr(cli_build, "build_engine", record)
    assert _invoke("--onnx", "m.onnx").exit_code == 0
    assert seen[-1] == B.BuildConfig(onnx="m.onnx")
    given = dict(onnx="m.onnx", out="o.plan", fp16=True, static_batch=4, timing_cache="t.cache",
                 builder_opt_level=2, version_compatible=True, workspace_mb=1024, force=True)
    args = ["--onnx", "m.onnx", "--out", "o.plan", "--fp16", "--static-batch", "4", "--timing-cache",
            "t.cache", "--builder-opt-level", "2", "--version-compatible", "--workspace", "1024", "--force"]
    r = _invoke(*args)
    assert r.exit_code == 0, r.output
    assert seen[-1] == dataclasses.replace(B.BuildConfig(), **given)
    r = _invoke("--checkpoint", "c.pt", "--min-batch", "2", "--opt-batch", "4", "--max-batch", "16")
    assert r.exit_code == 0 and seen[-1] == B.BuildConfig(checkpoint="c.pt", min_batch=2, opt_batch=4,
                                                          max_batch=16)


def test_cli_argument_errors(tmp_path):
    r = _invoke("--onnx", "a.onnx", "--static-batch", "8", "--max-batch", "16")
    assert r.exit_code == 1 and "drop --max-batch" in r.output
    r = _invoke("--builder-opt-level", "9", "--onnx", "a.onnx")
    assert r.exit_code == 2 and "0<=x<=5" in r.output
    r = _invoke("--onnx", "a.onnx", "--checkpoint", "a.pt")
    assert r.exit_code == 1 and "at most one of --onnx" in r.output


def test_cli_without_tensorrt_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    r = _invoke("--fp16", "--onnx", str(_export(tmp_path)))
    assert r.exit_code == 1
    assert "building needs TensorRT" in r.output and "JetPack" in r.output and "tensorrt-cu12" in r.output


def test_cli_without_gpu_says_no_cuda_device(tmp_path, monkeypatch):
    monkeypatch.setattr(B, "load_backend", lambda: _fake_backend("10.3.0", {}))

    def no_gpu():
        raise rt.NoCudaDevice("no CUDA device: cudaGetDeviceCount returned 100")
    monkeypatch.setattr(B, "probe_cuda_device", no_gpu)
    r = _invoke("--onnx", str(_export(tmp_path)))
    assert r.exit_code == 1 and "no CUDA device" in r.output


# --- item: version-compatible builds, other errors, CLI errors ------------------------------
def test_version_compatible_build_sets_native_instancenorm_and_writes_bytes(tmp_path, fake):
    calls = fake("10.3.0")
    onnx = _export(tmp_path, "fp16")
    m = B.build_engine(B.BuildConfig(onnx=str(onnx), version_compatible=True), log=lambda s: None)
    assert calls["network"][1] == {"flags": ["NATIVE_IN"], "strongly_typed": True}
    assert calls["config"]["version_compatible"] is True
    assert m["engine"]["version_compatible"] is True and m["engine"]["native_instancenorm"] is True
    assert calls["save"][0] == b"PLAN BYTES" == (tmp_path / "m-fp16.plan").read_bytes()


@pytest.mark.parametrize("trt_version,vc,want", [("8.5.2", False, None), ("8.6.1", False, False),
                                                 ("8.6.1", True, True), ("10.3.0", False, True)])
def test_native_instancenorm_recorded(trt_version, vc, want):
    assert B.native_instancenorm_used(trt_version, vc) is want


def test_non_polygraphy_error_becomes_one_build_error(tmp_path, fake):
    fake("10.3.0", raise_in_build=RuntimeError("Cannot serialize a version-compatible engine\nmore"))
    onnx = _export(tmp_path, "fp16")
    with pytest.raises(B.BuildError, match=r"build of .*m-fp16\.onnx failed: RuntimeError: Cannot "
                                           r"serialize a version-compatible engine; full log"):
        B.build_engine(B.BuildConfig(onnx=str(onnx)), log=lambda s: None)
    assert not (tmp_path / "m-fp16.plan").exists() and not list(tmp_path.glob(".*.tmp"))
    assert B.load_backend().G_LOGGER.log_file is None


def test_explain_failure_reads_colored_logs():
    cfg, prof = B.BuildConfig(onnx="m.onnx"), BatchRange(1, 8, 64)
    colored = ("\x1b[38;5;1m[E] In node 3 with name: /x/Softmax and operator: Softmax: bad\x1b[0m\n")
    msg = B.explain_failure(colored, Path("m.onnx"), "10.3.0", cfg, prof, Path("m.build.log"))
    assert "cannot parse m.onnx: In node 3 with name: /x/Softmax" in msg and "\x1b" not in msg


@pytest.mark.parametrize("error", ["EngineMismatch", "ExportError", "CheckpointError"])
def test_cli_errors_are_one_line(monkeypatch, error):
    import ddpm_export.cli.build as cli
    from ddpm_export.export import ExportError
    from ddpm_export.model.checkpoint import CheckpointError

    exc = {"EngineMismatch": rt.EngineMismatch, "ExportError": ExportError,
           "CheckpointError": CheckpointError}[error]

    def boom(cfg, command="", log=print):
        raise exc(f"{error}: what and how to fix")
    monkeypatch.setattr(cli, "build_engine", boom)
    r = _invoke("--fp16", "--onnx", "x.onnx")
    assert r.exit_code == 1 and r.exception is not None and isinstance(r.exception, SystemExit)
    assert r.output.strip() == f"Error: {error}: what and how to fix"


# --- item: the bare 'build --fp16' -----------------------------------------------------------
def test_default_source(tmp_path):
    eng = tmp_path / "engines"
    with pytest.raises(B.BuildError) as e:
        B.default_source("10.3.0", True, eng)
    assert "import --format diffusers" in str(e.value) and "ddpm-export export" in str(e.value)
    eng.mkdir()
    for f in ("digits.onnx", "digits-fp16.onnx"):
        (eng / f).write_bytes(b"x")
    onnx, ckpt, note = B.default_source("10.3.0", True, eng)
    assert onnx == eng / "digits-fp16.onnx" and ckpt is None
    assert "shipped digits model" in note and B.GET_CIFAR10 in note
    assert B.default_source("8.6.1", True, eng)[0] == eng / "digits.onnx"  # float32 graph on 8.x
    (eng / "cifar10.pt").write_bytes(b"x")
    onnx, ckpt, note = B.default_source("8.6.1", True, eng)
    assert (onnx, ckpt) == (None, eng / "cifar10.pt") and "exporting" in note
    (eng / "cifar10.onnx").write_bytes(b"x")
    assert B.default_source("8.6.1", True, eng)[0] == eng / "cifar10.onnx"
    assert B.default_source("10.3.0", True, eng)[0] == eng / "cifar10.onnx"  # flag on float32
    # TensorRT 11 has no FP16 flag: the float32 cifar10 graph cannot be the default with --fp16
    assert B.default_source("11.4.0", True, eng)[1] == eng / "cifar10.pt"
    (eng / "cifar10-fp16.onnx").write_bytes(b"x")
    onnx, _, note = B.default_source("11.4.0", True, eng)
    assert onnx == eng / "cifar10-fp16.onnx" and "default export" in note and "digits" not in note


def test_cli_bare_fp16_builds_the_shipped_digits_export_and_says_how_to_get_cifar10(
        tmp_path, monkeypatch, fake):
    onnx_path = ROOT / "engines" / "digits.onnx"
    calls = fake("8.6.1", layers=_layers_of(onnx_path))
    (tmp_path / "engines").mkdir()
    _digits_copy(tmp_path / "engines")
    monkeypatch.chdir(tmp_path)
    r = _invoke("--fp16")
    assert r.exit_code == 0, r.output
    assert "building the default export engines/digits.onnx" in r.output
    assert "ddpm-export import --format diffusers" in r.output and "ddpm-export build --fp16" in r.output
    assert (tmp_path / "engines" / "digits.plan").read_bytes() == b"PLAN BYTES"
    assert calls["network"][0] == "engines/digits.onnx"


# --- item: every Polygraphy call's keywords against the real classes ---------------------------
def test_keyword_check_catches_misspelt_keywords():
    real = _real_polygraphy()
    check_call(real.CreateConfig, (), {"fp16": True, "precision_constraints": "obey",
                                       "load_timing_cache": "c", "memory_pool_limits": {},
                                       "builder_optimization_level": 3, "version_compatible": True,
                                       "profiles": []})
    for bad in ({"fp_16": True}, {"timing_cache": "c"}, {"precision_constraint": "obey"}):
        with pytest.raises(TypeError):
            check_call(real.CreateConfig, (), bad)
    with pytest.raises(TypeError):
        check_call(real.NetworkFromOnnxPath, ("m.onnx",), {"strongly_type": True})
    with pytest.raises(TypeError):
        check_call(real.EngineBytesFromNetwork, ("net",), {"save_timing_cache": "c", "runtime": None})
    check_call(real.EngineFromBytes, (b"x",), {})
    check_call(real.SaveBytes, (b"x", "p"), {})
    check_call(real.PostprocessNetwork, ("net",), {"func": print, "name": "n"})


# --- item: TensorRT names used by the build, per version ----------------------------------------
@pytest.mark.parametrize("version", TRT_API_VERSIONS)
def test_every_tensorrt_name_the_build_touches_is_bound_in_that_version(version):
    api = trt_api_list(version)
    missing = missing_trt_names(api, B.BUILD_TRT_API, B.BUILD_TRT_API_SINCE, version,
                                B.BUILD_TRT_API_UNTIL)
    assert not missing, f"not bound in TensorRT {version}: {missing}"
    if version.startswith("11."):  # what the UNTIL list relies on: 11 removed them
        assert missing_trt_names(api, {"ILayer": ("precision", "set_output_type")}, {}, version) == \
            ["ILayer.precision", "ILayer.set_output_type"]


# --- item: the FP32-island rule on real exports -----------------------------------------------
def _island_roots(scopes):
    """Island scope -> its root (anything under .../temb is the timestep embedding)."""
    out = set()
    for sc in scopes:
        parts = sc.split("/")
        out.add("/".join(parts[:parts.index("temb") + 1]) if "temb" in parts else sc)
    return out


def _fp16_cast_scopes(fp16_graph):
    """Scopes the FP16 export brackets with Casts: its FP32 islands (graph-edge Casts left out)."""
    return _island_roots({B._scope(n.name) for n in fp16_graph.node if n.op_type == "Cast"} - {""})


DIGITS_ISLAND_SCOPES = {  # what the rule selects in the shipped engines/digits.onnx, by scope
    "/model/temb", "/model/norm_out",
    "/model/attn.0", "/model/attn.0/norm", "/model/attn.0/norm_1", "/model/attn.0_1",
    "/model/attn.1", "/model/attn.1/norm", "/model/attn.1/norm_1", "/model/attn.1_1",
    "/model/attn.2", "/model/attn.2/norm", "/model/attn_1", "/model/attn_1/norm",
    "/model/block_1/norm1", "/model/block_1/norm2", "/model/block_2/norm1", "/model/block_2/norm2",
    "/model/block.2/norm1", "/model/block.2/norm2", "/model/block.2/norm1_1", "/model/block.2/norm2_1",
    "/model/block.2/norm1_2", "/model/block.2/norm2_2",
} | {f"/model/block.{b}/norm{k}{s}" for b in (0, 1) for k in (1, 2)
     for s in ("", "_1", "_2", "_3", "_4", "_5")}


def test_fp32_island_rule_on_the_shipped_digits_export():
    import onnx

    graph = onnx.load(str(ROOT / "engines" / "digits.onnx")).graph
    islands = B.fp32_island_nodes(graph)
    by_op = {}
    for n in graph.node:
        if n.name in islands:
            by_op[n.op_type] = by_op.get(n.op_type, 0) + 1
    # the nodes it selects: the 10 timestep-embedding nodes (Cast, Unsqueeze, Mul, Sin, Cos,
    # Concat, Gemm, Sigmoid, Mul, Gemm), each of the 41 GroupNorms' Reshape, InstanceNormalization,
    # Reshape, Mul and Add, and the 6 attention softmaxes
    assert [n for n in islands if "/temb/" in n] == [
        "/model/temb/Cast", "/model/temb/Unsqueeze", "/model/temb/Mul", "/model/temb/Sin",
        "/model/temb/Cos", "/model/temb/Concat", "/model/temb/dense.0/Gemm", "/model/temb/Sigmoid",
        "/model/temb/Mul_1", "/model/temb/dense.1/Gemm"]
    assert [n for n in islands if n.startswith("/model/block.0/norm1/")] == [
        "/model/block.0/norm1/Reshape", "/model/block.0/norm1/InstanceNormalization",
        "/model/block.0/norm1/Reshape_1", "/model/block.0/norm1/Mul", "/model/block.0/norm1/Add"]
    assert [n for n in islands if n.endswith("Softmax")] == [
        "/model/attn.0/Softmax", "/model/attn.1/Softmax", "/model/attn_1/Softmax",
        "/model/attn.0_1/Softmax", "/model/attn.1_1/Softmax", "/model/attn.2/Softmax"]
    norms = sum(1 for n in graph.node if n.op_type == "InstanceNormalization")
    assert norms == 41 and by_op["InstanceNormalization"] == 41 and by_op["Softmax"] == 6
    assert by_op["Reshape"] == 2 * 41 and by_op["Add"] == 41
    assert by_op["Sin"] == by_op["Cos"] == by_op["Concat"] == 1 and by_op["Gemm"] == 2
    assert by_op["Mul"] == 41 + 2 and by_op["Sigmoid"] == 1 and by_op["Cast"] == 1
    assert by_op["Unsqueeze"] == 1 and set(by_op) == {
        "InstanceNormalization", "Softmax", "Reshape", "Add", "Mul", "Sin", "Cos", "Concat", "Gemm",
        "Sigmoid", "Cast", "Unsqueeze"}
    assert len(islands) == 41 * 5 + 6 + 10
    assert "/model/block.0/conv1/Conv" not in islands and "/model/attn.0/MatMul" not in islands
    scopes = _island_roots({B._scope(n) for n in islands})
    assert scopes == DIGITS_ISLAND_SCOPES
    # the same islands the FP16 export keeps in float32 (its Casts), scope for scope
    fp16 = onnx.load(str(ROOT / "engines" / "digits-fp16.onnx")).graph
    assert scopes == _fp16_cast_scopes(fp16)


@pytest.mark.slow
def test_fp32_island_rule_on_a_cifar10_architecture_export(tmp_path):
    """A randomly initialised cifar10-preset model (35.7M parameters), exported float32 and FP16."""
    import onnx
    import torch

    from ddpm_export.export.onnx_export import export_onnx
    from ddpm_export.model.checkpoint import save_checkpoint
    from ddpm_export.model.config import PRESETS
    from ddpm_export.model.unet import UNet
    from runtime.schedulers.schedule import ScheduleConfig

    torch.manual_seed(0)
    cfg = PRESETS["cifar10"].unet
    ckpt = tmp_path / "cifar10.pt"
    save_checkpoint({"model_config": cfg.to_dict(), "schedule_config": ScheduleConfig().to_dict(),
                     "ema": UNet(cfg).state_dict()}, ckpt)
    export_onnx(ckpt, tmp_path / "c.onnx", check=False)
    export_onnx(ckpt, tmp_path / "c-fp16.onnx", fp16=True, check=False)
    graph = onnx.load(str(tmp_path / "c.onnx")).graph
    islands = B.fp32_island_nodes(graph)
    ops = [n.op_type for n in graph.node if n.name in islands]
    norms = sum(1 for n in graph.node if n.op_type == "InstanceNormalization")
    softmax = sum(1 for n in graph.node if n.op_type == "Softmax")
    # every GroupNorm and softmax of the graph is selected, with its whole scope
    assert (norms, softmax) == (ops.count("InstanceNormalization"), ops.count("Softmax"))
    # measured on this export: 1363 nodes, 51 GroupNorms, 6 softmaxes -> 271 selected
    assert (norms, softmax, len(islands)) == (51, 6, 51 * 5 + 6 + 10)
    assert [n for n in islands if "/temb/" in n] == [
        "/model/temb/Cast", "/model/temb/Unsqueeze", "/model/temb/Mul", "/model/temb/Sin",
        "/model/temb/Cos", "/model/temb/Concat", "/model/temb/dense.0/Gemm", "/model/temb/Sigmoid",
        "/model/temb/Mul_1", "/model/temb/dense.1/Gemm"]
    assert _island_roots({B._scope(n) for n in islands}) == _fp16_cast_scopes(
        onnx.load(str(tmp_path / "c-fp16.onnx")).graph)
    print(f"cifar10 export: {len(graph.node)} nodes, {len(islands)} selected "
          f"({norms} GroupNorms x 5, {softmax} softmaxes, 10 timestep-embedding nodes)")


# --- issue 20: onnx for the builder-flag build, partial island matches, 10.12 deprecations ---
def test_builder_flag_build_without_onnx_says_what_to_install(tmp_path, fake, monkeypatch):
    """Defect 2: the trt extra and the Jetson line did not install onnx: a raw ModuleNotFoundError."""
    fake("8.5.2.2", layers=_layers_of(ROOT / "engines" / "digits.onnx"))
    onnx = _digits_copy(tmp_path)
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(rt.BackendMissing, match=r"needs the onnx package.*pip install onnx.*ddpm-export\[trt\]"):
        B.build_engine(B.BuildConfig(onnx=str(onnx), fp16=True), log=lambda s: None)
    assert not (tmp_path / "digits.plan").exists()
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("onnx") for d in extras["trt"])
    assert "polygraphy onnx" in (ROOT / "examples" / "jetson_app" / "README.md").read_text()


def test_a_partial_island_name_match_stops_the_build(tmp_path, fake):
    """Defect 8: a softmax (or norm, or temb matmul) found neither by its layer name nor by its
    output tensor would stay FP16: the build stops."""
    layers = _layers_of(ROOT / "engines" / "digits.onnx")
    softmax = next(ly for ly in layers if ly.name.endswith("/Softmax"))
    node, softmax.name = softmax.name, "renamed_softmax"
    for ly in layers:  # and its output tensor (the reshape back after it) not the ONNX one
        if ly.outputs[0].name == f"{node}_output_0":
            ly.outputs[0].name = "renamed_softmax_output"
    fake("8.5.2.2", layers=layers)
    onnx = _digits_copy(tmp_path)
    with pytest.raises(B.BuildError, match=r"FP32-island nodes .* not found in TensorRT's network, by layer name and by their output tensors \(e\.g\. .*Softmax"):
        B.build_engine(B.BuildConfig(onnx=str(onnx), fp16=True), log=lambda s: None)
    assert not (tmp_path / "digits.plan").exists()


def test_an_island_found_by_name_but_not_by_position_stops_the_build(tmp_path, fake):
    """Issue 28 item 3: one named layer per node used to satisfy the check, so a Gemm whose
    output tensor is not in the network (its bias add unknown) passed with the bias add in FP16."""
    layers = _layers_of(ROOT / "engines" / "digits.onnx")
    for ly in layers:
        if ly.outputs[0].name == "/model/temb/dense.1/Gemm_output_0":
            ly.outputs[0].name = "(Unnamed Layer* 17) [ElementWise]_output"
    fake("8.5.2.2", layers=layers)
    onnx = _digits_copy(tmp_path)
    with pytest.raises(B.BuildError, match=r"1 FP32-island nodes .*/model/temb/dense\.1/Gemm"):
        B.build_engine(B.BuildConfig(onnx=str(onnx), fp16=True), log=lambda s: None)


def test_pinning_on_tensorrt_10_12_raises_no_deprecation_warning(tmp_path, fake):
    """Style: TensorRT >= 10.12 warns on layer.precision / set_output_type (pyGraph.cpp)."""
    msg = "Use Deprecated in TensorRT 10.12. Superseded by strong typing. instead."

    class Deprecated(FakeLayer):
        def __setattr__(self, name, value):
            if name == "precision" and value is not None:
                import warnings
                warnings.warn(msg, DeprecationWarning, stacklevel=2)
            object.__setattr__(self, name, value)

        def set_output_type(self, k, dtype):
            import warnings
            warnings.warn(msg, DeprecationWarning, stacklevel=2)
            super().set_output_type(k, dtype)

    layers = _layers_of(ROOT / "engines" / "digits.onnx", Deprecated)
    calls = fake("10.12.0.36", layers=layers)
    onnx = _digits_copy(tmp_path)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        B.build_engine(B.BuildConfig(onnx=str(onnx), fp16=True), log=lambda s: None)
    assert any(ly.precision == "FLOAT" for ly in calls["layers"])


def test_the_polygraphy_floor_is_a_version_the_code_works_with():
    """Issue 28 item 4: polygraphy>=0.49 admitted 0.49.0-0.49.6 (EXPLICIT_BATCH set
    unconditionally: util.default(explicit_batch, True) in backend/trt/loader.py at TensorRT
    v9.1.0, gone from TensorRT 11) and everything below 0.53 (no search of the CUDA 12 wheel)."""
    import re
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in ("trt", "test"):
        spec = next(d for d in extras[extra] if d.startswith("polygraphy"))
        floor = tuple(int(x) for x in re.search(r">=\s*([\d.]+)", spec).group(1).split("."))
        assert floor >= (0, 53), (extra, spec)


def test_version_compatible_help_follows_the_runtime_policy():
    """Issue 28 (style): the help said the lean runtime runs later versions; only the full
    module and the dispatch runtime do (compat.check_engine_compat), the lean one its own."""
    r = _invoke("--help")
    text = " ".join(r.output.split())
    assert r.exit_code == 0 and "dispatch runtime" in text
    assert "only at the version that built it" in text and "and on the lean runtime" not in text


# --- conditional exports (issue 25 item 5) ---------------------------------------------------
LABELS = contract.Condition("class_labels", "class_label", (), 4, 4)
VECTOR = contract.Condition("global_cond", "vector", (5,), null="zeros")


@pytest.mark.parametrize("trt_version,label_dtype", [("10.3.0.30", "i64"), ("8.6.1.6", "i32")])
def test_build_adds_a_profile_for_every_condition_input(tmp_path, fake, trt_version, label_dtype):
    """x_t, t and each condition input get [min|opt|max batch, *shape]; samples of any rank.
    The parser's label dtype: INT64 where TensorRT has it, INT32 on 8.x; both check."""
    calls = fake(trt_version)
    calls["plan_dtypes"] = {"class_labels": label_dtype}
    onnx = _export(tmp_path, "fp32", name="c.onnx", image_shape=(6, 2), conditions=[LABELS, VECTOR])
    m = B.build_engine(B.BuildConfig(onnx=str(onnx), max_batch=32, opt_batch=16), log=lambda s: None)
    assert calls["profile_shapes"] == {
        "x_t": ((1, 6, 2), (16, 6, 2), (32, 6, 2)), "t": ((1,), (16,), (32,)),
        "class_labels": ((1,), (16,), (32,)), "global_cond": ((1, 5), (16, 5), (32, 5))}
    assert m["conditions"] == contract.read_manifest(onnx)["conditions"]
    assert m["engine"]["profiles"] == [{"min": 1, "opt": 16, "max": 32}]
    assert (tmp_path / "c.plan").is_file()


def test_build_refuses_a_built_plan_without_a_condition_input(tmp_path, fake):
    calls = fake("10.3.0.30")
    calls["plan_drops"] = ("global_cond",)
    onnx = _export(tmp_path, "fp32", name="c.onnx", conditions=[LABELS, VECTOR])
    with pytest.raises(rt.PlanManifestMismatch, match=r"missing \['global_cond'\]"):
        B.build_engine(B.BuildConfig(onnx=str(onnx)), log=lambda s: None)
    assert not (tmp_path / "c.plan").exists()


def test_profile_inputs_names_every_engine_input_in_contract_order():
    assert B.profile_inputs((3, 32, 32)) == [("x_t", (3, 32, 32)), ("t", ())]
    assert B.profile_inputs((6, 2), [LABELS, VECTOR]) == [
        ("x_t", (6, 2)), ("t", ()), ("class_labels", ()), ("global_cond", (5,))]
    assert [n for n, _ in B.profile_inputs((6, 2), [LABELS, VECTOR])] == list(
        contract.input_names([LABELS, VECTOR]))


def test_fp32_island_rule_takes_the_class_embedding_of_the_shipped_conditional_export():
    """engines/digits-cond: the class embedding (a Gather added to the time embedding) is an
    island of the builder-flag rule, and the FP16 export keeps the same scopes in float32."""
    import onnx

    graph = onnx.load(str(ROOT / "engines" / "digits-cond.onnx")).graph
    islands = B.fp32_island_nodes(graph)
    assert "/model/class_embedding/Gather" in islands
    scopes = _island_roots({B._scope(n) for n in islands})
    assert scopes == DIGITS_ISLAND_SCOPES | {"/model/class_embedding"}
    fp16 = onnx.load(str(ROOT / "engines" / "digits-cond-fp16.onnx")).graph
    # the model's own two top-scope Casts (the labels to int64, the class embedding to the time
    # embedding's dtype) are in the float32 graph too: they bracket no island
    top = {n.name for n in graph.node if n.op_type == "Cast" and B._scope(n.name) == "/model"}
    assert top == {"/model/Cast", "/model/Cast_1"}
    assert scopes == _fp16_cast_scopes(fp16) - {"/model"}


# --- policies (issue 26 item 5): the denoiser and its observation encoder, one manifest ---------
# Control flow on the recording fakes above: what we ask Polygraphy for and what we write. No
# evidence that TensorRT builds or runs either plan (nothing here has run TensorRT).
POLICY = ROOT / "engines" / "obstacle-policy.onnx"


def _policy_copy(tmp_path):
    """The shipped obstacle policy (denoiser, encoder, NAME.json) in tmp_path."""
    for src in (POLICY, POLICY.with_name("obstacle-policy-encoder.onnx"), POLICY.with_suffix(".json")):
        shutil.copy(src, tmp_path / src.name)
    return tmp_path / POLICY.name


def test_build_of_a_policy_builds_both_plans_and_ties_them_in_the_manifest(tmp_path, fake):
    """TensorRT 8.6 --fp16 from the float32 export: the denoiser with the builder flag (its step
    embedding pinned to FP32, as the FP16 export keeps it), the state-only encoder in float32
    (a concatenation: FP16 would gain nothing), both with the one batch profile."""
    onnx_path = _policy_copy(tmp_path)
    calls = fake("8.6.1.6", layers=_layers_of(POLICY))
    calls["policy"] = {"cond_dim": 14}
    m = B.build_engine(B.BuildConfig(onnx=str(onnx_path), fp16=True, max_batch=16, opt_batch=4),
                       command="ddpm-export build --fp16", log=lambda s: None)
    plan, enc_plan = tmp_path / "obstacle-policy.plan", tmp_path / "obstacle-policy-encoder.plan"
    assert [p for p, _ in calls["networks"]] == [str(onnx_path), str(tmp_path / "obstacle-policy-encoder.onnx")]
    assert calls["configs"][0]["fp16"] is True and "fp16" not in calls["configs"][1]
    # both built before either is written
    assert calls["called"][-4:] == ["EngineBytesFromNetwork", "EngineFromBytes", "SaveBytes", "SaveBytes"]
    assert calls["saves"] == [plan.read_bytes(), enc_plan.read_bytes()] and plan.read_bytes() != enc_plan.read_bytes()
    prof = calls["all_profiles"]
    assert prof["x_t"] == ((1, 16, 2), (4, 16, 2), (16, 16, 2)) and prof["global_cond"][2] == (16, 14)
    assert prof["observation.state"] == ((1, 2, 2), (4, 2, 2), (16, 2, 2))
    assert prof["observation.environment_state"] == ((1, 2, 5), (4, 2, 5), (16, 2, 5))
    # the step embedding (sinusoid, its MLP's Gemms) is pinned like the U-Net's GroupNorms
    pinned = {ly.name for ly in calls["layers"] if ly.precision == "FLOAT"}
    step = {n for n in pinned if "/diffusion_step_encoder/" in n}
    assert any(n.endswith("/Sin") for n in step) and sum(n.endswith("/Gemm") for n in step) == 2

    man = contract.read_manifest(plan)  # the validated plan manifest (shared with the ONNX)
    assert contract.policy_of(man) is not None
    tie = man["policy"]["encoder"]["plan"]
    assert tie["file"] == enc_plan.name and tie["sha256"] == hashlib.sha256(enc_plan.read_bytes()).hexdigest()
    e = rt.engine_section({"engine": tie["engine"]})  # what the encoder's runner checks
    assert (e["precision"], e["precision_mode"], e["profiles"]) == ("fp32", "fp32", [{"min": 1, "opt": 4, "max": 16}])
    assert e["onnx"] == "obstacle-policy-encoder.onnx" and "state-only" in tie["fp16_note"]
    assert man["engine"]["precision"] == "fp16" and man["engine"]["plan_sha256"] == hashlib.sha256(
        plan.read_bytes()).hexdigest()
    assert man["policy"]["encoder"]["file"] == "obstacle-policy-encoder.onnx"  # the ONNX fallback's


def test_the_onnx_policy_still_loads_after_its_plans_were_built(tmp_path, fake):
    """The plan shares NAME.json with the ONNX export: the ONNX policy (the Jetson app's
    fallback) still loads from it and gives the shipped policy's chunk."""
    import runtime

    onnx_path = _policy_copy(tmp_path)
    fake("10.3.0.30")["policy"] = {"cond_dim": 14}
    B.build_engine(B.BuildConfig(onnx=str(onnx_path)), log=lambda s: None)
    hist = {"observation.state": np.full((1, 2, 2), 0.1, np.float32),
            "observation.environment_state": np.full((1, 2, 5), 0.3, np.float32)}
    want = runtime.load_policy(POLICY, method="ddim", steps=2, threads=1).predict_chunk(hist, seed=1)
    got = runtime.load_policy(onnx_path, method="ddim", steps=2, threads=1).predict_chunk(hist, seed=1)
    np.testing.assert_array_equal(got, want)


def test_policy_build_refusals_write_nothing(tmp_path, fake):
    onnx_path = _policy_copy(tmp_path)
    calls = fake("10.3.0.30")
    calls["policy"] = {"cond_dim": 14}
    enc = tmp_path / "obstacle-policy-encoder.onnx"
    before = contract.sidecar_path(onnx_path).read_text()

    def nothing_written():
        assert not list(tmp_path.glob("*.plan")) and contract.sidecar_path(onnx_path).read_text() == before

    data = enc.read_bytes()
    enc.write_bytes(data + b"\0")
    with pytest.raises(B.BuildError, match="different exports; re-export both"):
        B.build_engine(B.BuildConfig(onnx=str(onnx_path)), log=lambda s: None)
    enc.unlink()
    with pytest.raises(B.BuildError, match="observation encoder .* is missing"):
        B.build_engine(B.BuildConfig(onnx=str(onnx_path)), log=lambda s: None)
    assert "networks" not in calls  # refused before anything was built
    nothing_written()
    enc.write_bytes(data)
    calls["fail_build_of"] = str(enc)  # the encoder's build fails after the denoiser's was built
    with pytest.raises(B.BuildError, match="out of memory"):
        B.build_engine(B.BuildConfig(onnx=str(onnx_path)), log=lambda s: None)
    nothing_written()
    del calls["fail_build_of"]
    (tmp_path / "obstacle-policy-encoder.plan").write_bytes(b"an older plan")
    with pytest.raises(B.BuildError, match=r"obstacle-policy-encoder.plan exists .*--force"):
        B.build_engine(B.BuildConfig(onnx=str(onnx_path)), log=lambda s: None)
    B.build_engine(B.BuildConfig(onnx=str(onnx_path), force=True), log=lambda s: None)
    assert (tmp_path / "obstacle-policy-encoder.plan").read_bytes() != b"an older plan"


def test_policy_build_on_tensorrt_11_refuses_the_float32_denoiser_with_fp16(tmp_path, fake):
    """TensorRT 11 has no FP16 flag: the float32 denoiser is refused as any float32 export is;
    the state-only encoder builds in float32 there too (a strongly typed float32 graph)."""
    onnx_path = _policy_copy(tmp_path)
    fake("11.1.0.1")["policy"] = {"cond_dim": 14}
    with pytest.raises(B.BuildError, match="no FP16 builder flag"):
        B.build_engine(B.BuildConfig(onnx=str(onnx_path), fp16=True), log=lambda s: None)
    m = B.build_engine(B.BuildConfig(onnx=str(onnx_path)), log=lambda s: None)
    assert m["policy"]["encoder"]["plan"]["engine"]["precision_mode"] == "fp32"


def test_contract_checks_the_encoder_plan_tie(tmp_path, fake):
    onnx_path = _policy_copy(tmp_path)
    fake("10.3.0.30")["policy"] = {"cond_dim": 14}
    m = B.build_engine(B.BuildConfig(onnx=str(onnx_path)), log=lambda s: None)
    import copy

    for edit, field in ((lambda t: t.update(file="../x.plan"), "policy.encoder.plan.file"),
                        (lambda t: t.update(sha256="0" * 64), "policy.encoder.plan.engine"),
                        (lambda t: t.update(sha256="x"), "policy.encoder.plan.sha256")):
        bad = copy.deepcopy(m)
        edit(bad["policy"]["encoder"]["plan"])
        with pytest.raises(contract.ManifestError, match=field.replace(".", r"\.") + ".*ddpm-export build"):
            contract.validate_manifest(bad)


def test_cli_builds_a_policy_given_as_an_argument(tmp_path, fake):
    """'ddpm-export build --fp16 engines/NAME.onnx' (the export as an argument, like --onnx)."""
    onnx_path = _policy_copy(tmp_path)
    fake("10.3.0.30", layers=_layers_of(POLICY))["policy"] = {"cond_dim": 14}
    r = _invoke("--fp16", str(onnx_path))
    assert r.exit_code == 0, r.output
    assert "wrote obstacle-policy.plan + its NAME.json and the policy's encoder obstacle-policy-encoder.plan" in r.output
    assert (tmp_path / "obstacle-policy-encoder.plan").is_file()
    r = _invoke("--onnx", str(tmp_path / "other.onnx"), str(onnx_path))
    assert r.exit_code == 2 and "differ: give one of them" in r.output
