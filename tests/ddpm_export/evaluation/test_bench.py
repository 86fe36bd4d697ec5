"""The scheduler-cost benchmark runs every method on the shipped digits engine (a smoke run:
the numbers themselves are a printed table, not a timed test)."""
from pathlib import Path

from ddpm_export.evaluation.bench import SCHEDULER_COST_ROWS, format_scheduler_costs, scheduler_costs
from runtime.schedulers import METHODS

ENGINE = Path(__file__).resolve().parents[3] / "engines" / "digits.onnx"


def test_scheduler_costs_cover_every_method_at_two_batch_sizes():
    res = scheduler_costs(str(ENGINE), batches=(1, 3), steps=6, repeats=1, threads=1)
    assert {m for m, _ in SCHEDULER_COST_ROWS} == set(METHODS)  # a new method gets a row
    assert [(r["batch"], r["method"]) for r in res["rows"]] == [
        (b, m) for b in (1, 3) for m, _ in SCHEDULER_COST_ROWS]
    for r in res["rows"]:
        assert r["step_s"] > 0 and r["engine_call_s"] > 0
        assert r["share"] == r["step_s"] / r["engine_call_s"]
    table = format_scheduler_costs(res)
    assert "| 3 | unipc | order=3 |" in table and table.count("\n") == 2 + len(res["rows"])
