"""runtime.io.load_npz never unpickles; runtime.limits bounds what a request may hold in memory."""
import pickle
import tracemalloc

import numpy as np
import pytest

from runtime.io import NpzError, load_npz, make_grid, to_uint8
from runtime.limits import (
    LOOP_BYTES_PER_VALUE,
    SAMPLE_CLI_BYTES_PER_VALUE,
    MemoryLimitError,
    available_memory,
    check_images_fit,
    images_bytes,
)
from runtime.loop import sample

WHAT = "samples from a test"


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_load_npz_reads_numeric_arrays(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.arange(3), y=np.ones((2, 2), np.float32))
    assert sorted(load_npz(tmp_path / "a.npz", WHAT)) == ["x", "y"]
    z = load_npz(tmp_path / "a.npz", WHAT, keys=("y",))
    assert list(z) == ["y"] and z["y"].dtype == np.float32


@pytest.mark.parametrize("kind", ["object array", "pickle named .npz"])
def test_load_npz_refuses_pickled_objects_naming_the_file(tmp_path, kind):
    marker, p = tmp_path / "MARKER", tmp_path / "a.npz"
    if kind == "object array":
        np.savez(p, x=np.array([Payload(marker)], dtype=object))
    else:
        p.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(NpzError, match=rf"^{p}: refused: .*could run code; expected {WHAT}") as e:
        load_npz(p, WHAT)
    assert not marker.exists() and e.value.reason.startswith("refused")


def test_load_npz_damaged_missing_and_npy(tmp_path):
    with pytest.raises(NpzError, match="nope.npz: no such file; expected samples"):
        load_npz(tmp_path / "nope.npz", WHAT)
    np.savez(tmp_path / "a.npz", x=np.arange(3))
    with pytest.raises(NpzError, match=r"a.npz: no 'images' array \(has \['x'\]\)"):
        load_npz(tmp_path / "a.npz", WHAT, keys=("images",))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "a.npz").read_bytes()[:40])
    with pytest.raises(NpzError, match="cut.npz: not a readable .npz"):
        load_npz(tmp_path / "cut.npz", WHAT)
    np.save(tmp_path / "b.npy", np.arange(3))
    with pytest.raises(NpzError, match="b.npy: is a .npy array, not a .npz"):
        load_npz(tmp_path / "b.npy", WHAT)


def test_check_images_fit_names_the_need_and_sample_many():
    assert check_images_fit(10, (3, 32, 32), 8, available=10 ** 9) == 10 * 3 * 32 * 32 * 8
    with pytest.raises(MemoryLimitError) as e:
        check_images_fit(50000, (3, 256, 256), 8, name="--num", available=2 ** 30)
    msg = str(e.value)
    assert msg.startswith("--num 50000: ") and "need about 73.2 GiB" in msg and "1.0 GiB is available" in msg
    assert "at most about 682 images fit" in msg and "runtime.sample_many --num 50000" in msg
    assert available_memory() is None or available_memory() > 0


def test_the_bounds_cover_what_sampling_really_holds():
    """tracemalloc (numpy reports its buffers to it) around the loop and the PNG grid conversion:
    the measured peaks stay within the per-value bounds the refusal uses (plus fixed overhead)."""
    sched = {"kind": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_timesteps": 4,
             "variance_type": "fixedlarge", "clip_denoised": True}
    shape, num = (1, 16, 16), 3000
    tracemalloc.start()
    try:
        res = sample(lambda x, t: np.zeros_like(x), shape, sched, num, batch=64)
        loop_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        make_grid(to_uint8(res.images))
        cli_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    slack = 2 ** 20  # the scheduler's tables, a few batches
    assert images_bytes(num, shape, LOOP_BYTES_PER_VALUE) * 0.9 < loop_peak <= images_bytes(num, shape, LOOP_BYTES_PER_VALUE) + slack
    assert cli_peak <= images_bytes(num, shape, SAMPLE_CLI_BYTES_PER_VALUE) + slack


def test_the_loop_refuses_before_sampling(monkeypatch):
    import runtime.limits as limits

    monkeypatch.setattr(limits, "available_memory", lambda: 10 ** 6)
    calls = []
    with pytest.raises(MemoryLimitError, match="num 1000: .*runtime.sample_many"):
        sample(lambda x, t: calls.append(1) or np.zeros_like(x), (3, 32, 32), {"num_timesteps": 10}, 1000)
    assert not calls
