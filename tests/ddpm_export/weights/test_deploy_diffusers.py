"""The DDPMs people train with diffusers: import -> export -> runtime sample, against
DDPMPipeline from the same noise, for every prediction type and schedule; and every
refusal, in one line.

Models come from the published configurations (train_unconditional.py / the "Train a
diffusion model" tutorial, and the Hub DDPM checkpoints' config.json and
scheduler_config.json) with the channel counts divided so that they run in seconds,
and random weights.

Tolerances: eps is compared with diffusers' own network (from_pretrained): the
diffusers-network path runs the same code and differs only by float32 kernel choice
(~2e-6), the mapped path agrees to float32 rounding (< 1e-5). A 10-step
chain compares [0, 1] images after a float64 runtime scheduler and diffusers' float32
one: ~1e-6 with the PyTorch model, < 1e-4 through ONNX Runtime (its float32 kernels
differ from PyTorch's by ~1e-6 per call, see test_onnx_export).
"""
import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel  # noqa: E402

import runtime  # noqa: E402
from ddpm_export.export.onnx_export import export_onnx  # noqa: E402
from ddpm_export.model.checkpoint import load_checkpoint  # noqa: E402
from ddpm_export.weights import import_diffusers, schedule_from_diffusers  # noqa: E402
from ddpm_export.weights.verify import runtime_chain  # noqa: E402
from runtime.schedulers.schedule import ScheduleConfig  # noqa: E402

# train_unconditional.py's model; the tutorial's is the same at sample_size=128. Class
# defaults apply to what it does not set (flip_sin_to_cos=True, freq_shift=0,
# downsample_padding=1, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5).
TRAIN_UNCONDITIONAL = dict(
    sample_size=128, in_channels=3, out_channels=3, layers_per_block=2,
    block_out_channels=(128, 128, 256, 256, 512, 512),
    down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D",
                      "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
)
# google/ddpm-celebahq-256, ddpm-church-256, ddpm-bedroom-256, ddpm-cat-256 (and -ema) config.json
HUB_256 = dict(
    act_fn="silu", attention_head_dim=None, block_out_channels=[128, 128, 256, 256, 512, 512],
    center_input_sample=False,
    down_block_types=["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D",
                      "DownBlock2D"],
    downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, in_channels=3, layers_per_block=2,
    mid_block_scale_factor=1, norm_eps=1e-06, norm_num_groups=32, out_channels=3, sample_size=256,
    time_embedding_type="positional",
    up_block_types=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
)
HUB_256_SCHEDULER = {"_class_name": "DDPMScheduler", "beta_end": 0.02, "beta_schedule": "linear",
                     "beta_start": 0.0001, "clip_sample": True, "num_train_timesteps": 1000,
                     "trained_betas": None, "variance_type": "fixed_small"}


