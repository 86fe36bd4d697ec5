"""``ddpm-export build``: the click command around :func:`ddpm_export.export.tensorrt.build_engine`."""
from __future__ import annotations

import sys

import click

from ddpm_export.export import ExportError
from ddpm_export.export.tensorrt import BuildConfig, BuildError, build_engine
from runtime.backends.tensorrt import BackendMissing, EngineMismatch, NoCudaDevice, PlanNotLoadable
from runtime.contract import DEFAULT_BATCH_RANGE, ManifestError


def _user_errors() -> tuple:
    """The errors that get one line instead of a traceback. CheckpointError lives with torch,
    imported only when a checkpoint was read: if it is not loaded, it cannot have been raised."""
    errors = (BuildError, BackendMissing, NoCudaDevice, ManifestError, EngineMismatch, PlanNotLoadable,
              ExportError)
    ckpt = sys.modules.get("ddpm_export.model.checkpoint")
    return errors + ((ckpt.CheckpointError,) if ckpt is not None else ())


@click.command("build", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--onnx", default=None, type=click.Path(dir_okay=False),
              help="The export to build (NAME.onnx with its NAME.json; a policy's also "
              "NAME-encoder.onnx, built to NAME-encoder.plan). Without it, --checkpoint "
              "is exported first (FP16 graph for TensorRT >= 10 with --fp16, else float32); "
              "with neither, the default export: engines/cifar10(-fp16).onnx (or "
              "engines/cifar10.pt) when present, else the shipped engines/digits.onnx.")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False),
              help="A .pt from 'ddpm-export train' or 'import'; exported to "
              "engines/NAME(-fp16).onnx unless that export already exists.")
@click.option("--out", default=None, help="NAME.plan to write; its manifest goes to NAME.json. "
              "Default: the ONNX's name with .plan (the two share NAME.json).")
@click.option("--fp16", is_flag=True, help="FP16 engine: the FP16 builder flag on TensorRT "
              "8.5-10 with a float32 export; a strongly typed build of the FP16 export on "
              "TensorRT >= 10 (required on 11, which has no FP16 flag).")
@click.option("--min-batch", type=click.IntRange(min=1), default=None,
              help=f"Profile min batch. Default: the export's ({DEFAULT_BATCH_RANGE.min} unless exported "
              f"otherwise).")
@click.option("--opt-batch", type=click.IntRange(min=1), default=None,
              help=f"Batch the kernels are tuned for. Default: the export's ({DEFAULT_BATCH_RANGE.opt}).")
@click.option("--max-batch", type=click.IntRange(min=1), default=None,
              help=f"Profile max batch. Default: the export's ({DEFAULT_BATCH_RANGE.max}: fills a desktop "
              f"GPU at 32x32 and keeps an Orin Nano's shared 8 GB comfortable).")
@click.option("--static-batch", type=click.IntRange(min=1), default=None,
              help="One batch size N (min = opt = max = N): fixed shapes; smaller batches are "
              "padded.")
@click.option("--timing-cache", default=None, type=click.Path(dir_okay=False),
              help="Tactic timing cache: read if present, updated after the build (speeds up "
              "rebuilds; use one per GPU model).")
@click.option("--builder-opt-level", type=click.IntRange(0, 5), default=None,
              help="0-5; default TensorRT's (3). Lower builds faster (useful on a Jetson), "
              "higher searches longer. TensorRT >= 8.6.")
@click.option("--version-compatible", is_flag=True,
              help="Plan runs on later TensorRT versions in NVIDIA's documented range, through the "
              "full tensorrt module or the dispatch runtime (tensorrt-dispatch wheels); the lean "
              "runtime runs it only at the version that built it. Embeds host code (load with "
              "--allow-host-code); may be slower. TensorRT >= 8.6.")
@click.option("--workspace", "workspace_mb", type=click.IntRange(min=1), default=None,
              help="Builder workspace limit in MB. Default: TensorRT's (the GPU's memory); "
              "on an 8 GB Orin Nano try 1024.")
@click.option("--force", is_flag=True, help="Overwrite an existing --out.")
@click.argument("export", required=False, type=click.Path(dir_okay=False))
def build_command(export=None, **kw):
    """Build a TensorRT engine (NAME.plan + NAME.json) from an ONNX export
    (EXPORT or --onnx: NAME.onnx with its NAME.json).

    \b
    'ddpm-export build --fp16' alone builds the default export: the cifar10
    export in engines/ when there is one, else the shipped digits model (it
    says which, and how to get the CIFAR-10 model from the official weights).
    \b
    Desktop/server (x86-64, CUDA 12):
      pip install tensorrt-cu12 polygraphy     # TensorRT from NVIDIA's index
      ddpm-export export --checkpoint engines/cifar10.pt --fp16
      ddpm-export build --fp16 --onnx engines/cifar10-fp16.onnx
      python -m runtime.sample --engine engines/cifar10-fp16.plan
    Jetson (JetPack 5.1: TensorRT 8.5; 6.0: 8.6; 6.1/6.2: 10.3):
      TensorRT comes with JetPack (python3-libnvinfer); pip install polygraphy
      ddpm-export build --fp16 --checkpoint engines/cifar10.pt --workspace 1024
    \b
    A policy export (ddpm-export export of a LeRobot policy) builds both of
    its engines: NAME.plan and NAME-encoder.plan, tied by NAME.json.
    \b
    Build on the machine that runs the plan: a plan runs only on the TensorRT
    version and GPU architecture that built it (unless --version-compatible),
    and NAME.json records both; the runtime checks them before loading.
    """
    if export is not None:  # 'ddpm-export build --fp16 engines/NAME.onnx': the same as --onnx
        if kw["onnx"] not in (None, export):
            raise click.UsageError(f"the export {export} and --onnx {kw['onnx']} differ: give one of them")
        kw["onnx"] = export
    cfg = BuildConfig(**kw)
    try:
        m = build_engine(cfg, command=" ".join(["ddpm-export"] + sys.argv[1:]),
                         log=lambda s: click.echo(s, err=True))
    except _user_errors() as e:
        raise click.ClickException(str(e)) from None
    e = m["engine"]
    enc = (m.get("policy") or {}).get("encoder", {}).get("plan")
    also = (f" and the policy's encoder {enc['file']} ({enc['engine']['precision_mode']}, "
            f"{enc['engine']['build_seconds']} s)" if enc else "")
    click.echo(f"wrote {e['plan']} + its NAME.json{also}: TensorRT {e['tensorrt_version']}, "
               f"{e['precision_mode']}, batch {e['profiles'][0]}, {e['device_name']} "
               f"(compute capability {e['compute_capability']}), {e['build_seconds']} s")

