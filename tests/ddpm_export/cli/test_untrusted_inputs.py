"""Loading a file never runs code: a crafted file whose unpickling would create a marker
file is handed to each loader through the command line, in a subprocess. The marker must
never appear, the command must exit non-zero with one line that names the file."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_export.model.checkpoint import FORMAT
from ddpm_export.model.config import PRESETS
from ddpm_export.model.unet import UNet
from runtime.schedulers.schedule import ScheduleConfig

ROOT = Path(__file__).resolve().parents[3]
ENGINES = ROOT / "engines"
CLI = [sys.executable, "-c", "from ddpm_export.cli.entry import main; main()"]
# fid reads its inputs before it needs a feature extractor: name one that is never built, so the
# test needs no Inception weights file
FID_NO_WEIGHTS = ["--feature-extractor", "never-built", "--quiet"]


class Payload:
    """Unpickling this calls open(marker, 'w'): the file appears iff the loader unpickled it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _run(argv, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("DDPM_EXPORT_DEBUG", None)
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _tiny_checkpoint(**extra):
    torch.manual_seed(0)
    ck = {"format": FORMAT, "model_config": PRESETS["tiny"].unet.to_dict(),
          "schedule_config": ScheduleConfig().to_dict(), "ema": UNet(PRESETS["tiny"].unet).state_dict()}
    ck.update(extra)
    return ck


def _evil_checkpoint(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_tiny_checkpoint(provenance={"note": Payload(marker)}), path)  # full pickle, as an attacker would
    return path


def _evil_cifar(folder, marker):
    folder.mkdir(parents=True)
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": Payload(marker), b"labels": [0]}, f)
    return folder / "data_batch_1"


def _evil_npz(path, marker, key="samples"):
    np.savez(path, **{key: np.array([Payload(marker)], dtype=object)})  # savez pickles object arrays
    return path


def _pickle_named_npz(path, marker):
    path.write_bytes(pickle.dumps({"samples": Payload(marker)}))
    return path


def _case(name, tmp_path, marker):
    """(argv, the file the message must name) for one loader."""
    ck = tmp_path / "evil.pt"
    if name == "export":
        return CLI + ["export", "--checkpoint", str(_evil_checkpoint(ck, marker)), "--out", str(tmp_path / "x.onnx")], ck
    if name == "sample":
        return CLI + ["sample", "--checkpoint", str(_evil_checkpoint(ck, marker)), "--out", str(tmp_path / "s.png"),
                      "--no-progress"], ck
    if name == "validate":
        return CLI + ["validate", "--checkpoint", str(_evil_checkpoint(ck, marker)),
                      "--engine", str(ENGINES / "digits.onnx"), "--no-progress"], ck
    if name == "convert-checkpoint":  # without --trust-pickle the converter is as safe as every loader
        return CLI + ["convert-checkpoint", str(_evil_checkpoint(ck, marker)), str(tmp_path / "new.pt")], ck
    if name == "train-resume":
        last = _evil_checkpoint(tmp_path / "run" / "last.pt", marker)
        return CLI + ["train", "--preset", "tiny", "--out", str(tmp_path / "run"), "--steps", "2", "--resume",
                      "--device", "cpu", "--no-progress", "--sample-every", "0"], last
    if name == "train-cifar":
        batch = _evil_cifar(tmp_path / "cifar-10-batches-py", marker)
        return CLI + ["train", "--preset", "cifar10", "--data", str(tmp_path / "cifar-10-batches-py"),
                      "--out", str(tmp_path / "run"), "--steps", "1", "--device", "cpu", "--no-progress"], batch
    if name == "digits-score-npz":
        npz = _evil_npz(tmp_path / "s.npz", marker)
        return CLI + ["digits-score", "--samples", str(npz)], npz
    if name == "digits-score-pickle-as-npz":
        npz = _pickle_named_npz(tmp_path / "s.npz", marker)
        return CLI + ["digits-score", "--samples", str(npz)], npz
    if name == "validate-reference-npz":
        npz = _evil_npz(tmp_path / "ref.npz", marker)
        return CLI + ["validate", "--checkpoint", str(ENGINES / "digits.pt"), "--engine", str(ENGINES / "digits.onnx"),
                      "--reference-samples", str(npz), "--samples", "10", "--no-progress"], npz
    if name == "fid-npz":
        npz = _evil_npz(tmp_path / "s.npz", marker, key="images")
        return CLI + ["fid", "--samples", str(npz), "--reference", str(npz)] + FID_NO_WEIGHTS, npz
    raise AssertionError(name)


CASES = ["export", "sample", "validate", "convert-checkpoint", "train-resume", "train-cifar",
         "digits-score-npz", "digits-score-pickle-as-npz", "validate-reference-npz", "fid-npz"]


@pytest.mark.parametrize("name", CASES)
def test_crafted_file_is_refused_without_running_code(name, tmp_path):
    marker = tmp_path / "MARKER"
    argv, culprit = _case(name, tmp_path, marker)
    r = _run(argv, tmp_path)
    assert not marker.exists(), f"{name}: loading {culprit.name} ran code (the marker file appeared)"
    assert r.returncode != 0, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1 and lines[0].lower().startswith("error: "), r.stderr  # click: "Error:"
    assert str(culprit) in lines[0], lines[0]
    assert "refused" in lines[0], lines[0]


def test_shard_with_pickled_objects_is_refused_by_fid_and_resampled_by_sample_many(tmp_path):
    """A sample-many output folder is input too: a crafted shard is never unpickled. Reading the
    folder (fid) refuses it naming the shard; resuming the run (sample-many) samples it again."""
    out = tmp_path / "shards"
    base = [sys.executable, "-m", "runtime.sample_many", "--engine", str(ENGINES / "digits.onnx"), "--num", "2",
            "--shard-size", "1", "--out", str(out), "--method", "ddim", "--steps", "2", "--no-progress"]
    r = _run(base, tmp_path)
    assert r.returncode == 0, r.stderr
    marker = tmp_path / "MARKER"
    shard = out / "shard-00001.npz"
    assert shard.is_file()
    with np.load(shard) as z:
        good = {k: z[k] for k in z.files}
    np.savez(shard, **dict(good, images=np.array([Payload(marker)], dtype=object)))  # pickled objects

    r = _run(CLI + ["fid", "--samples", str(out), "--reference", str(out)] + FID_NO_WEIGHTS, tmp_path)
    assert not marker.exists()
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert str(shard) in lines[0] and "refused" in lines[0], lines[0]

    r = _run(base, tmp_path)
    assert not marker.exists()
    assert r.returncode == 0, r.stderr
    assert f"{shard} is unreadable: refused" in r.stdout + r.stderr  # the warning names it; then redone
    with np.load(shard) as z:  # allow_pickle=False: the new shard holds plain uint8 images
        assert z["images"].dtype == np.uint8 and z["images"].shape == (1, 16, 16, 1)


def test_runtime_sample_refuses_a_count_that_cannot_fit_in_memory(tmp_path):
    r = _run([sys.executable, "-m", "runtime.sample", "--engine", str(ENGINES / "digits.onnx"),
              "--num", str(10 ** 12), "--out", str(tmp_path / "s.png"), "--no-progress"], tmp_path)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "--num 1000000000000" in lines[0] and "GiB" in lines[0] and "runtime.sample_many" in lines[0]
    assert not (tmp_path / "s.png").exists()
