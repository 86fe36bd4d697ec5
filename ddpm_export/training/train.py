"""Training: Adam + linear warmup, global-norm clipping, EMA, atomic checkpoints,
exact resume, and DistributedDataParallel under ``torchrun``.

Data order is global: one ``torch.Generator`` seeded identically on every rank
draws the whole batch (indices, flips, t, noise) and each rank trains on its
slice. So N ranks of batch B/N follow the same trajectory as one process of
batch B (up to float summation order), and resume restores that generator.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
from torch import nn

from runtime.io import FolderLocked, folder_lock, remove_stale_temporaries, save_grid

from ddpm_export.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, slim
from ddpm_export.model.config import PRESETS, get_preset
from ddpm_export.training.data import load_labelled_images
from ddpm_export.model.diffusion import GaussianDiffusion
from ddpm_export.model.unet import UNet, count_parameters


@dataclass
class TrainConfig:
    preset: str = "digits"  # model + schedule + defaults (ddpm_export.model.config.PRESETS)
    out: str = "runs/digits"  # run folder: last.pt, model.pt, metrics.jsonl, samples/
    data: Optional[str] = None  # None: the preset's own data; else a folder
    steps: Optional[int] = None  # total optimizer steps (None: preset default)
    batch_size: int = 128  # global batch, split across ranks
    lr: float = 2e-4  # Adam learning rate after warmup
    warmup: Optional[int] = None  # linear warmup steps (None: preset default)
    grad_clip: float = 1.0  # global-norm gradient clip
    ema_decay: float = 0.9999  # EMA decay, warmed up as min(decay, (1+s)/(10+s))
    seed: int = 0
    sample_every: Optional[int] = None  # steps between sample grids (0: never)
    ckpt_every: Optional[int] = None  # steps between checkpoints
    log_every: int = 10  # steps between metrics lines
    num_samples: int = 16  # images in each periodic grid
    dropout: Optional[float] = None  # override the preset's dropout (None: preset's)
    # class-conditional presets: probability that a training label becomes the null label
    # (classifier-free guidance's p_uncond; None: the preset's, 0.1). 0 for unconditional ones.
    label_dropout: Optional[float] = None
    device: str = "auto"  # auto | cpu | cuda
    resume: bool = False  # continue from out/last.pt

    def resolved(self) -> "TrainConfig":
        p = get_preset(self.preset)
        c = copy.copy(self)
        c.steps = p.steps if c.steps is None else c.steps
        c.warmup = p.warmup if c.warmup is None else c.warmup
        c.sample_every = p.sample_every if c.sample_every is None else c.sample_every
        c.ckpt_every = p.ckpt_every if c.ckpt_every is None else c.ckpt_every
        if c.batch_size < 1 or c.steps < 0 or c.lr <= 0:
            raise ValueError(
                f"need batch_size >= 1, steps >= 0, lr > 0; got {c.batch_size}, {c.steps}, {c.lr}"
            )
        if p.unet.num_classes == 0:
            if c.label_dropout:
                raise ValueError(
                    f"label_dropout {c.label_dropout} is for class-conditional presets; preset "
                    f"{c.preset!r} is unconditional (num_classes=0): drop it, or pick a conditional "
                    f"preset ({', '.join(n for n, q in sorted(PRESETS.items()) if q.unet.num_classes)})"
                )
            c.label_dropout = 0.0
        else:
            c.label_dropout = p.label_dropout if c.label_dropout is None else float(c.label_dropout)
            if not 0.0 <= c.label_dropout < 1.0:
                raise ValueError(
                    f"label_dropout must be in [0, 1) (the share of labels trained as the null "
                    f"label; 0.1 in Ho & Salimans 2021), got {c.label_dropout}"
                )
        return c


def drop_labels(labels: torch.Tensor, p: float, null_label: int, gen: torch.Generator) -> torch.Tensor:
    """labels with each one replaced by null_label with probability p, drawn from gen (the
    training's data generator, so --resume continues the same draws). Always draws len(labels)
    numbers, also for p = 0, so the data order does not depend on p."""
    drop = torch.rand(labels.shape[0], generator=gen) < p
    return torch.where(drop, torch.full_like(labels, null_label), labels)


class TrainError(RuntimeError):
    pass


def _dist_info():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(decay).add_(p.detach(), alpha=1.0 - decay)


LOCK_FILE = ".train.lock"  # in the run folder; held (flock) by the writing rank


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train(cfg: TrainConfig, progress: bool = True,
          log: Callable[[str], None] = _stderr) -> Dict[str, Any]:
    """Run (or resume) training; returns a summary dict. Raises on bad input.

    The writing rank holds a lock on the run folder for the whole run, so a
    second training started on the same folder refuses (TrainError) instead of
    both writing; the lock dies with its process, so a killed run leaves none.
    On start it removes the temporaries of checkpoint/grid writes that a killed
    run left (``runtime.io.remove_stale_temporaries``) and says so through ``log``.
    """
    cfg = cfg.resolved()
    _, rank, _ = _dist_info()
    if rank != 0:
        return _train(cfg, progress)
    out = Path(cfg.out)
    try:
        with folder_lock(out, "another training", LOCK_FILE):
            removed = remove_stale_temporaries(out) + remove_stale_temporaries(out / "samples")
            if removed:
                mb = sum(size for _, size in removed) / 1e6
                log(f"removed {len(removed)} temporary file(s) ({mb:.1f} MB) that a killed run "
                    f"left in {out}: {', '.join(p.name for p, _ in removed)}")
            return _train(cfg, progress)
    except FolderLocked as e:
        raise TrainError(str(e)) from None


def _train(cfg: TrainConfig, progress: bool) -> Dict[str, Any]:
    cfg = cfg.resolved()
    preset = get_preset(cfg.preset)
    world, rank, local_rank = _dist_info()
    distributed = world > 1
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device(f"cuda:{local_rank}")  # one GPU per torchrun rank
    if distributed:
        import torch.distributed as dist

        if cfg.batch_size % world:
            raise ValueError(f"batch_size {cfg.batch_size} is not divisible by WORLD_SIZE {world}")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    is_main = rank == 0
    out = Path(cfg.out)
    last = out / "last.pt"
    if last.exists() and not cfg.resume:
        raise TrainError(
            f"{last} already exists; pass --resume to continue it, or choose another --out "
            f"(nothing was overwritten)"
        )
    if cfg.resume and not last.exists():
        raise TrainError(f"--resume: no checkpoint at {last}; start without --resume")
    # read (weights-only) before the data and the model: a refused or damaged file fails in seconds
    ckpt = load_checkpoint(last) if cfg.resume else None

    unet_cfg = preset.unet
    if cfg.dropout is not None:
        unet_cfg = dataclasses.replace(unet_cfg, dropout=cfg.dropout)
    x_np, y_np = load_labelled_images(preset.data, cfg.data, unet_cfg.image_size,
                                      unet_cfg.in_channels, unet_cfg.num_classes)
    images = torch.from_numpy(x_np)
    labels = None if y_np is None else torch.from_numpy(y_np)
    diffusion = GaussianDiffusion(preset.schedule)
    torch.manual_seed(cfg.seed)  # weight init: the same on every rank
    model = UNet(unet_cfg).to(device)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=1e-8)
    gen = torch.Generator().manual_seed(cfg.seed)  # global data order, same on every rank
    torch.manual_seed(cfg.seed + 1000 * rank)  # dropout, per rank
    step = 0
    train_seconds = 0.0

    if ckpt is not None:
        if ckpt.get("model_config") != unet_cfg.to_dict():
            raise CheckpointError(
                f"{last}: made for model {ckpt.get('model_config')}, not for preset "
                f"{cfg.preset!r} with dropout {unet_cfg.dropout}; resume with the options it was started with"
            )
        old = ckpt.get("train_config", {})
        changed = [
            f"{k} {old[k]!r} -> {getattr(cfg, k)!r}"
            for k in ("batch_size", "lr", "warmup", "grad_clip", "ema_decay", "seed", "data",
                      "label_dropout")
            if k in old and old[k] != getattr(cfg, k)
        ]
        if changed:
            raise TrainError(
                f"{last}: resuming with other training options ({'; '.join(changed)}) would not "
                f"continue the same run; pass the options it was started with"
            )
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        step = int(ckpt["step"])
        gen.set_state(ckpt["rng"]["data"])
        states = ckpt["rng"]["torch"]
        if len(states) != world:
            raise TrainError(
                f"{last} was written by {len(states)} process(es), this run has {world}; "
                f"resume with the same number of processes to continue exactly"
            )
        state = states[rank]
        if isinstance(state, tuple):
            torch.set_rng_state(state[0])
            if device.type == "cuda":
                torch.cuda.set_rng_state(state[1], device)
        else:
            torch.set_rng_state(state)
        train_seconds = float(ckpt.get("train_state", {}).get("seconds", 0.0))
        ckpt = None  # the loaded copies of the weights and Adam state are no longer needed

    net: nn.Module = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    n_params = count_parameters(model)
    provenance = {
        "command": " ".join(["ddpm-export"] + sys.argv[1:]) if sys.argv else "",
        "argv": list(sys.argv),
        "seed": cfg.seed,
        "preset": cfg.preset,
        "data": cfg.data or preset.data,
        "torch": str(torch.__version__),  # a plain str: checkpoints hold only plain types
        "world_size": world,
    }

    def gather_rng():
        state = torch.get_rng_state()
        if device.type == "cuda":  # dropout on the GPU draws from the CUDA generator
            state = (state, torch.cuda.get_rng_state(device))
        if not distributed:
            return [state]
        import torch.distributed as dist

        states = [None] * world
        dist.all_gather_object(states, state)
        return states

    def checkpoint(final: bool = False) -> None:
        rng_states = gather_rng()
        if not is_main:
            return
        ckpt = {
            "model_config": unet_cfg.to_dict(),
            "schedule_config": preset.schedule.to_dict(),
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "rng": {"data": gen.get_state(), "torch": rng_states},
            "train_config": asdict(cfg),
            "train_state": {"seconds": train_seconds, "parameters": n_params},
            "provenance": provenance,
        }
        save_checkpoint(ckpt, last)
        if final:
            save_checkpoint(slim(ckpt), out / "model.pt")

    def sample_grid() -> None:
        if not is_main or cfg.num_samples <= 0:
            return
        g = torch.Generator().manual_seed(cfg.seed)
        shape = (cfg.num_samples, unet_cfg.in_channels, unet_cfg.image_size, unet_cfg.image_size)
        grid_labels = None  # conditional: the classes in turn, 0, 1, .., K-1, 0, ..
        if unet_cfg.num_classes:
            grid_labels = torch.arange(cfg.num_samples) % unet_cfg.num_classes
        x, _ = diffusion.sample(ema, shape, generator=g, device=device, class_labels=grid_labels)
        save_grid(x.numpy(), out / "samples" / f"step{step:07d}.png", scale=2)

    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    log = open(out / "metrics.jsonl", "a") if is_main else None
    local_bs = cfg.batch_size // world
    n_img = images.shape[0]
    bar = None
    if progress and is_main:
        from runtime.progress import progress_bar

        bar = progress_bar(total=cfg.steps, initial=step, desc=f"train {cfg.preset}", unit="step")
    t_last, s_last = time.time(), step
    loss_acc, loss_n = 0.0, 0
    net.train()
    try:
        while step < cfg.steps:
            t0 = time.time()
            B = cfg.batch_size
            idx = torch.randint(n_img, (B,), generator=gen)
            flip = torch.rand(B, generator=gen) < 0.5
            t = torch.randint(diffusion.num_timesteps, (B,), generator=gen)
            noise = torch.randn((B,) + tuple(images.shape[1:]), generator=gen)
            y_b = None
            if labels is not None:  # drawn after the rest: an unconditional run draws as before
                y = drop_labels(labels[idx], cfg.label_dropout, unet_cfg.null_label, gen)
                y_b = y[rank * local_bs:(rank + 1) * local_bs].to(device)
            sl = slice(rank * local_bs, (rank + 1) * local_bs)
            x0 = images[idx[sl]]
            if preset.hflip:
                x0 = torch.where(flip[sl, None, None, None], x0.flip(3), x0)
            x0, t_b, noise_b = x0.to(device), t[sl].to(device), noise[sl].to(device)

            lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
            for g_ in opt.param_groups:
                g_["lr"] = lr
            loss = diffusion.loss(net, x0, t_b, noise_b, class_labels=y_b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            decay = min(cfg.ema_decay, (1.0 + step) / (10.0 + step))
            ema_update(ema, model, decay)
            step += 1
            train_seconds += time.time() - t0
            lv = float(loss.detach())
            if not np.isfinite(lv):
                raise TrainError(
                    f"loss became {lv} at step {step}; lower --lr or check the data "
                    f"(last good checkpoint: {last if last.exists() else 'none'})"
                )
            loss_acc += lv
            loss_n += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{lv:.4f}")
            if is_main and (step % cfg.log_every == 0 or step == cfg.steps):
                now = time.time()
                rec = {
                    "step": step,
                    "loss": loss_acc / loss_n,
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "ema_decay": decay,
                    "steps_per_s": (step - s_last) / max(now - t_last, 1e-9),
                    "train_seconds": train_seconds,
                }
                log.write(json.dumps(rec) + "\n")
                log.flush()
                t_last, s_last, loss_acc, loss_n = now, step, 0.0, 0
            if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step != cfg.steps:
                checkpoint()
            if cfg.sample_every and step % cfg.sample_every == 0 and step != cfg.steps:
                sample_grid()
        checkpoint(final=True)
        if cfg.sample_every:
            sample_grid()
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
        if distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    return {
        "step": step,
        "parameters": n_params,
        "train_seconds": train_seconds,
        "checkpoint": str(last),
        "model": str(out / "model.pt"),
    }
