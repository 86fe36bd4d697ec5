"""Importing diffusers / pesser weights: the architecture proof against diffusers'
UNet2DModel, file round trips, and the error messages."""
import dataclasses
import json
import re

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import UNet2DModel  # noqa: E402

from ddpm_export.model.checkpoint import CheckpointError, load_checkpoint, load_model  # noqa: E402
from ddpm_export.model.config import PRESETS, UNetConfig  # noqa: E402
from ddpm_export.weights import (  # noqa: E402
    config_from_diffusers,
    config_to_diffusers,
    diffusers_to_ours,
    import_diffusers,
    import_pesser,
    ours_to_diffusers,
    schedule_from_diffusers,
)
from ddpm_export.model.unet import UNet, count_parameters  # noqa: E402
from runtime.schedulers.schedule import ScheduleConfig  # noqa: E402

# google/ddpm-cifar10-32's UNet2DModel config (attention at 16 px: down_blocks[1], up_blocks[2])
CIFAR10_DIFFUSERS = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 256, 256),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None,
    norm_num_groups=32,
    norm_eps=1e-6,
    act_fn="silu",
    flip_sin_to_cos=False,
    freq_shift=1,
    downsample_padding=0,
    time_embedding_type="positional",
)

# a small model of the same family for the file round trips and error paths
SMALL_DIFFUSERS = dict(
    CIFAR10_DIFFUSERS,
    sample_size=8,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
)
SMALL_OURS = UNetConfig(
    image_size=8, in_channels=3, ch=32, ch_mult=(1, 2), num_res_blocks=1,
    attn_resolutions=(4,), dropout=0.0, num_groups=8, norm_eps=1e-6,
)

SCHEDULER_JSON = {  # google/ddpm-cifar10-32 scheduler_config.json
    "_class_name": "DDPMScheduler",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "clip_sample": True,
    "num_train_timesteps": 1000,
    "trained_betas": None,
    "variance_type": "fixed_large",
}


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Re-init every parameter so that no layer is zero (zero-init hides mapping
    mistakes) while activations stay O(1): weights ~ N(0, 1/fan_in), norm scales
    1 + 0.1 N, biases 0.1 N."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() >= 2:
                p.copy_(noise * p[0].numel() ** -0.5)
            elif name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)
    return model.eval()


@pytest.fixture(scope="module")
def cifar_pair():
    torch.manual_seed(0)
    theirs = randomize_(UNet2DModel(**CIFAR10_DIFFUSERS), seed=1)
    ours = UNet(PRESETS["cifar10"].unet).eval()
    ours.load_state_dict(diffusers_to_ours(theirs.state_dict()))
    return theirs, ours


