"""sample-many with conditional engines: labels cycled over the whole run and recorded per
shard, guidance recorded, mismatched resumes and merges refused, array samples kept as floats.
Tiny engines from tests/cond_engines.py (exported once per module, a few seconds)."""
import json

import numpy as np
import pytest

pytest.importorskip("diffusers")

import runtime  # noqa: E402
from cond_engines import K, array_cond_engine, class_cond_engine  # noqa: E402
from runtime import sample_many  # noqa: E402
from runtime.shards import (ShardsError, load_conditions, load_shards, sample_shards, shard_path,  # noqa: E402
                            write_merged)

ARGS = ["--num", "7", "--shard-size", "3", "--method", "ddim", "--steps", "3", "--no-progress"]


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    d = tmp_path_factory.mktemp("cond_engines")
    return class_cond_engine(d), array_cond_engine(d)


def _cli(engine, out, *extra):
    return sample_many.main(["--engine", str(engine), "--out", str(out)] + ARGS + list(extra))


def test_labels_are_cycled_over_the_whole_run_and_recorded_per_shard(engines, tmp_path, capsys):
    cond, _ = engines
    out = tmp_path / "run"
    assert _cli(cond, out, "--label", "0,3,1", "--npz", str(tmp_path / "all.npz")) == 0
    labels = np.array([0, 3, 1, 0, 3, 1, 0])
    with runtime.load(cond) as e:
        want = e.sample(7, seed=0, method="ddim", steps=3, cond={"class_labels": labels})  # guidance: manifest's 2
        unguided = e.sample(7, seed=0, method="ddim", steps=3, cond={"class_labels": labels}, guidance=1.0)
        # shard 1 alone: samples 3..5, its own labels [0, 3, 1]
        shard1 = e.sample(3, seed=0, first_image=3, method="ddim", steps=3, cond={"class_labels": labels[3:6]})
    assert not np.array_equal(want, unguided)
    np.testing.assert_array_equal(load_shards(out), want)
    np.testing.assert_array_equal(load_conditions(out)["class_labels"], labels)
    with np.load(shard_path(out, 1)) as z:
        np.testing.assert_array_equal(z["cond.class_labels"], labels[3:6])
        np.testing.assert_array_equal(z["images"], shard1)
        assert float(z["guidance"]) == 2.0
    run = json.loads((out / "run.json").read_text())
    assert run["format_version"] == 3 and run["config"]["guidance"] == 2.0
    assert run["config"]["conditions"]["class_labels"]["shape"] == [7]
    assert run["config"]["batch"] == 3  # min(shard size, max batch 16 // 2): one call at 2N
    with np.load(tmp_path / "all.npz") as z:
        np.testing.assert_array_equal(z["arr_0"], want)
        np.testing.assert_array_equal(z["class_labels"], labels)
    assert "and their conditions class_labels" in capsys.readouterr().out


def test_a_resume_with_other_labels_or_guidance_is_refused(engines, tmp_path, capsys):
    cond, _ = engines
    out = tmp_path / "run"
    assert _cli(cond, out, "--label", "2") == 0
    capsys.readouterr()
    for extra, match in ((["--label", "1"], "conditions class_labels int64 [7] sha256"),
                         (["--label", "2", "--guidance", "1"], "guidance 1.0 asked, 2.0 in its run.json")):
        assert _cli(cond, out, *extra) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "holds a different run" in err[0] and match in err[0], err
    assert _cli(cond, out, "--label", "2,2", "--guidance", "2") == 0  # the same values: resumes, nothing to do
    assert "nothing to do" in capsys.readouterr().out


def test_shards_of_another_run_are_resampled_or_refused(engines, tmp_path):
    cond, _ = engines
    with runtime.load(cond) as e:
        kw = dict(num=6, shard_size=3, method="ddim", steps=2, progress=False, log=lambda m: None)
        sample_shards(e, tmp_path / "a", cond={"class_labels": 1}, **kw)
        sample_shards(e, tmp_path / "b", cond={"class_labels": np.array([1, 1, 1, 2, 2, 2])}, **kw)
        good = load_shards(tmp_path / "b")
        # b's shard 1 (labels 2) put into a (labels 1), run.json unchanged: a merge refuses it ...
        shard_path(tmp_path / "a", 1).write_bytes(shard_path(tmp_path / "b", 1).read_bytes())
        with pytest.raises(ShardsError, match="the conditions stored in its shards .* are not the ones its run.json"):
            load_shards(tmp_path / "a")
        # ... and a resume samples it again with the run's own labels
        logs = []
        sample_shards(e, tmp_path / "a", cond={"class_labels": 1}, **dict(kw, log=logs.append))
    assert any("other 'class_labels' values" in m and "sampling it again" in m for m in logs), logs
    np.testing.assert_array_equal(load_conditions(tmp_path / "a")["class_labels"], [1] * 6)
    assert not np.array_equal(load_shards(tmp_path / "a"), good)


