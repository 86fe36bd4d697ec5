"""The ``ddpm-export`` command line (click).

Library code raises; this module turns any error into one line on stderr and a
non-zero exit. Set DDPM_EXPORT_DEBUG=1 to see the traceback instead.
"""
from __future__ import annotations

import os
import sys

import click

from ddpm_export.cli.defaults import library_option
from ddpm_export.cli.options import allow_host_code_option
from ddpm_export.model.config import PRESETS
from runtime.contract import DEFAULT_BATCH_RANGE

TC = "ddpm_export.training.train:TrainConfig."  # where the train options' defaults live
TH = "ddpm_export.evaluation.validate:Thresholds."  # and validate's thresholds
PTH = "ddpm_export.evaluation.validate_policy:PolicyThresholds."  # and a policy's


def _per_preset(field: str) -> str:
    return ", ".join(f"{name} {getattr(p, field)}" for name, p in sorted(PRESETS.items()))


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
@library_option("--preset", type=click.Choice(sorted(PRESETS)), default_from=TC + "preset",
                help="Model shape, schedule and training defaults (cifar10 = the paper's 35.7M model).")
@click.option("--data", default=None, help="cifar-10-batches-py folder or a folder of PNG/JPEG "
              "images. Default: the preset's own data (digits: sklearn, no download).")
@click.option("--out", default=None, help="Run folder for last.pt, model.pt, metrics.jsonl and "
              "samples/. Default: runs/PRESET.")
@click.option("--steps", type=int, default=None, help=f"Total optimizer steps. Default: the preset's "
              f"({_per_preset('steps')}).")
@library_option("--batch-size", type=int, default_from=TC + "batch_size", help="Global batch (split across torchrun ranks).")
@library_option("--lr", type=float, default_from=TC + "lr", help="Adam learning rate after warmup.")
@click.option("--warmup", type=int, default=None, help=f"Linear LR warmup steps. Default: the preset's ({_per_preset('warmup')}).")
@library_option("--grad-clip", type=float, default_from=TC + "grad_clip", help="Global-norm gradient clip.")
@library_option("--ema-decay", type=float, default_from=TC + "ema_decay", help="EMA decay (warmed up as min(decay, (1+s)/(10+s))); export uses the EMA weights.")
@library_option("--seed", type=int, default_from=TC + "seed")
@click.option("--sample-every", type=int, default=None, help=f"Steps between sample grids (0: never). Default: the preset's ({_per_preset('sample_every')}).")
@click.option("--ckpt-every", type=int, default=None, help=f"Steps between checkpoints. Default: the preset's ({_per_preset('ckpt_every')}).")
@library_option("--log-every", type=int, default_from=TC + "log_every", help="Steps between metrics.jsonl lines.")
@click.option("--dropout", type=float, default=None, help=f"Override the preset's dropout ({', '.join(f'{n} {p.unet.dropout}' for n, p in sorted(PRESETS.items()))}).")
@click.option("--label-dropout", type=float, default=None, help="Class-conditional presets: the share "
              "of training labels replaced by the null label, so the model also learns the "
              "unconditional branch of classifier-free guidance. Default: the preset's ("
              + ", ".join(f"{n} {p.label_dropout}" for n, p in sorted(PRESETS.items()) if p.unet.num_classes)
              + "); unconditional presets take none.")