def small_diffusers(seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    return randomize_(UNet2DModel(**SMALL_DIFFUSERS), seed=seed)


def max_diff(ours, theirs, x, t) -> float:
    with torch.no_grad():
        return (ours(x, t) - theirs(x, t).sample).abs().max().item()


# ---------------------------------------------------------------------------
# the architecture proof
# ---------------------------------------------------------------------------

def test_cifar10_matches_diffusers_unet2dmodel(cifar_pair):
    theirs, ours = cifar_pair
    assert count_parameters(ours) == 35_746_307 == count_parameters(theirs)
    # every parameter is mapped, none is zero
    assert set(ours_to_diffusers(ours.state_dict())) == set(theirs.state_dict())
    assert all(p.abs().max() > 1e-3 for p in ours.parameters())
    g = torch.Generator().manual_seed(2)
    worst = 0.0
    for t in (torch.tensor([0, 999]), torch.tensor([1, 500, 998])):
        x = torch.randn(len(t), 3, 32, 32, generator=g)
        d = max_diff(ours, theirs, x, t)
        print(f"\ncifar10 U-Net vs diffusers UNet2DModel, t={t.tolist()}: max |diff| = {d:.3g}")
        worst = max(worst, d)
    assert worst < 1e-4


def test_config_from_diffusers_is_the_cifar10_preset(cifar_pair):
    theirs, _ = cifar_pair
    cfg = config_from_diffusers(dict(theirs.config))
    assert cfg == dataclasses.replace(PRESETS["cifar10"].unet, dropout=0.0)
    assert config_from_diffusers({**dict(theirs.config), "dropout": 0.1}) == PRESETS["cifar10"].unet
    # and back
    assert config_from_diffusers(config_to_diffusers(PRESETS["cifar10"].unet)) == PRESETS["cifar10"].unet
    assert config_from_diffusers(config_to_diffusers(SMALL_OURS)) == SMALL_OURS


# ---------------------------------------------------------------------------
# state_dict round trips
# ---------------------------------------------------------------------------

def test_state_dict_round_trips():
    sd = small_diffusers().state_dict()
    ours = diffusers_to_ours(sd)
    assert set(ours) == set(UNet(SMALL_OURS).state_dict())
    back = ours_to_diffusers(ours)
    assert set(back) == set(sd)
    for k in sd:
        assert back[k].shape == sd[k].shape and torch.equal(back[k], sd[k]), k
    ours_sd = randomize_(UNet(SMALL_OURS), seed=3).state_dict()
    again = diffusers_to_ours(ours_to_diffusers(ours_sd))
    assert set(again) == set(ours_sd)
    assert all(torch.equal(again[k], ours_sd[k]) for k in ours_sd)


def test_old_diffusers_attention_names_are_read():
    sd = small_diffusers().state_dict()
    legacy = {}
    for k, v in sd.items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            k = k.replace(f".{new}.", f".{old}.")
        legacy[k] = v
    assert set(legacy) != set(sd)
    a, b = diffusers_to_ours(sd), diffusers_to_ours(legacy)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_keys_are_rejected():
    sd = dict(small_diffusers().state_dict())
    sd["class_embedding.weight"] = torch.zeros(10, 128)
    with pytest.raises(ValueError, match="class_embedding.weight"):
        diffusers_to_ours(sd)


# ---------------------------------------------------------------------------
# diffusers folders -> checkpoint
# ---------------------------------------------------------------------------

def check_same_outputs(ckpt_path, theirs):
    model, ckpt = load_model(ckpt_path)
    assert UNetConfig.from_dict(ckpt["model_config"]) == SMALL_OURS
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    assert max_diff(model, theirs, x, torch.tensor([0, 17, 999])) < 1e-5
    return ckpt


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_import_diffusers_root_layout(tmp_path, safe):
    theirs = small_diffusers()
    src = tmp_path / "ddpm-small"
    theirs.save_pretrained(src, safe_serialization=safe)
    weights = src / ("diffusion_pytorch_model.safetensors" if safe else "diffusion_pytorch_model.bin")
    assert weights.is_file()
    (src / "scheduler_config.json").write_text(json.dumps(SCHEDULER_JSON))
    out = tmp_path / "imported.pt"
    import_diffusers(src, out, verify=True)
    ckpt = check_same_outputs(out, theirs)
    assert load_checkpoint(out)["format"] == "ddpm-export/1"
    # final_step_noise: a DDPMScheduler adds noise on a last step above t = 0 (never reached
    # by this schedule's strided chains, which end at 0; it matters for given timesteps)
    assert ScheduleConfig.from_dict(ckpt["schedule_config"]) == ScheduleConfig(
        variance_type="fixedlarge", clip_denoised=True, final_step_noise=True
    )
    prov = ckpt["provenance"]
    assert prov["format"] == "diffusers" and prov["source"] == str(src)
    assert len(prov["source_sha256"]) == 64 and prov["weights_file"] == str(weights)
    assert prov["verify"]["eps"]["max_abs"] < 1e-5
    assert prov["verify"]["chain"]["max_abs_01"] < 1e-4


def test_import_diffusers_pipeline_layout(tmp_path):
    theirs = small_diffusers(seed=5)
    pipe = tmp_path / "pipe"
    theirs.save_pretrained(pipe / "unet")
    (pipe / "scheduler").mkdir()
    (pipe / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({**SCHEDULER_JSON, "variance_type": "fixed_small", "clip_sample": False})
    )
    for i, src in enumerate((pipe, pipe / "unet")):
        import_diffusers(src, tmp_path / f"{i}.pt")
        ckpt = check_same_outputs(tmp_path / f"{i}.pt", theirs)
        sched = ScheduleConfig.from_dict(ckpt["schedule_config"])
        assert sched.variance_type == "fixedsmall" and sched.clip_denoised is False
    # an explicit schedule must agree with the pipeline's; no scheduler config at all: refused
    # (tests/ddpm_export/weights/test_deploy_diffusers.py checks both messages)
    with pytest.raises(ValueError, match="num_timesteps: given 500, the pipeline has 1000"):
        import_diffusers(pipe, tmp_path / "given.pt",
                         schedule_config=ScheduleConfig(num_timesteps=500, variance_type="fixedsmall",
                                                        clip_denoised=False))
    bare = tmp_path / "bare"
    theirs.save_pretrained(bare)
    with pytest.raises(ValueError, match="no scheduler_config.json"):
        import_diffusers(bare, tmp_path / "bare.pt")
    ckpt = import_diffusers(bare, tmp_path / "bare.pt", schedule_config=ScheduleConfig(num_timesteps=500))
    assert ckpt["schedule_config"]["num_timesteps"] == 500


# ---------------------------------------------------------------------------
# pesser .ckpt -> checkpoint
# ---------------------------------------------------------------------------

def test_import_pesser_round_trip(tmp_path):
    model = randomize_(UNet(PRESETS["tiny"].unet), seed=6)
    src = tmp_path / "model-790000.ckpt"
    torch.save(model.state_dict(), src)
    out = tmp_path / "pesser.pt"
    import_pesser(src, out, preset="tiny")
    loaded, ckpt = load_model(out)
    assert UNetConfig.from_dict(ckpt["model_config"]) == PRESETS["tiny"].unet
    assert ScheduleConfig.from_dict(ckpt["schedule_config"]) == ScheduleConfig()
    assert ckpt["provenance"]["format"] == "pesser" and ckpt["provenance"]["source"] == str(src)
    sd = model.state_dict()
    assert all(torch.equal(loaded.state_dict()[k], sd[k]) for k in sd)
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([0, 999])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t), model(x, t), rtol=0, atol=0)
    # a UNetConfig works as the preset too
    import_pesser(src, tmp_path / "cfg.pt", preset=PRESETS["tiny"].unet)


