"""ddpm_export/export/tensorrt.py: decisions, messages, and the build's control flow.

The control-flow test replaces Polygraphy and TensorRT with recording fakes:
it checks what *we* ask them for and what we write, nothing about TensorRT
itself (that is tests/runtime/backends/test_tensorrt.py's gpu+trt test and
scripts/gpu_check.sh).
"""
import hashlib
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

click_testing = pytest.importorskip("click.testing", reason="click not installed ('ddpm-export[train]')")

from ddpm_export.export import tensorrt as B  # noqa: E402
from runtime import contract  # noqa: E402
from runtime.backends import tensorrt as rt  # noqa: E402
from runtime.contract import BatchRange  # noqa: E402
from trt_fakes import FakeEngine  # noqa: E402

SHA = "cd" * 32
DEVICE = rt.DeviceInfo(0, "NVIDIA H100 80GB HBM3", (9, 0), driver_version=12080)


def _export(tmp_path, precision="fp16", name="m-fp16.onnx", batch_range=(1, 8, 64)):
    """A stand-in export: arbitrary bytes + a valid sidecar carrying their sha256."""
    onnx = tmp_path / name
    onnx.write_bytes(b"onnx bytes " + precision.encode())
    m = contract.manifest_dict(
        image_shape=(3, 32, 32),
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
    for cfg, match in ((B.BuildConfig(), "exactly one"),
                       (B.BuildConfig(onnx="a.onnx", checkpoint="a.pt"), "exactly one"),
                       (B.BuildConfig(onnx="a.onnx", out="a.onnx"), "NAME.plan"),
                       (B.BuildConfig(onnx="a.onnx", builder_opt_level=7), "0..5"),
                       (B.BuildConfig(onnx="a.onnx", workspace_mb=0), "positive")):
        with pytest.raises(B.BuildError, match=match):
            B.check_config(cfg)
    with pytest.raises(B.BuildError, match="--version-compatible needs TensorRT >= 8.6"):
        B.check_config(B.BuildConfig(onnx="a.onnx", version_compatible=True), "8.5.2.2")
    with pytest.raises(B.BuildError, match="--builder-opt-level needs"):
        B.check_config(B.BuildConfig(onnx="a.onnx", builder_opt_level=1), "8.5.2")
    with pytest.raises(B.BuildError, match="too old"):
        B.check_config(B.BuildConfig(onnx="a.onnx"), "8.4.3")
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


def _fake_backend(trt_version, calls, fail_parse=False):
    enum = SimpleNamespace
    trt = SimpleNamespace(
        OnnxParserFlag=enum(NATIVE_INSTANCENORM="NATIVE_IN"),
        MemoryPoolType=enum(WORKSPACE="WS"),
        TensorIOMode=enum(INPUT="in", OUTPUT="out"), DataType=enum(FLOAT="f32", INT32="i32"))
    logger = SimpleNamespace(log_file=None)

    class Profile(dict):
        def add(self, name, min, opt, max):
            self[name] = (min, opt, max)
            return self

    def network(path, **kw):
        calls["network"] = (path, kw)
        calls["log_file_during_build"] = logger.log_file
        if fail_parse:
            Path(logger.log_file).write_text("[E] In node 7 with name: /attn/Softmax and operator: "
                                             "Softmax (x): INVALID_NODE\n")
            raise _PolyError("Could not parse ONNX correctly")
        return "network"

    def config(**kw):
        calls["config"] = kw
        return "config"

    prof = calls.setdefault("profile_shapes", {})

    io = {"x_t": ("in", "f32", (-1, 3, 32, 32)), "t": ("in", "i32", (-1,)),
          "eps": ("out", "f32", (-1, 3, 32, 32))}

    def engine_from_network(net, cfg, save_timing_cache=None):
        calls["engine"] = (net, cfg, save_timing_cache)
        return lambda: FakeEngine(io, prof["x_t"])  # the profile the build set

    def save(engine, path):
        calls["save"] = path
        return lambda: Path(path).write_bytes(b"PLAN BYTES")

    def make_profile():
        p = Profile()
        calls["profile_shapes"] = prof
        prof.clear()
        orig = p.add

        def add(name, min, opt, max):
            prof[name] = (min, opt, max)
            return orig(name, min, opt, max)
        p.add = add
        return p

    return SimpleNamespace(trt=trt, version=trt_version, polygraphy="0.53.6",
                           NetworkFromOnnxPath=network, CreateConfig=config,
                           EngineFromNetwork=engine_from_network, SaveEngine=save,
                           Profile=make_profile, PolygraphyException=_PolyError, G_LOGGER=logger)


@pytest.fixture
def fake(monkeypatch):
    def install(trt_version, fail_parse=False):
        calls = {}
        monkeypatch.setattr(B, "load_backend", lambda: _fake_backend(trt_version, calls, fail_parse))
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
    assert path == str(onnx) and kw == {"flags": ["NATIVE_IN"], "strongly_typed": True}
    assert "fp16" not in calls["config"]
    assert calls["config"]["memory_pool_limits"] == {"WS": 2048 << 20}
    assert calls["config"]["load_timing_cache"] == calls["engine"][2] == str(tmp_path / "h100.cache")
    assert calls["profile_shapes"]["x_t"] == ((1, 3, 32, 32), (64, 3, 32, 32), (256, 3, 32, 32))
    assert calls["profile_shapes"]["t"] == ((1,), (64,), (256,))
    assert calls["log_file_during_build"] == str(tmp_path / "m-fp16.build.log")
    plan = tmp_path / "m-fp16.plan"
    assert plan.read_bytes() == b"PLAN BYTES" and not list(tmp_path.glob(".*.ddpm-tmp"))
    e = rt.engine_section(contract.read_manifest(plan))  # what the runtime will check
    assert e == m["engine"]
    assert (e["tensorrt_version"], e["compute_capability"], e["device_name"]) == ("10.3.0.30", "9.0", DEVICE.name)
    assert (e["precision"], e["precision_mode"], e["profiles"]) == ("fp16", "strongly_typed", [{"min": 1, "opt": 64, "max": 256}])
    assert e["plan_sha256"] == hashlib.sha256(b"PLAN BYTES").hexdigest()
    assert e["onnx_sha256"] == hashlib.sha256(onnx.read_bytes()).hexdigest() and e["onnx"] == onnx.name
    assert e["version_compatible"] is False and e["timing_cache"] == "h100.cache"
    assert contract.read_manifest(onnx)["precision"] == "fp16"  # the shared NAME.json still fits the ONNX
    assert rt.TensorRTRunner(str(plan), m).max_batch == 256


def test_build_fp16_flag_on_trt85_static_batch(tmp_path, fake):
    calls = fake("8.5.2.2")
    calls_fp32 = _export(tmp_path, "fp32", name="m.onnx")
    m = B.build_engine(B.BuildConfig(onnx=str(calls_fp32), fp16=True, static_batch=32),
                       log=lambda s: None)
    assert calls["network"][1] == {"flags": ["NATIVE_IN"]}  # no strongly_typed on 8.5
    assert calls["config"]["fp16"] is True
    assert "version_compatible" not in calls["config"] and "builder_optimization_level" not in calls["config"]
    assert m["engine"]["profiles"] == [{"min": 32, "opt": 32, "max": 32}] and m["engine"]["static_batch"] == 32
    assert m["engine"]["precision_mode"] == "fp16_builder_flag" and m["precision"] == "fp32"
    assert rt.TensorRTRunner(str(tmp_path / "m.plan"), m).use_cuda_graph


def test_build_parse_error_names_the_node_and_writes_nothing(tmp_path, fake):
    fake("10.3.0", fail_parse=True)
    onnx = _export(tmp_path, "fp16")
    before = contract.sidecar_path(onnx).read_text()
    with pytest.raises(B.BuildError, match=r"cannot parse .*In node 7 with name: /attn/Softmax"):
        B.build_engine(B.BuildConfig(onnx=str(onnx)), log=lambda s: None)
    assert not (tmp_path / "m-fp16.plan").exists() and not list(tmp_path.glob(".*.ddpm-tmp"))
    assert contract.sidecar_path(onnx).read_text() == before
    assert "In node 7" in (tmp_path / "m-fp16.build.log").read_text()


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
    r = _invoke("--fp16")
    assert r.exit_code == 1 and "exactly one of --onnx" in r.output


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
