"""The DDIM-vs-diffusers figures of docs/results.md: the runtime's DDIM chain on the shipped
engines/digits.onnx against diffusers' DDIMScheduler driving the PyTorch model
(engines/digits.pt) from the same x_T, in both clipping conventions (the runtime's
variant="diffusers" against diffusers' default use_clipped_model_output=False, and the
runtime's default variant="consistent" against use_clipped_model_output=True). Prints
the max abs difference of the final images; docs/results.md quotes these prints."""
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime.seeding import ImageStreams

ROOT = Path(__file__).resolve().parents[2]
ENGINES = ROOT / "engines"


def _diffusers_chain(steps: int, x_T: np.ndarray, use_clipped_model_output: bool) -> np.ndarray:
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    from ddpm_export.model.checkpoint import load_model

    model, ckpt = load_model(ENGINES / "digits.pt")
    sc = ckpt["schedule_config"]
    sched = diffusers.DDIMScheduler(num_train_timesteps=sc["num_timesteps"], beta_start=sc["beta_start"],
                                    beta_end=sc["beta_end"], beta_schedule="linear",
                                    clip_sample=sc["clip_denoised"], set_alpha_to_one=True,
                                    timestep_spacing="leading", steps_offset=0)
    sched.set_timesteps(steps)
    x = torch.from_numpy(x_T)
    with torch.no_grad():
        for t in sched.timesteps:
            eps = model(x, torch.full((x.shape[0],), int(t), dtype=torch.long))
            x = sched.step(eps, t, x, eta=0.0,
                           use_clipped_model_output=use_clipped_model_output).prev_sample
    return x.numpy()


def _compare(steps: int, variant: str, n: int = 4, seed: int = 0) -> float:
    with runtime.load(ENGINES / "digits.onnx", threads=1) as engine:
        ours = engine.sample_float(n, seed=seed, method="ddim", steps=steps, variant=variant).images
    x_T = ImageStreams(seed, 0, n).standard_normal((n, 1, 16, 16))  # the runtime's x_T
    theirs = _diffusers_chain(steps, x_T, use_clipped_model_output=variant == "consistent")
    diff = float(np.abs(ours - theirs).max())
    print(f"\nDDIM eta 0 ({variant}), {steps} steps, {n} images, seed {seed}: runtime (ONNX Runtime fp32) vs "
          f"diffusers DDIMScheduler + PyTorch model: max abs difference {diff:.1e}")
    return diff


@pytest.mark.parametrize("variant", ["diffusers", "consistent"])
def test_runtime_ddim_equals_diffusers_driving_the_pytorch_model_100_steps(variant):
    # float32 engine vs float32 PyTorch and diffusers' float32 schedule: rounding only
    assert _compare(100, variant) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["diffusers", "consistent"])
def test_runtime_ddim_equals_diffusers_driving_the_pytorch_model_1000_steps(variant):
    assert _compare(1000, variant) < 1e-3
