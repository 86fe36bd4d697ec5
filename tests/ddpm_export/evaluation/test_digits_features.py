"""The second digits feature space (the conv net) beside the MLP: deterministic, independent
of the MLP's split, real digits at the floor, degraded digits far above it; and steps-table
reports it as its own column."""
import numpy as np
import pytest

from ddpm_export.evaluation.digits import (FEATURE_SPACES, FLOOR, digits_distribution, digits_split,
                                           train_digits_classifier, train_digits_conv)
from ddpm_export.evaluation.steps_table import _rows, format_steps_table, paired_differences


def test_conv_training_is_deterministic_and_leaves_torch_state_alone():
    import torch

    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = train_digits_conv.__wrapped__(16, 1, 2)  # 2 epochs: the same code path, uncached, fast
    after = torch.rand(1)
    b = train_digits_conv.__wrapped__(16, 1, 2)
    assert torch.equal(before, after)  # the global generator was not advanced
    np.testing.assert_array_equal(a.features(a.real_a[:50]), b.features(b.real_a[:50]))
    assert torch.get_num_threads() >= 1


def test_conv_space_is_trained_apart_from_the_mlp():
    mlp, conv = train_digits_classifier(), train_digits_conv()
    assert set(FEATURE_SPACES) == {"mlp", "conv"}
    assert conv.features(conv.real_a[:5]).shape == (5, 64)
    assert conv.test_accuracy > 0.95 and mlp.test_accuracy > 0.95
    x_tr_mlp = digits_split(16, 0)[0]
    x_tr_conv = digits_split(16, 1)[0]
    rows = lambda x: {r.tobytes() for r in x}  # noqa: E731
    assert rows(x_tr_mlp) != rows(x_tr_conv)  # another split: other training digits, other held-out ones
    assert len(rows(conv.real_b) & rows(x_tr_conv)) == 0  # its reference digits are its own held-out ones


@pytest.mark.parametrize("space", sorted(FEATURE_SPACES))
def test_real_digits_score_at_the_floor_and_degraded_ones_far_above(space):
    from scipy.ndimage import uniform_filter

    clf = FEATURE_SPACES[space]()
    n = 300
    real_train = digits_split(16, 0 if space == "conv" else 1)[0]  # real digits, not this space's real_a
    real_train = np.array([x for x in real_train if x.tobytes() not in {r.tobytes() for r in clf.real_b}])[:n]
    blur = uniform_filter(clf.real_a[:n].reshape(-1, 16, 16), size=(1, 2, 2)).reshape(n, -1)
    ones = clf.real_a[clf.y_test[: len(clf.real_a)] == 1]
    collapsed = np.resize(ones, (n, ones.shape[1]))  # every sample the digit 1 (repeated)
    d = digits_distribution(clf, {"other real": real_train, "blurred": blur, "collapsed": collapsed}, n=n)
    f = {k: v["frechet_to_real"] for k, v in d["sets"].items()}
    assert f["other real"] < 1.5 * f[FLOOR]
    assert f["blurred"] > 3 * f[FLOOR] and f["collapsed"] > 10 * f[FLOOR]


def _runs(with_conv):
    return [dict({"method": m, "steps": n, "seed": s, "engine_calls": n, "seconds": 1.0,
                  "frechet_to_real": 3.0 + s, "confident_share": 0.9, "class_min_share": 0.1},
                 **({"frechet_conv": 12.0 + 2 * s + (m == "unipc")} if with_conv else {}))
            for m, n in (("ddpm", 1000), ("unipc", 10)) for s in (0, 1, 2)]


def test_steps_table_reports_both_spaces_and_pairs_either():
    runs = _runs(True)
    r = {"runs": runs, "rows": _rows([("ddpm", 1000), ("unipc", 10)], [0, 1, 2],
                                     {(x["method"], x["steps"], x["seed"]): x for x in runs}),
         "num": 450, "seeds": [0, 1, 2], "batch": 64, "backend": "onnxruntime", "real_floor": 2.43,
         "real_reference_n": 450, "real_floor_conv": 12.2}
    unipc = next(x for x in r["rows"] if x["method"] == "unipc")
    assert unipc["frechet_conv_mean"] == pytest.approx(15.0) and unipc["frechet_conv_std"] == pytest.approx(2.0)
    table = format_steps_table(r)
    assert "| Frechet (mlp) | Frechet (conv) |" in table and "conv (floor 12.20" in table
    assert "| unipc | 10 | 4.00 +- 1.00 | 15.00 +- 2.00 | 0.900 |" in table
    conv = paired_differences(r, ("ddpm", 1000), key="frechet_conv")
    assert conv[0]["diff_per_seed"] == pytest.approx([1.0, 1.0, 1.0])


def test_runs_stored_before_the_conv_space_show_na():
    runs = _runs(False)
    rows = _rows([("unipc", 10)], [0, 1, 2], {(x["method"], x["steps"], x["seed"]): x for x in runs})
    assert rows[0]["frechet_conv_mean"] is None
    table = format_steps_table({"rows": rows, "num": 450, "seeds": [0, 1, 2], "batch": 64,
                                "backend": "onnxruntime", "real_floor": 2.43, "real_reference_n": 450})
    assert "| unipc | 10 | 4.00 +- 1.00 | n/a | 0.900 |" in table
    with pytest.raises(ValueError, match="frechet_conv"):
        paired_differences({"runs": runs, "rows": rows}, ("ddpm", 1000), key="frechet_conv")
