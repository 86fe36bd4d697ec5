"""ddpm-export validate on policy engines (tests/tiny_policy.py: tiny state and image policies,
no LeRobot needed): the encoder, the denoiser and the whole chunk against the PyTorch policy, a
pass on a good export, a failure (exit 1) when the manifest's statistics are not the checkpoint's,
and one-line refusals."""
import json
import shutil

import pytest
from click.testing import CliRunner

from ddpm_export.cli.main import main
from tiny_policy import tiny_policy


@pytest.fixture(scope="module")
def state_policy(tmp_path_factory):
    return tiny_policy(tmp_path_factory.mktemp("vpol_state"), "state", fp16=True)


def _run(*args):
    return CliRunner().invoke(main, ["validate", *map(str, args)])


def test_float32_and_fp16_policy_pass_every_level(state_policy, tmp_path):
    fp16 = state_policy.with_name("p-fp16.onnx")
    r = _run("--engine", state_policy, "--engine", fp16, "--method", "ddim", "--steps", "10",
             "--report", tmp_path / "rep")  # no --checkpoint: the manifests' source p.pt beside them
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["kind"] == "policy" and rep["passed"] and [e["name"] for e in rep["engines"]] == ["p.onnx",
                                                                                               "p-fp16.onnx"]
    for e in rep["engines"]:
        assert e["checkpoint"].endswith("p.pt")
        assert [r["batch"] for r in e["encoder"]] == [1, 3, 8]
        assert sorted({r["t"] for r in e["one_step"]}) == list(range(0, 100, 10)) + [99]
        assert e["chunk"]["method"] == "ddim" and e["chunk"]["steps"] == 10
        assert all(r["engine_calls"] == 10 and r["raw_scale"] > 0.1 for r in e["chunk"]["rows"])  # a real chunk
    f32, f16 = (e["checks"] for e in rep["engines"])
    # measured: float32 chunk 3e-7, FP16 chunk ~2e-3 (normalized actions)
    assert f32["chunk_max_abs"]["value"] < 1e-5 and f32["chunk_max_abs"]["limit"] == 1e-3
    assert 1e-5 < f16["chunk_max_abs"]["value"] < f16["chunk_max_abs"]["limit"] == 5e-2
    assert f16["eps_max_abs"]["limit"] == 2e-2
    assert "| p.onnx | fp32 (fp32) |" in r.output and r.output.count("| PASS |") == 2


def test_image_policy_encoder_is_checked_against_pytorch(tmp_path):
    from ddpm_export.evaluation.validate_policy import validate_policy

    p = tiny_policy(tmp_path, "image")
    rep = validate_policy([str(p)], batches=[1, 2], seeds=(0,), chunk_batch=2)
    e = rep["engines"][0]
    assert rep["passed"] and e["chunk"]["method"] == "ddpm" and e["chunk"]["steps"] == 100
    assert all(0 < r["scale"] and r["max_abs"] <= 1e-4 for r in e["encoder"])  # ResNet-18 features compared


@pytest.mark.parametrize("where", ["action", "observation"])
def test_statistics_not_the_checkpoints_fail_the_chunk_level(state_policy, tmp_path, where):
    """A manifest whose normalization differs from the checkpoint's passes the encoder and the
    denoiser (each alone is right) and fails the chunk: exit 1, not a warning."""
    from runtime.contract import read_manifest, write_manifest

    d = tmp_path / "p"
    shutil.copytree(state_policy.parent, d)
    m = read_manifest(d / "p.onnx")
    norm = m["policy"]["action"]["normalization"] if where == "action" else \
        m["policy"]["observations"][0]["normalization"]
    norm["max"] = [v + 0.5 for v in norm["max"]]
    write_manifest(d / "p.onnx", m)
    r = _run("--engine", d / "p.onnx", "--method", "ddim", "--steps", "4", "--report", tmp_path / "rep")
    assert r.exit_code == 1, r.output
    c = json.loads((tmp_path / "rep" / "report.json").read_text())["engines"][0]["checks"]
    assert c["encoder_max_abs"]["passed"] and c["eps_max_abs"]["passed"] and not c["chunk_max_abs"]["passed"]
    assert "| FAIL |" in r.output


def test_refusals_are_one_line(state_policy, tmp_path, tiny_export):
    other = tmp_path / "other.pt"
    shutil.copyfile(state_policy.with_name("p.pt"), other)
    with open(other, "ab") as f:
        f.write(b"\0")  # another file: another sha256
    for args, text in [
        (["--engine", state_policy, "--checkpoint", other], "was not made from"),
        (["--engine", state_policy, "--samples", "3"], "--samples: image-engine options"),
        (["--engine", state_policy, "--engine", tiny_export["onnx"]], "not policy engines"),
        (["--engine", tiny_export["onnx"]], "--checkpoint is required for image engines"),
    ]:
        r = _run(*args)
        assert r.exit_code != 0 and text in r.output, (args, r.output)
    lone = tmp_path / "lone"
    lone.mkdir()
    for f in ("p.onnx", "p.json", "p-encoder.onnx"):
        shutil.copyfile(state_policy.with_name(f), lone / f)
    r = _run("--engine", lone / "p.onnx")
    assert r.exit_code == 1 and "source checkpoint 'p.pt' is neither beside the engine" in r.output, r.output
