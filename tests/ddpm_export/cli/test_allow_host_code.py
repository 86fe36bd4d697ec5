"""Every command that opens an engine takes --allow-host-code, and without it refuses a
version-compatible plan (which embeds host code) in one line, before any work."""
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ddpm_export.cli.main import main
from runtime.backends.tensorrt import runner as trt_runner

ROOT = Path(__file__).resolve().parents[3]

COMMANDS = {
    "validate": ["validate", "--checkpoint", str(ROOT / "engines" / "digits.pt"), "--samples", "0",
                 "--likelihood-images", "0", "--no-progress", "--engine"],
    "steps-table": ["steps-table", "--steps", "5", "--methods", "ddim", "--no-progress", "--engine"],
    "nll": ["nll", "--num", "1", "--no-progress", "--engine"],
    "sample-many": ["sample-many", "--num", "1", "--no-progress", "--out", "{tmp}/shards", "--engine"],
}


def _vc_plan(tmp_path, version_compatible=True):
    """A digits NAME.plan (not a real engine) whose manifest says it was built version-compatible."""
    sys.path.insert(0, str(ROOT / "tests" / "ddpm_export" / "serving"))
    try:
        from triton_helpers import fake_plan
    finally:
        sys.path.pop(0)
    return fake_plan(tmp_path, version_compatible=version_compatible)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_version_compatible_plan_is_refused_without_the_flag_and_opened_with_it(tmp_path, monkeypatch, name):
    plan = _vc_plan(tmp_path)
    args = [a.format(tmp=tmp_path) for a in COMMANDS[name]] + [str(plan)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1, r.output
    last = r.output.strip().splitlines()[-1]
    assert last.lower().startswith("error: ") and "version-compatible" in last and "--allow-host-code" in last

    def entered(self):  # past the host-code check: the command goes on to open the plan
        raise RuntimeError("opening the plan")

    monkeypatch.setattr(trt_runner.TensorRTRunner, "__enter__", entered)
    r = CliRunner().invoke(main, args + ["--allow-host-code"])
    assert r.exit_code == 1, r.output
    assert r.output.strip().splitlines()[-1].lower() == "error: opening the plan", r.output
    assert not (tmp_path / "shards").exists()  # nothing written on either failure
    help_text = CliRunner().invoke(main, [COMMANDS[name][0], "--help"]).output
    assert "--allow-host-code" in help_text and "trust" in help_text


def test_triton_repository_for_a_version_compatible_plan(tmp_path):
    pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] (Triton's config schema) is not installed")
    from ddpm_export.serving.triton_repo import parse_config

    plan = _vc_plan(tmp_path)
    r = CliRunner().invoke(main, ["triton", "--engine", str(plan), "--out", str(tmp_path / "r")])
    assert r.exit_code == 1 and "version-compatible" in r.output and "--allow-host-code" in r.output
    assert not (tmp_path / "r").exists()

    def params(repo, model):
        cfg = parse_config((repo / model / "config.pbtxt").read_text())
        return {k: v.string_value for k, v in cfg.parameters.items()}

    # inprocess: the sampler loads the plan itself and is told it may
    r = CliRunner().invoke(main, ["triton", "--engine", str(plan), "--out", str(tmp_path / "ip"),
                                  "--allow-host-code"])
    assert r.exit_code == 0, r.output
    assert params(tmp_path / "ip", "digits_sampler")["allow_host_code"] == "true"
    # bls: Triton's TensorRT backend loads it, which needs a server-wide option: say it
    r = CliRunner().invoke(main, ["triton", "--engine", str(plan), "--out", str(tmp_path / "bls"),
                                  "--mode", "bls", "--allow-host-code"])
    assert r.exit_code == 0, r.output
    assert "--backend-config=tensorrt,version-compatible=true" in r.output
    assert "allow_host_code" not in params(tmp_path / "bls", "digits_sampler")
    # an ordinary plan needs neither
    (tmp_path / "plain").mkdir()
    plain = _vc_plan(tmp_path / "plain", version_compatible=False)
    r = CliRunner().invoke(main, ["triton", "--engine", str(plain), "--out", str(tmp_path / "p")])
    assert r.exit_code == 0 and "backend-config" not in r.output, r.output
    assert "allow_host_code" not in params(tmp_path / "p", "digits_sampler")
    assert json.loads((tmp_path / "p" / "digits_sampler" / "1" / "model.json").read_text())["engine"]
