"""The closed-loop table: rows from rollout JSON, latency timed side by side, the plot."""
import json
from pathlib import Path

import pytest

from ddpm_export.tasks.rollout import aggregate
from ddpm_export.tasks.table import build_table

REPO = Path(__file__).resolve().parents[3]


def _rollout_json(path, calls, success):
    rows = [{"seed": s, "success_rate": success[s], "collision_rate": 1 - success[s], "mode_balance": 0.4 + 0.01 * s,
             "mean_steps": 30.0, "wall_s_per_chunk": 0.1, "episodes": 200, "engine_calls_per_chunk": calls}
            for s in range(3)]
    path.write_text(json.dumps(aggregate(rows)))


def test_table_reads_the_rollouts_times_each_engine_row_and_plots(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(REPO)  # the rows name engines/ relative to the repository
    _rollout_json(tmp_path / "expert.json", 0, [1.0, 1.0, 1.0])
    _rollout_json(tmp_path / "ddim-4.json", 4, [0.9, 0.8, 0.7])
    r = build_table(tmp_path, rounds=2)
    md = r["markdown"].splitlines()
    assert len(md) == 4 and md[2].startswith("| scripted expert | 0 | 1.000 (0.000) |")
    assert md[3].startswith("| DDIM-4 | 4 | 0.800 (0.100) | 0.200 (0.100) | 0.410 (0.010) |")
    ddim = r["rows"][1]["latency_batch1"]
    assert r["rows"][0]["latency_batch1"] is None and 0 < ddim["encoder_s"] < ddim["chunk_s"]
    assert json.loads((tmp_path / "table.json").read_text())["latency"]["rounds"] == 2
    assert (tmp_path / "success-vs-calls.png").stat().st_size > 1000


def test_table_without_rollouts_says_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="run scripts/policy_rollout_table.sh"):
        build_table(tmp_path)
