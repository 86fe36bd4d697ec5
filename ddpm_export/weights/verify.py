"""Check an imported diffusers model against diffusers itself (``import --verify``).

Two comparisons, both from the checkpoint as written (so the file, not an in-memory
copy, is what is checked):

* the network: the checkpoint's model against diffusers' own
  ``UNet2DModel.from_pretrained`` (diffusers' loading, old attention names and all)
  on the same x_t at several t;
* a short chain: ``DDPMPipeline`` (diffusers' DDPMScheduler built from the pipeline's
  scheduler config) against the runtime's DDPM scheduler driven by the imported
  model, both from the same x_T and the same per-step noise (drawn from one torch
  generator in diffusers' order: x_T, then one draw per step with t > 0);
* for a folder whose default is DDIM (a DDIMPipeline's), that default against
  ``DDIMPipeline`` the same way.

A difference beyond the tolerances is a refusal (ValueError, every number in one line),
never a warning: a silently different sampler is the failure this check exists for.

diffusers is needed here only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

from runtime.schedulers import make_scheduler
from runtime.schedulers.schedule import ScheduleConfig

from ddpm_export.model.checkpoint import build_model, load_checkpoint

_INV_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
_INV_VARIANCE = {"fixedlarge": "fixed_large", "fixedsmall": "fixed_small"}


def schedule_to_diffusers(cfg: ScheduleConfig) -> Dict[str, Any]:
    """DDPMScheduler keyword arguments with the same schedule as ``cfg``."""
    d: Dict[str, Any] = dict(
        num_train_timesteps=int(cfg.num_timesteps),
        variance_type=_INV_VARIANCE[cfg.variance_type],
        clip_sample=bool(cfg.clip_denoised),
        clip_sample_range=float(cfg.clip_sample_range),
        prediction_type=_INV_PREDICTION[cfg.prediction],
        thresholding=bool(cfg.thresholding),
        dynamic_thresholding_ratio=float(cfg.dynamic_thresholding_ratio),
        sample_max_value=float(cfg.sample_max_value),
        timestep_spacing=cfg.timestep_spacing,
        steps_offset=int(cfg.steps_offset),
    )
    if cfg.kind == "explicit":
        d["trained_betas"] = list(cfg.betas)
    else:
        d.update(beta_schedule=cfg.kind, beta_start=float(cfg.beta_start), beta_end=float(cfg.beta_end))
    return d


def verify_timesteps(T: int) -> Sequence[int]:
    return sorted({0, T // 4, T // 2, (3 * T) // 4, T - 1})


CHAIN_TOL = 1e-3  # a float32 chain of 10 steps agrees to ~1e-5 when the scheduler maths is the same


def verify_import(checkpoint: Any, unet_dir: Path, schedule: ScheduleConfig,
                  scheduler_json: Optional[Dict[str, Any]], image_shape: Sequence[int],
                  tol: float = 1e-4, steps: int = 10, batch: int = 2, seed: int = 0,
                  chain_tol: float = CHAIN_TOL, sampling: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The report {"eps": {...}, "chain": {...}[, "default_chain": {...}]}.

    Raises ValueError, one line with every number measured, when eps differs from diffusers'
    network by more than ``tol`` or a chain differs from its diffusers pipeline by more than
    ``chain_tol`` on [0, 1] images. ``sampling``: the checkpoint's non-binding default (a
    DDIMPipeline folder's): its DDIM is then also run against ``DDIMPipeline`` at ``steps``
    steps from the same x_T and noise ("default_chain")."""
    try:
        from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    except ImportError as e:
        raise ValueError("verification needs diffusers (pip install diffusers), or skip it "
                         "(--no-verify / verify=False)") from e
    import diffusers

    from ddpm_export.model.conditions import example_conditions, model_conditions

    ckpt = load_checkpoint(checkpoint)
    ours, _, _ = build_model(ckpt, checkpoint)
    theirs = UNet2DModel.from_pretrained(str(unet_dir)).eval()
    conds = model_conditions(ours)  # a class-conditional model: class_labels, checked at fixed labels
    cond = example_conditions(conds, batch, torch.Generator().manual_seed(seed + 1))
    kw = {c.name: v for c, v in zip(conds, cond)}
    c, h, w = (int(v) for v in image_shape)
    theirs.register_to_config(sample_size=[h, w] if h != w else h)
    T = int(schedule.num_timesteps)

    g = torch.Generator().manual_seed(seed)
    rows = []
    with torch.no_grad():
        for t in verify_timesteps(T):
            x = torch.randn(batch, c, h, w, generator=g)
            tt = torch.full((batch,), t, dtype=torch.int32)
            diff = (ours(x, tt, *cond) - theirs(x, tt.long(), **kw).sample).abs().max().item()
            rows.append({"t": int(t), "max_abs": float(diff)})
    eps_max = max(r["max_abs"] for r in rows)
    report: Dict[str, Any] = {
        "reference": f"diffusers {diffusers.__version__} UNet2DModel.from_pretrained",
        "eps": {"batch": batch, "rows": rows, "max_abs": eps_max, "tol": float(tol)},
    }

    sched_cfg = dict(scheduler_json) if scheduler_json is not None else schedule_to_diffusers(schedule)
    scheduler = DDPMScheduler.from_config(sched_cfg)
    n = min(int(steps), T)
    if conds:  # DDPMPipeline takes no labels: its loop, written out, with the first sample's
        cond1 = [v[:1] for v in cond]  # conditions (the same generator draws: x_T, then one per step)
        want = _ddpm_pipeline_loop(theirs, scheduler, (1, c, h, w), n, seed,
                                   {k: v[:1] for k, v in kw.items()})
        got, _ = runtime_chain(torch_fn(ours, cond1), schedule, (1, c, h, w), n, seed)
    else:
        pipe = DDPMPipeline(unet=theirs, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        with torch.no_grad():
            want = pipe(batch_size=1, generator=torch.Generator().manual_seed(seed), num_inference_steps=n,
                        output_type="np").images
        got, _ = runtime_chain(torch_fn(ours), schedule, (1, c, h, w), n, seed)
    report["chain"] = {
        "reference": f"diffusers {diffusers.__version__} DDPMPipeline"
                     + (" loop with class_labels" if conds else "")
                     + f" ({type(scheduler).__name__}.from_config, num_inference_steps={n})",
        "ours": "runtime DDPM scheduler + the imported model (PyTorch float32)",
        "steps": n,
        "timesteps": [int(t) for t in scheduler.timesteps],
        "max_abs_01": float(np.abs(got - want).max()),
        "tol": float(chain_tol),
        "note": "images on [0, 1] as DDPMPipeline returns them (x / 2 + 0.5, clamped)",
    }
    if conds:
        report["conditions"] = {c.name: v.tolist() for c, v in zip(conds, cond)}
    if sampling is not None and sampling.get("method") == "ddim" and not conds:
        report["default_chain"] = _ddim_default_chain(ours, theirs, sched_cfg, schedule, sampling,
                                                      (1, c, h, w), n, seed, chain_tol)
    problems = []
    if not eps_max <= tol:
        worst = max(rows, key=lambda r: r["max_abs"])["t"]
        problems.append(f"the network's output differs from diffusers' by {eps_max:.3g} (> {tol:g}, worst at "
                        f"t={worst}; " + ", ".join(f"t={r['t']}: {r['max_abs']:.2g}" for r in rows) + ")")
    for key, what in (("chain", "DDPM chain vs DDPMPipeline"), ("default_chain", "default DDIM chain vs "
                                                                                  "DDIMPipeline")):
        ch = report.get(key)
        if ch is not None and not ch["max_abs_01"] <= chain_tol:
            problems.append(f"the {ch['steps']}-step {what} from the same noise differs by "
                            f"{ch['max_abs_01']:.3g} on [0, 1] images (> {chain_tol:g})")
    if problems:
        measured = f"eps max abs {eps_max:.3g}, " + ", ".join(
            f"{k} {report[k]['max_abs_01']:.3g}" for k in ("chain", "default_chain") if k in report)
        raise ValueError(
            f"{unet_dir}: --verify failed: {'; '.join(problems)} (measured: {measured}); the runtime does not "
            f"reproduce this diffusers model: please report it (with config.json and scheduler_config.json), "
            f"or pass --no-verify (verify=False) to import it anyway")
    return report


def _ddim_default_chain(ours, theirs, sched_cfg: Dict[str, Any], schedule: ScheduleConfig,
                        sampling: Dict[str, Any], shape: Sequence[int], steps: int, seed: int,
                        chain_tol: float) -> Dict[str, Any]:
    """The runtime's default DDIM (the sampling section's options) against DDIMPipeline with
    DDIMScheduler.from_config, both from one torch generator: x_T, then one draw per step when
    eta > 0 (diffusers' order)."""
    import diffusers
    from diffusers import DDIMPipeline, DDIMScheduler

    opts = dict(sampling.get("options") or {})
    eta = float(opts.get("eta", 0.0))
    pipe = DDIMPipeline(unet=theirs, scheduler=DDIMScheduler.from_config(sched_cfg))
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        want = pipe(batch_size=shape[0], generator=torch.Generator().manual_seed(seed), eta=eta,
                    num_inference_steps=steps, output_type="np").images
    sch = make_scheduler(schedule, "ddim", steps, **opts)
    fn = torch_fn(ours)
    g = torch.Generator().manual_seed(seed)
    shape = tuple(int(v) for v in shape)
    x = torch.randn(shape, generator=g).numpy()
    for t in sch.timesteps:
        out = fn(x.astype(np.float32), np.full((shape[0],), int(t), dtype=np.int32))
        noise = torch.randn(shape, generator=g).numpy() if eta > 0 else None
        x = sch.step(out, int(t), x, noise=noise).prev_sample
    got = np.clip(np.asarray(x, np.float64) / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
    return {
        "reference": f"diffusers {diffusers.__version__} DDIMPipeline (DDIMScheduler.from_config, "
                     f"num_inference_steps={steps}, eta={eta:g})",
        "ours": f"runtime ddim {opts} + the imported model (PyTorch float32)",
        "steps": int(steps),
        "max_abs_01": float(np.abs(got - want).max()),
        "tol": float(chain_tol),
    }


def torch_fn(model, cond=()):
    """model(x_t, t, *cond) as a NumPy function (float32 x_t, int t), for runtime_chain."""
    def fn(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                         torch.from_numpy(np.asarray(t, dtype=np.int32)), *cond).numpy()
    return fn


def _ddpm_pipeline_loop(unet, scheduler, shape, steps: int, seed: int, cond: Dict[str, Any]) -> np.ndarray:
    """What DDPMPipeline.__call__ does (diffusers 0.2x-0.4x), with condition keywords for the
    UNet: x_T from the generator, set_timesteps, then unet(x, t, **cond) and step(generator=)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tuple(shape), generator=g)
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = unet(x, t, **cond).sample
            x = scheduler.step(out, t, x, generator=g).prev_sample
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def runtime_chain(fn, schedule: Any, shape: Sequence[int], steps: int, seed: int):
    """The runtime DDPM scheduler driven by ``fn(x_t, t) -> prediction`` (NumPy in and out),
    with DDPMPipeline's noise: one torch generator seeded ``seed`` draws x_T, then one
    draw per step with t > 0. Returns (images [N, H, W, C] on [0, 1] as DDPMPipeline's
    output_type="np", the float64 [-1, 1] samples [N, C, H, W])."""
    sch = make_scheduler(schedule, "ddpm", steps)
    g = torch.Generator().manual_seed(seed)
    shape = tuple(int(v) for v in shape)
    x = torch.randn(shape, generator=g).numpy()
    for t in sch.timesteps:
        out = fn(x.astype(np.float32), np.full((shape[0],), int(t), dtype=np.int32))
        noise = torch.randn(shape, generator=g).numpy() if t > 0 else np.zeros(shape, np.float32)
        x = sch.step(out, int(t), x, noise=noise).prev_sample
    raw = np.asarray(x, dtype=np.float64)
    img = np.clip(raw / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
    return img, raw
