"""steps_table's pure helpers: the rows over seeds and the paired differences."""
import pytest

from ddpm_export.evaluation.steps_table import _rows, format_paired, paired_differences


def _result(frechets):
    """frechets: {(method, calls): {seed: value}} -> a steps_table-shaped result."""
    runs = [{"method": m, "steps": n, "seed": s, "engine_calls": n, "seconds": 1.0,
             "frechet_to_real": v, "confident_share": 0.9, "class_min_share": 0.1}
            for (m, n), per_seed in frechets.items() for s, v in per_seed.items()]
    plan = list(frechets)
    return {"runs": runs, "rows": _rows(plan, [0, 1, 2], {(x["method"], x["steps"], x["seed"]): x for x in runs})}


def test_paired_difference_removes_the_shared_seed_effect():
    # a common per-seed offset (seed 0 is worse for everyone) plus a fixed gap of 0.5
    seed_effect = {0: 1.0, 1: -0.6, 2: 0.2}
    r = _result({("ddpm", 1000): {s: 3.0 + e for s, e in seed_effect.items()},
                 ("unipc", 10): {s: 3.5 + e for s, e in seed_effect.items()},
                 ("ddim", 10): {0: 5.0, 2: 4.0}})  # seed 1 missing: paired over 0 and 2 only
    rows = {p["method"]: p for p in paired_differences(r, ("ddpm", 1000))}
    assert set(rows) == {"unipc", "ddim"}  # the reference row itself is left out
    u = rows["unipc"]
    assert u["diff_mean"] == pytest.approx(0.5) and u["diff_std"] == pytest.approx(0.0, abs=1e-12)
    assert u["seeds"] == 3
    # unpaired, the same rows' spreads are each 0.8: the pairing is what shows the gap
    unpaired = {row["method"]: row for row in r["rows"]}
    assert unpaired["unipc"]["frechet_std"] == pytest.approx(0.8)
    d = rows["ddim"]
    assert d["seeds"] == 2 and d["diff_per_seed"] == pytest.approx([5.0 - 4.0, 4.0 - 3.2])
    table = format_paired(list(rows.values()), ("ddpm", 1000))
    assert "| unipc | 10 | +0.50 +- 0.00 | +0.50, +0.50, +0.50 |" in table


def test_paired_difference_needs_the_reference_row():
    r = _result({("unipc", 10): {0: 3.0}})
    with pytest.raises(ValueError, match=r"no runs of ddpm at 1000 engine calls.*unipc"):
        paired_differences(r, ("ddpm", 1000))
