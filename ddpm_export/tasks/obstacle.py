"""A 2-D point agent reaches a goal around a disk obstacle: the two-mode task of issue 27.

Pure NumPy (no torch, no click), batched: B episodes step at once as arrays.

World: the agent starts near (-1, 0), the goal is near (1, 0), a disk obstacle sits near (0, 0)
with a radius in [0.30, 0.40] (each randomized a little per episode, see :func:`sample_layouts`).
Action: the absolute next target position (as in LeRobot's PushT), velocity-limited: the agent
moves toward it by at most ``MAX_STEP`` per tick. An episode ends at the goal (distance
< ``GOAL_TOL``: success), on entering the disk (collision: failure) or after ``max_steps`` ticks.
Observation per tick: ``observation.state`` = agent xy (float32 [2]) and
``observation.environment_state`` = goal xy, obstacle xy, obstacle radius (float32 [5]).
Mode of an episode: the side of the obstacle it passed (+1 above, -1 below, 0 never passed it),
read at the tick the agent's x first reaches the obstacle's x.

The scripted expert follows a smooth path, the straight start-goal line bent by a half-sine bump
that passes ``CLEARANCE`` outside the disk, above or below (50/50 per episode); it advances a fixed
fraction of the path per tick. The mean of the two experts' targets is the straight line: it
collides.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

MAX_STEP = 0.1
GOAL_TOL = 0.05
CLEARANCE = 0.2
EXPERT_TICKS = 40          # the expert's path is cut into this many ticks (~0.07 per tick)
DEFAULT_MAX_STEPS = 80
STATE_DIM = 2
ENV_DIM = 5
ACTION_DIM = 2


def sample_layouts(rng: np.random.Generator, n: int) -> Dict[str, np.ndarray]:
    """Random start, goal, obstacle centre and radius for ``n`` episodes (float64)."""
    start = np.array([-1.0, 0.0]) + rng.uniform(-0.1, 0.1, size=(n, 2))
    goal = np.array([1.0, 0.0]) + rng.uniform(-0.1, 0.1, size=(n, 2))
    center = rng.uniform(-0.05, 0.05, size=(n, 2))
    radius = rng.uniform(0.30, 0.40, size=n)
    return {"start": start, "goal": goal, "center": center, "radius": radius}


class ObstacleTask:
    """B episodes of the obstacle task, stepped together.

    ``reset()`` returns the first observation dict; ``step(action [B, 2])`` moves every episode
    that is still running and returns the next observation. ``done``, ``success``, ``collided``,
    ``mode`` and ``steps`` are [B] arrays; finished episodes stay where they are.
    """

    def __init__(self, episodes: int, seed: int = 0, max_steps: int = DEFAULT_MAX_STEPS):
        if episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {episodes}")
        self.B = int(episodes)
        self.seed = int(seed)
        self.max_steps = int(max_steps)
        self.layout = sample_layouts(np.random.default_rng([self.seed, 27]), self.B)

    def reset(self) -> Dict[str, np.ndarray]:
        L = self.layout
        self.pos = L["start"].copy()
        self.done = np.zeros(self.B, bool)
        self.success = np.zeros(self.B, bool)
        self.collided = np.zeros(self.B, bool)
        self.mode = np.zeros(self.B, np.int64)
        self.steps = np.zeros(self.B, np.int64)
        self.t = 0
        return self.observation()

    def observation(self) -> Dict[str, np.ndarray]:
        L = self.layout
        env = np.concatenate([L["goal"], L["center"], L["radius"][:, None]], axis=1)
        return {"observation.state": self.pos.astype(np.float32),
                "observation.environment_state": env.astype(np.float32)}

    def step(self, action) -> Dict[str, np.ndarray]:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (self.B, ACTION_DIM):
            raise ValueError(f"action has shape {a.shape}, expected ({self.B}, {ACTION_DIM}): one target xy "
                             "per episode")
        if not np.all(np.isfinite(a[~self.done])):
            raise ValueError("action holds non-finite values for a running episode")
        L = self.layout
        live = ~self.done
        d = a - self.pos
        n = np.linalg.norm(d, axis=1, keepdims=True)
        d = np.where(n > MAX_STEP, d * (MAX_STEP / np.maximum(n, 1e-12)), d)
        new = self.pos + d
        # the mode: side of the obstacle where x first reaches the obstacle's x
        crossing = live & (self.mode == 0) & (new[:, 0] >= L["center"][:, 0])
        self.mode[crossing] = np.where(new[crossing, 1] >= L["center"][crossing, 1], 1, -1)
        self.pos = np.where(live[:, None], new, self.pos)
        self.steps[live] += 1
        self.t += 1
        hit = live & (np.linalg.norm(self.pos - L["center"], axis=1) < L["radius"])
        reach = live & ~hit & (np.linalg.norm(self.pos - L["goal"], axis=1) < GOAL_TOL)
        self.collided |= hit
        self.success |= reach
        self.done |= hit | reach | (self.steps >= self.max_steps)
        return self.observation()


def _path_point(layout: Dict[str, np.ndarray], side: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Point at fraction ``s`` [B] of the expert path on ``side`` [B] (+1 above, -1 below)."""
    start, goal, c, r = layout["start"], layout["goal"], layout["center"], layout["radius"]
    line = start + s[:, None] * (goal - start)
    mid_y = 0.5 * (start[:, 1] + goal[:, 1])
    amp = c[:, 1] + side * (r + CLEARANCE) - mid_y
    out = line.copy()
    out[:, 1] += amp * np.sin(np.pi * s)
    return out