@library_option("--device", default_from=TC + "device", help="auto, cpu, cuda or cuda:N.")
@click.option("--resume", is_flag=True, help="Continue exactly from OUT/last.pt.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def train(preset, data, out, steps, batch_size, lr, warmup, grad_clip, ema_decay, seed,
          sample_every, ckpt_every, log_every, dropout, label_dropout, device, resume, no_progress):
    """Train a DDPM (Adam, warmup, grad clip, EMA); digits-cond learns class labels.

    Multi-GPU / multi-node: run under torchrun, e.g.
    torchrun --nproc_per_node 8 -m ddpm_export.cli.main train --preset cifar10 --data DIR
    """
    from ddpm_export.training.train import TrainConfig, train as run_train

    cfg = TrainConfig(preset=preset, out=out or f"runs/{preset}", data=data, steps=steps,
                      batch_size=batch_size, lr=lr, warmup=warmup, grad_clip=grad_clip,
                      ema_decay=ema_decay, seed=seed, sample_every=sample_every,
                      ckpt_every=ckpt_every, log_every=log_every, dropout=dropout,
                      label_dropout=label_dropout, device=device, resume=resume)
    summary = run_train(cfg, progress=not no_progress, log=lambda s: click.echo(s, err=True))
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(
            f"trained {summary['step']} steps ({summary['parameters']:,} parameters) in "
            f"{summary['train_seconds'] / 60:.1f} min; checkpoint {summary['checkpoint']}, "
            f"sampling weights {summary['model']}"
        )


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="A .pt from 'ddpm-export train' or 'import' (e.g. engines/digits.pt).")
@click.option("--out", default="samples.png", show_default=True, help="PNG grid of the samples.")
@click.option("--num", type=int, default=64, show_default=True, help="Number of images.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch", type=int, default=64, show_default=True,
              help="Images per network call; changes the speed, not the images (each image has "
              "its own noise stream).")
@click.option("--trajectory", default=None, help="Also write the x0-prediction trajectory "
              "(paper section 4.3, every 100 steps) of the first batch to this PNG.")
@click.option("--npz", default=None, help="Also save the float samples [N, C, H, W] to this .npz.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--no-progress", is_flag=True)
def sample(checkpoint, out, num, seed, batch, trajectory, npz, device, no_progress):
    """Sample with the PyTorch reference sampler (all T steps, Algorithm 2)."""
    import time

    import numpy as np

    from runtime.io import save_grid, save_trajectory

    from ddpm_export.model.checkpoint import load_model
    from ddpm_export.model.config import ScheduleConfig
    from ddpm_export.model.external import image_shape_of
    from ddpm_export.model.reference_sampler import sample_images

    model, ckpt = load_model(checkpoint)
    schedule = ScheduleConfig.from_dict(ckpt["schedule_config"])
    t0 = time.time()
    x, traj = sample_images(model, schedule, num, seed=seed, batch_size=batch,
                            trajectory_every=100 if trajectory else 0,
                            progress=not no_progress, device=device)
    dt = time.time() - t0
    scale = max(1, 64 // max(image_shape_of(model)[1:]))  # small images drawn larger
    save_grid(x, out, scale=scale)
    if npz:
        _save_npz(npz, samples=x, seed=np.int64(seed), batch=np.int64(batch))
    if trajectory:
        save_trajectory(traj, trajectory, scale=scale)
    click.echo(f"wrote {out} ({num} images, {num / dt:.2f} images/s)")


def _save_npz(path, **arrays):
    from runtime.io import save_npz

    save_npz(path, **arrays)


@main.command("digits-score")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False),
              help="Digits checkpoint to sample from (with --num/--seed).")