def test_array_samples_are_stored_as_float32(engines, tmp_path):
    _, arr = engines
    g = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    np.save(tmp_path / "g.npy", g)
    out = tmp_path / "run"
    assert _cli(arr, out, "--cond", f"global_cond={tmp_path / 'g.npy'}", "--npz", str(tmp_path / "m.npz")) == 0
    with runtime.load(arr) as e:
        want = e.sample(7, seed=0, method="ddim", steps=3, cond={"global_cond": g})
    got = load_shards(out)
    assert got.dtype == np.float32 and got.shape == (7, 6, 2)
    np.testing.assert_array_equal(got, want)
    with np.load(shard_path(out, 0)) as z:
        assert "images" not in z.files and z["samples"].dtype == np.float32
    with np.load(tmp_path / "m.npz") as z:
        np.testing.assert_array_equal(z["arr_0"], want)
        np.testing.assert_array_equal(z["global_cond"], g)


@pytest.mark.parametrize("which, extra, match", [
    ("cond", [], "missing ['class_labels']"),
    ("cond", ["--label", "5"], "received label 5, expected labels in [0, 3] or the null label 4"),
    ("arr", ["--cond", "global_cond=ROWS8", "--guidance", "1"], "received 8 rows (shape (8, 5)), expected one per sample, 7 rows"),
    ("arr", ["--label", "1"], "--label: this engine has 0 class-label conditions"),
    ("digits", ["--label", "1"], "--label: this engine has 0 class-label conditions"),
    ("digits", ["--guidance", "2"], "guidance needs the model's unconditional prediction, and the model is unconditional"),
])
def test_refusals_are_one_line_and_write_nothing(engines, tmp_path, capsys, which, extra, match):
    from test_shards import ENGINE

    np.save(tmp_path / "g8.npy", np.zeros((8, 5), np.float32))
    engine = {"cond": engines[0], "arr": engines[1], "digits": ENGINE}[which]
    out = tmp_path / "run"
    rc = _cli(engine, out, *[a.replace("ROWS8", str(tmp_path / "g8.npy")) for a in extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and match in err[0], err
    assert not out.exists()


def test_click_command_takes_labels_and_guidance(engines, tmp_path):
    from click.testing import CliRunner

    from ddpm_export.cli.main import main

    cond, _ = engines
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["sample-many", "--engine", str(cond), "--out", str(out), "--num", "4",
                                  "--shard-size", "2", "--method", "ddim", "--steps", "2", "--no-progress",
                                  "--label", "3,0", "--guidance", "1.5"])
    assert r.exit_code == 0, r.output
    with runtime.load(cond) as e:
        want = e.sample(4, seed=0, method="ddim", steps=2, cond={"class_labels": np.array([3, 0, 3, 0])},
                        guidance=1.5)
    np.testing.assert_array_equal(load_shards(out), want)
    r = CliRunner().invoke(main, ["sample-many", "--engine", str(cond), "--out", str(out), "--num", "4",
                                  "--shard-size", "2", "--method", "ddim", "--steps", "2", "--label", str(K + 1)])
    assert r.exit_code != 0 and "received label 5" in r.output


def test_write_merged_of_an_unconditional_run_is_unchanged(tmp_path):
    """No condition keys, format_version 2, uint8 images under 'images' only."""
    from test_shards import ENGINE

    with runtime.load(ENGINE) as e:
        sample_shards(e, tmp_path, 3, shard_size=3, method="ddim", steps=2, progress=False, log=lambda m: None)
    assert json.loads((tmp_path / "run.json").read_text())["format_version"] == 2
    with np.load(shard_path(tmp_path, 0)) as z:
        assert sorted(z.files) == ["images", "index_start", "seed"]
    assert write_merged(tmp_path, tmp_path / "m.npz") == 3
    with np.load(tmp_path / "m.npz") as z:
        assert z.files == ["arr_0"]
