"""``ddpm-export fid``: the click command around :func:`ddpm_export.evaluation.fidelity.fidelity_metrics`."""
from __future__ import annotations

import sys

import click

from ddpm_export.evaluation.fidelity import (DEFAULT_BATCH_SIZE, DEFAULT_KID_SUBSET_SIZE,
                                             INCEPTION_WEIGHTS_FILE, INCEPTION_WEIGHTS_URL,
                                             FidelityError, fidelity_metrics, format_table)
from runtime.io import write_json


@click.command("fid", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--samples", required=True, type=click.Path(),
              help="Generated images: a .npz (uint8 'images' or 'arr_0' [N,H,W,C], or the float "
              "'samples' of runtime.sample --npz), a folder of PNG/JPEG images, or a folder of "
              "sample shards (run.json + shard-NNNNN.npz).")
@click.option("--reference", default=None, type=click.Path(),
              help="Real images, same forms, or a cifar-10-batches-py folder (its 50,000 training "
              "images). Needed for fid and kid.")
@click.option("--inception-weights", default=None, type=click.Path(dir_okay=False),
              help=f"torch-fidelity's InceptionV3 weights, {INCEPTION_WEIGHTS_FILE} "
              f"(download: {INCEPTION_WEIGHTS_URL}).")
@click.option("--metrics", default="fid,kid,isc", show_default=True,
              help="Comma-separated: fid, kid, isc (Inception Score of the samples).")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False),
              help="Also write the numbers and their provenance to this JSON file.")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE,
              show_default=True, help="Images per Inception forward pass.")
@click.option("--kid-subset-size", type=click.IntRange(min=2), default=DEFAULT_KID_SUBSET_SIZE,
              show_default=True, help="Images per KID subset; both sets need at least this many.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="auto: CUDA when torch sees a GPU.")
@click.option("--feature-extractor", default=None, hidden=True,
              help="A feature extractor registered with torch_fidelity.register_feature_extractor "
              "in this process (tests); the numbers are then not Inception-based.")
@click.option("--quiet", is_flag=True, help="No torch-fidelity progress on stderr.")
def fid_command(samples, reference, inception_weights, metrics, json_out, batch_size,
                kid_subset_size, device, feature_extractor, quiet):
    """FID / KID / IS of generated images through torch-fidelity.

    \b
    CIFAR-10 (the published protocol: 50,000 samples vs the training set):
      ddpm-export fid --samples samples.npz --reference data/cifar-10-batches-py \\
          --inception-weights weights-inception-2015-12-05-6726825d.pth --json fid.json
    \b
    The Inception weights are a local file; get it once on a machine with
    internet access from
      https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth
    torch-fidelity needs a torchvision built for your torch (same index).
    """
    cuda = None if device == "auto" else device == "cuda"
    try:
        r = fidelity_metrics(samples, reference, inception_weights=inception_weights,
                             metrics=metrics, batch_size=batch_size, cuda=cuda,
                             feature_extractor=feature_extractor,
                             kid_subset_size=kid_subset_size, verbose=not quiet)
    except FidelityError as e:
        raise click.ClickException(str(e)) from None
    click.echo(format_table(r))
    if json_out:
        write_json(json_out, dict(r, command=" ".join(["ddpm-export"] + sys.argv[1:])), sort_keys=True, allow_nan=True)
        click.echo(f"wrote {json_out}")
