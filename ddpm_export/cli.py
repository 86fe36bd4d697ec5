"""The ``ddpm-export`` command line (click).

Library code raises; this module turns any error into one line on stderr and a
non-zero exit. Set DDPM_EXPORT_DEBUG=1 to see the traceback instead.
"""
from __future__ import annotations

import os
import sys

import click

from .config import PRESETS


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted; the last checkpoint written is intact", err=True)
            sys.exit(130)
        except Exception as e:  # one clear line, no traceback
            if os.environ.get("DDPM_EXPORT_DEBUG"):
                raise
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            click.echo(f"error: {msg}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ddpm-export")
def main():
    """DDPM from PyTorch training to ONNX and FP16 TensorRT engines.

    \b
    Typical flow:
      ddpm-export train --preset digits --out runs/digits
      ddpm-export sample --checkpoint runs/digits/model.pt --out samples.png
    """


@main.command()
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="digits", show_default=True,
              help="Model shape, schedule and training defaults (cifar10 = the paper's 35.7M model).")
@click.option("--data", default=None, help="cifar-10-batches-py folder or a folder of PNG/JPEG "
              "images. Default: the preset's own data (digits: sklearn, no download).")
@click.option("--out", default=None, help="Run folder for last.pt, model.pt, metrics.jsonl and "
              "samples/. Default: runs/PRESET.")
@click.option("--steps", type=int, default=None, help="Total optimizer steps. Default: the preset's "
              "(digits 3000, cifar10 800000).")
@click.option("--batch-size", type=int, default=128, show_default=True, help="Global batch (split across torchrun ranks).")
@click.option("--lr", type=float, default=2e-4, show_default=True, help="Adam learning rate after warmup.")
@click.option("--warmup", type=int, default=None, help="Linear LR warmup steps. Default: the preset's (digits 200, cifar10 5000).")
@click.option("--grad-clip", type=float, default=1.0, show_default=True, help="Global-norm gradient clip.")
@click.option("--ema-decay", type=float, default=0.9999, show_default=True, help="EMA decay (warmed up as min(decay, (1+s)/(10+s))); export uses the EMA weights.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--sample-every", type=int, default=None, help="Steps between sample grids (0: never).")
@click.option("--ckpt-every", type=int, default=None, help="Steps between checkpoints.")
@click.option("--log-every", type=int, default=10, show_default=True, help="Steps between metrics.jsonl lines.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--resume", is_flag=True, help="Continue exactly from OUT/last.pt.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def train(preset, data, out, steps, batch_size, lr, warmup, grad_clip, ema_decay, seed,
          sample_every, ckpt_every, log_every, device, resume, no_progress):
    """Train a DDPM (Adam, warmup, grad clip, EMA).

    Multi-GPU / multi-node: run under torchrun, e.g.
    torchrun --nproc_per_node 8 -m ddpm_export.cli train --preset cifar10 --data DIR
    """
    from .train import TrainConfig, train as run_train

    cfg = TrainConfig(preset=preset, out=out or f"runs/{preset}", data=data, steps=steps,
                      batch_size=batch_size, lr=lr, warmup=warmup, grad_clip=grad_clip,
                      ema_decay=ema_decay, seed=seed, sample_every=sample_every,
                      ckpt_every=ckpt_every, log_every=log_every, device=device, resume=resume)
    summary = run_train(cfg, progress=not no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(
            f"trained {summary['step']} steps ({summary['parameters']:,} parameters) in "
            f"{summary['train_seconds'] / 60:.1f} min; checkpoint {summary['checkpoint']}, "
            f"sampling weights {summary['model']}"
        )


if __name__ == "__main__":
    main()
