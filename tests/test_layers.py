"""The package layers (pyproject.toml's [tool.importlinter] contracts), checked on the real import graph."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.fail("lint-imports not found: pip install import-linter (it is in the test extra)")
    return subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    r = _lint_imports()
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "Contracts: 4 kept, 0 broken." in r.stdout, r.stdout[-2000:]


def test_a_forbidden_import_breaks_a_contract(tmp_path):
    """The check can fail: a runtime module importing torch is reported."""
    bad = ROOT / "runtime" / "_layer_probe_tmp.py"
    bad.write_text("import torch  # noqa: F401\n")
    try:
        r = _lint_imports()
    finally:
        bad.unlink()
    assert r.returncode != 0
    assert "runtime._layer_probe_tmp -> torch" in r.stdout
