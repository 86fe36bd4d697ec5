import numpy as np
import pytest

from ddpm_export.tasks.obstacle import MAX_STEP, ObstacleTask, ScriptedExpert, demonstrations
from ddpm_export.tasks.rollout import rollout


def test_step_is_velocity_limited_and_reaches_near_targets():
    task = ObstacleTask(3, seed=0)
    obs = task.reset()
    p0 = obs["observation.state"].astype(np.float64)
    near = p0 + np.array([0.03, -0.04])
    obs = task.step(near)
    np.testing.assert_allclose(obs["observation.state"], near, atol=1e-6)
    far = obs["observation.state"] + np.array([5.0, 0.0])
    p1 = obs["observation.state"].astype(np.float64)
    obs = task.step(far)
    np.testing.assert_allclose(np.linalg.norm(obs["observation.state"] - p1, axis=1), MAX_STEP, atol=1e-6)
    assert obs["observation.environment_state"].shape == (3, 5)


def test_collision_goal_and_step_limit_end_episodes():
    task = ObstacleTask(2, seed=1, max_steps=5)
    task.reset()
    L = task.layout
    task.pos[0] = L["center"][0] + np.array([L["radius"][0] + 0.05, 0.0])
    task.pos[1] = L["goal"][1] + np.array([0.08, 0.0])
    task.step(np.stack([L["center"][0], L["goal"][1]]))
    assert task.collided[0] and not task.success[0] and task.done[0]
    assert task.success[1] and not task.collided[1] and task.done[1]
    frozen = task.pos.copy()
    task.step(frozen + 1.0)
    np.testing.assert_array_equal(task.pos, frozen)
    t2 = ObstacleTask(4, seed=2, max_steps=5)
    obs = t2.reset()
    for _ in range(5):
        obs = t2.step(obs["observation.state"])
    assert t2.done.all() and not t2.success.any() and (t2.steps == 5).all()


@pytest.mark.parametrize("seed", range(5))
def test_expert_always_succeeds_with_both_modes(seed):
    task = ObstacleTask(400, seed=seed)
    expert = ScriptedExpert(task, seed=seed)
    r = rollout(expert, task=task, seed=seed)
    assert r["success_rate"] == 1.0 and r["collision_rate"] == 0.0
    assert 0.43 <= r["mode_balance"] <= 0.5
    # the mode the task reads is the side the expert chose
    np.testing.assert_array_equal(task.mode, expert.side.astype(np.int64))


@pytest.mark.parametrize("seed", range(3))
def test_mean_of_modes_policy_collides(seed):
    task = ObstacleTask(400, seed=seed)
    r = rollout(ScriptedExpert(task, seed=seed, mean_of_modes=True), task=task, seed=seed)
    assert r["collision_rate"] >= 0.9 and r["success_rate"] <= 0.1


def test_demonstrations_are_seeded_successes():
    a, b = demonstrations(20, seed=3), demonstrations(20, seed=3)
    assert all(np.array_equal(x["action"], y["action"]) for x, y in zip(a, b))
    assert {ep["side"] for ep in a} == {1, -1}
    assert a[0]["observation.state"].shape[1] == 2 and a[0]["observation.environment_state"].shape[1] == 5
