"""``ddpm-export sample-many``: N samples (e.g. 50,000 for FID) into resumable shards.

The same as ``python -m runtime.sample_many`` (runtime/shards.py does the work).
"""
from __future__ import annotations

import sys

import click

from ddpm_export.cli.options import allow_host_code_option
from runtime.schedulers import METHODS
from runtime.shards import DEFAULT_SHARD_SIZE, INTERRUPTED


@click.command("sample-many", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--engine", required=True, type=click.Path(dir_okay=False),
              help="NAME.onnx or NAME.plan (its NAME.json beside it).")
@click.option("--num", type=click.IntRange(min=1), required=True, help="Number of images, e.g. 50000.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder (created if missing): run.json + shard-NNNNN.npz.")
@click.option("--shard-size", type=click.IntRange(min=1), default=DEFAULT_SHARD_SIZE, show_default=True,
              help="Images per shard file: the most an interruption loses.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Run seed: image i draws its noise from SeedSequence(seed, spawn_key=(i,)), "
              "so the shards hold the images of one single run.")
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="Images per engine call. Default: min(shard size, the engine's max batch). "
              "Changes the speed, not the images, so a resumed run may use another.")
@click.option("--method", default=None,
              help=f"One of {', '.join(METHODS)}. Default: the engine manifest's sampling method (a distilled "
              "student's), else ddpm.")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Sampling steps = engine calls per image. Default: all T for ddpm, 50 for ddim, "
              "20 for the solvers.")
@click.option("--eta", type=float, default=None, help="ddim only: eta in [0, 1] (default 0: deterministic).")
@click.option("--spacing", default=None, help="Timesteps: ddim uniform|quadratic (default uniform); "
              "solvers linspace|leading|trailing (default linspace).")
@click.option("--order", type=int, default=None,
              help="Solver order: dpmsolver++ and unipc 1-3, sde-dpmsolver++ 1-2 (default 2).")
@click.option("--variant", default=None, help="ddim: consistent (default) | diffusers; unipc: bh1 | bh2 (default).")
@click.option("--no-corrector", "corrector", flag_value=False, default=None, help="unipc: no UniC corrector.")
@click.option("--no-lower-order-final", "lower_order_final", flag_value=False, default=None,
              help="Solvers: keep the full order on the last steps of short chains.")
@click.option("--karras", flag_value=True, default=None, help="Solvers: Karras sigma spacing.")
@click.option("--clip/--no-clip", default=None, help="Clamp x0_hat to [-1, 1] (default: the model's setting).")
@click.option("--threshold-ratio", type=float, default=None,
              help="Solvers: dynamic thresholding quantile (needs clipping).")
@click.option("--threshold-max", type=float, default=None,
              help="Solvers: dynamic thresholding's largest s, >= 1 (needs clipping).")
@click.option("--label", default=None,
              help="Class label(s) of a class-conditional engine: one for every sample, or a comma-separated "
              "list cycled over the whole run's sample indices (sample i gets list[i % len]), so each shard "
              "holds its own samples' labels.")
@click.option("--cond", "cond_files", multiple=True, metavar="NAME=FILE.npy",
              help="A condition input from a .npy file: the per-sample shape (one value for every sample) or "
              "[num, ...] (one row per sample of the whole run). Repeatable.")
@click.option("--guidance", type=float, default=None,
              help="Classifier-free guidance scale w (1 = the conditional model alone; default: the "
              "engine manifest's). Recorded in run.json and every shard: a resume must match it.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads.")
@click.option("--npz", default=None, type=click.Path(dir_okay=False),
              help="When all shards are done, also write every image to this one .npz "
              "(key arr_0, uint8 [N, H, W, C], as OpenAI's guided-diffusion evaluator reads; an array "
              "engine's float32 [N, ...]; a conditional run's conditions under their input names).")
@click.option("--no-progress", is_flag=True, help="No progress bar: one line per shard instead.")
@allow_host_code_option
def sample_many_command(engine, num, out, shard_size, seed, batch, method, steps, threads, npz,
                        no_progress, allow_host_code, label, cond_files, guidance, **options):
    """Sample N images from an engine into resumable shards (for FID on 50k).

    \b
    Writes OUT/shard-NNNNN.npz (uint8 [n, H, W, C] under 'images'), each
    atomically, and OUT/run.json (the configuration). Interrupt it at any time:
    the same command run again skips finished shards and gives identical
    images. A different configuration in OUT is refused.
    \b
      ddpm-export sample-many --engine engines/cifar10.onnx --num 50000 --out samples/c10
    Read the result: runtime.shards.load_shards("samples/c10") -> uint8 [50000, 32, 32, 3]

    A conditional engine takes --label or --cond and --guidance (recorded per
    shard; a resume with others is refused); an array engine's shards hold
    float32 'samples'.
    """
    import argparse

    from runtime.api import load
    from runtime.cli_args import condition_values
    from runtime.sample_many import merged_text
    from runtime.shards import sample_shards, write_merged

    try:
        with load(engine, threads=threads, allow_host_code=allow_host_code) as e:
            cond = condition_values(argparse.Namespace(label=label, cond=list(cond_files)), e.conditions, num,
                                    whole_run=True)
            sample_shards(e, out, num, shard_size=shard_size, seed=seed, batch=batch, method=method,
                          steps=steps, progress=not no_progress, log=click.echo, cond=cond, guidance=guidance,
                          **{k: v for k, v in options.items() if v is not None})
            kind, names = e.sample_kind, [c.name for c in e.conditions]
        if npz:
            n = write_merged(out, npz)
            click.echo(f"wrote {npz}: {merged_text(n, kind, names)}")
    except KeyboardInterrupt:
        click.echo(INTERRUPTED, err=True)
        sys.exit(130)
    except (ValueError, OSError, ImportError) as e:  # ShardsError, ManifestError: ValueErrors
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise click.ClickException(msg) from None
