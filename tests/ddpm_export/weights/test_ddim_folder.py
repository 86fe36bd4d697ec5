"""A folder saved as a diffusers DDIMPipeline (model_index.json naming DDIMPipeline,
scheduler/scheduler_config.json from DDIMScheduler), a common way to ship a model trained
with DDPMScheduler (issue 25, item 0): its DDPM variance is what diffusers gives it, and the
runtime samples it by default as DDIMPipeline does.
"""
import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler, UNet2DModel  # noqa: E402

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
    assert ckpt["provenance"]["verify"]["chain"]["max_abs_01"] < 1e-5


@pytest.mark.parametrize("value", [False, True])
def test_set_alpha_to_one_is_carried_not_dropped(value):
    assert schedule_from_diffusers(dict(DDIMScheduler(set_alpha_to_one=value).config)).set_alpha_to_one is value
    # a DDPMScheduler config has no such key: DDIMScheduler's default, true (as before)
    assert schedule_from_diffusers(dict(DDPMScheduler().config)).set_alpha_to_one is True
