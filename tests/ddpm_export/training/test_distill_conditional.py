"""ddpm-export distill with a class-conditional teacher (the student sampled with guidance):
the labelled teacher data, the student's training on those labels, its export, refusals."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import ddpm_export.training.distill as distill_mod
from ddpm_export.cli.main import main
from ddpm_export.model.checkpoint import load_checkpoint, load_model, save_checkpoint
from ddpm_export.model.config import PRESETS
from ddpm_export.model.unet import UNet
from ddpm_export.training.distill import DistillConfig, DistillError, distill, sample_student, trajectory_labels
from runtime.contract import Condition
from runtime.schedulers.schedule import ScheduleConfig

TINY_COND = PRESETS["tiny-cond"].unet  # tiny with num_classes=10, null label 10


def _cfg(teacher, out, **kw):
    base = dict(teacher=str(teacher), out=str(out), teacher_steps=4, student_steps=(1, 2, 4), default_steps=2,
                trajectories=8, chunk=4, steps=4, batch_size=4, warmup=1, sample_every=4, ckpt_every=4,
                log_every=2, num_samples=2, seed=1, label_dropout=0.25, lr=1e-3)
    base.update(kw)
    return DistillConfig(**base)


@pytest.fixture(scope="module")
def cond_teacher(tmp_path_factory):
    """A tiny-cond checkpoint whose zero-initialised layers are not ~0 (every label reaches the output)."""
    torch.manual_seed(0)
    m = UNet(TINY_COND).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    path = tmp_path_factory.mktemp("cond") / "tiny-cond.pt"
    save_checkpoint({"model_config": TINY_COND.to_dict(), "schedule_config": ScheduleConfig().to_dict(),
                     "ema": m.state_dict(), "step": 20, "provenance": {"command": "test", "seed": 0}}, path)
    return path


@pytest.fixture(scope="module")
def cond_run(cond_teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    summary = distill(_cfg(cond_teacher, out), progress=False)
    return out, summary


def test_trajectory_labels_cycle_the_classes_with_a_seeded_null_share():
    a = trajectory_labels(1000, 10, 10, 0.1, seed=3)
    assert a.dtype == np.int64 and np.array_equal(a, trajectory_labels(1000, 10, 10, 0.1, seed=3))
    kept = a != 10
    assert np.array_equal(a[kept], (np.arange(1000) % 10)[kept]) and 60 < (~kept).sum() < 140
    assert not np.array_equal(a, trajectory_labels(1000, 10, 10, 0.1, seed=4))
    assert (trajectory_labels(50, 10, 10, 0.0, seed=3) != 10).all()


def test_teacher_data_is_the_teachers_ode_at_each_trajectorys_label(cond_teacher, cond_run):
    out, _ = cond_run
    from runtime.loop import sample

    teacher, tck = load_model(cond_teacher)
    labels = trajectory_labels(8, 10, 10, 0.25, seed=1000)
    assert (labels == 10).any() and (labels != 10).any()  # both branches are in the data
    stored = np.load(out / "teacher" / "chunk00000.npz")
    np.testing.assert_array_equal(stored["labels"], labels[:4])

    def runner(x, t, class_labels):
        with torch.no_grad():
            return teacher(torch.from_numpy(x), torch.from_numpy(t).long(), torch.from_numpy(class_labels)).numpy()

    chain = sample(runner, (1, 8, 8), tck["schedule_config"], 4, seed=1000, steps=4, method="unipc", batch=4,
                   conditions=(Condition("class_labels", "class_label", (), 10, 10),),
                   cond={"class_labels": labels[:4]})
    np.testing.assert_allclose(stored["x0"], chain.images, atol=1e-5)
    other = sample(runner, (1, 8, 8), tck["schedule_config"], 4, seed=1000, steps=4, method="unipc", batch=4,
                   conditions=(Condition("class_labels", "class_label", (), 10, 10),),
                   cond={"class_labels": (labels[:4] + 1) % 10})
    assert np.abs(stored["x0"] - other.images).max() > 1e-3  # the label reached the teacher


def test_student_keeps_the_labels_learns_only_the_labels_it_was_given_and_exports(cond_teacher, cond_run, tmp_path):
    out, summary = cond_run
    assert summary["step"] == 4
    ck = load_checkpoint(out / "model.pt")
    assert ck["model_config"]["num_classes"] == 10 and ck["schedule_config"]["prediction"] == "v"
    assert load_checkpoint(out / "last.pt")["distill_config"]["label_dropout"] == 0.25
    assert "null label 10" in ck["provenance"]["conditioning"]
    # Adam leaves an embedding row that never had a gradient exactly where it was: the rows of the
    # trajectories' labels moved, those of labels absent from the data did not
    labels = set(trajectory_labels(8, 10, 10, 0.25, seed=1000).tolist())
    before = load_checkpoint(cond_teacher)["ema"]["class_embedding.weight"]
    after = load_checkpoint(out / "last.pt")["model"]["class_embedding.weight"]
    moved = {i for i in range(11) if not torch.equal(before[i], after[i])}
    assert moved <= labels and 10 in moved and len(moved) >= 3, (moved, labels)

    # exported like any conditional model: class_labels input, the student's sampling section;
    # the runtime with guidance samples what the PyTorch student does
    import runtime
    from ddpm_export.export.onnx_export import export_onnx

    manifest = export_onnx(out / "model.pt", tmp_path / "student.onnx", batch_range=(1, 2, 4))
    assert manifest["sampling"]["method"] == "consistency" and manifest["sampling"]["steps"] == 2
    student, sck = load_model(out / "model.pt")
    sched = ScheduleConfig.from_dict(sck["schedule_config"])
    ts = sck["sampling"]["timesteps"]["2"]
    with runtime.load(tmp_path / "student.onnx") as engine:
        assert [c.name for c in engine.conditions] == ["class_labels"]
        got = {w: engine.sample_float(2, seed=0, cond={"class_labels": [3, 7]}, guidance=w).images
               for w in (1.0, 2.0)}
        swapped = engine.sample_float(2, seed=0, cond={"class_labels": [7, 3]}, guidance=2.0).images
    for w, img in got.items():
        ref = sample_student(student, sched, 2, seed=0, timesteps=ts, class_labels=[3, 7], guidance=w)
        assert np.abs(img - ref).max() < 1e-4, w
    assert np.abs(got[2.0] - got[1.0]).max() > 1e-3  # guidance changes the sample
    assert np.abs(got[2.0] - swapped).max() > 1e-3  # and so does the label
    with pytest.raises(ValueError, match=r"class_labels has shape \(3,\) and dtype int64, expected 2 integer"):
        sample_student(student, sched, 2, seed=0, timesteps=ts, class_labels=np.array([3, 7, 1]))
    with pytest.raises(ValueError, match="the student is class-conditional"):
        sample_student(student, sched, 2, seed=0, timesteps=ts)


def test_refusals_name_what_was_received(cond_teacher, cond_run, tiny_checkpoint, tmp_path, monkeypatch):
    out, _ = cond_run
    with pytest.raises(DistillError, match=r"label_dropout 0.25 -> 0.5.*pass the options it was started with"):
        distill(_cfg(cond_teacher, out, resume=True, label_dropout=0.5), progress=False)
    with pytest.raises(ValueError, match=r"label_dropout=1.0: expected a share in \[0, 1\)"):
        distill(_cfg(cond_teacher, tmp_path / "a", label_dropout=1.0), progress=False)
    _, uncond, _ = tiny_checkpoint
    r = CliRunner().invoke(main, ["distill", "--teacher", str(uncond), "--out", str(tmp_path / "b"),
                                  "--teacher-steps", "4", "--student-steps", "1,2", "--default-steps", "1",
                                  "--label-dropout", "0.1", "--no-progress"])
    assert r.exit_code == 1
    assert r.output.count("\n") == 1 and "--label-dropout 0.1 is for class-conditional teachers" in r.output
    monkeypatch.setattr(distill_mod, "model_conditions",
                        lambda m: (Condition("state", "vector", (3,), None, "zeros"),))
    with pytest.raises(DistillError, match=r"takes conditions state \(vector\); distill takes .* single class-label"):
        distill(_cfg(cond_teacher, tmp_path / "c"), progress=False)
    monkeypatch.setattr(distill_mod, "model_conditions",
                        lambda m: (Condition("class_labels", "class_label", (), 10, None),))
    with pytest.raises(DistillError, match=r"has no null label.*pass --label-dropout 0"):
        distill(_cfg(cond_teacher, tmp_path / "d"), progress=False)
    assert not (tmp_path / "c" / "teacher").exists() and not (tmp_path / "d" / "teacher").exists()  # refused first