@click.option("--samples", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Score the 'samples' array of this .npz instead of sampling.")
@click.option("--num", type=int, default=500, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch", type=int, default=25, show_default=True)
@click.option("--save", default=None, help="Save the drawn samples to this .npz.")
@click.option("--json-out", default=None, help="Write the report as JSON here.")
@click.option("--no-progress", is_flag=True)
def digits_score(checkpoint, samples, num, seed, batch, save, json_out, no_progress):
    """Do samples look like digits? A classifier's confident share vs real digits."""
    import json

    import numpy as np

    from ddpm_export.evaluation.digits import digits_report, train_digits_classifier

    if (checkpoint is None) == (samples is None):
        raise click.UsageError("give exactly one of --checkpoint or --samples")
    if samples:
        from ddpm_export.model.reference_sampler import load_samples_npz

        x = load_samples_npz(samples)
    else:
        from ddpm_export.model.checkpoint import load_model
        from ddpm_export.model.config import ScheduleConfig
        from ddpm_export.model.reference_sampler import sample_images

        model, ckpt = load_model(checkpoint)
        x, _ = sample_images(model, ScheduleConfig.from_dict(ckpt["schedule_config"]), num,
                             seed=seed, batch_size=batch, progress=not no_progress)
        if save:
            _save_npz(save, samples=x, seed=np.int64(seed), batch=np.int64(batch))
    report = digits_report(train_digits_classifier(), x)
    text = json.dumps(report, indent=2)
    if json_out:
        from runtime.io import write_text

        write_text(json_out, text + "\n")
    click.echo(text)


@main.command("import")
@click.option("--format", "fmt", type=click.Choice(["diffusers", "pesser", "lerobot"]), required=True,
              help="lerobot: a LeRobot 0.4.4 DiffusionPolicy folder (policy.save_pretrained(DIR) plus its "
              "pre/post processors: config.json, model.safetensors, policy_*processor.json and their stats). "
              "diffusers: a UNet2DModel folder or DDPMPipeline folder (config.json + "
              "diffusion_pytorch_model.safetensors or .bin, e.g. google/ddpm-cifar10-32). pesser: a "
              "pytorch_diffusion .ckpt (e.g. ema_diffusion_cifar10_model/model-790000.ckpt).")
@click.argument("src", type=click.Path(exists=True))
@click.option("--out", required=True, help="Checkpoint to write (.pt).")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="cifar10", show_default=True,
              help="pesser only: the model shape (the file carries no config).")
@click.option("--scheduler-config", "scheduler_config", type=click.Path(exists=True, dir_okay=False),
              default=None, help="diffusers only: the diffusers scheduler_config.json to use when SRC has "
              "none (schedule, prediction type, variance); checked against SRC's when it has one.")
@click.option("--image-size", "image_size", default=None,
              help="diffusers only: H or HxW, overriding the config's sample_size.")
@click.option("--network", type=click.Choice(["auto", "ours", "diffusers"]), default="auto",
              show_default=True, help="diffusers only: auto = our U-Net where the weights map onto it "
              "exactly, else diffusers' own UNet2DModel (needs diffusers to export).")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="diffusers only: compare the imported model with diffusers' own UNet2DModel at "
              "several t and a short chain with DDPMPipeline (and DDIMPipeline for a DDIM folder) from "
              "the same noise (needs diffusers); a difference is a refusal: exit 1, nothing written.")
@click.option("--verify-steps", type=click.IntRange(1), default=10, show_default=True,
              help="diffusers only: DDPM steps of the verification chain.")
@click.option("--null-label", "null_label", type=int, default=None,
              help="diffusers only, class-conditional models (num_class_embeds): the class index the model "
              "was trained to read as 'no label', for classifier-free guidance. diffusers' folders do not "
              "record it; without it the model samples with guidance 1 only.")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
