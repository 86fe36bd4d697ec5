"""Class-conditional diffusers UNet2DModels (num_class_embeds, every class_embed_type that
takes labels or embeddings): import (verified against diffusers' own network and a DDPM loop
with labels), export with a class_labels input, and the runtime equal to diffusers' network at
the same labels. Tiny random models, saved with save_pretrained as a DDPMPipeline folder."""
import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel  # noqa: E402

import runtime  # noqa: E402
from ddpm_export.export.onnx_export import export_onnx  # noqa: E402
from ddpm_export.weights import import_diffusers  # noqa: E402
from runtime.guidance import ConditionError  # noqa: E402

TINY = dict(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
            down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=4)


def _folder(tmp_path, **extra):
    torch.manual_seed(0)
    unet = UNet2DModel(**TINY, **extra).eval()
    if getattr(unet, "class_embedding", None) is not None:
        with torch.no_grad():  # labels must change eps visibly
            for p in unet.class_embedding.parameters():
                p.mul_(3.0)
    d = tmp_path / "pipe"
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=100)).save_pretrained(d)
    return d, unet


@pytest.mark.parametrize("extra, cond_kind", [
    (dict(num_class_embeds=5), "class_label"),
    (dict(num_class_embeds=5, class_embed_type="timestep"), "class_label"),
    (dict(class_embed_type="identity"), "vector"),
])
def test_import_export_sample_equal_diffusers(tmp_path, extra, cond_kind):
    d, unet = _folder(tmp_path, **extra)
    null = 4 if cond_kind == "class_label" else None
    ckpt = import_diffusers(d, tmp_path / "m.pt", verify=True, null_label=null)
    rep = ckpt["provenance"]["verify"]
    assert rep["eps"]["max_abs"] < 1e-5 and rep["chain"]["max_abs_01"] < 1e-5
    m = export_onnx(tmp_path / "m.pt", tmp_path / "m.onnx", batch_range=(1, 4, 8))
    (c,) = m["conditions"]
    assert c["name"] == "class_labels" and c["kind"] == cond_kind and c["null"] == null
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    t = np.array([3, 50, 99], np.int32)
    lab = np.array([0, 2, 4]) if cond_kind == "class_label" else rng.standard_normal((3, 32)).astype(np.float32)
    with runtime.load(tmp_path / "m.onnx") as eng:
        got = eng(x, t, class_labels=lab)
        other = eng(x, t, class_labels=lab[::-1].copy())
    with torch.no_grad():
        want = unet(torch.from_numpy(x), torch.from_numpy(t).long(), class_labels=torch.from_numpy(lab)).sample
    assert np.abs(got - want.numpy()).max() < 1e-5
    assert np.abs(got - other).max() > 1e-3  # the label reaches the output


def test_guidance_needs_the_null_label_named_at_import(tmp_path):
    d, _ = _folder(tmp_path, num_class_embeds=5)
    import_diffusers(d, tmp_path / "m.pt", verify=False)  # no null label: nothing guessed
    m = export_onnx(tmp_path / "m.pt", tmp_path / "m.onnx", batch_range=(1, 4, 8))
    assert m["conditions"][0]["null"] is None and m["conditions"][0]["num_classes"] == 5
    with runtime.load(tmp_path / "m.onnx") as eng:
        eng.sample_float(2, seed=0, steps=2, method="ddim", cond={"class_labels": 1})  # guidance 1: fine
        with pytest.raises(ConditionError, match=r"--null-label K"):
            eng.sample_float(2, seed=0, steps=2, method="ddim", cond={"class_labels": 1}, guidance=2.0)


@pytest.mark.parametrize("extra, null, match", [
    (dict(num_class_embeds=5), 5, r"null_label=5 \(expected a class index in \[0, 4\]"),
    (dict(), 0, "is for class-conditional models"),
    (dict(class_embed_type="identity"), 0, "null_label with class_embed_type='identity'"),
])
def test_refusals_are_one_line(tmp_path, extra, null, match):
    d, _ = _folder(tmp_path, **extra)
    with pytest.raises(ValueError, match=match) as e:
        import_diffusers(d, tmp_path / "m.pt", verify=False, null_label=null)
    assert "\n" not in str(e.value) and not (tmp_path / "m.pt").exists()


def test_cli_null_label(tmp_path):
    from click.testing import CliRunner

    from ddpm_export.cli.main import main

    d, _ = _folder(tmp_path, num_class_embeds=5)
    r = CliRunner().invoke(main, ["import", "--format", "diffusers", str(d), "--out", str(tmp_path / "m.pt"),
                                  "--null-label", "4"])
    assert r.exit_code == 0, r.output
    ck = torch.load(tmp_path / "m.pt", weights_only=True)
    assert ck["model_config"]["conditions"][0]["null"] == 4
    assert json.dumps(ck["model_config"]["conditions"][0])  # plain JSON, as the manifest records it
