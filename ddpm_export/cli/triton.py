"""``ddpm-export triton``: a Triton Inference Server model repository from an engine."""
from __future__ import annotations

import click

from ddpm_export.cli.options import allow_host_code_option
from ddpm_export.serving.triton_repo import MODES, UNET_BACKENDS, RepositoryConfig, write_repository


@click.command("triton", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--engine", required=True, type=click.Path(dir_okay=False),
              help="NAME.onnx (ONNX Runtime backend) or NAME.plan (TensorRT backend), with its NAME.json.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Model repository folder to write (pass it to tritonserver --model-repository).")
@click.option("--name", default=None, help="U-Net model name; the sampler is NAME_sampler. "
              "Default: the engine's file name without suffix.")
@click.option("--max-batch", type=click.IntRange(min=1), default=None,
              help="Largest U-Net batch (Triton max_batch_size, also the sampler's batch). "
              "Default: the engine's (the plan's profile max, or the export's batch range max).")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
              help="Instances of each model (the U-Net's, and the sampler's unless "
              "--sampler-instances is given).")
@click.option("--sampler-instances", type=click.IntRange(min=1), default=None,
              help="Sampler instances: requests sampled at once. In bls mode each waits on the "
              "U-Net most of the time, and more of them give the dynamic batcher larger U-Net "
              "batches. Default: --instances.")
@click.option("--mode", type=click.Choice(MODES), default="inprocess", show_default=True,
              help="inprocess: the sampler runs the engine itself through the project's runtime "
              "(one model). bls: the sampler calls the U-Net model once per step through BLS "
              "(two models; the U-Net on Triton's native backend, batched across requests).")
@click.option("--unet-backend", type=click.Choice(UNET_BACKENDS), default="native", show_default=True,
              help="bls mode's U-Net: native (TensorRT / ONNX Runtime backend) or python (the "
              "project's ONNX runner in a Python-backend model, for a server without the "
              "onnxruntime backend; .onnx only).")
@click.option("--max-memory-mb", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Sampler memory budget per request; bounds the num a request may ask for.")
@click.option("--force", is_flag=True, help="Replace an existing --out.")
@allow_host_code_option
def triton_command(engine, out, name, max_batch, instances, sampler_instances, mode, unet_backend,
                   max_memory_mb, force, allow_host_code):
    """Write a Triton model repository: NAME_sampler (+ NAME, the U-Net, in bls mode).

    \b
      ddpm-export triton --engine engines/digits.onnx --out triton_repo
      tritonserver --model-repository triton_repo

    Request NAME_sampler with num (INT32), seed (INT64), optionally method (BYTES:
    ddpm | ddim | dpmsolver++ | sde-dpmsolver++ | unipc), steps (INT32), eta (FP32,
    ddim only); the response 'images' is uint8
    [num, H, W, C], the same images as runtime.load(engine).sample(num, seed, ...).
    A policy engine (NAME.onnx of an exported LeRobot policy, --mode inprocess) gives
    one model NAME_policy: a request sends the observation history (each observation
    by its manifest name, FP32 [B, n_obs_steps, ...], raw units) and optionally seed,
    method, steps; the response 'actions' FP32 [B, n_action_steps, action_dim] is
    runtime.load_policy(engine).predict_chunk(history, seed).
    A conditional engine's sampler also takes each condition input by its name
    (class labels INT64 [num] or [1]; a vector FP32 [num, ...]) and guidance
    (FP32, default the manifest's); an array engine answers 'samples' FP32.
    The Python models carry a copy of the runtime; their Python needs numpy<2
    (Triton 24.10's stub) and onnxruntime (inprocess, --unet-backend python) or
    TensorRT + Polygraphy (a .plan in inprocess mode). See docs/serving.md.
    """
    summary = write_repository(RepositoryConfig(
        engine=engine, out=out, name=name, max_batch=max_batch, instances=instances,
        sampler_instances=sampler_instances, mode=mode,
        unet_backend=unet_backend, max_memory_mb=max_memory_mb, force=force,
        allow_host_code=allow_host_code))
    pol = summary.get("policy")
    click.echo(f"wrote {summary['out']}: models {', '.join(summary['models'])} ({summary['mode']} mode); "
               f"max batch {summary['max_batch']}" + ("" if pol else f", max num per request {summary['max_num']}"))
    if pol:
        obs = ", ".join(f"{k} FP32 [B, {pol['n_obs_steps']}{''.join(', ' + str(d) for d in v)}]"
                        for k, v in pol["observations"].items())
        click.echo(f"policy: a request sends {obs} (raw units), optionally seed (INT64), method (BYTES), "
                   f"steps (INT32); the response is actions FP32 [B, {', '.join(map(str, pol['actions']))}]")
    if summary["conditions"]:
        click.echo(f"conditional: requests to the sampler also send {', '.join(summary['conditions'])} "
                   f"(one row per image, or one for all) and optionally guidance (FP32)")
    if summary["server_args"]:
        click.echo(f"start the server with: tritonserver --model-repository {summary['out']} "
                   f"{' '.join(summary['server_args'])}")
