"""The variational bound (evaluation.likelihood): NumPy through ONNX vs the PyTorch reference,
a known answer, rate-distortion bookkeeping, the ``nll`` command and validate's likelihood level."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import runtime
from runtime.schedulers.schedule import Schedule, ScheduleConfig

from ddpm_export.cli.main import main
from ddpm_export.evaluation import likelihood as L
from ddpm_export.evaluation.likelihood_reference import reference_bound

ROOT = Path(__file__).resolve().parents[3]
ENG = ROOT / "engines"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EPS_PARITY = 1e-4  # the export's ONNX-vs-PyTorch limit on max |eps| (export_onnx's parity check)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The PyTorch reference runs batch-4..8 calls of small models: one thread is as fast as two on
    free cores and 50x faster when the 2 shared cores are oversubscribed (OpenMP barriers spin)."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def agreement_tolerance(schedule: ScheduleConfig, ref: L.Bound, delta: float) -> np.ndarray:
    """Per-image bound on |bits/dim(eps + d) - bits/dim(eps)| for any eps change with max |d| <= delta.

    KL terms (t >= 1): KL_t = v_t + |m_p - m_q|^2 / (2 sigma_p^2 D) in nats/dim, where v_t is the
    variance-only part (no eps in it). m_p depends on eps through clip(x0_hat), 1-Lipschitz, so
    |delta m_p|_rms <= s_t sqrt(2 sigma_p^2) delta with s_t = coef1_t sqrt(1/abar_t - 1) / sqrt(2 sigma_p^2),
    and |delta KL_t| = |a^2 - b^2| <= s_t delta (2 sqrt(KL_t - v_t) + s_t delta)  (a, b: sqrt of the mean part).
    Decoder (t = 0, coef1 = 1, coef2 = 0: the mean is x0_hat): d(-log P(bin))/dm is the mean of a
    truncated normal over the bin's interval, at most (|x - m| + h) / sigma^2 + 1 / sigma per element
    (the +1/sigma covers the open edge bins); the rms of |x - m| is sqrt(mse at t = 0). A factor 2
    covers the tanh approximation of Phi and second-order terms.
    """
    s = Schedule(schedule)
    lv_q = L.posterior_log_variance_clipped(s)
    lv_p = s.model_log_variance
    v = 0.5 * (-1.0 + lv_p - lv_q + np.exp(lv_q - lv_p))  # nats/dim
    sig2 = np.exp(lv_p)
    slope = s.posterior_mean_coef1 * s.sqrt_recipm1_alphas_cumprod / np.sqrt(2 * sig2)
    t = ref.timesteps
    kl_nats = ref.terms * math.log(2.0)
    mean_part = np.maximum(kl_nats - v[t], 0.0)
    dkl = slope[t] * delta * (2 * np.sqrt(mean_part) + slope[t] * delta)
    if ref.exact:
        weights = np.ones(t.shape[1] - 1)
    else:
        lo, hi = L.strata(ref.num_timesteps, t.shape[1])
        weights = (hi - lo)[::-1]
    kl_tol = (dkl[:, :-1] * weights).sum(axis=1)
    assert (t[:, -1] == 0).all()
    sigma0 = math.sqrt(sig2[0])
    dm0 = s.sqrt_recipm1_alphas_cumprod[0] * delta
    dec_tol = 2 * dm0 * ((np.sqrt(ref.mse[:, -1]) + L.BIN_HALF_WIDTH) / sigma0 ** 2 + 1 / sigma0)
    return (kl_tol + dec_tol) / math.log(2.0)


def test_numpy_bound_through_onnx_agrees_with_pytorch_per_image(tiny_export):
    schedule = ScheduleConfig()
    rng = np.random.default_rng(0)
    x0 = L.from_uint8(rng.integers(0, 256, (4, 1, 8, 8)))  # the tiny model: 1x8x8
    with runtime.load(tiny_export["onnx"]) as engine:
        got = L.compute_bound(engine, x0, schedule, t_samples=12, batch=4, seed=1)
        x = rng.standard_normal((3, 1, 8, 8), dtype=np.float32)
        import torch
        with torch.no_grad():
            ref_eps = tiny_export["model"](torch.from_numpy(x), torch.full((3,), 7)).numpy()
        measured_delta = float(np.abs(engine(x, np.full(3, 7, np.int32)) - ref_eps).max())
    ref = reference_bound(tiny_export["model"], x0, schedule, t_samples=12, batch=2, seed=1)  # other batching
    np.testing.assert_array_equal(got.timesteps, ref.timesteps)  # same draws whatever the batch
    tol = agreement_tolerance(schedule, ref, EPS_PARITY)
    diff = np.abs(got.total - ref.total)
    print(f"\nper-image |numpy-onnx - pytorch| {diff} bits/dim; tolerance {tol} "
          f"(eps limit {EPS_PARITY:g}; measured eps difference {measured_delta:.1e})")
    assert measured_delta < EPS_PARITY
    assert (diff <= tol).all()
    np.testing.assert_allclose(got.prior, ref.prior, rtol=1e-12)
    # the tolerance is tight enough to catch a wrong variance choice: fixedsmall differs by far more
    with runtime.load(tiny_export["onnx"]) as engine:
        small = L.compute_bound(engine, x0, ScheduleConfig(variance_type="fixedsmall"), t_samples=12, seed=1)
    assert (np.abs(small.total - ref.total) > 10 * tol).all()


@pytest.mark.parametrize("prediction, extra", [("x0", {}), ("v", {}), ("v", {"thresholding": True}),
                                               ("eps", {"clip_sample_range": 0.5})])
def test_numpy_bound_reads_the_output_by_its_prediction_type_as_the_pytorch_reference(tiny_export, prediction,
                                                                                      extra):
    """An x0 or v network (or a thresholded / narrower-clipped schedule): the NumPy bound must read the
    output the way the schedule says, as the PyTorch reference does (before: always as eps)."""
    import torch
    model = tiny_export["model"]
    schedule = ScheduleConfig(prediction=prediction, **extra)
    x0 = L.from_uint8(np.random.default_rng(3).integers(0, 256, (3, 1, 8, 8)))

    def out_fn(x, t):  # the same float32 network the reference calls
        with torch.no_grad():
            return model(torch.from_numpy(x), torch.from_numpy(t.astype(np.int64))).numpy()

    got = L.compute_bound(out_fn, x0, schedule, t_samples=6, batch=3, seed=2)
    ref = reference_bound(model, x0, schedule, t_samples=6, batch=3, seed=2)
    np.testing.assert_allclose(got.total, ref.total, rtol=1e-9, atol=1e-9)
    as_eps = L.compute_bound(out_fn, x0, ScheduleConfig(), t_samples=6, batch=3, seed=2)
    assert (np.abs(as_eps.total - ref.total) > 1e-3).all()  # the check can tell the readings apart


# --- the known answer: Gaussian data and its optimal eps predictor --------------------------
MU, SD = 0.1, 0.25


def gaussian_oracle(schedule: ScheduleConfig):
    """E[eps | x_t] for x0 ~ N(MU, SD^2) per pixel: x_t = a x0 + sigma eps is jointly Gaussian with
    eps, so E[eps | x_t] = sigma (x_t - a MU) / (a^2 SD^2 + sigma^2), linear in x_t."""
    s = Schedule(schedule)

    def eps_fn(x_t, t):
        assert x_t.dtype == np.float32 and t.dtype == np.int32  # what an engine receives
        a = s.sqrt_alphas_cumprod[t].reshape(-1, 1, 1, 1)
        var = 1.0 - s.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        return (np.sqrt(var) * (x_t - a * MU) / (a * a * SD * SD + var)).astype(np.float32)

    return eps_fn


def discrete_gaussian_probs() -> np.ndarray:
    """P(bin k), k = 0..255, of N(MU, SD^2) cut at the midpoints between bin centres (open edges)."""
    from scipy.special import ndtr

    centres = np.arange(256) / 127.5 - 1.0
    edges = np.concatenate([[-np.inf], centres[:-1] + 1.0 / 255.0, [np.inf]])
    return np.diff(ndtr((edges - MU) / SD))


def gaussian_data(n=64, side=8, seed=123):
    x = np.random.default_rng(seed).normal(MU, SD, (n, 1, side, side))
    return L.quantize(np.clip(x, -1, 1))


def test_bound_through_the_optimal_model_sits_just_above_the_exact_discrete_nll():
    schedule = ScheduleConfig()  # fixedlarge, T = 1000, as the shipped models
    x0 = gaussian_data()
    P = discrete_gaussian_probs()
    exact_nll = -np.log2(P[np.round((x0 + 1) * 127.5).astype(int)]).reshape(len(x0), -1).mean(1)
    b = L.compute_bound(gaussian_oracle(schedule), x0, schedule, batch=len(x0), seed=0)
    gap = b.total - exact_nll  # paired per image: the data's own randomness cancels
    se = gap.std(ddof=1) / math.sqrt(len(gap))
    entropy = -(P * np.log2(P)).sum()
    print(f"\nbound {b.total.mean():.4f} bits/dim vs exact discrete NLL {exact_nll.mean():.4f} "
          f"(entropy {entropy:.4f}); gap {gap.mean():.4f} +- {se:.4f}")
    # a bound: never below the exact NLL (beyond noise); and within 0.25 bits/dim (3.5%) above it.
    # The gap is the fixed-variance Gaussian reverse process's own looseness (measured 0.16, 0.14 and
    # 0.14 at noise seeds 0, 1, 2, each +- 0.03-0.04; 0.08, 0.17 and 0.13 before the noise came from
    # runtime.seeding's per-image streams).
    assert gap.mean() > -3 * se
    assert gap.mean() < 0.25
    assert 6.9 < exact_nll.mean() < 7.2 and abs(exact_nll.mean() - entropy) < 0.1


def test_monte_carlo_estimate_is_unbiased_and_its_standard_error_is_honest():
    schedule = ScheduleConfig()
    x0 = gaussian_data(n=16, side=4)
    oracle = gaussian_oracle(schedule)
    exact = np.mean([L.compute_bound(oracle, x0, schedule, batch=16, seed=s).total.mean() for s in range(4)])
    est = [L.compute_bound(oracle, x0, schedule, t_samples=20, batch=16, seed=100 + s) for s in range(30)]
    means = np.array([e.total.mean() for e in est])
    predicted = np.mean([math.sqrt((e.mc_se ** 2).sum()) / len(x0) for e in est])  # s.e. of one mean
    print(f"\nexact {exact:.4f}; 30 estimates at K=20: {means.mean():.4f} +- {means.std(ddof=1):.4f} "
          f"(predicted s.e. {predicted:.4f})")
    # unbiased: the mean of 30 estimates within 4 s.e. of the exact value (whose own noise is included)
    assert abs(means.mean() - exact) < 4 * means.std(ddof=1) / math.sqrt(30) + 0.02
    # the collapsed-strata s.e. is an approximation (measured: 0.8x the observed spread here)
    assert 0.5 * means.std(ddof=1) < predicted < 3 * means.std(ddof=1)


def test_noise_plan_draws_from_the_runtime_image_streams_whatever_the_batch():
    """One seeding scheme: image i of seed s draws its timesteps, then one x_t noise per timestep,
    from runtime.seeding.image_generator(s, i), the stream the samplers give that image."""
    from runtime.seeding import image_generator

    T, K, shape, seed = 100, 6, (1, 2, 2), 7
    whole = L.NoisePlan(seed, [3, 4, 5], T, K, shape)
    parts = [L.NoisePlan(seed, [3], T, K, shape), L.NoisePlan(seed, [4, 5], T, K, shape)]
    lo, hi = L.strata(T, K)
    for row, i in enumerate([3, 4, 5]):
        g = image_generator(seed, i)
        assert whole.timesteps[row].tolist() == np.append(g.integers(lo, hi)[::-1], 0).tolist()
    np.testing.assert_array_equal(whole.timesteps, np.concatenate([p.timesteps for p in parts]))
    for k in range(K):
        np.testing.assert_array_equal(whole.noise(k), np.concatenate([p.noise(k) for p in parts]))
    g = image_generator(seed, 4)  # exact plans (every t) draw no timesteps: noise comes first
    np.testing.assert_array_equal(L.NoisePlan(seed, [4], T, None, shape).noise(0)[0],
                                  g.standard_normal(shape, dtype=np.float32))


def test_rate_distortion_bookkeeping(tmp_path):
    schedule = ScheduleConfig(num_timesteps=50)
    x0 = gaussian_data(n=8, side=4)
    b = L.compute_bound(gaussian_oracle(schedule), x0, schedule, batch=8, seed=0)
    rd = L.rate_distortion(b)
    assert rd["t"][0] == 1 and rd["t"][-1] == 50
    # rate grows as the reverse process runs (t falls) and, at t = 1, plus the decoder is the total
    assert np.all(np.diff(rd["rate_bpd"]) <= 0)
    assert rd["rate_bpd"][-1] == pytest.approx(b.prior.mean())
    assert rd["rate_bpd"][0] + rd["decoder_bpd"] == pytest.approx(b.total.mean())
    # distortion falls from about the data's spread (SD on [0, 255]) to a couple of grey levels
    assert rd["distortion_rmse"][-1] == pytest.approx(SD * 127.5, rel=0.2)
    assert rd["distortion_rmse"][0] < 5
    rows = L.rate_distortion_rows(rd, (50, 10, 1))
    assert [r["t"] for r in rows] == [50, 10, 1]
    from ddpm_export.evaluation.plots import plot_rate_distortion

    plot_rate_distortion({"oracle": rd}, tmp_path / "rd.png")
    assert (tmp_path / "rd.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="every timestep"):
        L.rate_distortion(L.compute_bound(gaussian_oracle(schedule), x0, schedule, t_samples=5))


def test_bad_arguments_say_what_was_expected():
    schedule = ScheduleConfig()
    oracle = gaussian_oracle(schedule)
    with pytest.raises(ValueError, match="256-bin grid"):
        L.compute_bound(oracle, np.full((1, 1, 2, 2), 0.001), schedule)
    for k in (0, 2, 1001, True):
        with pytest.raises(ValueError, match=r"expected an int in \[3, 1000\]"):
            L.compute_bound(oracle, gaussian_data(n=1, side=2), schedule, t_samples=k)


# --- the command --------------------------------------------------------------------------
def test_nll_command_on_the_shipped_engine(tmp_path):
    out = tmp_path / "rep"
    r = CliRunner().invoke(main, ["nll", "--engine", str(ENG / "digits.onnx"), "--num", "3",
                                  "--t-samples", "8", "--batch", "3", "--report", str(out), "--no-progress"])
    print(r.output)
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "nll.json").read_text())
    res = rep["results"]["digits.onnx"]
    assert res["num_images"] == 3 and res["t_samples"] == 8 and len(res["per_image"]) == 3
    # a digits bound: the decoder alone is over a bit per pixel; the KL part is positive
    assert 1.0 < res["bits_per_dim"] < 6.0 and res["kl_sum_bpd"] > 0 and res["decoder_bpd"] > 1.0
    assert res["bits_per_dim"] == pytest.approx(res["prior_bpd"] + res["kl_sum_bpd"] + res["decoder_bpd"])
    assert "bits/dim" in r.output and "image-timesteps" in r.output
    assert (out / "nll.md").is_file() and not (out / "rate_distortion.png").exists()  # MC: no curve


def test_nll_scores_every_image_of_a_folder_unless_num_limits_it(tmp_path):
    """A folder of 8 images (fewer than the built-in sets' default of 16) is scored whole by default."""
    from PIL import Image

    from ddpm_export.evaluation.likelihood_data import BUILTIN_DEFAULT_NUM, default_num

    folder = tmp_path / "eight"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), mode="L").save(folder / f"{i}.png")
    assert default_num(str(folder)) is None and default_num("digits") == BUILTIN_DEFAULT_NUM == 16
    for extra, n in (([], 8), (["--num", "5"], 5)):
        out = tmp_path / f"rep{n}"
        r = CliRunner().invoke(main, ["nll", "--engine", str(ENG / "digits.onnx"), "--data", str(folder),
                                      "--t-samples", "3", "--batch", "8", "--report", str(out),
                                      "--no-progress"] + extra)
        assert r.exit_code == 0, r.output
        res = json.loads((out / "nll.json").read_text())["results"]["digits.onnx"]
        assert res["num_images"] == n and len(res["per_image"]) == n