class ScriptedExpert:
    """The two-mode expert: each episode picks above/below at random (seeded) at ``reset``.

    ``select_action(obs)`` returns the next point of its path (absolute target xy); it keeps its
    own progress along the path, so it must see every tick of one :class:`ObstacleTask`.
    ``mean_of_modes=True`` returns the average of the two sides' targets (the regression-policy
    failure: the straight line through the obstacle).
    """

    engine_calls_per_chunk = 0

    def __init__(self, task: ObstacleTask, seed: int = 0, mean_of_modes: bool = False,
                 side: Optional[np.ndarray] = None):
        self.task = task
        self.seed = int(seed)
        self.mean_of_modes = mean_of_modes
        self._fixed_side = None if side is None else np.asarray(side, dtype=np.float64)
        self.reset()

    def reset(self) -> None:
        rng = np.random.default_rng([self.seed, 2701])
        B = self.task.B
        self.side = (self._fixed_side.copy() if self._fixed_side is not None
                     else np.where(rng.random(B) < 0.5, 1.0, -1.0))
        self.k = 0

    def select_action(self, obs: Dict[str, np.ndarray]) -> np.ndarray:
        self.k += 1
        s = np.full(self.task.B, min(self.k / EXPERT_TICKS, 1.0))
        L = self.task.layout
        if self.mean_of_modes:
            a = 0.5 * (_path_point(L, np.ones_like(s), s) + _path_point(L, -np.ones_like(s), s))
        else:
            a = _path_point(L, self.side, s)
        return a.astype(np.float32)


def demonstrations(episodes: int, seed: int = 0, max_steps: int = DEFAULT_MAX_STEPS):
    """Expert episodes as a list of dicts of per-tick arrays (``observation.state`` [T, 2],
    ``observation.environment_state`` [T, 5], ``action`` [T, 2], ``side`` int), successes only
    (the expert always succeeds; this is asserted)."""
    task = ObstacleTask(episodes, seed=seed, max_steps=max_steps)
    expert = ScriptedExpert(task, seed=seed)
    obs = task.reset()
    states, envs, acts, live = [], [], [], []
    while not task.done.all():
        live.append(~task.done)
        a = expert.select_action(obs)
        states.append(obs["observation.state"]); envs.append(obs["observation.environment_state"]); acts.append(a)
        obs = task.step(a)
    if not task.success.all():
        raise RuntimeError(f"the expert failed {int((~task.success).sum())} of {episodes} episodes (seed {seed})")
    S, E, A, M = map(np.stack, (states, envs, acts, live))
    out = []
    for b in range(episodes):
        T = int(M[:, b].sum())
        out.append({"observation.state": S[:T, b], "observation.environment_state": E[:T, b],
                    "action": A[:T, b], "side": int(expert.side[b])})
    return out
