"""A folder saved as a diffusers DDIMPipeline (model_index.json naming DDIMPipeline,
scheduler/scheduler_config.json from DDIMScheduler), a common way to ship a model trained
with DDPMScheduler (issue 25, item 0): its DDPM variance is what diffusers gives it, and the
runtime samples it by default as DDIMPipeline does.
"""
import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler, UNet2DModel  # noqa: E402

import runtime  # noqa: E402
from ddpm_export.weights import import_diffusers, schedule_from_diffusers  # noqa: E402
from runtime.schedulers import make_scheduler  # noqa: E402

TINY = dict(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64),
            norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"))


def random_unet(seed=0):
    torch.manual_seed(seed)
    net = UNet2DModel(**TINY).eval()
    with torch.no_grad():  # diffusers zero-inits some output convs: make every layer matter
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def save_ddim_folder(path, net, **scheduler):
    DDIMPipeline(unet=net, scheduler=DDIMScheduler(**scheduler)).save_pretrained(str(path))
    assert json.loads((path / "model_index.json").read_text())["_class_name"] == "DDIMPipeline"
    return path


@pytest.fixture(scope="module")
def random_folder(tmp_path_factory):
    return save_ddim_folder(tmp_path_factory.mktemp("ddim") / "pipe", random_unet())


# ---------------------------------------------------------------------------
# DDPM of a DDIM folder: DDPMScheduler.from_config(its config)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [10, 1000])
def test_ddpm_variance_is_ddpmscheduler_from_config(steps):
    config = dict(DDIMScheduler(set_alpha_to_one=False).config)
    ours = make_scheduler(schedule_from_diffusers(config), "ddpm", steps)
    theirs = DDPMScheduler.from_config(config)
    theirs.set_timesteps(steps)
    assert [int(t) for t in theirs.timesteps] == [int(t) for t in ours.timesteps]
    # every step but the last (t = 0, where neither adds noise)
    want = np.array([float(theirs._get_variance(int(t))) ** 0.5 for t in theirs.timesteps[:-1]])
    np.testing.assert_allclose(ours._std[:-1], want, rtol=2e-4)  # diffusers computes in float32


def test_import_verify_chain_equals_ddpmpipeline(random_folder, tmp_path):
    """--verify's chain (DDPMPipeline with DDPMScheduler.from_config(the folder's config), 10
    steps, same noise) equals the runtime's DDPM of the imported model."""
    ckpt = import_diffusers(random_folder, tmp_path / "m.pt", verify=True, verify_steps=10)
    assert ckpt["schedule_config"]["variance_type"] == "fixedsmall"
    rep = ckpt["provenance"]["verify"]
    assert rep["chain"]["max_abs_01"] < 1e-5
    # and the folder's default (DDIMPipeline's DDIM) against DDIMPipeline, same x_T: a random
    # network's deterministic chain amplifies float32 rounding (7e-5 here; the trained digits
    # model below agrees to 1e-5 over 50 steps)
    assert rep["default_chain"]["steps"] == 10 and rep["default_chain"]["max_abs_01"] < 2e-4


def _cli(*args):
    from click.testing import CliRunner

    from ddpm_export.cli.main import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_failing_verify_is_a_refusal(random_folder, tmp_path, monkeypatch):
    """A chain that differs from the pipeline exits 1 with every number in one line and writes
    nothing (it used to print a warning and exit 0); --no-verify is the way past it."""
    from ddpm_export.weights import verify

    real = verify.runtime_chain

    def off_by_0p01(*a, **k):  # a runtime that no longer reproduces DDPMPipeline
        img, raw = real(*a, **k)
        return np.clip(img + 0.01, 0, 1), raw

    monkeypatch.setattr(verify, "runtime_chain", off_by_0p01)
    out = tmp_path / "m.pt"
    r = _cli("import", "--format", "diffusers", random_folder, "--out", out, "--verify-steps", 3)
    assert r.exit_code == 1, r.stdout
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "--verify failed" in line and "Traceback" not in r.stderr
    assert "3-step DDPM chain vs DDPMPipeline from the same noise differs by 0.01" in line
    assert "(measured: eps max abs " in line and ", chain 0.01" in line and ", default_chain " in line
    assert "--no-verify" in line
    assert not out.exists()
    r = _cli("import", "--format", "diffusers", random_folder, "--out", out, "--no-verify")
    assert r.exit_code == 0 and out.exists() and "verify: skipped (--no-verify)" in r.stdout


@pytest.mark.parametrize("value", [False, True])
def test_set_alpha_to_one_is_carried_not_dropped(value):
    assert schedule_from_diffusers(dict(DDIMScheduler(set_alpha_to_one=value).config)).set_alpha_to_one is value
    # a DDPMScheduler config has no such key: DDIMScheduler's default, true (as before)
    assert schedule_from_diffusers(dict(DDPMScheduler().config)).set_alpha_to_one is True


