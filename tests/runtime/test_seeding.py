"""One seeding scheme (runtime/seeding.py): image i's noise comes from its own stream
(seed, i), so a seed gives the same images at any batch size, through sample-many's
shards (tests/runtime/test_shards.py) and through the PyTorch reference sampler."""
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime.loop import make_scheduler
from runtime.seeding import ImageStreams, image_generator

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "engines" / "digits.onnx"


def test_row_j_is_image_first_plus_j_stream():
    s = ImageStreams(3, 10, 4)
    a, b = s.standard_normal((4, 2, 5)), s.standard_normal((4, 2, 5))
    for j in range(4):
        g = image_generator(3, 10 + j)
        np.testing.assert_array_equal(a[j], g.standard_normal((2, 5), dtype=np.float32))
        np.testing.assert_array_equal(b[j], g.standard_normal((2, 5), dtype=np.float32))
    assert a.dtype == np.float32 and not np.array_equal(a[0], a[1])
    assert not np.array_equal(ImageStreams(4, 10, 1).standard_normal((1, 3)), a[0, 0, :3])
    # numpy's documented spawn-key derivation: the scheme can be rebuilt without this package
    g = np.random.Generator(np.random.PCG64(np.random.SeedSequence(3, spawn_key=(12,))))
    np.testing.assert_array_equal(a[2], g.standard_normal((2, 5), dtype=np.float32))


def test_bad_uses_say_what_was_expected():
    with pytest.raises(ValueError, match=r"first axis must be the batch \(2\)"):
        ImageStreams(0, 0, 2).standard_normal((3, 4))
    with pytest.raises(ValueError, match="count=0"):
        ImageStreams(0, 0, 0)
    with pytest.raises(ValueError, match="index=-1"):
        image_generator(0, -1)


def test_the_schedulers_accept_the_streams():
    sched = make_scheduler({"num_timesteps": 1000}, "ddim", steps=4, eta=1.0)
    x = sched.init_noise((2, 1, 4, 4), ImageStreams(0, 0, 2))
    out = sched.step(np.zeros_like(x), int(sched.timesteps[0]), x, ImageStreams(0, 0, 2))
    assert out.prev_sample.shape == (2, 1, 4, 4)


@pytest.fixture(scope="module")
def engine():
    with runtime.load(ENGINE, threads=1) as e:
        yield e


@pytest.mark.parametrize("method, kw", [("ddpm", dict(steps=3)), ("ddim", dict(steps=3, eta=1.0))])
def test_one_seed_gives_the_same_images_at_batch_1_7_and_64(engine, method, kw):
    # both methods add fresh noise at every step but the last: every z is drawn per image
    runs = {b: engine.sample_float(64, seed=5, batch=b, method=method, **kw).images for b in (1, 7, 64)}
    np.testing.assert_array_equal(runs[1], runs[64])
    np.testing.assert_array_equal(runs[7], runs[64])
    # images k.. of a run are the same drawn alone (first_image), and differ between images
    part = engine.sample_float(5, seed=5, first_image=30, batch=5, method=method, **kw).images
    np.testing.assert_array_equal(part, runs[64][30:35])
    assert not np.array_equal(runs[64][0], runs[64][1])
    other = engine.sample_float(4, seed=6, batch=4, method=method, **kw).images
    assert not np.array_equal(other, runs[64][:4])


def _reference_follows_runtime(tiny_export, n, threads):
    """threads: ONNX Runtime's and PyTorch's (None: their defaults)."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        _compare_chains(tiny_export, n, threads)
    finally:
        torch.set_num_threads(before)


def _compare_chains(tiny_export, n, threads):
    from ddpm_export.model.diffusion import GaussianDiffusion
    from ddpm_export.model.reference_sampler import stream_noise
    from runtime.schedulers.schedule import ScheduleConfig

    seed = 9
    got = {}
    with runtime.load(tiny_export["onnx"], threads=threads) as e:
        res = e.sample_float(n, seed=seed, batch=1,
                             callback=lambda i, t, x, x0: got.setdefault(t, []).append(x.copy()))
    chain = {t: np.concatenate(v) for t, v in got.items()}
    drift = []
    shape = (n, 1, 8, 8)
    ref, _ = GaussianDiffusion(ScheduleConfig()).sample(
        tiny_export["model"], shape, callback=lambda t, x: drift.append(np.abs(chain[t] - x.numpy()).max()),
        **stream_noise(ImageStreams(seed, 0, n), shape))
    assert len(drift) == 1000
    print(f"runtime batch 1 vs reference batch {n}: largest drift of x_t over 1000 steps {max(drift):.2e}")
    assert max(drift) < 1e-3 and np.abs(res.images - ref.numpy()).max() < 1e-3


def test_reference_sampler_on_the_same_streams_follows_the_runtime_chain(tiny_export):
    """Step by step over all 1000 DDPM steps, the runtime at batch 1 vs the PyTorch reference
    sampler at batch 2 on the same per-image streams: x_t at every step and the final images.
    ONNX Runtime and PyTorch run on one thread each: their default pools (a second thread that
    spins while waiting) on a shared, busy 2-core machine stretched this to minutes. The
    3-image version at the default threads is the slow test below (reference batch 3)."""
    _reference_follows_runtime(tiny_export, n=2, threads=1)


@pytest.mark.slow
def test_reference_sampler_at_batch_3_follows_the_runtime_chain(tiny_export):
    """The former default test: runtime at batch 1 vs the reference at batch 3, ONNX Runtime's
    default threads."""
    _reference_follows_runtime(tiny_export, n=3, threads=None)


def test_the_cost_benchmark_runs_and_prints_its_table():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_seeding", ROOT / "scripts" / "bench_seeding.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    r = bench.measure(ENGINE, batch=2, threads=1, repeats=1, n=2, clock="cpu")
    assert set(r["share_of_call"]) >= {"noise_image_streams", "scheduler_step_streams"}
    assert all(v >= 0 for v in r["seconds"].values()) and r["seconds"]["engine_call"] > 0
    table = bench.format_table(r)
    assert "z from per-image streams" in table and table.count("\n") == 8
