"""ddpm-export triton: the repository layout and config.pbtxt, without a server."""
import json

import pytest
from click.testing import CliRunner

pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] (Triton's config schema) is not installed")

from ddpm_export.cli.main import main  # noqa: E402
from ddpm_export.serving.triton_repo import (  # noqa: E402
    RepositoryConfig, RepositoryError, config_text, parse_config, write_repository)
from triton_helpers import DIGITS, fake_plan  # noqa: E402


def _config(repo, model):
    return parse_config((repo / model / "config.pbtxt").read_text())


def test_onnx_bls_repository_uses_the_onnxruntime_backend(tmp_path):
    repo = tmp_path / "repo"
    s = write_repository(RepositoryConfig(engine=str(DIGITS), out=str(repo), mode="bls", max_batch=16,
                                          instances=2, sampler_instances=5))
    assert s["models"] == ["digits", "digits_sampler"]
    assert (repo / "digits" / "1" / "model.onnx").read_bytes() == DIGITS.read_bytes()
    unet = _config(repo, "digits")
    assert unet.platform == "onnxruntime_onnx" and unet.max_batch_size == 16
    assert [(i.name, list(i.dims)) for i in unet.input] == [("x_t", [1, 16, 16]), ("t", [1])]
    assert unet.input[1].HasField("reshape") and list(unet.input[1].reshape.shape) == []
    assert [(o.name, list(o.dims)) for o in unet.output] == [("eps", [1, 16, 16])]
    assert unet.HasField("dynamic_batching") and unet.instance_group[0].count == 2
    sampler = _config(repo, "digits_sampler")
    assert sampler.backend == "python" and sampler.max_batch_size == 0
    assert sampler.instance_group[0].count == 5
    params = {k: v.string_value for k, v in sampler.parameters.items()}
    assert params["mode"] == "bls" and params["unet_model"] == "digits" and params["max_batch"] == "16"
    d = repo / "digits_sampler" / "1"
    assert (d / "model.py").is_file() and (d / "runtime" / "loop.py").is_file()
    assert json.loads((d / "model.json").read_text())["image_shape"] == [1, 16, 16]


def test_inprocess_repository_carries_the_engine_and_runtime(tmp_path):
    repo = tmp_path / "repo"
    s = write_repository(RepositoryConfig(engine=str(DIGITS), out=str(repo), mode="inprocess",
                                          name="d", instances=2))
    assert s["models"] == ["d_sampler"] and s["max_batch"] == 64
    d = repo / "d_sampler" / "1"
    assert (d / "model.onnx").read_bytes() == DIGITS.read_bytes()
    assert (d / "model.json").read_bytes() == DIGITS.with_suffix(".json").read_bytes()
    cfg = _config(repo, "d_sampler")
    assert cfg.instance_group[0].count == 2
    assert {k: v.string_value for k, v in cfg.parameters.items()}["engine_file"] == "model.onnx"
    # the copied runtime is importable on its own and reads the copied engine's manifest
    import subprocess
    import sys
    code = "import runtime.contract as c; print(c.read_manifest('model.onnx')['image_shape'])"
    r = subprocess.run([sys.executable, "-c", code], cwd=d, capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[1, 16, 16]", r.stderr


def test_plan_repository_follows_the_tensorrt_backend_layout(tmp_path):
    plan = fake_plan(tmp_path, profile=(1, 8, 32))
    repo = tmp_path / "repo"
    s = write_repository(RepositoryConfig(engine=str(plan), out=str(repo), mode="bls"))
    assert s["max_batch"] == 32  # the plan's profile, not the export's 64
    assert (repo / "digits" / "1" / "model.plan").read_bytes() == plan.read_bytes()
    cfg = _config(repo, "digits")
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 32
    assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_GPU
    with pytest.raises(RepositoryError, match="expected 1..32"):
        write_repository(RepositoryConfig(engine=str(plan), out=str(tmp_path / "r2"), max_batch=33))


def test_plan_profile_must_start_at_one(tmp_path):
    plan = fake_plan(tmp_path, profile=(4, 8, 32))
    with pytest.raises(RepositoryError, match="--min-batch 1"):
        write_repository(RepositoryConfig(engine=str(plan), out=str(tmp_path / "repo")))


def test_refusals(tmp_path):
    repo = tmp_path / "repo"
    write_repository(RepositoryConfig(engine=str(DIGITS), out=str(repo)))
    with pytest.raises(RepositoryError, match="--force"):
        write_repository(RepositoryConfig(engine=str(DIGITS), out=str(repo)))
    write_repository(RepositoryConfig(engine=str(DIGITS), out=str(repo), force=True, mode="bls"))
    assert (repo / "digits").is_dir()
    with pytest.raises(RepositoryError, match="no such engine"):
        write_repository(RepositoryConfig(engine=str(tmp_path / "x.onnx"), out=str(tmp_path / "o")))
    with pytest.raises(RepositoryError, match="pass the .onnx"):
        write_repository(RepositoryConfig(engine=str(fake_plan(tmp_path)), out=str(tmp_path / "o"),
                                          mode="bls", unet_backend="python"))
    with pytest.raises(RepositoryError, match="ModelConfig schema"):
        config_text({"name": "m", "maxBatchSize": 1, "no_such_field": 1})
    assert not (tmp_path / "o").exists()


def test_max_num_follows_the_memory_budget(tmp_path):
    a = write_repository(RepositoryConfig(engine=str(DIGITS), out=str(tmp_path / "a"), max_memory_mb=1))
    b = write_repository(RepositoryConfig(engine=str(DIGITS), out=str(tmp_path / "b"), max_memory_mb=2))
    per_image = 1 * 16 * 16 * 17  # C*H*W x (float32 chain + output, float64 conversion, uint8)
    assert (a["max_num"], b["max_num"]) == ((1 << 20) // per_image, (2 << 20) // per_image)


def test_cli_writes_the_repository_and_reports_errors_in_one_line(tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["triton", "--engine", str(DIGITS), "--out", str(tmp_path / "repo"),
                             "--mode", "bls", "--unet-backend", "python"])
    assert r.exit_code == 0, r.output
    assert "models digits, digits_sampler" in r.output
    assert (tmp_path / "repo" / "digits" / "1" / "model.py").is_file()
    r = runner.invoke(main, ["triton", "--engine", str(DIGITS), "--out", str(tmp_path / "repo")])
    assert r.exit_code == 1 and "exists; pass --force" in r.output
