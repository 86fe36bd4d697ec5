"""ddpm-export bench --policy on a tiny policy (tests/tiny_policy.py): the table's rows, the
LeRobot column skipped with its reason when there is no LeRobot python, and (slow, with the
LeRobot venv) LeRobot's own policy rebuilt from the checkpoint holds the checkpoint's weights.
A smoke run: the numbers are a printed table, not a timed test."""
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from ddpm_export.cli.main import main
from tiny_policy import tiny_policy

REPO = Path(__file__).resolve().parents[3]
LR = os.environ.get("DDPM_LEROBOT_PYTHON") or str(REPO / ".venv-lerobot" / "bin" / "python")


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return tiny_policy(tmp_path_factory.mktemp("bench_policy"), "state")


def test_bench_policy_prints_a_row_per_sampler_and_says_why_lerobot_is_missing(policy, tmp_path):
    missing = tmp_path / "no-lerobot" / "python"
    r = CliRunner().invoke(main, ["bench", "--policy", str(policy), "--samplers", "ddpm:5,ddim:3", "--chunks", "2",
                                  "--threads", "1", "--lerobot-python", str(missing),
                                  "--json-out", str(tmp_path / "b.json")])
    assert r.exit_code == 0, r.output
    assert f"LeRobot column skipped: no LeRobot python at {missing}" in r.output
    assert "machine load (1, 5, 15 min) before" in r.output
    rows = [line for line in r.output.splitlines() if line.startswith("| DD")]
    assert [row.split(" | ")[0] for row in rows] == ["| DDPM-5", "| DDIM-3"] and all(" | - | " in x for x in rows)
    res = json.loads((tmp_path / "b.json").read_text())
    for row in res["rows"]:
        for k in ("fp32", "fp16"):  # FP16 exported from the checkpoint beside the engine
            c = row[k]
            assert 0 < c["encoder_s"] < c["chunk_s"] and 0 < c["denoiser_s"] < c["chunk_s"]
    assert len(res["load_before"]) == 3 and res["lerobot"]["skipped"]


def test_bench_policy_refuses_an_image_engine_and_bad_samplers(policy, tiny_export):
    r = CliRunner().invoke(main, ["bench", "--policy", str(tiny_export["onnx"]), "--lerobot-python", "none"])
    assert r.exit_code == 1 and "not a policy engine" in r.output, r.output
    r = CliRunner().invoke(main, ["bench", "--policy", str(policy), "--samplers", "unipc:10"])
    assert r.exit_code == 1 and "expected ddpm or ddim" in r.output, r.output
    r = CliRunner().invoke(main, ["bench", "--policy", str(policy), "--samplers", "ddim"])
    assert r.exit_code == 2 and "expected METHOD:STEPS" in r.output, r.output


@pytest.mark.slow
@pytest.mark.skipif(not Path(LR).is_file(), reason=f"no LeRobot python at {LR} (make setup-lerobot)")
def test_lerobot_folder_rebuilt_from_the_checkpoint_holds_its_weights_and_benches(policy, tmp_path):
    import torch

    from ddpm_export.evaluation.bench_policy import format_policy_bench, lerobot_folder_from_checkpoint, \
        run_policy_bench
    from ddpm_export.weights.from_lerobot import import_lerobot

    ckpt = policy.with_name("p.pt")
    folder = lerobot_folder_from_checkpoint(ckpt, tmp_path / "lr", LR)
    import_lerobot(folder, tmp_path / "again.pt")  # LeRobot's save_pretrained + processors, read back
    a, b = (torch.load(p, weights_only=True) for p in (ckpt, tmp_path / "again.pt"))
    assert a["ema"].keys() == b["ema"].keys() and all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    assert a["policy"]["observations"] == b["policy"]["observations"] and a["policy"]["action"] == b["policy"]["action"]
    res = run_policy_bench(policy, lerobot_folder=str(folder), lerobot_py=LR, samplers=(("ddim", 3),), chunks=1)
    row = res["rows"][0]["lerobot"]
    assert row["chunk_s"] > row["denoiser_s"] > 0 and row["encoder_s"] > 0
    assert "| DDIM-3 | " in format_policy_bench(res) and res["lerobot"]["version"] == "0.4.4"
