"""``make demo`` samples with the recommended few-step method, says how long it took, and prints
the command for the reference DDPM chain (run with this interpreter; the setup step is skipped)."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_samples_in_seconds_and_prints_the_reference_command(tmp_path):
    out = tmp_path / "samples.png"
    # -o: treat the installed venv as up to date, so the test never (re)installs anything
    r = subprocess.run(["make", "-s", "-o", ".venv/.installed", "demo", f"PY={sys.executable}",
                        f"DEMO_OUT={out}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    wrote = re.search(r"wrote \S+: 64 images, 10 engine calls in ([0-9.]+) s", r.stdout)
    assert wrote, r.stdout  # UniPC at 10 engine calls, and the time it took
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    reference = [line.strip() for line in r.stdout.splitlines() if "--method ddpm" in line]
    assert len(reference) == 1 and reference[0].startswith(f"{sys.executable} -m runtime.sample"), r.stdout
    assert "--steps" not in reference[0]  # DDPM over all T steps
