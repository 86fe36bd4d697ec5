"""How a folder saved as a diffusers DDIMPipeline deploys: the numbers of issue 25, item 0.

    python scripts/ddim_folder_check.py [--tmp DIR] [--seed 0]

Builds a DDIMPipeline folder (the shipped digits model as a diffusers UNet2DModel, a
DDIMScheduler saved beside it, set_alpha_to_one false and true), imports it with
``import_diffusers``, exports it to ONNX and samples it with the runtime, then prints
max abs differences on [0, 1] images (x / 2 + 0.5, clamped, as the pipelines return
them):

* ddpm N: the runtime's DDPM at N steps against ``DDPMPipeline`` with
  ``DDPMScheduler.from_config(the folder's scheduler config)``, from the same noise
  (what diffusers gives that folder for DDPM; its variance is the point);
* default: the runtime's no-flag sampling (``engine.sample_float(1, seed)``, what
  ``python -m runtime.sample`` does) against ``DDIMPipeline()`` with its defaults
  (50 steps, eta 0), from the same x_T;
* ddim diffusers-variant 50: the runtime's ``method="ddim", variant="diffusers"``
  (diffusers' DDIMScheduler.step) at 50 steps against DDIMPipeline, same x_T.

Needs torch, diffusers and onnxruntime; about a minute on two CPU cores.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def make_folder(path: Path, set_alpha_to_one: bool) -> Path:
    """engines/digits.pt (trained with the DDPM loss, linear betas, T = 1000) as diffusers'
    UNet2DModel, saved as a DDIMPipeline folder. A trained network, not a random one: a
    random U-Net's deterministic 50-step DDIM chain amplifies float32 rounding (1e-6 in x_T
    gives 0.4 at the end), which would hide what the schedulers do."""
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    from ddpm_export.model.checkpoint import load_checkpoint
    from ddpm_export.model.config import UNetConfig
    from ddpm_export.weights import config_to_diffusers, ours_to_diffusers

    ckpt = load_checkpoint(ROOT / "engines" / "digits.pt")
    cfg = UNetConfig.from_dict(ckpt["model_config"])
    net = UNet2DModel(**config_to_diffusers(cfg)).eval()
    net.load_state_dict(ours_to_diffusers(ckpt["ema"], len(cfg.ch_mult)))
    sc = ckpt["schedule_config"]
    sched = DDIMScheduler(num_train_timesteps=sc["num_timesteps"], beta_start=sc["beta_start"],
                          beta_end=sc["beta_end"], set_alpha_to_one=set_alpha_to_one)
    DDIMPipeline(unet=net, scheduler=sched).save_pretrained(str(path))
    return path


def to01(x: np.ndarray) -> np.ndarray:
    """[N, C, H, W] on [-1, 1] -> [N, H, W, C] on [0, 1], as DDPMPipeline/DDIMPipeline output_type="np"."""
    return np.clip(np.asarray(x, np.float64) / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)


def ddim_pipeline_images(folder: Path, x_T: np.ndarray, **kw) -> np.ndarray:
    """DDIMPipeline.from_pretrained(folder)(**kw) started from x_T (its only draw when eta = 0)."""
    from diffusers import DDIMPipeline
    import diffusers.pipelines.ddim.pipeline_ddim as pipeline_ddim

    pipe = DDIMPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad(), mock.patch.object(pipeline_ddim, "randn_tensor",
                                            lambda *a, **k: torch.from_numpy(x_T.copy())):
        return pipe(batch_size=x_T.shape[0], output_type="np", **kw).images


def ddpm_pipeline_images(folder: Path, steps: int, seed: int) -> np.ndarray:
    """DDPMPipeline with DDPMScheduler.from_config(the folder's scheduler config)."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(str(folder / "unet")).eval()
    sched = DDPMScheduler.from_config(DDPMScheduler.load_config(str(folder / "scheduler")))
    pipe = DDPMPipeline(unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        return pipe(batch_size=1, generator=torch.Generator().manual_seed(seed), num_inference_steps=steps,
                    output_type="np").images


def measure(tmp: Path, set_alpha_to_one: bool, seed: int, ddpm_steps=(10, 1000)) -> dict:
    import runtime
    from runtime.seeding import ImageStreams
    from ddpm_export.export.onnx_export import export_onnx
    from ddpm_export.weights import import_diffusers
    from ddpm_export.weights.verify import runtime_chain

    folder = make_folder(tmp / f"ddim-sat{int(set_alpha_to_one)}", set_alpha_to_one)
    ckpt = import_diffusers(folder, tmp / f"m{int(set_alpha_to_one)}.pt")
    onnx = tmp / f"m{int(set_alpha_to_one)}.onnx"
    export_onnx(tmp / f"m{int(set_alpha_to_one)}.pt", onnx, batch_range=(1, 1, 2))
    out = {"schedule": ckpt["schedule_config"], "sampling": ckpt.get("sampling")}
    with runtime.load(onnx) as engine:
        c, h, w = engine.image_shape
        for n in ddpm_steps:
            got, _ = runtime_chain(engine, engine.manifest["schedule"], (1, c, h, w), n, seed)
            out[f"ddpm {n}"] = float(np.abs(got - ddpm_pipeline_images(folder, n, seed)).max())
        x_T = ImageStreams(seed, 0, 1).standard_normal((1, c, h, w), np.float32)
        want = ddim_pipeline_images(folder, x_T)
        out["default"] = float(np.abs(to01(engine.sample_float(1, seed=seed).images) - want).max())
        ddim = engine.sample_float(1, seed=seed, method="ddim", steps=50, variant="diffusers", eta=0.0).images
        out["ddim diffusers-variant 50"] = float(np.abs(to01(ddim) - want).max())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tmp", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ddpm-steps", type=int, nargs="*", default=[10, 1000], help="DDPM chains to compare")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(a.tmp or d)
        tmp.mkdir(parents=True, exist_ok=True)
        for sat in (False, True):
            r = measure(tmp, sat, a.seed, a.ddpm_steps)
            s = r.pop("schedule")
            print(f"set_alpha_to_one={sat}: imported variance_type={s['variance_type']}, "
                  f"set_alpha_to_one={s.get('set_alpha_to_one', '<absent>')}, sampling={r.pop('sampling')}")
            for k, v in r.items():
                print(f"  {k:28s} max abs {v:.3g} on [0, 1] images")


if __name__ == "__main__":
    main()
