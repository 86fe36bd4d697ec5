"""``ddpm-export rollout``: closed-loop evaluation of a policy on the obstacle task."""
from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from ddpm_export.cli.options import int_list


class _ExpertPolicy:
    """The scripted expert behind the policy interface (it needs the task it acts in)."""

    engine_calls_per_chunk = 0

    def __init__(self, seed: int):
        self.seed = seed
        self.expert = None

    def bind(self, task):
        from ddpm_export.tasks.obstacle import ScriptedExpert

        self.expert = ScriptedExpert(task, seed=self.seed)

    def reset(self):
        self.expert.reset()

    def select_action(self, obs):
        return self.expert.select_action(obs)


@click.command("rollout")
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False), default=None,
              help="A policy engine (engines/NAME.onnx or .plan), loaded with runtime.load_policy.")
@click.option("--expert", is_flag=True, help="Roll out the scripted expert instead (the reference).")
@click.option("--method", default=None, help="Sampler (default: the manifest's).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Sampler steps = engine calls per chunk.")
@click.option("--episodes", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Sets the initial states and the policy's noise.")
@click.option("--seeds", callback=int_list, default=None, help="Several seeds, e.g. 0,1,2 (overrides --seed).")
@click.option("--max-steps", type=click.IntRange(min=1), default=80, show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write the result here.")
@click.option("--record-observations", "record_path", type=click.Path(dir_okay=False), default=None,
              help="Also save every observation history the policy predicted a chunk from (raw units, "
              "{name: [N, n_obs_steps, *shape]}) to this .npz: the conditions 'ddpm-export distill "
              "--observations' distils a policy on.")
@click.option("--no-progress", is_flag=True)
def rollout_command(policy_path, expert, method, steps, episodes, seed, seeds, max_steps, json_out, record_path,
                    no_progress):
    """Success, collision and mode balance of a policy on the obstacle task, in closed loop.

    \b
    Every seed sets the episodes' initial states and the policy's noise; the
    JSON holds the mean and spread over seeds and each seed's row:
      ddpm-export rollout --policy engines/obstacle-policy.onnx --seeds 0,1,2
      ddpm-export rollout --policy engines/obstacle-policy.onnx --method ddim --steps 10
      ddpm-export rollout --expert --seeds 0,1,2
    """
    from ddpm_export.tasks.obstacle import ObstacleTask
    from ddpm_export.tasks.rollout import aggregate, rollout

    if expert == (policy_path is not None):
        raise click.UsageError("give exactly one of --policy PATH or --expert")
    if record_path is not None and expert:
        raise click.UsageError("--record-observations records a policy's observation histories (its n_obs_steps); "
                               "the expert has none: give --policy")
    recorded = {} if record_path is not None else None
    if policy_path is not None and not Path(policy_path).exists():
        raise click.BadParameter(f"{policy_path!r} does not exist; expected a policy engine such as "
                                 "engines/NAME.onnx made by `ddpm-export export`", param_hint="--policy")
    rows = []
    for s in (seeds or [seed]):
        task = ObstacleTask(episodes, seed=s, max_steps=max_steps)
        if expert:
            pol = _ExpertPolicy(s)
            pol.bind(task)
        else:
            try:
                from runtime import load_policy
            except ImportError as e:
                raise click.ClickException(f"this runtime has no load_policy ({e}); the policy runtime "
                                           "(issue 26) is needed for --policy; --expert works without it")
            try:
                pol = load_policy(policy_path, seed=s, method=method, steps=steps)
            except (ValueError, FileNotFoundError, KeyError) as e:
                raise click.ClickException(f"cannot load policy {policy_path}: {e}")
        bar = None
        if not no_progress:
            from tqdm import tqdm

            bar = tqdm(total=max_steps, desc=f"seed {s}", unit="tick", leave=False)

        def progress(i, n, bar=bar):
            if bar is not None:
                bar.update(1)

        rows.append(rollout(pol, episodes=episodes, seed=s, max_steps=max_steps, task=task, progress=progress,
                            record=recorded))
        if bar is not None:
            bar.close()
        r = rows[-1]
        click.echo(f"seed {s}: success {r['success_rate']:.3f} collisions {r['collision_rate']:.3f} "
                   f"mode balance {r['mode_balance']:.3f} ({episodes} episodes, "
                   f"{r['engine_calls_per_chunk']} engine calls per chunk, "
                   f"{r['wall_s_per_chunk'] * 1e3:.1f} ms per chunk)", err=True)
    out = aggregate(rows)
    out.update({"policy": "expert" if expert else str(policy_path), "method": method, "steps": steps})
    if recorded is not None:
        from runtime.io import save_npz

        arrays = {k: np.concatenate(v) for k, v in recorded.items()}
        Path(record_path).parent.mkdir(parents=True, exist_ok=True)
        save_npz(record_path, **arrays)
        click.echo(f"recorded {len(next(iter(arrays.values())))} observation histories to {record_path}", err=True)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(out, indent=1) + "\n")
    click.echo(json.dumps({k: out[k] for k in ("success_rate", "success_rate_std", "collision_rate",
                                               "mode_balance", "mode_balance_std", "episodes",
                                               "engine_calls_per_chunk")}))