def import_(fmt, src, out, preset, scheduler_config, image_size, network, verify, verify_steps, null_label,
            force):
    """Convert published DDPM weights into a ddpm-export checkpoint.

    \b
    A diffusers DDPM (any UNet2DModel + DDPMScheduler), after downloading it:
      huggingface-cli download google/ddpm-cifar10-32 --local-dir ddpm-cifar10-32
      ddpm-export import --format diffusers ddpm-cifar10-32/ --out cifar10.pt
    The official CIFAR-10 model as pesser's checkpoint:
      ddpm-export import --format pesser model-790000.ckpt --out cifar10.pt
    A LeRobot DiffusionPolicy (denoiser, observation encoder, normalization, schedule):
      ddpm-export import --format lerobot outputs/train/diffusion/pretrained_model --out policy.pt
    """
    import json
    from pathlib import Path

    from ddpm_export import weights

    if Path(out).exists() and not force:
        raise click.UsageError(f"{out} exists; pass --force to overwrite it or choose another --out")
    command = " ".join(["ddpm-export"] + sys.argv[1:])
    if fmt == "diffusers":
        sched = None
        if scheduler_config is not None:
            try:
                sched = json.loads(Path(scheduler_config).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise click.UsageError(f"--scheduler-config {scheduler_config}: cannot be read as JSON "
                                       f"({type(e).__name__}: {e}); expected a diffusers scheduler_config.json")
            if not isinstance(sched, dict) or not sched:
                raise click.UsageError(f"--scheduler-config {scheduler_config}: received "
                                       f"{type(sched).__name__}, expected a diffusers scheduler config object")
            sched.setdefault("_class_name", "DDPMScheduler")
        ckpt = weights.import_diffusers(src, out, sched, image_size=_parse_image_size(image_size),
                                        network=network, verify=verify, verify_steps=verify_steps,
                                        command=command, null_label=null_label)
    elif fmt == "lerobot":
        for name, given in (("--scheduler-config", scheduler_config), ("--image-size", image_size),
                            ("--null-label", null_label)):
            if given is not None:
                raise click.UsageError(f"{name} is for --format diffusers; a LeRobot folder carries its "
                                       f"own config.json")
        from ddpm_export.weights.from_lerobot import import_lerobot

        ckpt = import_lerobot(src, out, command=command)
    else:
        for name, given in (("--scheduler-config", scheduler_config), ("--image-size", image_size),
                            ("--null-label", null_label)):
            if given is not None:
                raise click.UsageError(f"{name} is for --format diffusers; a pesser checkpoint uses --preset")
        ckpt = weights.import_pesser(src, out, preset=preset, command=command)
    n = sum(v.numel() for v in ckpt["ema"].values())
    sc = ckpt["schedule_config"]
    prov = ckpt.get("provenance") or {}
    click.echo(f"wrote {out} ({n:,} parameters, network {prov.get('network', 'ddpm_export UNet')}; schedule "
               f"{sc['kind']}, T={sc['num_timesteps']}, prediction {sc.get('prediction', 'eps')}, "
               f"{sc['variance_type']}, spacing {sc.get('timestep_spacing', 'leading')})")
    rep = prov.get("verify")
    if rep:
        rows = ", ".join(f"t={r['t']}: {r['max_abs']:.2g}" for r in rep["eps"]["rows"])
        click.echo(f"verify: output vs {rep['reference']}: max abs {rep['eps']['max_abs']:.3g} "
                   f"(tolerance {rep['eps']['tol']:g}; {rows})")
        # a chain beyond its tolerance never gets here: import_diffusers refuses it (exit 1)
        for key in ("chain", "default_chain"):
            ch = rep.get(key)
            if ch is not None:
                click.echo(f"verify: {ch['steps']}-step chain vs {ch['reference']} from the same noise: "
                           f"max abs {ch['max_abs_01']:.3g} on [0, 1] images (tolerance {ch['tol']:g})")
    elif fmt == "diffusers":
        click.echo("verify: skipped (--no-verify)")
    if ckpt.get("sampling") is not None:
        s = ckpt["sampling"]
        click.echo(f"default sampling: {s['method']}, {s['steps']} steps, {s.get('options') or {}} "
                   f"({s.get('source', 'from the checkpoint')}); --method/--steps override it")


def _parse_image_size(text):
    if text is None:
        return None
    parts = text.lower().split("x")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) not in (1, 2) or min(vals, default=0) < 1:
        raise click.UsageError(f"--image-size: received {text!r}, expected H or HxW, e.g. 64 or 64x96")
    return vals[0] if len(vals) == 1 else (vals[0], vals[1])


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="A .pt from 'ddpm-export train' or 'import'.")
@click.option("--out", default=None, help="NAME.onnx to write (its manifest goes to NAME.json). "
              "Default: engines/<checkpoint name>.onnx, or engines/<name>-fp16.onnx with --fp16.")
@click.option("--fp16", is_flag=True, help="FP16 graph with FP32 islands (GroupNorm statistics, "
              "softmax, timestep embedding) as explicit Casts, float32 I/O: what TensorRT 11's "
              "strongly typed builds need.")
@library_option("--opset", type=int, default_from="ddpm_export.export.onnx_export:DEFAULT_OPSET",
                help="ONNX opset (13-20); 17 is the highest TensorRT 8.5 (JetPack 5) parses.")
@click.option("--min-batch", type=int, default=DEFAULT_BATCH_RANGE.min, show_default=True)
@click.option("--opt-batch", type=int, default=DEFAULT_BATCH_RANGE.opt, show_default=True)
@click.option("--max-batch", type=int, default=DEFAULT_BATCH_RANGE.max, show_default=True)
@click.option("--weights", type=click.Choice(["ema", "model"]), default="ema", show_default=True)
@click.option("--no-check", is_flag=True, help="Skip the ONNX Runtime parity check (checker and "
              "shape inference always run).")