@pytest.mark.slow
def test_nll_command_every_timestep_with_the_reference(tmp_path):
    out = tmp_path / "rep"
    r = CliRunner().invoke(main, ["nll", "--engine", str(ENG / "digits.onnx"), "--checkpoint",
                                  str(ENG / "digits.pt"), "--num", "2", "--report", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "nll.json").read_text())
    assert abs(rep["paired_difference"]["mean"]) < 1e-4
    assert len(rep["results"]["digits.onnx"]["rate_distortion"]) == len(L.RD_TIMESTEPS)
    assert (out / "rate_distortion.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("args, message", [
    (["--t-samples", "0"], "--t-samples 0 is invalid"),
    (["--t-samples", "1001"], "--t-samples 1001 is invalid"),
    (["--num", "5000"], "more than the 899 images"),
    (["--data", "EMPTY"], "no images found"),
    (["--data", "WRONG"], "16x16"),
    (["--data", "RGB"], "3 channels"),
    (["--batch", "65"], "max batch 64"),
])
def test_nll_bad_input_one_line_exit_1_nothing_written(tmp_path, args, message):
    from PIL import Image

    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "WRONG").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "WRONG" / "a.png")
    (tmp_path / "RGB").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "RGB" / "a.png")
    args = [str(tmp_path / a) if a in ("EMPTY", "WRONG", "RGB") else a for a in args]
    out = tmp_path / "rep"
    r = CliRunner().invoke(main, ["nll", "--engine", str(ENG / "digits.onnx"), "--report", str(out),
                                  "--no-progress"] + args)
    assert r.exit_code == 1, r.output
    assert message in r.output and r.output.strip().count("\n") == 0, r.output
    assert not out.exists()