def tiny(config, size=32, div=16, groups=4):
    """The published structure with block_out_channels / div (and norm groups to fit)."""
    c = dict(config)
    c["block_out_channels"] = [b // div for b in config["block_out_channels"]]
    c["norm_num_groups"] = groups
    c["sample_size"] = size
    return c


def make_unet(config, seed=0):
    torch.manual_seed(seed)
    net = UNet2DModel(**config).eval()
    with torch.no_grad():  # diffusers zero-inits some output convs: make every layer matter
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def save_pipeline(path, net, **scheduler):
    DDPMPipeline(unet=net, scheduler=DDPMScheduler(**scheduler)).save_pretrained(str(path))
    return path


def pipeline_images(net, scheduler_json, steps, seed=0):
    pipe = DDPMPipeline(unet=net, scheduler=DDPMScheduler.from_config(scheduler_json))
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        return pipe(batch_size=1, generator=torch.Generator().manual_seed(seed), num_inference_steps=steps,
                    output_type="np").images


SCHEDULES = {
    "train_unconditional default (epsilon, linear, fixed_small)": dict(num_train_timesteps=100),
    "v_prediction, scaled_linear": dict(num_train_timesteps=100, prediction_type="v_prediction",
                                        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "sample, squaredcos_cap_v2, thresholding": dict(num_train_timesteps=100, prediction_type="sample",
                                                    beta_schedule="squaredcos_cap_v2", thresholding=True),
    "epsilon, trained_betas, fixed_large, linspace": dict(
        num_train_timesteps=100, trained_betas=np.linspace(2e-4, 0.05, 100).tolist(),
        variance_type="fixed_large", timestep_spacing="linspace"),
}


@pytest.fixture(scope="module")
def tutorial_net():
    # six levels, several heads at the attention level (64 / 8 = 8 heads of 8)
    return make_unet(tiny(TRAIN_UNCONDITIONAL, size=32, div=8, groups=4))


@pytest.fixture(scope="module")
def tutorial_onnx(tmp_path_factory, tutorial_net):
    """train_unconditional's model and scheduler: import -> export, once (the graph does not
    depend on the schedule, which only travels in the manifest)."""
    d = tmp_path_factory.mktemp("tutorial")
    src = save_pipeline(d / "pipe", tutorial_net, num_train_timesteps=100)
    ckpt = import_diffusers(src, d / "m.pt")
    manifest = export_onnx(d / "m.pt", d / "m.onnx", batch_range=(1, 1, 2))
    return ckpt, manifest, d / "m.onnx"


def test_tutorial_model_exports_diffusers_network(tutorial_onnx):
    ckpt, manifest, _ = tutorial_onnx
    prov = ckpt["provenance"]
    assert prov["network"] == "diffusers.UNet2DModel"  # several heads, cos-first sinusoids: not ours
    assert "attention_head_dim=8" in prov["why_diffusers_network"]
    assert len(prov["source_sha256"]) == 64 and prov["diffusers_version"] == diffusers.__version__
    assert manifest["checks"]["parity"]["max_abs_diff"] < 1e-4
    assert manifest["source"]["model_config"]["family"] == "diffusers.UNet2DModel"
    assert manifest["source"]["provenance"]["source_sha256"] == prov["source_sha256"]
    assert manifest["schedule"] == ckpt["schedule_config"]


def test_validate_one_step_against_the_diffusers_network(tutorial_onnx):
    from ddpm_export.evaluation.validate import one_step
    from ddpm_export.model.checkpoint import load_model
    from ddpm_export.model.external import DiffusersUNet

    _, _, onnx_path = tutorial_onnx
    model, _ = load_model(onnx_path.with_name("m.pt"))  # the reference validate uses
    assert isinstance(model, DiffusersUNet)
    with runtime.load(onnx_path) as engine:
        rows = one_step(engine, model, 100, t_stride=50, batches=(1,))
    assert [r["t"] for r in rows] == [0, 50, 99] and max(r["max_abs"] for r in rows) < 1e-4


@pytest.mark.slow  # ~30 s: a 100-step trajectory through PyTorch and ONNX Runtime
def test_validate_uses_the_diffusers_network_as_reference(tutorial_onnx):
    from ddpm_export.evaluation.validate import validate
    from ddpm_export.model.checkpoint import load_model
    from ddpm_export.model.external import DiffusersUNet

    _, _, onnx_path = tutorial_onnx
    model, _ = load_model(onnx_path.with_name("m.pt"))
    assert isinstance(model, DiffusersUNet)
    rep, _ = validate(str(onnx_path.with_name("m.pt")), [str(onnx_path)], t_stride=50, batches=[1],
                      trajectory_images=1)
    e = rep["engines"][0]
    assert e["passed"] and e["checks"]["eps_max_abs"]["value"] < 1e-4
    assert [r["t"] for r in e["one_step"]] == [0, 50, 99]
    assert e["trajectory"]["final_max_abs"] < 1e-3


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_tutorial_model_samples_equal_ddpmpipeline(tmp_path, tutorial_net, tutorial_onnx, name):
    src = save_pipeline(tmp_path / "pipe", tutorial_net, **SCHEDULES[name])
    ckpt = import_diffusers(src, tmp_path / "m.pt", verify=True, verify_steps=5)
    rep = ckpt["provenance"]["verify"]
    # diffusers' own module, from our file vs from_pretrained: the same arithmetic, but
    # from_pretrained's tensors run other float32 conv kernels (measured 1e-6 .. 2.3e-6)
    assert rep["eps"]["max_abs"] < 1e-5
    assert rep["chain"]["max_abs_01"] < 1e-5
    sched_json = json.loads((src / "scheduler" / "scheduler_config.json").read_text())
    assert ScheduleConfig.from_dict(ckpt["schedule_config"]) == schedule_from_diffusers(sched_json)

    # the exported network (same weights) sampled by the runtime under this schedule
    steps = 8
    want = pipeline_images(tutorial_net, sched_json, steps)
    with runtime.load(tutorial_onnx[2]) as engine:
        got, _ = runtime_chain(engine, ckpt["schedule_config"], (1, *engine.image_shape), steps, seed=0)
    assert np.abs(got - want).max() < 1e-4


def test_non_square_hub_structure(tmp_path):
    """The Hub 256 structure at 32x64: our U-Net is square-only, so diffusers' network is used."""
    net = make_unet(tiny(HUB_256, size=(32, 64), div=16, groups=4))
    src = tmp_path / "unet"
    net.save_pretrained(str(src))
    (src / "scheduler_config.json").write_text(json.dumps({**HUB_256_SCHEDULER, "num_train_timesteps": 50}))
    ckpt = import_diffusers(src, tmp_path / "m.pt", verify=True, verify_steps=4)
    assert ckpt["model_config"]["image_shape"] == [3, 32, 64]
    assert "square" in ckpt["provenance"]["why_diffusers_network"]
    assert ckpt["provenance"]["verify"]["chain"]["max_abs_01"] < 1e-5
    m = export_onnx(tmp_path / "m.pt", tmp_path / "m.onnx", batch_range=(1, 1, 2))
    assert m["image_shape"] == [3, 32, 64] and m["checks"]["parity"]["passed"]
    # the PyTorch reference sampler and the bound take the non-square shape too
    r = _cli("sample", "--checkpoint", tmp_path / "m.pt", "--num", 2, "--batch", 2, "--out", tmp_path / "s.png",
             "--npz", tmp_path / "s.npz", "--no-progress")
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "s.npz") as z:
        assert z["samples"].shape == (2, 3, 32, 64) and np.isfinite(z["samples"]).all()
    from PIL import Image
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)).save(data / f"{i}.png")
    r = _cli("nll", "--engine", tmp_path / "m.onnx", "--checkpoint", tmp_path / "m.pt", "--data", data,
             "--t-samples", 3, "--batch", 2, "--no-progress")
    assert r.exit_code == 0, r.output
    assert "bits/dim" in r.output


