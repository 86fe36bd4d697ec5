"""Batched closed-loop rollout of a policy on the obstacle task (pure NumPy).

A policy is anything with ``reset()`` and ``select_action(obs) -> [B, 2]`` (obs: feature name ->
[B, *shape]); ``runtime.load_policy(path, seed=S)`` makes one whose noise the seed sets, and the
same seed sets the task's initial states here.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Callable, Deque, Dict, List, Optional

import numpy as np

from ddpm_export.tasks.obstacle import DEFAULT_MAX_STEPS, ObstacleTask


def summarize(task: ObstacleTask) -> dict:
    ok = task.success
    n = int(ok.sum())
    up = int((task.mode[ok] == 1).sum())
    return {"success_rate": float(ok.mean()), "collision_rate": float(task.collided.mean()),
            "mode_balance": (min(up, n - up) / n) if n else 0.0,
            "mode_above": up, "mode_below": n - up, "episodes": task.B,
            "mean_steps": float(task.steps.mean())}


def rollout(policy, episodes: int = 200, seed: int = 0, max_steps: int = DEFAULT_MAX_STEPS,
            task: Optional[ObstacleTask] = None, progress: Optional[Callable[[int, int], None]] = None,
            record: Optional[Dict[str, List[np.ndarray]]] = None) -> dict:
    """Roll ``policy`` out on ``episodes`` episodes at once; finished episodes are fed their own
    position (held still) until every episode ends. Returns success_rate, collision_rate,
    mode_balance (share of the less used mode among successes, 0.5 = balanced), episodes,
    engine_calls_per_chunk, mean_steps, chunks, wall_s and wall_s_per_chunk.

    record: a dict to fill with the observation histories the policy predicted its chunks from
    (name -> list of [b, n_obs_steps, *shape] raw arrays, the episodes still running at each
    chunk tick; the history kept as the policy keeps it: the first observation fills it), what
    ``ddpm-export distill --observations`` takes."""
    task = task or ObstacleTask(episodes, seed=seed, max_steps=max_steps)
    obs = task.reset()
    policy.reset()
    n_act = getattr(policy, "n_action_steps", 1) or 1
    n_obs = int(getattr(policy, "n_obs_steps", 1) or 1)
    history: Dict[str, Deque[np.ndarray]] = {}
    t0 = time.perf_counter()
    ticks = 0
    while not task.done.all():
        if record is not None:
            for k, v in obs.items():
                q = history.setdefault(k, deque(maxlen=n_obs))
                q.extend([np.array(v, dtype=np.float32)] * (n_obs if not q else 1))
            if ticks % n_act == 0:
                live = ~task.done
                for k, q in history.items():
                    record.setdefault(k, []).append(np.stack(list(q), axis=1)[live])
        a = np.asarray(policy.select_action(obs), dtype=np.float64)
        if a.shape != (task.B, 2):
            raise ValueError(f"the policy returned actions of shape {a.shape}, expected ({task.B}, 2)")
        obs = task.step(np.where(task.done[:, None], task.pos, a))
        ticks += 1
        if progress:
            progress(ticks, task.max_steps)
    wall = time.perf_counter() - t0
    chunks = -(-ticks // n_act)
    out = summarize(task)
    out.update({"seed": int(seed), "max_steps": task.max_steps,
                "engine_calls_per_chunk": getattr(policy, "engine_calls_per_chunk", None),
                "ticks": ticks, "chunks": chunks, "wall_s": wall, "wall_s_per_chunk": wall / max(chunks, 1)})
    return out


def aggregate(rows) -> dict:
    """Mean and spread (sample std) over seeds of the per-seed rollouts."""
    out = {"seeds": [r["seed"] for r in rows], "per_seed": list(rows)}
    for k in ("success_rate", "collision_rate", "mode_balance", "mean_steps", "wall_s_per_chunk"):
        v = np.array([r[k] for r in rows], dtype=np.float64)
        out[k] = float(v.mean())
        out[k + "_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    out["episodes"] = int(sum(r["episodes"] for r in rows))
    out["engine_calls_per_chunk"] = rows[0]["engine_calls_per_chunk"]
    return out
