"""examples/jetson_app/control_loop.py: a policy at a fixed rate on the obstacle task, as a user
runs it (without torch) on the shipped ONNX policy; its schedule on a controlled clock; and a
plan, on the stand-in TensorRT (tests/trt_fakes.py: our control flow, no evidence TensorRT runs
it) and falling back to the ONNX export where it cannot run."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOOP = ROOT / "examples" / "jetson_app" / "control_loop.py"
POLICY = ROOT / "engines" / "obstacle-policy.onnx"
FAST = ["--ticks", "10", "--hz", "50", "--method", "ddim", "--steps", "3", "--threads", "1"]
# runs the script as __main__ with torch unimportable: the Jetson loop must not need it
NO_TORCH = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")


def _run(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", NO_TORCH, str(LOOP), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300, cwd=str(ROOT))


def _summary(proc):
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _module():
    spec = importlib.util.spec_from_file_location("jetson_control_loop", LOOP)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_loop_runs_the_shipped_policy_without_torch():
    proc = _run("--policy", POLICY, *FAST)
    s = _summary(proc)
    assert s["backend"] == "onnxruntime" and s["fallback_reason"] is None
    assert s["ticks"] == 10 and s["chunk_ticks"] == [0, 8]  # n_action_steps 8: a chunk at tick 0 and 8
    assert s["engine_calls_per_chunk"] == 3 and s["chunk_ms"]["n"] == 2 and s["tick_ms"]["n"] == 10
    for k in ("tick_ms", "chunk_ms", "encoder_ms", "denoiser_ms"):
        assert 0 < s[k]["median"] <= s[k]["p90"] <= s[k]["max"], k
    assert s["chunk_ms"]["max"] >= s["denoiser_ms"]["max"]
    assert 0 <= s["overran"] <= 10 and len(s["overran_ticks"]) == s["overran"]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("loaded ") and "ddim with 3 denoiser calls per chunk" in lines[0]
    assert any(ln.startswith("per tick (select_action): median ") for ln in lines)
    assert any(ln.startswith("per chunk (2 chunks, 3 denoiser calls each): median ") for ln in lines)


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        assert s >= 0
        self.now += s


class _TimedPolicy:
    """A stand-in policy on a controlled clock: a chunk every 4 ticks takes 0.25 s, a queued
    action 0.01 s; the action is to stay where the agent is (no episode ends)."""

    engine_calls_per_chunk, n_action_steps = 5, 4

    def __init__(self, clock):
        self.clock, self.chunks, self.last_timing = clock, 0, {}

    def reset(self):
        self.k = 0

    def select_action(self, obs):
        chunk = self.k % self.n_action_steps == 0
        self.clock.now += 0.25 if chunk else 0.01
        if chunk:
            self.chunks += 1
            self.last_timing = {"encoder_s": 0.05, "denoiser_s": 0.2, "chunk_s": 0.25}
        self.k += 1
        return obs["observation.state"]


def test_the_schedule_counts_overruns_and_does_not_carry_them_over():
    """At 10 Hz (period 0.1 s) only the chunk ticks (0.25 s) overrun; the tick after one starts a
    new period instead of being late too, and the others sleep to their deadlines."""
    mod = _module()
    clock = _Clock()
    start = clock.now
    r = mod.run_loop(_TimedPolicy(clock), mod.ObstacleTask(1, seed=0), hz=10, ticks=9, sleep=clock.sleep,
                     clock=clock)
    assert r["ticks"] == 9 and r["chunk_ticks"] == [0, 4, 8] and r["overran_ticks"] == [0, 4, 8]
    assert r["chunk_ms"] == {"median": 250.0, "p90": 250.0, "max": 250.0, "n": 3}
    assert abs(r["tick_ms"]["median"] - 10.0) < 1e-6 and abs(r["tick_ms"]["max"] - 250.0) < 1e-6
    # a chunk tick ends 0.25 s after its start, which opens a new period; the three ticks after it
    # each sleep to the end of their 0.1 s period:
    assert abs(clock.now - start - (0.25 + 3 * 0.1 + 0.25 + 3 * 0.1 + 0.25)) < 1e-9


@pytest.fixture
def fake_plans(tmp_path, monkeypatch):
    pytest.importorskip("polygraphy", reason="polygraphy not installed")
    from trt_fakes import fake_policy_plans, fake_tensorrt, install_fake_gpu

    trt = fake_tensorrt("10.3.0.30")
    install_fake_gpu(monkeypatch, trt)
    return fake_policy_plans(tmp_path, POLICY, profile=(1, 4, 8))


def test_the_loop_runs_a_policy_plan_on_the_stand_in_tensorrt(fake_plans, capsys):
    assert _module().main(["--policy", str(fake_plans), *FAST]) == 0
    out, err = capsys.readouterr()
    s = json.loads(out.strip().splitlines()[-1])
    assert s["backend"] == "tensorrt" and s["fallback_reason"] is None and s["chunk_ticks"] == [0, 8]
    assert "falling back" not in err


def test_a_policy_plan_that_cannot_run_here_falls_back_to_its_onnx(fake_plans):
    """In a fresh process there is no stand-in: no GPU (or no TensorRT) here, so the loop says
    why and runs NAME.onnx beside the plan; with no ONNX export, one error line."""
    proc = _run("--policy", fake_plans, *FAST)
    s = _summary(proc)
    assert s["backend"] == "onnxruntime" and s["fallback_reason"] and s["chunk_ticks"] == [0, 8]
    assert "falling back to ONNX Runtime on" in proc.stderr
    fake_plans.with_suffix(".onnx").unlink()
    proc = _run("--policy", fake_plans, *FAST)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: cannot run the TensorRT plan")
