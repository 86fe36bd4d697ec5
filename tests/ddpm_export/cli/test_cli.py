"""The CLI: one clear line and a non-zero exit on bad input, no traceback."""
import pytest
from click.testing import CliRunner

from ddpm_export.cli.main import main


@pytest.fixture()
def run():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, list(args))

    return invoke


def _one_error_line(r):
    assert r.exit_code != 0
    assert "Traceback" not in r.output
    return r.output.strip().splitlines()[-1]


def test_every_command_defined_is_registered_and_shows_its_help(run):
    """Each click command in ddpm_export/cli/ is reachable from ``ddpm-export`` and builds its
    help (option defaults included: some are read from the library when help is shown)."""
    import importlib
    import pkgutil

    import click

    import ddpm_export.cli as cli_pkg

    defined = set()
    for info in pkgutil.iter_modules(cli_pkg.__path__):
        module = importlib.import_module(f"ddpm_export.cli.{info.name}")
        defined |= {v for v in vars(module).values() if isinstance(v, click.Command) and v is not main}
    registered = set(main.commands.values())
    assert defined - registered == set()
    assert len(registered) >= 9
    for name in main.commands:
        r = run(name, "--help")
        assert r.exit_code == 0, (name, r.output)


def test_cli_defaults_are_the_librarys(monkeypatch, tmp_path):
    """train, export and validate pass the library's own defaults when given no options."""
    import ddpm_export.export.onnx_export as onnx_export
    import ddpm_export.evaluation.validate as validate
    import ddpm_export.training.train as train
    from runtime.contract import DEFAULT_BATCH_RANGE

    seen = {}

    def fake_train(cfg, progress=True, log=None):
        seen["train"] = cfg
        return {"step": 0, "parameters": 0, "train_seconds": 0.0, "checkpoint": "c", "model": "m"}

    def fake_export(checkpoint, out, **kw):
        seen["export"] = kw
        return {"checks": {}, "precision": "fp32"}

    def fake_validate(checkpoint, engines, thresholds, **kw):
        seen["validate"] = thresholds
        return {"passed": True}, {}

    monkeypatch.setattr(train, "train", fake_train)
    monkeypatch.setattr(onnx_export, "export_onnx", fake_export)
    monkeypatch.setattr(validate, "validate", fake_validate)
    monkeypatch.setattr(validate, "format_report", lambda rep: "report")
    out = str(tmp_path / "run")
    assert run_ok("train", "--out", out) and seen["train"] == train.TrainConfig(out=out)
    assert run_ok("export", "--checkpoint", "c.pt", "--out", str(tmp_path / "m.onnx"))
    assert seen["export"]["opset"] == onnx_export.DEFAULT_OPSET
    assert seen["export"]["batch_range"] == (DEFAULT_BATCH_RANGE.min, DEFAULT_BATCH_RANGE.opt,
                                             DEFAULT_BATCH_RANGE.max)
    assert run_ok("validate", "--checkpoint", "c.pt", "--engine", "e.onnx")
    assert seen["validate"] == validate.Thresholds()


def run_ok(*args) -> bool:
    r = CliRunner().invoke(main, list(args))
    assert r.exit_code == 0, r.output
    return True


def test_unknown_preset(run):
    line = _one_error_line(run("train", "--preset", "lsun"))
    assert "lsun" in line and "cifar10" in line


def test_missing_checkpoint(run, tmp_path):
    line = _one_error_line(run("sample", "--checkpoint", str(tmp_path / "x.pt")))
    assert line.startswith("error:") and "x.pt" in line


def test_truncated_checkpoint(run, tmp_path):
    p = tmp_path / "bad.pt"
    p.write_bytes(b"PK\x03\x04 not really")
    line = _one_error_line(run("sample", "--checkpoint", str(p)))
    assert "bad.pt" in line and "truncated" in line


def test_cifar10_without_data_says_where_to_get_it(run, tmp_path):
    line = _one_error_line(run("train", "--preset", "cifar10", "--out", str(tmp_path / "r")))
    assert "cifar-10-python.tar.gz" in line
    assert not (tmp_path / "r" / "last.pt").exists()


def test_import_refuses_to_overwrite(run, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "out.pt").write_bytes(b"precious")
    line = _one_error_line(run("import", "--format", "diffusers", str(tmp_path / "src"), "--out", str(tmp_path / "out.pt")))
    assert "--force" in line
    assert (tmp_path / "out.pt").read_bytes() == b"precious"


def test_python_dash_m_ddpm_export_runs_the_cli():
    """``python -m ddpm_export`` is the ``ddpm-export`` script: its commands, under its own name
    (one subprocess: each one imports torch)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    r = subprocess.run([sys.executable, "-m", "ddpm_export", "nll"], cwd=root, capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr  # click's usage error
    assert "Usage: python -m ddpm_export nll" in r.stderr and "Missing option '--engine'" in r.stderr, r.stderr