@click.option("--force", is_flag=True, help="Overwrite an existing --out.")
@click.option("--guidance", type=float, default=None,
              help="Conditional models: the classifier-free guidance scale the runtime samples with when "
              "none is given (recorded in the manifest; without it: 1, the conditional model alone).")
def export(checkpoint, out, fp16, opset, min_batch, opt_batch, max_batch, weights, no_check, force, guidance):
    """Export a checkpoint to ONNX + manifest, checked against PyTorch.

    Inputs x_t float32 [B, C, H, W] and t int32 [B] (a class-conditional model also takes
    class_labels int64 [B]), output eps; dynamic batch.
    Every export runs onnx.checker, shape inference and an ONNX Runtime parity
    check at t in {0, 1, 250, 500, 999}, batches 1 and 8 (float32: < 1e-4).
    """
    from pathlib import Path

    from ddpm_export.export.onnx_export import export_onnx

    if out is None:
        stem = Path(checkpoint).stem + ("-fp16" if fp16 else "")
        out = str(Path("engines") / f"{stem}.onnx")
    if Path(out).exists() and not force:
        raise click.UsageError(f"{out} exists; pass --force to overwrite it or choose another --out")
    m = export_onnx(checkpoint, out, fp16=fp16, opset=opset, batch_range=(min_batch, opt_batch, max_batch),
                    check=not no_check, command=" ".join(["ddpm-export"] + sys.argv[1:]), weights=weights,
                    guidance=None if guidance is None else {"default": guidance})
    sec = m.get("policy")  # a policy checkpoint: export_onnx also wrote its observation encoder
    if sec:
        ep = sec["encoder"]["parity"]
        click.echo(f"wrote {Path(out).with_name(sec['encoder']['file'])} (observation encoder, "
                   f"{sec['encoder'].get('precision', 'fp32')}); parity "
                   f"vs PyTorch: max abs diff {ep['max_abs_diff']:.2e} (limit {ep['atol']:g})")
    par = m["checks"].get("parity") or {}
    line = f"wrote {out} + {Path(out).with_suffix('.json')} ({m['precision']}, opset {opset})"
    if par:
        line += f"; parity vs PyTorch: max abs diff {par['max_abs_diff']:.2e} (limit {par['atol']:g})"
    fe = m["checks"].get("fp16_error")
    if fe:
        line += f"; FP16 eps error vs float32: max {fe['max_abs']:.2e}, mean {fe['mean_abs']:.2e}"
    click.echo(line)


@main.command()
@click.option("--steps", type=int, default=10, show_default=True, help="Network calls per timed run.")
@click.option("--repeats", type=int, default=5, show_default=True, help="Timed runs per cell (median).")
@click.option("--threads", type=int, default=2, show_default=True, help="Threads for torch and ONNX Runtime alike.")
@click.option("--batch", "batches", type=int, multiple=True, default=(1, 8), show_default=True)
@click.option("--digits-engine", default="engines/digits.onnx", show_default=True,
              help="Engine for the scheduler-overhead row.")
@click.option("--json-out", default=None, help="Also write the results as JSON.")
@click.option("--schedulers", "schedulers_only", is_flag=True,
              help="Only the scheduler-cost table: each method's step (history included) vs one "
              "--digits-engine call at each --batch (e.g. --batch 1 --batch 64).")
@click.option("--policy", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A policy engine NAME.onnx: seconds per action chunk at batch 1, LeRobot's eager "
              "select_action (same weights, in the LeRobot venv) vs the runtime on ONNX Runtime float32 "
              "and FP16, at each --samplers entry; encoder and denoiser apart.")
@click.option("--samplers", default="ddpm:100,ddim:10", show_default=True,
              help="--policy: METHOD:STEPS,... (ddpm or ddim).")
@click.option("--chunks", type=click.IntRange(min=1), default=5, show_default=True,
              help="--policy: timed chunks per cell (median), after one warmup chunk.")
@click.option("--fp16-engine", default=None, type=click.Path(exists=True, dir_okay=False),
              help="--policy: the FP16 export. Default: NAME-fp16.onnx beside the engine, else exported "
              "from the checkpoint into a temporary folder.")