# ---------------------------------------------------------------------------
# the runtime's default sampling of a DDIM folder is DDIMPipeline's
# ---------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[3]


def digits_ddim_folder(path, set_alpha_to_one):
    """The shipped digits model (trained with the DDPM loss) as a diffusers UNet2DModel in a
    DDIMPipeline folder. Trained, not random: a random U-Net's deterministic 50-step DDIM
    chain amplifies float32 rounding (1e-6 in x_T ends 0.4 apart), a trained one does not."""
    from ddpm_export.model.checkpoint import load_checkpoint
    from ddpm_export.model.config import UNetConfig
    from ddpm_export.weights import config_to_diffusers, ours_to_diffusers

    ckpt = load_checkpoint(ROOT / "engines" / "digits.pt")
    cfg = UNetConfig.from_dict(ckpt["model_config"])
    net = UNet2DModel(**config_to_diffusers(cfg)).eval()
    net.load_state_dict(ours_to_diffusers(ckpt["ema"], len(cfg.ch_mult)))
    sc = ckpt["schedule_config"]
    return save_ddim_folder(path, net, num_train_timesteps=sc["num_timesteps"], beta_start=sc["beta_start"],
                            beta_end=sc["beta_end"], set_alpha_to_one=set_alpha_to_one)


def ddim_pipeline_images(folder, x_T, **kw):
    """DDIMPipeline.from_pretrained(folder)(**kw) from x_T (its only draw at eta 0), [N, H, W, C]."""
    import diffusers.pipelines.ddim.pipeline_ddim as pipeline_ddim

    pipe = DDIMPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad(), mock.patch.object(pipeline_ddim, "randn_tensor",
                                            lambda *a, **k: torch.from_numpy(x_T.copy())):
        return pipe(batch_size=x_T.shape[0], output_type="np", **kw).images


def to01(x):
    return np.clip(np.asarray(x, np.float64) / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)


@pytest.fixture(scope="module", params=[False, True], ids=["set_alpha_to_one=False", "set_alpha_to_one=True"])
def digits_ddim(request, tmp_path_factory):
    from ddpm_export.export.onnx_export import export_onnx

    d = tmp_path_factory.mktemp("digits-ddim")
    folder = digits_ddim_folder(d / "pipe", request.param)
    ckpt = import_diffusers(folder, d / "m.pt")
    export_onnx(d / "m.pt", d / "m.onnx", batch_range=(1, 2, 2))
    return request.param, folder, ckpt, d / "m.onnx"


def test_import_writes_the_pipelines_default(digits_ddim):
    sat, _, ckpt, onnx = digits_ddim
    sec = runtime.load(onnx).manifest["sampling"]
    assert sec == ckpt["sampling"]
    assert (sec["binding"], sec["method"], sec["steps"], sec["options"]) == (
        False, "ddim", 50, {"eta": 0.0, "variant": "diffusers"})
    assert ckpt["schedule_config"]["set_alpha_to_one"] is sat
    assert ckpt["provenance"]["pipeline_class"] == "DDIMPipeline"


def test_no_flag_sample_equals_ddimpipeline(digits_ddim, tmp_path):
    """python -m runtime.sample --engine X.onnx (no method flags) == DDIMPipeline() from the same x_T."""
    from runtime.sample import main
    from runtime.seeding import ImageStreams

    _, folder, _, onnx = digits_ddim
    assert main(["--engine", str(onnx), "--num", "3", "--seed", "1", "--out", str(tmp_path / "g.png"),
                 "--npz", str(tmp_path / "s.npz"), "--no-progress"]) == 0
    got = np.load(tmp_path / "s.npz")["samples"]
    x_T = ImageStreams(1, 0, 3).standard_normal((3, 1, 16, 16), np.float32)  # the runtime's x_T
    want = ddim_pipeline_images(folder, x_T)
    assert np.abs(to01(got) - want).max() < 1e-5
    # and through the API at a pipeline argument: num_inference_steps=10
    with runtime.load(onnx) as engine:
        ten = engine.sample_float(3, seed=1, steps=10).images
    assert np.abs(to01(ten) - ddim_pipeline_images(folder, x_T, num_inference_steps=10)).max() < 1e-5


def test_other_methods_still_work(digits_ddim):
    from runtime.contract import sampling_plan

    _, _, _, onnx = digits_ddim
    with runtime.load(onnx) as engine:
        m = engine.manifest
        assert sampling_plan(m, "ddpm", 10) == {"method": "ddpm", "steps": 10, "timesteps": None, "options": {}}
        ddpm = engine.sample_float(2, seed=0, method="ddpm", steps=10)
        assert ddpm.network_calls == 10
        default = engine.sample_float(2, seed=0, steps=10).images
        consistent = engine.sample_float(2, seed=0, steps=10, variant="consistent").images
        assert np.abs(default - consistent).max() > 1e-3  # a given option wins over the default's
        assert np.abs(default - engine.sample_float(2, seed=0, method="ddim", steps=10).images).max() == 0
