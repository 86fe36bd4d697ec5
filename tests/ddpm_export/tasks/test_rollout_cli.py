import json

import numpy as np
from click.testing import CliRunner

from ddpm_export.cli.main import main
from ddpm_export.tasks.rollout import rollout


class StraightStub:
    """Heads straight for the goal: collides (the obstacle sits between start and goal)."""

    engine_calls_per_chunk = 3
    n_action_steps = 8

    def __init__(self):
        self.resets = 0

    def reset(self):
        self.resets += 1

    def select_action(self, obs):
        return obs["observation.environment_state"][:, :2]


def test_stub_policy_rollout_reports_collisions():
    stub = StraightStub()
    r = rollout(stub, episodes=50, seed=0)
    assert stub.resets == 1
    assert r["collision_rate"] >= 0.9 and r["episodes"] == 50 and r["engine_calls_per_chunk"] == 3
    assert r["chunks"] == -(-r["ticks"] // 8) and r["wall_s_per_chunk"] > 0


def test_cli_expert_json(tmp_path):
    out = tmp_path / "r.json"
    res = CliRunner().invoke(main, ["rollout", "--expert", "--episodes", "200", "--seeds", "0,1",
                                    "--json", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    assert d["success_rate"] == 1.0 and d["collision_rate"] == 0.0 and d["episodes"] == 400
    assert 0.43 <= d["mode_balance"] <= 0.5 and d["seeds"] == [0, 1] and len(d["per_seed"]) == 2


def test_cli_refusals_are_one_line(tmp_path):
    r = CliRunner().invoke(main, ["rollout", "--episodes", "5"])
    assert r.exit_code != 0 and "exactly one of --policy" in r.output
    r = CliRunner().invoke(main, ["rollout", "--policy", str(tmp_path / "nope.onnx")])
    assert r.exit_code != 0 and "does not exist" in r.output