@click.option("--checkpoint", default=None, type=click.Path(exists=True, dir_okay=False),
              help="--policy: the policy's .pt (default: the manifest's source checkpoint beside the engine).")
@click.option("--lerobot-folder", default=None, type=click.Path(exists=True, file_okay=False),
              help="--policy: LeRobot's pretrained_model folder of the same policy. Default: rebuilt from "
              "the checkpoint by LeRobot itself (strict weight load).")
@click.option("--lerobot-python", default=None,
              help="--policy: the LeRobot venv's python (default $DDPM_LEROBOT_PYTHON, else "
              ".venv-lerobot/bin/python; 'none' skips the LeRobot column).")
def bench(steps, repeats, threads, batches, digits_engine, json_out, schedulers_only, policy, samplers, chunks,
          fp16_engine, checkpoint, lerobot_folder, lerobot_python):
    """Benchmark image-steps/s: diffusers eager vs ONNX Runtime vs our runtime loop.

    With --policy: seconds per action chunk of a policy (LeRobot eager vs the runtime).
    """
    if policy:
        from ddpm_export.evaluation.bench_policy import format_policy_bench, run_policy_bench

        pairs = []
        for part in samplers.split(","):
            name, _, n = part.strip().partition(":")
            if not n.strip().isdigit() or int(n) < 1:
                raise click.BadParameter(f"{part!r}: expected METHOD:STEPS like ddim:10", param_hint="--samplers")
            pairs.append((name.strip(), int(n)))
        res = run_policy_bench(policy, checkpoint=checkpoint, fp16_engine=fp16_engine,
                               lerobot_folder=lerobot_folder, lerobot_py=lerobot_python, samplers=pairs,
                               chunks=chunks, threads=threads, log=lambda s: click.echo(s, err=True))
        if json_out:
            from runtime.io import write_json

            write_json(json_out, res)
        click.echo(format_policy_bench(res))
        return
    if schedulers_only:
        from ddpm_export.evaluation.bench import format_scheduler_costs, scheduler_costs

        res = scheduler_costs(digits_engine, batches=batches, repeats=repeats, threads=threads)
        if json_out:
            from runtime.io import write_json

            write_json(json_out, res)
        click.echo(format_scheduler_costs(res))
        return

    from ddpm_export.evaluation.bench import format_table, run_bench

    res = run_bench(batches=batches, steps=steps, repeats=repeats, threads=threads,
                    digits_onnx=digits_engine)
    if json_out:
        from runtime.io import write_json

        write_json(json_out, res, allow_nan=True)
    click.echo(format_table(res))


@main.command()
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False),
              help="The PyTorch reference: the checkpoint the engines were exported from. Required for "
              "image engines; a policy engine's default is its manifest's source checkpoint (beside it).")
@click.option("--engine", "engines", required=True, multiple=True, type=click.Path(dir_okay=False),
              help="NAME.onnx or NAME.plan to check (repeatable); or a policy's NAME.onnx (its encoder "
              "NAME-encoder.onnx beside it).")
@click.option("--report", default=None, help="Folder for report.json, report.md and the plots "
              "(eps_error.png, drift.png, progressive.png, samples.png, likelihood.png).")
@click.option("--t-stride", type=click.IntRange(min=1), default=50, show_default=True, help="One-step check every N timesteps (plus T-1).")
@click.option("--batch", "batches", type=int, multiple=True, default=(),
              help="Batch sizes of the one-step check (repeatable). Default: the engine's profile "
              "points min/opt/max and the midpoints between them.")
@click.option("--trajectory-images", type=click.IntRange(min=0), default=4, show_default=True,
              help="Images in the full-chain comparison on identical noise (0: skip it).")
@click.option("--samples", type=click.IntRange(min=0), default=450, show_default=True,
              help="Samples per engine (and reference) for the distribution level (0: skip it). "
              "Digits: 450 matches the held-out real set; fewer make the Frechet distance noisier.")
@click.option("--reference-samples", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Reference samples (.npz with 'samples', e.g. engines/digits_samples.npz) instead "
              "of drawing them with the PyTorch model.")
@click.option("--inception-weights", default=None, type=click.Path(dir_okay=False),
              help="Inception weights file for FID/KID (torch-fidelity) on non-digits models.")
