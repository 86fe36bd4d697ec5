"""``ddpm-export distill``: the click command around :func:`ddpm_export.training.distill.distill`."""
from __future__ import annotations

from typing import Tuple

import click

from ddpm_export.cli.defaults import library_option

DC = "ddpm_export.training.distill:DistillConfig."  # where the options' defaults live


def _counts(ctx, param, value) -> Tuple[int, ...]:
    try:
        out = tuple(int(v) for v in str(value).split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"received {value!r}; expected comma-separated call counts like 1,2,4,8")
    if not out or min(out) < 1:
        raise click.BadParameter(f"received {value!r}; expected call counts >= 1 like 1,2,4,8")
    return out


@click.command("distill")
@library_option("--teacher", default_from=DC + "teacher", type=click.Path(dir_okay=False),
                help="Teacher checkpoint: a .pt from 'train' or 'import' (eps, x0 or v prediction).")
@library_option("--out", default_from=DC + "out",
                help="Run folder: last.pt, model.pt, metrics.jsonl, samples/, teacher/.")
@library_option("--teacher-steps", type=int, default_from=DC + "teacher_steps",
                help="UniPC calls per teacher trajectory; every student call count must divide it.")
@click.option("--student-steps", default="1,2,4,8", show_default=True, callback=_counts,
              help="Call counts the student is trained for (its timesteps are stored).")
@library_option("--default-steps", type=int, default_from=DC + "default_steps",
                help="The call count the exported manifest names as the default.")
@library_option("--trajectories", type=int, default_from=DC + "trajectories",
                help="Teacher trajectories (distinct x_T) to regress onto.")
@library_option("--data-seed", type=int, default_from=DC + "data_seed",
                help="Runtime seed of the trajectories' x_T; keep it off the seeds you evaluate with.")
@library_option("--steps", type=int, default_from=DC + "steps",
                help="Student optimizer steps in all; --resume with another value extends the run, or "
                "ends it at the last checkpoint (writing model.pt) when that is already past it.")
@library_option("--batch-size", type=int, default_from=DC + "batch_size")
@library_option("--lr", type=float, default_from=DC + "lr",
                help="Adam learning rate after the linear warmup, then constant.")
@library_option("--warmup", type=int, default_from=DC + "warmup")
@library_option("--ema-decay", type=float, default_from=DC + "ema_decay",
                help="EMA decay of the student (export uses the EMA weights).")
@library_option("--seed", type=int, default_from=DC + "seed", help="Batch order and sample grids.")
@library_option("--sample-every", type=int, default_from=DC + "sample_every",
                help="Steps between sample grids (rows: each call count); 0: never.")
@library_option("--ckpt-every", type=int, default_from=DC + "ckpt_every", help="Steps between checkpoints.")
@click.option("--label-dropout", type=float, default=None,
              help="Class-conditional teachers: share of trajectories solved and trained with the null label, "
              "so the student learns the unconditional branch and can be sampled with guidance. "
              "Default: 0.1; 0: none.")
@click.option("--observations", type=click.Path(dir_okay=False), default=None,
              help="Policy teachers (import --format lerobot): an .npz of raw observation histories "
              "{feature: [N, n_obs_steps, *shape]}, the conditions the teacher's trajectories are solved at "
              "(trajectory i at history i mod N); 'ddpm-export rollout --policy ENGINE --record-observations "
              "FILE.npz' records one from the teacher's own rollouts.")
@library_option("--device", default_from=DC + "device", help="cpu, cuda or cuda:N.")
@click.option("--resume", is_flag=True, help="Continue exactly from OUT/last.pt (same options).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def distill_command(teacher, out, teacher_steps, student_steps, default_steps, trajectories, data_seed, steps,
                    batch_size, lr, warmup, ema_decay, seed, sample_every, ckpt_every, label_dropout, observations,
                    device, resume, no_progress):
    """Distil a DDPM teacher into a student sampled in 1-8 engine calls.

    \b
    The teacher solves its ODE with UniPC from many x_T (stored in OUT/teacher/);
    the student (initialised from the teacher, v prediction) learns to jump from
    the trajectory's state at each of its timesteps straight to the trajectory's
    end, and is sampled by multistep consistency sampling (runtime method
    'consistency'). OUT/model.pt exports like any checkpoint:

    \b
      ddpm-export distill --teacher engines/digits.pt --out runs/distilled
      ddpm-export export --checkpoint runs/distilled/model.pt --out student.onnx
      python -m runtime.sample --engine student.onnx   # no flags: the manifest says how

    
    A class-conditional teacher gives a class-conditional student (same null
    label): each trajectory is solved at its own label, a share (--label-dropout)
    at the null label, and the student learns both; it is sampled with
    classifier-free guidance like any conditional engine (--label, --guidance).

    \b
    A policy teacher (a LeRobot DiffusionPolicy) gives a few-call policy: its
    trajectories are solved at recorded observation histories, and the student
    exports as a policy (denoiser + the teacher's encoder):
      ddpm-export rollout --policy engines/obstacle-policy.onnx --method ddim --steps 10 \\
          --seeds 100,101 --record-observations obs.npz
      ddpm-export distill --teacher engines/obstacle-policy.pt --observations obs.npz \\
          --teacher-steps 16 --student-steps 1,2,4 --out runs/policy-student

    A killed run continues exactly with --resume.
    """
    from ddpm_export.training.distill import DistillConfig, distill

    cfg = DistillConfig(teacher=teacher, out=out, teacher_steps=teacher_steps, student_steps=student_steps,
                        default_steps=default_steps, trajectories=trajectories, data_seed=data_seed,
                        steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, ema_decay=ema_decay,
                        seed=seed, sample_every=sample_every, ckpt_every=ckpt_every, device=device,
                        resume=resume, label_dropout=label_dropout,
                        observations=observations)
    s = distill(cfg, progress=not no_progress, log=lambda m: click.echo(m, err=True))
    click.echo(f"distilled {s['step']} steps in {s['train_seconds'] / 60:.1f} min (+ {s['data_seconds'] / 60:.1f} "
               f"min of teacher trajectories); checkpoint {s['checkpoint']}, student {s['model']} "
               f"(method {s['sampling']['method']}, {s['sampling']['allowed_steps']} calls, default "
               f"{s['sampling']['steps']})")
