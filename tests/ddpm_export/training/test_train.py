import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ddpm_export.cli.main import main
from ddpm_export.model.checkpoint import load_checkpoint
from ddpm_export.training.train import TrainConfig, TrainError, train
from runtime.io import temporary_writer_pid
from checkpoint_tensors import checkpoint_tensors  # noqa: E402  (beside this file)

ROOT = Path(__file__).resolve().parents[3]


def _cfg(out, **kw):
    base = dict(preset="tiny", out=str(out), steps=6, batch_size=8, sample_every=0,
                ckpt_every=3, log_every=2, seed=1, device="cpu")
    base.update(kw)
    return TrainConfig(**base)




def test_resume_continues_exactly(tmp_path):
    # dropout is on in the tiny preset, so the torch RNG must be restored too
    train(_cfg(tmp_path / "straight", steps=10), progress=False)
    train(_cfg(tmp_path / "split", steps=6), progress=False)
    train(_cfg(tmp_path / "split", steps=10, resume=True), progress=False)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    assert a["step"] == b["step"] == 10
    ta, tb = checkpoint_tensors(a), checkpoint_tensors(b)
    assert ta.keys() == tb.keys()
    unequal = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not unequal, f"{len(unequal)} tensors differ after resume, e.g. {unequal[:3]}"
    # training did change the weights, so the equality above is not trivial
    from ddpm_export.model.config import UNetConfig
    from ddpm_export.model.unet import UNet

    torch.manual_seed(1)
    init = UNet(UNetConfig.from_dict(a["model_config"])).state_dict()
    assert max((a["model"][k] - init[k]).abs().max().item() for k in init) > 1e-4
    slim = load_checkpoint(tmp_path / "split" / "model.pt")
    assert "optimizer" not in slim and slim["ema"].keys() == a["ema"].keys()


def test_metrics_log_and_outputs(tmp_path):
    train(_cfg(tmp_path), progress=False)
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4, 6]
    assert all(r["loss"] > 0 and r["steps_per_s"] > 0 for r in lines)
    assert lines[0]["lr"] == pytest.approx(2e-4 * 2 / 5)  # warmup 5 steps in the tiny preset
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["provenance"]["seed"] == 1 and ck["train_state"]["parameters"] > 0


def test_refuses_to_overwrite_and_resume_without_checkpoint(tmp_path):
    train(_cfg(tmp_path, steps=3), progress=False)
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(TrainError, match="already exists; pass --resume"):
        train(_cfg(tmp_path, steps=3), progress=False)
    assert (tmp_path / "last.pt").read_bytes() == before
    with pytest.raises(TrainError, match="no checkpoint"):
        train(_cfg(tmp_path / "new", resume=True), progress=False)


def test_resume_with_another_model_or_options_is_refused(tmp_path):
    train(_cfg(tmp_path, steps=3), progress=False)
    with pytest.raises(ValueError, match="resume with the options it was started with"):
        train(_cfg(tmp_path, steps=4, resume=True, dropout=0.0), progress=False)
    with pytest.raises(TrainError, match=r"batch_size 8 -> 16"):
        train(_cfg(tmp_path, steps=4, resume=True, batch_size=16), progress=False)