# ---------------------------------------------------------------------------
# error paths
# ---------------------------------------------------------------------------

def test_missing_config_json(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        import_diffusers(tmp_path / "empty", tmp_path / "out.pt")
    with pytest.raises(ValueError, match="no such folder"):
        import_diffusers(tmp_path / "nowhere", tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_missing_weights(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(SMALL_DIFFUSERS))
    with pytest.raises(ValueError, match=r"no weights file; expected diffusion_pytorch_model\.safetensors"):
        import_diffusers(src, tmp_path / "out.pt")


def test_truncated_safetensors(tmp_path):
    src = tmp_path / "src"
    small_diffusers().save_pretrained(src)
    w = src / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model\.safetensors: cannot be read as safetensors.*re-download"):
        import_diffusers(src, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_weights_of_another_config(tmp_path):
    src = tmp_path / "src"
    small_diffusers().save_pretrained(src)
    (src / "config.json").write_text(json.dumps({**SMALL_DIFFUSERS, "block_out_channels": [32, 96]}))
    with pytest.raises(CheckpointError, match="of another shape.*disagree"):
        import_diffusers(src, tmp_path / "out.pt")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"attention_head_dim": 8}, "attention_head_dim=8"),
        ({"flip_sin_to_cos": True}, "flip_sin_to_cos"),
        ({"freq_shift": 0}, "freq_shift=0"),
        ({"downsample_padding": 1}, "downsample_padding=1"),
        ({"time_embedding_type": "fourier"}, "time_embedding_type"),
        ({"act_fn": "gelu"}, "act_fn"),
        ({"out_channels": 6}, "out_channels=6"),
        ({"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift"),
        ({"num_class_embeds": 10}, "class embeddings"),
        ({"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"]}, "down_block_types"),
        ({"up_block_types": ["UpBlock2D", "AttnUpBlock2D"]}, "mirrors"),
        ({"block_out_channels": [32, 48]}, "multiple of the first"),
        ({"_class_name": "UNet2DConditionModel"}, "only diffusers UNet2DModel"),
    ],
)
def test_configs_we_cannot_express(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        config_from_diffusers({**SMALL_DIFFUSERS, **change})


def test_diffusers_defaults_apply_to_missing_keys(tmp_path):
    # a config.json without flip_sin_to_cos / freq_shift means diffusers' defaults (True, 0)
    cfg = {k: v for k, v in SMALL_DIFFUSERS.items() if k not in ("flip_sin_to_cos", "freq_shift")}
    with pytest.raises(ValueError, match="flip_sin_to_cos=True") as e:
        config_from_diffusers(cfg)
    assert "freq_shift=0" in str(e.value)  # all problems in one message
    # import_diffusers takes such a model as diffusers' own network and records why
    src = tmp_path / "src"
    UNet2DModel(**{**SMALL_DIFFUSERS, "attention_head_dim": 8}).save_pretrained(src)
    (src / "scheduler_config.json").write_text(json.dumps(SCHEDULER_JSON))
    ckpt = import_diffusers(src, tmp_path / "out.pt")
    assert ckpt["model_config"]["family"] == "diffusers.UNet2DModel"
    assert "several heads" in ckpt["provenance"]["why_diffusers_network"]
    with pytest.raises(ValueError, match="(?s)" + re.escape(str(src / "config.json")) + ".*several heads"):
        import_diffusers(src, tmp_path / "out2.pt", network="ours")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"beta_schedule": "sigmoid"}, "beta_schedule"),
        ({"prediction_type": "flow_prediction"}, "prediction_type"),
        ({"variance_type": "learned_range"}, "variance_type"),
    ],
)
def test_schedulers_we_cannot_express(change, message):
    with pytest.raises(ValueError, match=message):
        schedule_from_diffusers({**SCHEDULER_JSON, **change})


