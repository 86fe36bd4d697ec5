"""sample-many: N samples in resumable, atomically written shards (runtime/shards.py).

Uses the shipped engines/digits.onnx with 5 DDIM steps: 10 images in shards of
4 (3 shards, the last one short) take well under a second.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime import sample_many
from runtime.shards import ShardsError, load_shards, sample_shards, shard_path, write_merged

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "engines" / "digits.onnx"
CFG = dict(num=10, shard_size=4, method="ddim", steps=5, seed=0)
CLI_ARGS = ["--engine", str(ENGINE), "--num", "10", "--shard-size", "4", "--method", "ddim",
            "--steps", "5"]


@pytest.fixture(scope="module")
def engine():
    with runtime.load(ENGINE, threads=1) as e:
        yield e


def _run(engine, out, **kw):
    logs = []
    summary = sample_shards(engine, out, **{**CFG, "progress": False, "log": logs.append, **kw})
    return summary, logs


@pytest.fixture(scope="module")
def reference(engine, tmp_path_factory):
    """An uninterrupted run: its images are what every resumed run must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    _run(engine, out)
    return load_shards(out)


def _files(out):
    return sorted(p.name for p in Path(out).iterdir())


def _arrays(path):
    with np.load(path) as z:
        return {k: z[k].tobytes() for k in z.files}