def test_crash_during_checkpoint_write_keeps_last_good_one(tmp_path, monkeypatch):
    train(_cfg(tmp_path, steps=3), progress=False)
    good = (tmp_path / "last.pt").read_bytes()

    def boom(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        train(_cfg(tmp_path, steps=6, resume=True), progress=False)
    assert (tmp_path / "last.pt").read_bytes() == good
    assert not [p for p in os.listdir(tmp_path) if temporary_writer_pid(p) is not None]


# A training whose first checkpoint write stops in the worst place: the whole checkpoint is in
# its temporary, the rename has not happened. The test kills it there with SIGKILL.
HANGS_IN_CHECKPOINT_WRITE = """
    import sys, time, torch
    from ddpm_export.training.train import TrainConfig, train

    real_save = torch.save

    def save_then_hang(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        print("ready", flush=True)
        time.sleep(300)

    torch.save = save_then_hang
    train(TrainConfig(preset="tiny", out=sys.argv[1], steps=6, batch_size=8, sample_every=0,
                      ckpt_every=3, log_every=2, seed=1, device="cpu"), progress=False)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and flock are POSIX")
def test_second_training_refuses_and_a_killed_ones_temporary_is_removed(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HANGS_IN_CHECKPOINT_WRITE), str(out)],
                         stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "ready"
        # the first run is alive and writing: a second one on its folder refuses, through the
        # library and through the command line (one line, non-zero exit), and writes nothing
        with pytest.raises(TrainError, match=rf"in use by another training \(pid {p.pid}"):
            train(_cfg(out), progress=False)
        r = CliRunner().invoke(main, ["train", "--preset", "tiny", "--out", str(out), "--no-progress"])
        assert r.exit_code == 1 and "in use by another training" in r.output.strip().splitlines()[-1]
        tmps = [q for q in out.iterdir() if temporary_writer_pid(q) == p.pid]
        assert len(tmps) == 1 and tmps[0].stat().st_size > 10_000  # a whole checkpoint
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        p.stdout.close()
    assert p.returncode == -signal.SIGKILL
    assert not (out / "last.pt").exists()  # the rename never happened
    logs = []
    train(_cfg(out), progress=False, log=logs.append)  # the lock did not outlive its holder
    assert len(logs) == 1 and tmps[0].name in logs[0] and "killed run" in logs[0], logs
    assert not tmps[0].exists()
    assert load_checkpoint(out / "last.pt")["step"] == 6
    assert not [q for q in out.iterdir() if temporary_writer_pid(q) is not None]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_gloo_match_one_process(tmp_path):
    """DDP over 2 CPU processes follows the same trajectory as 1 process of the same global batch."""
    common = ["--preset", "tiny", "--steps", "4", "--batch-size", "8", "--sample-every", "0",
              "--ckpt-every", "0", "--dropout", "0", "--device", "cpu", "--no-progress", "--seed", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "ddpm_export.cli.main", "train", "--out", str(tmp_path / "ddp")] + common
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    single = [sys.executable, "-m", "ddpm_export.cli.main", "train", "--out", str(tmp_path / "one")] + common
    r = subprocess.run(single, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a = load_checkpoint(tmp_path / "ddp" / "last.pt")
    b = load_checkpoint(tmp_path / "one" / "last.pt")
    assert a["provenance"]["world_size"] == 2 and b["provenance"]["world_size"] == 1
    from ddpm_export.model.config import UNetConfig
    from ddpm_export.model.unet import UNet

    torch.manual_seed(2)
    init = UNet(UNetConfig.from_dict(a["model_config"])).state_dict()
    worst = max((a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"])
    moved = max((a["model"][k] - init[k]).abs().max().item() for k in a["model"])
    print(f"\n2-process DDP vs 1 process, 4 steps: max abs parameter difference {worst:.2e} "
          f"(weights moved up to {moved:.2e} from init)")
    # identical math, different summation order of the gradient all-reduce
    assert worst < 1e-5, worst
    assert moved > 20 * worst  # training moved the weights, so the comparison means something


def test_fresh_checkpoints_are_plain_tensors_resume_and_export(tmp_path):
    """What training writes loads with a bare weights-only torch.load (no allow-list), resumes,
    and exports; its .safetensors form exports to the same network."""
    import numpy as np
    import onnxruntime as ort

    from ddpm_export.export.onnx_export import export_onnx
    from ddpm_export.model.checkpoint import convert_checkpoint

    run = tmp_path / "run"
    train(_cfg(run, steps=2), progress=False)
    raw = torch.load(run / "last.pt", weights_only=True)  # RNG states, optimizer, configs: all plain
    assert raw["rng"]["data"].dtype == torch.uint8 and type(raw["provenance"]["torch"]) is str
    train(_cfg(run, steps=3, resume=True), progress=False)
    assert load_checkpoint(run / "last.pt")["step"] == 3
    convert_checkpoint(run / "model.pt", tmp_path / "model.safetensors")
    outs = []
    for src in (run / "model.pt", tmp_path / "model.safetensors"):
        onnx_path = tmp_path / f"{src.suffix[1:]}.onnx"
        export_onnx(src, onnx_path, command="test")  # includes the parity check against PyTorch
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
        outs.append(sess.run(None, {"x_t": x, "t": np.array([3, 700], dtype=np.int32)})[0])
    np.testing.assert_array_equal(outs[0], outs[1])