@click.option("--onnx-reference", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Float32 ONNX model that ONNX Runtime runs next to a .plan. Default: the plan's "
              "source ONNX (or its float32 sibling) when it lies beside the plan.")
@library_option("--eps-atol-fp32", type=float, default_from=TH + "eps_fp32",
                help="Max abs eps error, float32 engines.")
@library_option("--eps-atol-fp16", type=float, default_from=TH + "eps_fp16",
                help="Max abs eps error, FP16 engines.")
@library_option("--final-atol-fp32", type=float, default_from=TH + "final_fp32",
                help="Final-image limit for float32 engines (FP16 chains are reported, not gated).")
@library_option("--fd-excess", type=float, default_from=TH + "fd_excess",
              help="Gate: Frechet(engine, real) - Frechet(reference, real) <= this x the "
              "real-vs-real floor at the same sample count.")
@library_option("--confident-ratio", type=float, default_from=TH + "confident_ratio",
              help="Gate: engine's confident-label share >= this x the reference's.")
@library_option("--label-accuracy-ratio", type=float, default_from=TH + "label_accuracy_ratio",
                help="Gate, class-conditional digits engines: the engine's label accuracy (the share of "
                "samples the digits classifier assigns to the requested label) >= this x the reference's.")
@click.option("--label", "labels", default=None,
              help="A class-conditional engine: the labels every level uses, one or a comma-separated "
              "list cycled over the samples (default: every label 0..K-1 cycled). Both sides get the same.")
@click.option("--guidance", type=float, default=None,
              help="A conditional engine: the classifier-free guidance scale of the chains and samples, "
              "mixed the same way on the PyTorch side (default: the manifest's). With guidance != 1 the "
              "one-step level also checks the null conditions and the guided mix.")
@click.option("--likelihood-images", type=click.IntRange(min=0), default=8, show_default=True,
              help="Held-out digits for the likelihood level (0: skip it).")
@click.option("--likelihood-t-samples", type=click.IntRange(min=0), default=50, show_default=True,
              help="Timesteps per image of the likelihood level's estimate (0: every timestep).")
@click.option("--nll-atol", type=float, default=1e-3, show_default=True,
              help="Gate: |mean paired bits/dim difference engine - reference|. Measured on the shipped "
              "digits engines (8 images, 50 timesteps, seeds 0-2): float32 <= 2e-8, FP16 <= 3.2e-5 (per "
              "image <= 3e-4); every t, 16 images: FP16 4.0e-5. The default is 30x the FP16 value: a "
              "coarse check, since the bound barely moves with small eps errors.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Compare even if the engine's manifest names another checkpoint.")
@click.option("--method", default=None,
              help="How the engines sample for the trajectory and distribution levels: any runtime "
              "method (ddpm, ddim, dpmsolver++, sde-dpmsolver++, unipc, consistency); its defaults. "
              "Default: the checkpoint's sampling section (a distilled student's), else ddpm.")
@click.option("--steps", "method_steps", type=click.IntRange(min=1), default=None,
              help="Steps of --method (default: the method's).")
@library_option("--chunk-atol-fp32", type=float, default_from=PTH + "chunk_fp32",
                help="A policy engine: max abs difference of the whole action chunk (normalized actions) "
                "from the PyTorch policy, float32 denoiser.")