def test_hub_structure_square_keeps_our_unet(tmp_path):
    """Where the state_dict maps exactly (the Hub 256 structure), our U-Net stays the network."""
    net = make_unet(tiny(HUB_256, size=32, div=16, groups=4))
    src = tmp_path / "unet"
    net.save_pretrained(str(src))
    (src / "scheduler_config.json").write_text(json.dumps(HUB_256_SCHEDULER))
    ckpt = import_diffusers(src, tmp_path / "m.pt", verify=True, verify_steps=4)
    assert "family" not in ckpt["model_config"]
    assert ckpt["provenance"]["verify"]["eps"]["max_abs"] < 1e-5
    assert ckpt["provenance"]["verify"]["chain"]["max_abs_01"] < 1e-4
    # and the same folder through diffusers' network on request
    ckpt2 = import_diffusers(src, tmp_path / "m2.pt", network="diffusers", verify=True, verify_steps=2)
    assert ckpt2["model_config"]["family"] == "diffusers.UNet2DModel"


# ---------------------------------------------------------------------------
# never guess
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_unet_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("unet")
    make_unet(tiny(TRAIN_UNCONDITIONAL, size=32, div=16, groups=4)).save_pretrained(str(d))
    return d


def test_unet_without_scheduler_is_refused(small_unet_dir, tmp_path):
    with pytest.raises(ValueError) as e:
        import_diffusers(small_unet_dir, tmp_path / "m.pt")
    msg = str(e.value)
    assert "\n" not in msg
    for word in ("no scheduler_config.json", "prediction type", "--scheduler-config",
                 "kind", "prediction", "variance_type"):
        assert word in msg
    assert not (tmp_path / "m.pt").exists()


