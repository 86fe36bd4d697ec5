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


def test_help_lists_commands(run):
    r = run("--help")
    assert r.exit_code == 0
    for cmd in ("train", "sample", "import"):
        assert cmd in r.output


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
