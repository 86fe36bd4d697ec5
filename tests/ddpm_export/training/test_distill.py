"""ddpm-export distill: the target and sampler on a hand case, a tiny run, exact resume, refusals."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import ddpm_export.training.distill as distill_mod
from ddpm_export.cli.main import main
from ddpm_export.model.checkpoint import load_checkpoint
from ddpm_export.training.distill import (DistillConfig, DistillError, distill, sample_student, student_timesteps,
                                          student_x0)
from runtime.io import folder_lock
from runtime.schedulers import make_scheduler
from runtime.schedulers.schedule import Schedule, ScheduleConfig
from runtime.seeding import ImageStreams
from checkpoint_tensors import checkpoint_tensors, crash_after_first_checkpoint  # noqa: E402  (beside this file)


def _cfg(teacher, out, **kw):
    base = dict(teacher=str(teacher), out=str(out), teacher_steps=4, student_steps=(1, 2, 4), default_steps=2,
                trajectories=8, chunk=4, steps=6, batch_size=4, warmup=2, sample_every=3, ckpt_every=3,
                log_every=2, num_samples=2, seed=1)
    base.update(kw)
    return DistillConfig(**base)




class _EndpointStudent(torch.nn.Module):
    """A perfect student for a known end x_end: from any x_t it returns the v that makes
    x0 = sqrt(abar) x_t - sqrt(1 - abar) v equal x_end."""

    def __init__(self, x_end, schedule):
        super().__init__()
        self.x_end, self.s = x_end, schedule
        self.config = type("C", (), {"in_channels": x_end.shape[1], "image_size": x_end.shape[2]})()

    def forward(self, x, t):
        a = torch.from_numpy(self.s.sqrt_alphas_cumprod)[t].reshape(-1, 1, 1, 1)
        b = torch.from_numpy(self.s.sqrt_one_minus_alphas_cumprod)[t].reshape(-1, 1, 1, 1)
        return ((a * x.double() - self.x_end) / b).float()


def test_target_formula_and_both_samplers_land_on_the_end_of_a_perfect_students_trajectory():
    """Hand case: v -> x0 is exact, and a student that always jumps to x_end makes the runtime
    scheduler and the PyTorch sampler return x_end at 1, 2 and 4 calls (re-noising in between)."""
    sched_cfg = ScheduleConfig(prediction="v")
    s = Schedule(sched_cfg)
    g = torch.Generator().manual_seed(0)
    x_end = (torch.rand(3, 1, 4, 4, generator=g, dtype=torch.float64) * 1.6 - 0.8)
    eps = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([999, 500, 3])
    a = torch.from_numpy(s.sqrt_alphas_cumprod)[t].reshape(-1, 1, 1, 1)
    b = torch.from_numpy(s.sqrt_one_minus_alphas_cumprod)[t].reshape(-1, 1, 1, 1)
    x_t = a * x_end + b * eps
    v = a * eps - b * x_end  # the definition of v (Salimans & Ho 2022)
    torch.testing.assert_close(student_x0(s, v, x_t, t), x_end, rtol=0, atol=1e-12)

    student = _EndpointStudent(x_end, s)
    for n in (1, 2, 4):
        got = sample_student(student, sched_cfg, 3, n, seed=5)
        np.testing.assert_allclose(got, x_end.float().numpy(), rtol=0, atol=2e-6)
        sched = make_scheduler(sched_cfg, "consistency", n)
        rng = ImageStreams(5, 0, 3)
        x = sched.init_noise((3, 1, 4, 4), rng)
        for tt in sched.timesteps:
            out = student(torch.from_numpy(x), torch.full((3,), int(tt))).numpy()
            x, _ = sched.step(out, int(tt), x, rng)
        np.testing.assert_allclose(x, got, rtol=0, atol=2e-6)


def test_student_timesteps_lie_on_the_teacher_grid_or_are_refused():
    assert student_timesteps((1, 2, 4, 8), 8, 1000) == {
        1: [999], 2: [999, 500], 4: [999, 749, 500, 250], 8: [999, 874, 749, 624, 500, 375, 250, 125]}
    with pytest.raises(ValueError, match=r"call counts \[3\] need timesteps off the teacher's 8-step grid.*"
                                         r"fit are \[1, 2, 4, 8\]"):
        student_timesteps((3, 4), 8, 1000)


def test_tiny_distill_runs_and_resume_after_a_crash_is_bit_equal(tmp_path, tiny_checkpoint, monkeypatch):
    _, teacher, _ = tiny_checkpoint
    a = tmp_path / "whole"
    summary = distill(_cfg(teacher, a), progress=False)
    assert summary["step"] == 6 and summary["data_seconds"] > 0
    lines = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4, 6] and all(np.isfinite(r["loss"]) for r in lines)
    assert sorted(p.name for p in (a / "samples").iterdir()) == ["step0000003.png", "step0000006.png"]
    model = load_checkpoint(a / "model.pt")
    assert model["schedule_config"]["prediction"] == "v"
    assert model["sampling"] == {"method": "consistency", "steps": 2, "allowed_steps": [1, 2, 4],
                                 "timesteps": {"1": [999], "2": [999, 500], "4": [999, 749, 500, 250]}}
    prov = model["provenance"]
    assert prov["teacher_sha256"] and prov["steps"] == 6 and prov["wall_seconds"] > 0 and "command" in prov

    # the same run, crashed right after its step-3 checkpoint, one teacher file lost, then resumed
    b = tmp_path / "crashed"
    crash_after_first_checkpoint(monkeypatch, distill_mod, lambda: distill(_cfg(teacher, b), progress=False))
    assert load_checkpoint(b / "last.pt")["step"] == 3
    (b / "teacher" / "chunk00001.npz").unlink()
    distill(_cfg(teacher, b, resume=True), progress=False)
    ta, tb = checkpoint_tensors(load_checkpoint(a / "last.pt")), checkpoint_tensors(load_checkpoint(b / "last.pt"))
    assert ta.keys() == tb.keys()
    unequal = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not unequal, f"{len(unequal)} tensors differ after resume, e.g. {unequal[:3]}"
    assert len(load_checkpoint(b / "model.pt")["provenance"]["commands"]) == 2  # started, resumed

    # resuming with other options, a finished run without --resume, a locked folder: refused
    with pytest.raises(DistillError, match=r"lr 0.0002 -> 0.001.*pass the options it was started with"):
        distill(_cfg(teacher, b, resume=True, lr=1e-3), progress=False)
    with pytest.raises(DistillError, match="already exists; pass --resume"):
        distill(_cfg(teacher, b), progress=False)
    with folder_lock(b, "a test", distill_mod.LOCK_FILE):
        with pytest.raises(DistillError, match="another distillation"):
            distill(_cfg(teacher, b, resume=True), progress=False)


def test_cli_refuses_a_call_count_off_the_grid_in_one_line(tmp_path, tiny_checkpoint):
    _, teacher, _ = tiny_checkpoint
    r = CliRunner().invoke(main, ["distill", "--teacher", str(teacher), "--out", str(tmp_path / "r"),
                                  "--teacher-steps", "8", "--student-steps", "1,3", "--default-steps", "1",
                                  "--no-progress"])
    assert r.exit_code == 1
    assert r.output.count("\n") == 1 and "call counts [3] need timesteps off the teacher's 8-step grid" in r.output


def test_distill_takes_an_imported_diffusers_v_teacher_of_any_shape(tmp_path):
    """A teacher from the diffusers import (diffusers' own network, 8x16 images, v-prediction):
    the student is trained and its checkpoint keeps the shape; the exported student samples in
    the runtime what the PyTorch student does. The teacher's trajectories read its v output (a
    teacher read as eps would end elsewhere)."""
    pytest.importorskip("diffusers")
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from ddpm_export.model.checkpoint import load_model
    from ddpm_export.weights import import_diffusers

    torch.manual_seed(0)
    net = UNet2DModel(sample_size=(8, 16), in_channels=1, out_channels=1, layers_per_block=1,
                      block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).eval()
    DDPMPipeline(unet=net, scheduler=DDPMScheduler(prediction_type="v_prediction")).save_pretrained(
        str(tmp_path / "pipe"))
    import_diffusers(tmp_path / "pipe", tmp_path / "teacher.pt", verify=False)
    summary = distill(_cfg(tmp_path / "teacher.pt", tmp_path / "run"), progress=False)
    assert summary["step"] == 6
    student, ckpt = load_model(tmp_path / "run" / "model.pt")
    assert ckpt["model_config"]["image_shape"] == [1, 8, 16]
    ref = sample_student(student, ScheduleConfig.from_dict(ckpt["schedule_config"]), 2, seed=0,
                         timesteps=ckpt["sampling"]["timesteps"]["2"])
    assert ref.shape == (2, 1, 8, 16) and np.isfinite(ref).all()
    # exported like any model: the runtime, with no flags, samples what the PyTorch student does
    import runtime
    from ddpm_export.export.onnx_export import export_onnx

    export_onnx(tmp_path / "run" / "model.pt", tmp_path / "student.onnx", batch_range=(1, 1, 2))
    with runtime.load(tmp_path / "student.onnx") as engine:
        res = engine.sample_float(2, seed=0)
    assert res.network_calls == 2
    assert np.abs(res.images - ref).max() < 1e-4
    # the stored trajectory ends are the runtime's UniPC chain of the v teacher
    from runtime.loop import sample
    teacher, tck = load_model(tmp_path / "teacher.pt")
    with torch.no_grad():
        chain = sample(lambda x, t: teacher(torch.from_numpy(x), torch.from_numpy(t).long()).numpy(),
                       (1, 8, 16), tck["schedule_config"], 4, seed=1000, steps=4, method="unipc", batch=4)
    stored = np.load(tmp_path / "run" / "teacher" / "chunk00000.npz")["x0"]
    np.testing.assert_allclose(stored, chain.images, atol=1e-5)


def test_distill_refuses_a_thresholding_teacher(tmp_path, tiny_checkpoint):
    _, teacher, _ = tiny_checkpoint
    ck = torch.load(teacher, weights_only=False)
    ck["schedule_config"] = dict(ck["schedule_config"], thresholding=True)
    torch.save(ck, tmp_path / "t.pt")
    with pytest.raises(DistillError, match="dynamic thresholding"):
        distill(_cfg(tmp_path / "t.pt", tmp_path / "run"), progress=False)