def test_incomplete_schedule_dict_is_refused(small_unet_dir, tmp_path):
    with pytest.raises(ValueError, match=r"missing \['prediction', 'variance_type'\]"):
        import_diffusers(small_unet_dir, tmp_path / "m.pt", schedule_config={"kind": "linear"})
    ckpt = import_diffusers(small_unet_dir, tmp_path / "m.pt",
                            schedule_config={"kind": "linear", "prediction": "v", "variance_type": "fixedsmall"})
    assert ckpt["schedule_config"]["prediction"] == "v"
    assert ckpt["provenance"]["schedule_source"] == "given"


def test_given_schedule_is_checked_against_the_pipeline(tmp_path):
    net = make_unet(tiny(TRAIN_UNCONDITIONAL, size=32, div=16, groups=4))
    src = save_pipeline(tmp_path / "pipe", net, prediction_type="v_prediction", timestep_spacing="trailing")
    given = ScheduleConfig(variance_type="fixedsmall")  # eps, leading: two disagreements
    with pytest.raises(ValueError) as e:
        import_diffusers(src, tmp_path / "m.pt", schedule_config=given)
    msg = str(e.value)
    assert "\n" not in msg
    assert "prediction: given 'eps', the pipeline has 'v'" in msg
    assert "timestep_spacing: given 'leading', the pipeline has 'trailing'" in msg
    same = schedule_from_diffusers(json.loads((src / "scheduler" / "scheduler_config.json").read_text()))
    ckpt = import_diffusers(src, tmp_path / "m.pt", schedule_config=same)
    assert ckpt["provenance"]["schedule_source"].startswith("given, equal to")


def test_every_scheduler_refusal_in_one_line():
    bad = {"_class_name": "DDPMScheduler", "beta_schedule": "sigmoid", "prediction_type": "flow",
           "variance_type": "learned_range", "timestep_spacing": "karras", "rescale_betas_zero_snr": True,
           "new_option": 3}
    with pytest.raises(ValueError) as e:
        schedule_from_diffusers(bad, source="s.json")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("s.json: this scheduler cannot be expressed")
    for part in ("beta_schedule='sigmoid' (supported: linear, scaled_linear, squaredcos_cap_v2",
                 "prediction_type='flow' (supported: epsilon, sample, v_prediction)",
                 "variance_type='learned_range' (supported: fixed_large",
                 "timestep_spacing='karras' (supported: leading, trailing, linspace)",
                 "rescale_betas_zero_snr=true", "new_option=3"):
        assert part in msg


def test_scheduler_options_carried_over():
    s = schedule_from_diffusers({"_class_name": "DDPMScheduler", "prediction_type": "v_prediction",
                                 "beta_schedule": "squaredcos_cap_v2", "thresholding": True,
                                 "sample_max_value": 2.0, "timestep_spacing": "trailing", "steps_offset": 1,
                                 "clip_sample": False, "variance_type": "fixed_large"})
    assert (s.prediction, s.kind, s.thresholding, s.sample_max_value, s.timestep_spacing, s.steps_offset,
            s.clip_denoised, s.variance_type) == ("v", "squaredcos_cap_v2", True, 2.0, "trailing", 1, False,
                                                  "fixedlarge")
    e = schedule_from_diffusers({"trained_betas": [1e-4, 2e-4, 3e-4], "num_train_timesteps": 3})
    assert e.kind == "explicit" and e.betas == (1e-4, 2e-4, 3e-4) and e.num_timesteps == 3
    # a missing prediction_type / variance_type is what diffusers itself reads for them
    d = schedule_from_diffusers({"_class_name": "DDPMScheduler"})
    assert (d.prediction, d.variance_type, d.timestep_spacing) == ("eps", "fixedsmall", "leading")