@library_option("--chunk-atol-fp16", type=float, default_from=PTH + "chunk_fp16",
                help="The same for an FP16 denoiser.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@allow_host_code_option
@click.pass_context
def validate(ctx, checkpoint, engines, report, t_stride, batches, trajectory_images, samples, reference_samples,
             inception_weights, onnx_reference, eps_atol_fp32, eps_atol_fp16, final_atol_fp32, fd_excess,
             confident_ratio, label_accuracy_ratio, labels, guidance, likelihood_images, likelihood_t_samples,
             nll_atol, seed, force, method, method_steps, chunk_atol_fp32, chunk_atol_fp16, no_progress,
             allow_host_code):
    """Compare engines with the PyTorch reference on four levels.

    \b
    1. one step: eps error per timestep and batch size (vs PyTorch; a .plan
       also vs ONNX Runtime float32);
    2. one trajectory: the 1000-step chain on identical noise, drift per step;
    3. the distribution: Frechet distance and classifier score of many
       samples against held-out real digits (digits model), or FID/KID with
       --inception-weights;
    4. the likelihood: bits/dim of each engine and the reference on the
       same held-out digits and noise (paired), and the difference.

    Prints a pass/fail table; with --report also writes report.json, report.md
    and plots. Exits 1 when a check fails, so it can gate a deployment.

    \b
    A conditional engine is checked at fixed conditions on both sides (--label,
    every label cycled by default; --guidance, the manifest's by default); a
    class-conditional digits engine also gets per-class label accuracy.

    \b
    A policy engine (NAME.onnx of an exported LeRobot policy) is checked on three
    levels instead: its encoder vs the PyTorch encoder, its denoiser vs the PyTorch
    U-Net, and the whole action chunk (runtime.load_policy(...).predict_chunk) vs the
    PyTorch policy from the same observations and noise (--method/--steps: its sampler).
    """
    from pathlib import Path

    from ddpm_export.evaluation.validate_policy import is_policy_engine

    if any(is_policy_engine(e) for e in engines):
        from ddpm_export.cli.validate_policy import run_policy_validate

        run_policy_validate(ctx, checkpoint, engines, report, eps_atol_fp32, eps_atol_fp16, chunk_atol_fp32,
                            chunk_atol_fp16)
        return
    if checkpoint is None:
        raise click.UsageError("--checkpoint is required for image engines (the checkpoint they were exported from)")

    from ddpm_export.evaluation.validate import Thresholds, format_report, validate as run_validate

    if report:
        from ddpm_export.evaluation.plots import require_matplotlib

        require_matplotlib()  # fail now, not after minutes of sampling
    if inception_weights:
        from ddpm_export.evaluation.fidelity import check_inception_weights

        check_inception_weights(inception_weights)  # names the file and where to get it
    th = Thresholds(eps_fp32=eps_atol_fp32, eps_fp16=eps_atol_fp16, final_fp32=final_atol_fp32,
                    fd_excess=fd_excess, confident_ratio=confident_ratio, nll_bpd=nll_atol,
                    label_accuracy_ratio=label_accuracy_ratio)
    label_list = None
    if labels is not None:
        from runtime.cli_args import _parse_labels

        label_list = _parse_labels(labels)
    rep, artifacts = run_validate(
        checkpoint, engines, th, t_stride=t_stride, batches=batches or None,
        trajectory_images=trajectory_images, samples=samples, reference_samples_path=reference_samples,
        inception_weights=inception_weights, onnx_reference=onnx_reference, seed=seed, force=force,
        progress=not no_progress, log=lambda s: click.echo(s, err=True), likelihood_images=likelihood_images,
        likelihood_t_samples=likelihood_t_samples or None, method=method, steps=method_steps,
        allow_host_code=allow_host_code, labels=label_list, guidance=guidance)
    table = format_report(rep)
    if report:
        from ddpm_export.cli.options import write_report
        from ddpm_export.evaluation.plots import write_plots

        out = write_report(report, rep, table)
        for f in write_plots(rep, artifacts, out):
            click.echo(f"wrote {f}", err=True)
    click.echo(table)
    if not rep["passed"]:
        raise click.exceptions.Exit(1)


def _register_optional_commands() -> None:
    from ddpm_export.cli.build import build_command
    from ddpm_export.cli.convert import convert_checkpoint_command
    from ddpm_export.cli.distill import distill_command
    from ddpm_export.cli.fid import fid_command
    from ddpm_export.cli.nll import nll_command
    from ddpm_export.cli.sample_many import sample_many_command
    from ddpm_export.cli.steps_table import steps_table_command
    from ddpm_export.cli.triton import triton_command

    for command in (build_command, convert_checkpoint_command, distill_command, fid_command, nll_command,
                    sample_many_command, steps_table_command, triton_command):
        main.add_command(command)


_register_optional_commands()

from ddpm_export.cli.rollout import rollout_command  # noqa: E402

main.add_command(rollout_command)

if __name__ == "__main__":
    main()
