"""Every place a method is named takes every method, and rejects bad method input the same
way: one line naming the valid choices, exit 1, nothing written."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime.sample import main as sample_main
from runtime.sample_many import main as sample_many_main
from runtime.schedulers import METHODS, REGISTRY

ENGINE = Path(__file__).resolve().parents[2] / "engines" / "digits.onnx"

BAD = [
    (["--method", "heun"], "method 'heun' is unknown: expected one of ddpm, ddim, dpmsolver++, sde-dpmsolver++, unipc"),
    (["--method", "unipc", "--variant", "bh3"], "expected one of bh1, bh2"),
    (["--method", "ddim", "--variant", "bh2"], "expected one of consistent, diffusers"),
    (["--method", "unipc", "--order", "4"], "order=4 is not available for method unipc: expected one of 1, 2, 3"),
    (["--method", "sde-dpmsolver++", "--order", "3"], "expected one of 1, 2"),
    (["--method", "dpmsolver++", "--order", "3", "--steps", "4"], "too few for dpmsolver++ order 3"),
    (["--method", "dpmsolver++", "--eta", "0.5"], "takes no eta (only ddim do)"),
    (["--method", "ddpm", "--spacing", "trailing"], "does not apply to method ddpm"),
    (["--method", "unipc", "--no-clip", "--threshold-ratio", "0.9"], "needs clipping"),
]


@pytest.mark.parametrize("args, message", BAD)
def test_runtime_sample_rejects_bad_method_input(tmp_path, capsys, args, message):
    out = tmp_path / "s.png"
    rc = sample_main(["--engine", str(ENGINE), "--num", "2", "--out", str(out), "--no-progress", *args])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and not out.exists()
    assert len(err.splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("args, message", BAD[:5] + BAD[6:])
def test_sample_many_clis_reject_bad_method_input(tmp_path, capsys, args, message):
    from click.testing import CliRunner

    from ddpm_export.cli.main import main

    out = tmp_path / "shards"
    rc = sample_many_main(["--engine", str(ENGINE), "--num", "2", "--out", str(out), "--no-progress", *args])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and not out.exists() and message in err and len(err.splitlines()) == 1, err
    r = CliRunner().invoke(main, ["sample-many", "--engine", str(ENGINE), "--num", "2", "--out", str(out),
                                  "--no-progress", *args])
    assert r.exit_code == 1 and not out.exists(), r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_steps_table_rejects_an_unknown_method(tmp_path):
    from click.testing import CliRunner

    from ddpm_export.cli.main import main

    r = CliRunner().invoke(main, ["steps-table", "--engine", str(ENGINE), "--methods", "ddim,heun",
                                  "--json", str(tmp_path / "t.json")])
    assert r.exit_code == 1 and "unknown method(s) ['heun']" in r.output and "unipc" in r.output
    assert not (tmp_path / "t.json").exists()


def test_every_method_samples_through_the_api_and_the_cli(tmp_path, capsys):
    """runtime.load(...).sample(method=...) and python -m runtime.sample take every registered
    method (few steps, 2 images: a plumbing check, not a quality one)."""
    assert set(METHODS) == set(REGISTRY) and {"dpmsolver++", "sde-dpmsolver++", "unipc"} <= set(METHODS)
    with runtime.load(ENGINE) as engine:
        for m in METHODS:
            frames = []
            res = engine.sample_float(2, seed=0, method=m, steps=5, trajectory_frames=5,
                                      callback=lambda i, t, x, x0: frames.append(t))
            assert res.images.shape == (2, 1, 16, 16) and np.isfinite(res.images).all()
            assert res.network_calls == 5 and len(frames) == 5 and len(res.trajectory) == 5
    out = tmp_path / "u.png"
    rc = sample_main(["--engine", str(ENGINE), "--num", "2", "--steps", "5", "--method", "unipc",
                      "--order", "3", "--variant", "bh1", "--no-corrector", "--karras", "--out", str(out),
                      "--no-progress"])
    assert rc == 0 and out.is_file(), capsys.readouterr().err
