"""``ddpm-export nll``: the variational bound in bits/dim through an engine (evaluation.likelihood)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ddpm_export.cli.options import allow_host_code_option


@click.command("nll", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--engine", required=True, type=click.Path(dir_okay=False),
              help="NAME.onnx or NAME.plan whose eps model is scored (runtime.load).")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False),
              help="Also compute the bound with this checkpoint's PyTorch model on the same "
              "images and noise, and report the paired difference.")
@click.option("--data", default="digits", show_default=True,
              help="digits (the held-out half the digits classifier never trains on), cifar10 (the "
              "test batch in data/cifar-10-batches-py, or give that folder), or a folder of PNG/JPEG "
              "images already of the engine's size and channels.")
@click.option("--num", type=click.IntRange(min=1), default=None,
              help="Images to score (the first N of the data). Default: every image of a folder; "
              "16 of digits or cifar10.")
@click.option("--t-samples", type=int, default=None,
              help="Monte Carlo: the decoder term plus a stratified sample of K-1 of the T-1 KL "
              "terms per image (unbiased, with a standard error). Default: every timestep (exact).")
@click.option("--batch", type=click.IntRange(min=1), default=16, show_default=True,
              help="Images per network call (at most the engine's max batch).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Noise (and timestep) seed; the same seed gives every engine the same x_t.")
@click.option("--report", default=None, type=click.Path(file_okay=False),
              help="Folder for nll.json, nll.md and (every timestep only) rate_distortion.png.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for ONNX Runtime and torch (default: their own choice).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@allow_host_code_option
def nll_command(engine, checkpoint, data, num, t_samples, batch, seed, report, threads, no_progress,
                allow_host_code):
    """Negative log-likelihood bound L_vlb of test images, in bits/dim.

    \b
    The definition of Ho et al.'s official code (diffusion_utils_2.py, calc_bpd_loop):
    prior KL + the T-1 KL terms + a discretized-Gaussian decoder over 256 bins,
    each averaged over dimensions, in bits. Prints the mean over images with its
    standard error and the per-term breakdown; with every timestep, also the
    rate-distortion table of the paper's Section 4.3 (rate: bits/dim spent down to
    x_t; distortion: RMSE of x0_hat(x_t) on [0, 255]).
    \b
      ddpm-export nll --engine engines/digits.onnx --data digits --num 16
      ddpm-export nll --engine engines/digits.onnx --t-samples 50 --checkpoint engines/digits.pt

    \b
    A class-conditional engine is scored as p(x | y), each image with its own
    label (--data digits has them; the conditional model alone, no guidance);
    data without labels is refused: p(x) of such a model is not defined here.
    """
    import time

    import numpy as np

    import runtime
    from runtime.schedulers.schedule import ScheduleConfig

    from ddpm_export.evaluation import likelihood as L
    from ddpm_export.evaluation.likelihood_data import default_num, load_test_images

    # every check first: bad input costs one line and writes nothing
    eng = runtime.load(engine, threads=threads, allow_host_code=allow_host_code)
    m = eng.manifest
    from runtime.contract import is_student

    if is_student(m):  # a bound computed from a student's output would mean nothing
        raise ValueError(f"{engine} is a few-step student (its manifest has a 'sampling' section): it jumps to "
                         f"the end of its teacher's ODE and has no variational bound; score its teacher instead")
    schedule = ScheduleConfig.from_dict(m["schedule"])
    try:
        t_samples = L.check_t_samples(t_samples, schedule.num_timesteps)
    except ValueError as e:
        raise ValueError(str(e).replace("t_samples=", "--t-samples ")) from None
    max_batch = int(eng.batch_range["max"])
    if batch > max_batch:
        raise ValueError(f"--batch {batch} is more than {engine}'s max batch {max_batch}; pass --batch {max_batch}")
    conds = eng.conditions
    if conds and (len(conds) != 1 or conds[0].kind != "class_label"):
        raise ValueError(f"{engine} takes conditions {[(c.name, c.kind) for c in conds]}; nll scores unconditional "
                         f"engines, or class-conditional ones as p(x | y) with the data's labels; the likelihood "
                         f"of a model without its conditions is not defined here")
    if conds:
        from ddpm_export.evaluation.likelihood_data import test_labels

        test_labels(data)  # data without labels: refused before anything is read or computed
    images, what = load_test_images(data, m["image_shape"], default_num(data) if num is None else num)
    cond = None
    if conds:
        from runtime.guidance import check_condition

        cond = {conds[0].name: check_condition(conds[0], test_labels(data, len(images)), len(images))}
    model = None
    if checkpoint:
        from ddpm_export.model.checkpoint import load_model
        from ddpm_export.model.external import image_shape_of

        model, ckpt = load_model(checkpoint)
        from ddpm_export.model.conditions import model_conditions

        if [c.to_dict() for c in model_conditions(model)] != [c.to_dict() for c in conds]:
            raise ValueError(f"{checkpoint} (conditions {[c.to_dict() for c in model_conditions(model)] or 'none'}) "
                             f"does not match {engine} (conditions {[c.to_dict() for c in conds] or 'none'}); pass "
                             f"the engine's own checkpoint")
        shape = list(image_shape_of(model))
        if shape != list(m["image_shape"]) or ScheduleConfig.from_dict(ckpt["schedule_config"]) != schedule:
            raise ValueError(f"{checkpoint} (images {shape}, schedule {ckpt['schedule_config']}) does not match "
                             f"{engine} (images {m['image_shape']}, schedule {m['schedule']}); pass the "
                             f"engine's own checkpoint")
        if threads:
            import torch

            torch.set_num_threads(threads)
    if report:
        from ddpm_export.evaluation.plots import require_matplotlib

        require_matplotlib()
    x0 = L.from_uint8(images)
    K = t_samples or schedule.num_timesteps
    click.echo(f"{len(x0)} {what}, {m['image_shape']}; {K if t_samples else 'every one'} of T="
               f"{schedule.num_timesteps} timesteps per image; seed {seed}", err=True)
    computed = None
    if cond:
        name = conds[0].name
        computed = (f"p(x | y): each image with its own label ({name} from the data; counts per label "
                    f"{np.bincount(cond[name], minlength=conds[0].num_classes).tolist()}), the conditional "
                    f"model alone (guidance 1)")
        click.echo(f"computing {computed}", err=True)

    def run(name, fn):
        bar = None
        if not no_progress:
            from runtime.progress import progress_bar

            bar = progress_bar(total=len(x0) * K, desc=name, unit="img-step", file=sys.stderr)
        try:
            b = fn(progress=None if bar is None else bar.update)
        finally:
            if bar is not None:
                bar.close()
        return b

    t0 = time.perf_counter()
    with eng:
        bounds = {Path(engine).name: run(Path(engine).name, lambda progress: L.compute_bound(
            eng, x0, schedule, t_samples=t_samples, batch=batch, seed=seed, progress=progress, cond=cond))}
    if model is not None:
        from ddpm_export.evaluation.likelihood_reference import reference_bound

        bounds["pytorch"] = run("pytorch", lambda progress: reference_bound(
            model, x0, schedule, t_samples=t_samples, batch=batch, seed=seed, progress=progress,
            **({"conditions": conds, "cond": cond} if cond else {})))
    wall = time.perf_counter() - t0

    out = {"engine": str(engine), "checkpoint": checkpoint, "data": what, "num_images": len(x0),
           "seed": seed, "t_samples": t_samples, "command": " ".join(["ddpm-export"] + sys.argv[1:]),
           "wall_seconds": wall, "results": {}}
    lines = []
    if computed:
        out["likelihood"] = computed
        out["labels"] = cond[conds[0].name].tolist()
        lines.append(f"likelihood: {computed}")
    for name, b in bounds.items():
        s = b.summary()
        s["image_timesteps_per_second"] = b.terms.size / b.seconds if b.seconds else float("nan")
        out["results"][name] = dict(s, per_image=b.per_image())
        lines.append(L.format_bound(name, s))
        lines.append(f"  {b.terms.size} image-timesteps in {b.seconds:.1f} s "
                     f"({s['image_timesteps_per_second']:.1f}/s)")
    if model is not None:
        d = bounds[Path(engine).name].total - bounds["pytorch"].total
        out["paired_difference"] = {"mean": float(d.mean()), "max_abs": float(np.abs(d).max())}
        lines.append(f"engine - pytorch (paired, same images and noise): mean {d.mean():+.2e}, "
                     f"max abs {np.abs(d).max():.2e} bits/dim")
    curves = {}
    if t_samples is None:
        for name, b in bounds.items():
            rd = L.rate_distortion(b)
            curves[name] = rd
            out["results"][name]["rate_distortion"] = L.rate_distortion_rows(rd)
        first = next(iter(curves.values()))
        lines += ["", f"rate-distortion ({next(iter(curves))}; decoder L_0 {first['decoder_bpd']:.3f} bits/dim):",
                  "| t | rate (bits/dim) | distortion (RMSE, 0..255) |", "|---|---|---|"]
        lines += [f"| {r['t']} | {r['rate_bpd']:.4f} | {r['distortion_rmse']:.3f} |"
                  for r in L.rate_distortion_rows(first)]
    text = "\n".join(lines)
    if report:
        from ddpm_export.evaluation.plots import plot_rate_distortion
        from ddpm_export.model.checkpoint import atomic_write

        folder = Path(report)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / "nll.json", lambda p: Path(p).write_text(json.dumps(out, indent=2) + "\n"))
        atomic_write(folder / "nll.md", lambda p: Path(p).write_text(text + "\n"))
        if curves:
            plot_rate_distortion(curves, folder / "rate_distortion.png",
                                 f"rate-distortion of {Path(engine).name} on {len(x0)} {what}")
        click.echo(f"wrote {folder}/nll.json, nll.md" + (", rate_distortion.png" if curves else ""), err=True)
    click.echo(text)
