"""examples/jetson_app/app.py with a conditional engine (tests/cond_engines.py): --label and
--guidance, stdin lines with labels, and both carried by its stdout lines and JSON rows."""
import json

import numpy as np
import pytest

pytest.importorskip("diffusers")

from cond_engines import class_cond_engine  # noqa: E402
from test_jetson_app import ENGINE, _run, _summary  # noqa: E402

FAST = ["--steps", "3", "--threads", "1"]


@pytest.fixture(scope="module")
def cond(tmp_path_factory):
    return class_cond_engine(tmp_path_factory.mktemp("cond_engine"))


def test_labels_and_guidance_are_sampled_and_reported(cond):
    proc = _run("--engine", cond, "--num", "3", "--requests", "2", "--label", "1,3", "--guidance", "3", *FAST)
    s = _summary(proc)
    assert [(r["labels"], r["guidance"]) for r in s["requests"]] == [([1, 3, 1], 3.0), ([1, 3, 1], 3.0)]
    assert "request 1: 3 images, seed 1, labels 1,3,1, guidance 3:" in proc.stdout
    # stdin: a line's labels replace --label; without --guidance the manifest's default (2)
    proc = _run("--engine", cond, "--stdin", "--label", "1", *FAST, stdin="2 42 0\n3 7 2,0\n1 5\n")
    rows = _summary(proc)["requests"]
    assert [(r["seed"], r["labels"], r["guidance"]) for r in rows] == [(42, [0, 0], 2.0), (7, [2, 0, 2], 2.0),
                                                                       (5, [1], 2.0)], rows


def test_a_request_gives_the_runtimes_images(cond):
    import importlib.util

    import runtime

    spec = importlib.util.spec_from_file_location("jetson_app", str(ENGINE.parents[1] / "examples" / "jetson_app" / "app.py"))
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    a = app.SamplerApp(str(cond), threads=1).open()
    try:
        got = a.handle(3, 42, method="unipc", steps=3, cond={"class_labels": np.array([1, 3, 1])}, guidance=3.0)
    finally:
        a.close()
    with runtime.load(cond, threads=1) as e:
        want = e.sample(3, seed=42, method="unipc", steps=3, cond={"class_labels": np.array([1, 3, 1])}, guidance=3.0)
    np.testing.assert_array_equal(got["images"], want)


@pytest.mark.parametrize("engine, args, stdin, match", [
    ("cond", [], None, "missing ['class_labels']"),
    ("cond", ["--label", "7"], None, "received label 7, expected labels in [0, 3] or the null label 4"),
    ("cond", ["--stdin"], "2 1 x\n", "--label 'x': expected an int"),
    ("cond", ["--stdin"], "2 1 3 4\n", "expected 'NUM [SEED [LABELS]]'"),
    ("digits", ["--label", "1"], None, "--label: this engine has 0 class-label conditions"),
    ("digits", ["--guidance", "2"], None, "the model is unconditional"),
])
def test_refusals_are_one_line(cond, engine, args, stdin, match):
    proc = _run("--engine", cond if engine == "cond" else ENGINE, "--num", "2", "--requests", "1", *FAST, *args,
                stdin=stdin)
    err = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert proc.returncode == 1 and len(err) == 1 and match in err[0], proc.stderr


def test_an_unconditional_engines_lines_are_unchanged():
    proc = _run("--engine", ENGINE, "--num", "1", "--requests", "1", *FAST)
    row = _summary(proc)["requests"][0]
    assert "labels" not in row and "guidance" not in row
    assert "request 0: 1 images, seed 0: " in proc.stdout
    json.loads(proc.stdout.strip().splitlines()[-1])
