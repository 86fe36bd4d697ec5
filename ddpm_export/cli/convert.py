"""``ddpm-export convert-checkpoint``: the click command around
:func:`ddpm_export.model.checkpoint.convert_checkpoint`."""
from __future__ import annotations

from pathlib import Path

import click

from ddpm_export.model.checkpoint import SAFETENSORS_SUFFIX, convert_checkpoint


@click.command("convert-checkpoint", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("src", type=click.Path(dir_okay=False))
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option("--trust-pickle", is_flag=True,
              help="Read SRC with a full unpickle, which RUNS ANY CODE the file carries. Only for a "
              "checkpoint whose origin you trust (e.g. one you trained with an older version) that "
              "the normal, weights-only load refuses.")
@click.option("--weights", type=click.Choice(["ema", "model"]), default="ema", show_default=True,
              help="Which weights a .safetensors DST keeps.")
@click.option("--force", is_flag=True, help="Overwrite DST if it exists.")
def convert_checkpoint_command(src, dst, trust_pickle, weights, force):
    """Rewrite a checkpoint as a file that loads without running code.

    \b
    DST.pt           the whole checkpoint (training state too: 'train --resume' reads it)
    DST.safetensors  the sampling weights with configs and provenance as JSON in its
                     header: the file to share (export, sample and validate read it)

    \b
    Examples:
      ddpm-export convert-checkpoint runs/digits/model.pt digits.safetensors
      ddpm-export convert-checkpoint old/last.pt runs/digits/last.pt --trust-pickle
    The result is loaded back weights-only before this command reports success.
    """
    if Path(dst).exists() and not force:
        raise click.UsageError(f"{dst} exists; pass --force to overwrite it or choose another DST")
    ckpt = convert_checkpoint(src, dst, trust_pickle=trust_pickle, weights=weights)
    kind = ("sampling weights (" + (weights if weights in ckpt else "ema") + ")"
            if Path(dst).suffix == SAFETENSORS_SUFFIX else "full checkpoint")
    click.echo(f"wrote {dst}: {kind}, loads weights-only")