def test_scheduler_defaults():
    assert schedule_from_diffusers({"_class_name": "DDPMScheduler"}).variance_type == "fixedsmall"
    # DDPM sampling of a DDIM config is DDPMScheduler.from_config(it): fixed_small, noise on a last t > 0
    assert schedule_from_diffusers({"_class_name": "DDIMScheduler"}) == ScheduleConfig(
        variance_type="fixedsmall", final_step_noise=True)
    assert schedule_from_diffusers({"_class_name": "DDPMScheduler", "prediction_type": "v_prediction"}).prediction == "v"


def test_pesser_errors(tmp_path):
    sd = UNet(PRESETS["tiny"].unet).state_dict()
    missing = tmp_path / "missing.ckpt"
    torch.save({k: v for k, v in sd.items() if k != "mid.attn_1.q.weight"}, missing)
    with pytest.raises(CheckpointError, match=r"missing.ckpt.*1 missing \(e\.g\. mid\.attn_1\.q\.weight\).*preset 'tiny'"):
        import_pesser(missing, tmp_path / "out.pt", preset="tiny")
    with pytest.raises(CheckpointError, match="of another shape.*preset 'cifar10'"):
        import_pesser(missing, tmp_path / "out.pt")
    with pytest.raises(ValueError, match="no such file"):
        import_pesser(tmp_path / "nope.ckpt", tmp_path / "out.pt", preset="tiny")
    full = tmp_path / "full.ckpt"
    torch.save(sd, full)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(full.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated.ckpt: cannot be read"):
        import_pesser(truncated, tmp_path / "out.pt", preset="tiny")
    with pytest.raises(ValueError, match="unknown preset 'lsun'"):
        import_pesser(full, tmp_path / "out.pt", preset="lsun")
    assert not (tmp_path / "out.pt").exists()