def test_layout_and_shards_hold_the_images_of_one_single_run(engine, tmp_path, reference):
    summary, logs = _run(engine, tmp_path)
    assert _files(tmp_path) == ["run.json", "shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]
    assert (summary["shards"], summary["sampled"], summary["skipped"]) == (3, 3, 0)
    assert summary["images_per_s"] > 0 and summary["config"]["batch"] == 4
    assert "images/s" in logs[-1] and "image-steps/s" in logs[-1]
    for k, n in enumerate([4, 4, 2]):
        with np.load(shard_path(tmp_path, k)) as z:
            assert z["images"].dtype == np.uint8 and z["images"].shape == (n, 16, 16, 1)
            assert int(z["index_start"]) == 4 * k
            # any shard can be redrawn alone from the run's seed and its first image
            assert int(z["seed"]) == 0
            again = engine.sample(n, seed=0, first_image=4 * k, batch=3, method="ddim", steps=5)
            np.testing.assert_array_equal(z["images"], again)
    images = load_shards(tmp_path)
    assert images.dtype == np.uint8 and images.shape == (10, 16, 16, 1)
    np.testing.assert_array_equal(images, reference)
    # the shards path gives exactly the images of one single run (image index = global index)
    single = engine.sample(10, seed=0, batch=10, method="ddim", steps=5)
    np.testing.assert_array_equal(images, single)


def test_shards_do_not_depend_on_shard_size_or_batch(engine, tmp_path, reference):
    _run(engine, tmp_path / "a", shard_size=3, batch=1)
    _run(engine, tmp_path / "b", shard_size=10, batch=7)
    np.testing.assert_array_equal(load_shards(tmp_path / "a"), reference)
    np.testing.assert_array_equal(load_shards(tmp_path / "b"), reference)


def test_a_resumed_run_may_change_the_batch(engine, tmp_path, reference):
    _run(engine, tmp_path, batch=4)
    shard_path(tmp_path, 1).unlink()
    summary, _ = _run(engine, tmp_path, batch=1)
    assert (summary["sampled"], summary["skipped"]) == (1, 2)
    np.testing.assert_array_equal(load_shards(tmp_path), reference)


def test_a_version_1_run_is_refused_with_the_reason(engine, tmp_path):
    import json

    _run(engine, tmp_path)
    run = json.loads((tmp_path / "run.json").read_text())
    run["format_version"] = 1
    (tmp_path / "run.json").write_text(json.dumps(run))
    with pytest.raises(ShardsError, match="format_version 1, expected 2.*seeded each shard"):
        _run(engine, tmp_path)


def test_a_second_run_is_identical_and_a_rerun_skips_everything(engine, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _run(engine, a)
    _run(engine, b)
    for k in range(3):
        assert _arrays(shard_path(a, k)) == _arrays(shard_path(b, k))
    before = {p: p.stat().st_mtime_ns for p in a.iterdir()}
    summary, logs = _run(engine, a)
    assert (summary["sampled"], summary["skipped"], summary["images_sampled"]) == (0, 3, 0)
    assert "nothing to do" in logs[-1]
    assert {p: p.stat().st_mtime_ns for p in a.iterdir()} == before


def test_resume_redoes_only_the_missing_shard(engine, tmp_path, reference):
    _run(engine, tmp_path)
    shard_path(tmp_path, 1).unlink()
    kept = {k: shard_path(tmp_path, k).stat().st_mtime_ns for k in (0, 2)}
    summary, _ = _run(engine, tmp_path, progress=True)  # the bar starts at the 6 images there
    assert (summary["sampled"], summary["skipped"], summary["images_sampled"]) == (1, 2, 4)
    assert {k: shard_path(tmp_path, k).stat().st_mtime_ns for k in (0, 2)} == kept
    np.testing.assert_array_equal(load_shards(tmp_path), reference)


def test_an_interrupted_run_keeps_finished_shards_and_resumes(engine, tmp_path, reference):
    def stop_after_first(k, path):
        if k == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(engine, tmp_path, on_shard=stop_after_first)
    assert _files(tmp_path) == ["run.json", "shard-00000.npz"]  # no temporary files either
    summary, _ = _run(engine, tmp_path)
    assert (summary["sampled"], summary["skipped"]) == (2, 1)
    np.testing.assert_array_equal(load_shards(tmp_path), reference)


def test_an_interruption_while_writing_leaves_no_partial_shard(engine, tmp_path, monkeypatch, reference):
    real = np.savez_compressed

    def interrupted_write(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        _run(engine, tmp_path)
    assert _files(tmp_path) == ["run.json"]
    monkeypatch.setattr(np, "savez_compressed", real)
    _run(engine, tmp_path)
    np.testing.assert_array_equal(load_shards(tmp_path), reference)


@pytest.mark.parametrize("damage", ["truncated", "wrong_shape"])
def test_a_damaged_shard_is_sampled_again_with_a_warning(engine, tmp_path, reference, damage):
    _run(engine, tmp_path)
    p = shard_path(tmp_path, 2)
    if damage == "truncated":
        p.write_bytes(p.read_bytes()[:100])
    else:
        np.savez(p, images=np.zeros((3, 16, 16, 1), np.uint8), index_start=8, seed=0)
    with pytest.raises(ShardsError, match="shard-00002.npz .*run the same sample-many command again"):
        load_shards(tmp_path)
    summary, logs = _run(engine, tmp_path)
    assert (summary["sampled"], summary["redone"]) == (1, 1)
    assert any(s.startswith("warning: ") and "shard-00002.npz" in s and "again" in s for s in logs)
    np.testing.assert_array_equal(load_shards(tmp_path), reference)


@pytest.mark.parametrize("change,expect", [
    (dict(seed=1), "seed 1 asked, 0 in its run.json"),
    (dict(num=12), "num 12 asked, 10 in its run.json"),
    (dict(steps=6), "steps 6 asked, 5 in its run.json"),
])
def test_a_different_configuration_is_refused(engine, tmp_path, change, expect):
    _run(engine, tmp_path)
    before = _files(tmp_path)
    with pytest.raises(ShardsError, match=expect) as e:
        _run(engine, tmp_path, **change)
    assert "another --out" in str(e.value) and f"delete {tmp_path}" in str(e.value)
    assert _files(tmp_path) == before


def test_another_engine_is_refused(engine, tmp_path):
    _run(engine, tmp_path)
    with runtime.load(ENGINE.with_name("digits-fp16.onnx"), threads=1) as fp16:
        with pytest.raises(ShardsError, match=r"engine .*digits-fp16.onnx \(sha256 .*digits.onnx"):
            _run(fp16, tmp_path)


def test_defaults_are_resolved_so_explicit_values_match(engine, tmp_path):
    cfg = dict(num=2, shard_size=2, steps=None)  # ddim default: 50 steps; batch: min(2, 64)
    _run(engine, tmp_path, **cfg)
    summary, _ = _run(engine, tmp_path, **{**cfg, "steps": 50, "batch": 2})
    assert summary["skipped"] == 1 and summary["config"]["steps"] == 50


def test_a_folder_with_unknown_shards_or_a_file_is_refused(engine, tmp_path):
    (tmp_path / "shard-00000.npz").write_bytes(b"x")
    with pytest.raises(ShardsError, match="no run.json"):
        _run(engine, tmp_path)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ShardsError, match="not a folder"):
        _run(engine, f)


@pytest.mark.parametrize("bad,expect", [
    (dict(num=0), "num"), (dict(shard_size=0), "shard_size"), (dict(seed=-1), "seed"),
    (dict(batch=0), "batch"), (dict(batch=65), "max batch"),
    (dict(method="ddpm", eta=0.5), "takes no eta"), (dict(method="unipc", order=4), "expected one of 1, 2, 3"), (dict(method="plms"), "method"),
])
def test_bad_arguments_fail_before_anything_is_written(engine, tmp_path, bad, expect):
    with pytest.raises(ValueError, match=expect):
        _run(engine, tmp_path / "out", **bad)
    assert not (tmp_path / "out").exists()


def test_load_shards_errors(engine, tmp_path):
    with pytest.raises(ShardsError, match="no such folder"):
        load_shards(tmp_path / "nope")
    with pytest.raises(ShardsError, match="is empty: not a sample-many output folder"):
        load_shards(tmp_path)
    (tmp_path / "other.txt").write_text("x")
    with pytest.raises(ShardsError, match="has no run.json"):
        load_shards(tmp_path)
    out = tmp_path / "run"
    _run(engine, out)
    shard_path(out, 1).unlink()
    with pytest.raises(ShardsError, match=r"1 of 3 shards missing \(shard-00001.npz\).*again"):
        load_shards(out)


def test_write_merged(engine, tmp_path, reference):
    _run(engine, tmp_path / "out")
    assert write_merged(tmp_path / "out", tmp_path / "all.npz") == 10
    with np.load(tmp_path / "all.npz") as z:
        np.testing.assert_array_equal(z["arr_0"], reference)


# --- python -m runtime.sample_many ---------------------------------------------

def test_cli_runs_resumes_and_refuses(tmp_path, capsys, reference):
    out = str(tmp_path / "out")
    assert sample_many.main(CLI_ARGS + ["--out", out, "--no-progress", "--npz", str(tmp_path / "a.npz")]) == 0
    o = capsys.readouterr().out
    assert "images/s" in o and "wrote" in o
    np.testing.assert_array_equal(load_shards(out), reference)
    assert sample_many.main(CLI_ARGS + ["--out", out, "--no-progress"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert sample_many.main(CLI_ARGS + ["--out", out, "--seed", "7"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "seed 7 asked" in err[0]


@pytest.mark.parametrize("args,expect", [
    (["--engine", "missing.onnx", "--num", "3"], "no such engine file"),
    (["--engine", str(ENGINE), "--num", "3", "--eta", "0.5"], "takes no eta (only ddim do)"),
    (["--engine", str(ENGINE), "--num", "0"], "num (--num) = 0"),
])
def test_cli_errors_are_one_line_and_exit_1(tmp_path, capsys, args, expect):
    assert sample_many.main(args + ["--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0]


def test_cli_interrupt_exits_130_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    import runtime.shards

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runtime.shards, "sample_shards", interrupted)
    assert sample_many.main(CLI_ARGS + ["--out", str(tmp_path / "out")]) == 130
    assert "re-run the same command to resume" in capsys.readouterr().err


def test_cli_as_a_module_in_a_subprocess(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([sys.executable, "-m", "runtime.sample_many", "--engine", str(empty / "x.onnx"),
                        "--num", "2", "--out", str(empty)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "no such engine file" in r.stderr
    assert list(empty.iterdir()) == []
    r = subprocess.run([sys.executable, "-m", "runtime.sample_many", "--help"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--shard-size" in r.stdout


# --- ddpm-export sample-many (click) ----------------------------------------------

def test_click_command(tmp_path, monkeypatch, reference):
    from click.testing import CliRunner

    from ddpm_export.cli.sample_many import sample_many_command

    out = str(tmp_path / "out")
    r = CliRunner().invoke(sample_many_command, CLI_ARGS + ["--out", out, "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "images/s" in r.output
    np.testing.assert_array_equal(load_shards(out), reference)
    r = CliRunner().invoke(sample_many_command, CLI_ARGS + ["--out", out, "--seed", "7"])
    assert r.exit_code == 1 and "seed 7 asked" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(sample_many_command, ["--engine", str(ENGINE), "--num", "2", "--out", out,
                                                 "--eta", "0.5"])
    # exit 1 with the registry's one line (which methods take eta), like every bad method input
    assert r.exit_code == 1 and "takes no eta (only ddim do)" in r.output
    r = CliRunner().invoke(sample_many_command, ["--engine", str(ENGINE), "--num", "0", "--out", out])
    assert r.exit_code == 2
    r = CliRunner().invoke(sample_many_command, ["--engine", str(tmp_path / "none.onnx"), "--num", "2",
                                                 "--out", str(tmp_path / "o2")])
    assert r.exit_code == 1 and "no such engine file" in r.output

    import runtime.shards

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runtime.shards, "sample_shards", interrupted)
    r = CliRunner().invoke(sample_many_command, CLI_ARGS + ["--out", out])
    assert r.exit_code == 130 and "re-run the same command to resume" in r.output