def test_every_network_refusal_in_one_line(tmp_path):
    net = make_unet(dict(tiny(TRAIN_UNCONDITIONAL, size=32, div=16, groups=4)))
    src = tmp_path / "unet"
    net.save_pretrained(str(src))
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(out_channels=6, class_embed_type="projection", sample_size=[32, 40], brand_new_setting=1)
    (src / "config.json").write_text(json.dumps(cfg))
    (src / "scheduler_config.json").write_text(json.dumps({**HUB_256_SCHEDULER, "variance_type": "learned_range"}))
    with pytest.raises(ValueError) as e:
        import_diffusers(src, tmp_path / "m.pt")
    msg = str(e.value)
    assert "\n" not in msg and "cannot be deployed" in msg
    for part in ("unknown settings ['brand_new_setting']", "out_channels=6 != in_channels=3",
                 "class_embed_type='projection' with projection_class_embeddings_input_dim=None", "image size [32, 40]",
                 "and " + str(src / "scheduler_config.json") + ": this scheduler cannot be expressed",
                 "variance_type='learned_range'"):
        assert part in msg


# ---------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------

def _cli(*args):
    from click.testing import CliRunner

    from ddpm_export.cli.main import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_import_verifies_by_default_and_prints_the_numbers(tmp_path):
    net = make_unet(tiny(TRAIN_UNCONDITIONAL, size=32, div=16, groups=4))
    src = save_pipeline(tmp_path / "pipe", net, num_train_timesteps=50, prediction_type="v_prediction")
    r = _cli("import", "--format", "diffusers", src, "--out", tmp_path / "m.pt", "--verify-steps", 3)
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert "network diffusers.UNet2DModel" in lines[0] and "prediction v" in lines[0]
    eps_line = next(x for x in lines if x.startswith("verify: output vs diffusers"))
    chain_line = next(x for x in lines if x.startswith("verify: 3-step chain vs diffusers"))
    for t in (0, 12, 25, 37, 49):
        assert f"t={t}: " in eps_line
    assert float(eps_line.split("max abs ")[1].split(" ")[0]) < 1e-5
    assert float(chain_line.split("max abs ")[1].split(" ")[0]) < 1e-5
    r = _cli("import", "--format", "diffusers", src, "--out", tmp_path / "m.pt", "--force", "--no-verify")
    assert r.exit_code == 0 and "verify: skipped (--no-verify)" in r.output
    assert "verify" not in load_checkpoint(tmp_path / "m.pt")["provenance"]


def test_cli_unet_without_scheduler_needs_scheduler_config(tmp_path, small_unet_dir):
    r = _cli("import", "--format", "diffusers", small_unet_dir, "--out", tmp_path / "m.pt")
    assert r.exit_code != 0 and "Traceback" not in r.output
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("error: ") and "--scheduler-config FILE" in line and "prediction type" in line
    DDPMScheduler(prediction_type="sample", num_train_timesteps=50).save_config(str(tmp_path / "s"))
    r = _cli("import", "--format", "diffusers", small_unet_dir, "--out", tmp_path / "m.pt", "--no-verify",
             "--scheduler-config", tmp_path / "s" / "scheduler_config.json")
    assert r.exit_code == 0, r.output
    assert load_checkpoint(tmp_path / "m.pt")["schedule_config"]["prediction"] == "x0"
