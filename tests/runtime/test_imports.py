"""runtime/ imports with neither torch nor tensorrt installed, and stays Python 3.8 clean."""
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import runtime

ROOT = Path(__file__).resolve().parents[2]

BLOCKED = ["torch", "tensorrt", "tensorrt_lean", "onnx", "ddpm_export", "diffusers"]


def test_every_runtime_module_imports_without_torch_or_tensorrt():
    mods = [m.name for m in pkgutil.walk_packages(runtime.__path__, "runtime.")]
    assert len(mods) >= 4
    code = (
        "import sys\n"
        f"for name in {BLOCKED!r}:\n"
        "    sys.modules[name] = None  # makes 'import name' raise ImportError\n"
        f"for m in {mods!r}:\n"
        "    __import__(m)\n"
        "print('ok', len(sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr


def test_runtime_is_python_3_8_compatible():
    vermin = shutil.which("vermin") or str(Path(sys.executable).parent / "vermin")
    if not Path(vermin).exists():
        pytest.skip("vermin not installed (pip install -e '.[test]')")
    r = subprocess.run(
        [vermin, "--no-tips", "--violations", "-t=3.8-", "--eval-annotations", "--backport", "typing",
         "--no-parse-comments", str(ROOT / "runtime")],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