# --- validate's fourth level --------------------------------------------------------------
def test_validate_likelihood_level_on_the_shipped_engines(tmp_path):
    out = tmp_path / "val"
    r = CliRunner().invoke(main, [
        "validate", "--checkpoint", str(ENG / "digits.pt"), "--engine", str(ENG / "digits.onnx"),
        "--engine", str(ENG / "digits-fp16.onnx"), "--report", str(out), "--t-stride", "500", "--batch", "2",
        "--trajectory-images", "0", "--samples", "0", "--likelihood-images", "2",
        "--likelihood-t-samples", "6", "--no-progress"])
    print(r.output)
    assert r.exit_code == 0, r.output
    lik = json.loads((out / "report.json").read_text())["likelihood"]
    assert set(lik["sets"]) == {"reference", "digits.onnx", "digits-fp16.onnx"}
    fp32, fp16 = lik["sets"]["digits.onnx"], lik["sets"]["digits-fp16.onnx"]
    assert abs(fp32["diff_mean"]) < 1e-5  # float32: only summation-order noise
    assert abs(fp16["diff_mean"]) < 1e-3 and fp16["diff_max_abs"] > abs(fp32["diff_mean"])
    assert all(c["passed"] for c in lik["checks"].values())
    assert "Likelihood (bits/dim" in (out / "report.md").read_text()
    assert (out / "likelihood.png").read_bytes()[:8] == PNG_MAGIC


def test_test_images_folder_and_cifar10_test_batch(tmp_path):
    import pickle

    from PIL import Image

    from ddpm_export.evaluation.likelihood_data import load_test_images

    for i in range(3):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8), mode="L").save(tmp_path / f"{i}.png")
    x, what = load_test_images(str(tmp_path), (1, 16, 16), 2)
    assert x.dtype == np.uint8 and x.shape == (2, 1, 16, 16) and x[1].max() == 40 and str(tmp_path) in what
    cifar = tmp_path / "cifar-10-batches-py"
    cifar.mkdir()
    data = np.arange(4 * 3072, dtype=np.int64).astype(np.uint8).reshape(4, 3072)
    with open(cifar / "test_batch", "wb") as f:
        pickle.dump({b"data": data, b"labels": [0, 1, 2, 3]}, f)
    x, what = load_test_images(str(cifar), (3, 32, 32), 4)
    assert what == "CIFAR-10 test batch" and (x.reshape(4, -1) == data).all()
    with pytest.raises(ValueError, match="engine expects 1x16x16"):
        load_test_images(str(cifar), (1, 16, 16))
