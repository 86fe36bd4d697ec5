"""runtime.schedulers.ddpm: reference numbers, the official float64 formulas, diffusers, errors."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.schedulers.base import StepOutput
from runtime.schedulers.ddpm import DDPMScheduler
from runtime.schedulers.schedule import Schedule, ScheduleConfig

SHAPE = (2, 3, 4, 4)

from scheduler_checks import check_against, dummy_eps, run_loop  # noqa: E402


# --- schedule and formulas ----------------------------------------------------
def test_reference_check_values():
    s = Schedule(ScheduleConfig())
    assert f"{s.alphas_cumprod[999]:.5g}" == "4.0358e-05"
    assert f"{s.alphas_cumprod[499]:.3g}" == "0.0786"
    assert f"{s.posterior_variance[1]:.5g}" == "5.4532e-05"


@pytest.mark.parametrize("variance_type", ["fixedlarge", "fixedsmall"])
def test_all_steps_are_the_official_float64_formulas_bit_for_bit(variance_type):
    """1000 steps use runtime.schedulers.schedule's constants, as the PyTorch reference sampler does."""
    cfg = ScheduleConfig(variance_type=variance_type)
    s, sched = Schedule(cfg), DDPMScheduler(cfg, dtype=np.float64)
    np.testing.assert_array_equal(sched.timesteps, np.arange(999, -1, -1))
    rng = np.random.default_rng(0)
    for t in [999, 500, 2, 1, 0]:
        x, eps, z = (rng.standard_normal(SHAPE) for _ in range(3))
        out = sched.step(eps, t, x, noise=z)
        x0 = s.sqrt_recip_alphas_cumprod[t] * x - s.sqrt_recipm1_alphas_cumprod[t] * eps
        x0 = np.clip(x0, -1, 1)
        mean = s.posterior_mean_coef1[t] * x0 + s.posterior_mean_coef2[t] * x
        expected = mean + np.exp(0.5 * s.model_log_variance[t]) * z if t > 0 else mean
        np.testing.assert_array_equal(out.pred_original_sample, x0)
        np.testing.assert_array_equal(out.prev_sample, expected)
        assert isinstance(out, StepOutput)


def test_strided_steps_use_respaced_betas():
    cfg = ScheduleConfig(variance_type="fixedlarge", clip_denoised=False)
    s, sched = Schedule(cfg), DDPMScheduler(cfg, dtype=np.float64)
    sched.set_timesteps(50)
    assert sched.timesteps[:3].tolist() == [980, 960, 940] and sched.timesteps[-1] == 0
    assert sched.timesteps.dtype == np.int64 and len(sched.timesteps) == 50
    x, eps, z = np.full(SHAPE, 0.5), np.zeros(SHAPE), np.ones(SHAPE)
    a, ap = s.alphas_cumprod[980], s.alphas_cumprod[960]
    beta = 1 - a / ap  # improved-diffusion respace.py
    x0 = x / np.sqrt(a)
    mean = np.sqrt(ap) * beta / (1 - a) * x0 + np.sqrt(1 - beta) * (1 - ap) / (1 - a) * x
    out = sched.step(eps, 980, x, noise=z)
    np.testing.assert_allclose(out.prev_sample, mean + np.sqrt(beta) * z, rtol=1e-13)


def test_t0_adds_no_noise_and_draws_none():
    """diffusers' fixed_large variance at t=0 is beta_0 (1e-4), the official log-variance
    uses posterior_variance[1] (5.45e-5): neither is ever used, since t = 0 adds no noise."""
    sched = DDPMScheduler(ScheduleConfig(variance_type="fixedlarge"), dtype=np.float64)
    rng = np.random.default_rng(0)
    x, eps = rng.standard_normal(SHAPE), rng.standard_normal(SHAPE)
    state = rng.bit_generator.state
    out = sched.step(eps, 0, x, rng=rng)
    assert rng.bit_generator.state == state
    np.testing.assert_array_equal(out.prev_sample, sched.step(eps, 0, x, noise=x).prev_sample)
    # the official mean coef_x0 x0 + 0 x_t, coef_x0 = beta_0 / (1 - abar_0) = 1 to 1e-13
    np.testing.assert_allclose(out.prev_sample, out.pred_original_sample, rtol=1e-12)


def test_dtype_and_add_noise():
    s, ones = Schedule(), np.ones(SHAPE, np.float32)
    out = DDPMScheduler().step(ones, 10, ones.astype(np.float64), rng=np.random.default_rng(0))
    assert out.prev_sample.dtype == out.pred_original_sample.dtype == np.float32
    xt = DDPMScheduler(dtype=np.float64).add_noise(ones, 2 * ones, np.array([0, 999]))
    assert xt.dtype == np.float64
    for t, x in ((999, xt[1]), (5, DDPMScheduler().add_noise(ones, 2 * ones, 5))):
        expected = s.sqrt_alphas_cumprod[t] + 2 * s.sqrt_one_minus_alphas_cumprod[t]
        np.testing.assert_allclose(x, np.full(x.shape, expected), rtol=1e-7)


# --- diffusers ---------------------------------------------------------------
def test_diffusers_schedule_is_a_few_ulp_away():
    diffusers = pytest.importorskip("diffusers")
    d = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    rel = np.abs(d.alphas_cumprod.numpy().astype(np.float64) / Schedule().alphas_cumprod - 1)
    assert rel.max() <= 6.5 * 2.0**-24  # measured 6.05 ulp (t = 608): float32 cumprod drift


@pytest.mark.parametrize("in_float64", [False, True], ids=["diffusers-f32", "diffusers-f64"])
@pytest.mark.parametrize("steps", [1000, 50, 10])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("variance_type", ["fixedlarge", "fixedsmall"])
def test_step_matches_diffusers(variance_type, clip, steps, in_float64):
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    ours = DDPMScheduler(ScheduleConfig(variance_type=variance_type, clip_denoised=clip),
                         dtype=np.float64)
    d = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=clip,
                                variance_type=variance_type.replace("fixed", "fixed_"))
    ours.set_timesteps(steps)
    d.set_timesteps(steps)
    np.testing.assert_array_equal(d.timesteps.numpy(), ours.timesteps)
    tdtype = torch.float64 if in_float64 else torch.float32
    if in_float64:  # run diffusers' formulas on our float64 tables
        d.betas = torch.from_numpy(ours.schedule.betas.copy())
        d.alphas = 1.0 - d.betas
        d.alphas_cumprod = torch.from_numpy(ours.schedule.alphas_cumprod.copy())
        d.one = torch.tensor(1.0, dtype=torch.float64)
    s, ts = ours.schedule, list(ours.timesteps)
    # all of a short schedule; of 1000 steps both ends (1 - abar smallest there), every 23rd
    checked = ts if steps <= 100 else sorted(set(ts[:3] + ts[::23] + ts[-6:]), reverse=True)
    rng = np.random.default_rng(1)
    for t in checked:
        t_prev = ts[ts.index(t) + 1] if t != ts[-1] else -1
        # x_t wide enough that x0_hat is clipped at some t; values exact in float32
        x = (3 * rng.standard_normal(SHAPE)).astype(np.float32)
        eps = rng.standard_normal(SHAPE).astype(np.float32)
        # diffusers draws z with randn_tensor(generator): replay that generator for ours
        z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(int(t)), dtype=tdtype)
        theirs = d.step(torch.from_numpy(eps).to(tdtype), int(t), torch.from_numpy(x).to(tdtype),
                        generator=torch.Generator().manual_seed(int(t)))
        out = ours.step(eps, t, x, noise=z.numpy())
        a, ap = s.alphas_cumprod[t], (s.alphas_cumprod[t_prev] if t_prev >= 0 else 1.0)
        u = 2.0**-53 if in_float64 else 2.0**-24
        c = np.sqrt(ap) * (1 - a / ap) / (1 - a)
        check_against(out, theirs, s, int(t), int(t_prev), c, x, eps, z.numpy(), u)


# --- full loop ---------------------------------------------------------------
# Computed once with this code (NumPy 2.4, PCG64). A formula regression moves them by
# far more than 1e-5 relative; 1e-5 leaves room for libm/NumPy ulp differences.
@pytest.mark.parametrize("variance_type, clip, steps, ref_sum, ref_mean_abs", [
    ("fixedlarge", True, None, -7.077152794925496, 0.3735005535509117),
    ("fixedsmall", False, 50, 4.662385312927654, 0.3831081770200247),
    ("fixedlarge", True, 10, -19.269674665294588, 0.5056230344610716),
])
def test_full_loop_reference_numbers(variance_type, clip, steps, ref_sum, ref_mean_abs):
    sched = DDPMScheduler(ScheduleConfig(variance_type=variance_type, clip_denoised=clip))
    sched.set_timesteps(steps)
    x = run_loop(sched, seed=0).astype(np.float64)
    assert abs(x.sum() - ref_sum) <= 1e-5 * (1 + abs(ref_sum))
    assert abs(np.abs(x).mean() - ref_mean_abs) <= 1e-5 * ref_mean_abs


def test_fixed_seed_is_reproducible_and_noise_order_is_canonical():
    sched = DDPMScheduler()
    sched.set_timesteps(100)
    first = run_loop(sched, seed=7)
    np.testing.assert_array_equal(first, run_loop(sched, seed=7))
    assert not np.array_equal(first, run_loop(sched, seed=8))
    # x_T first, then one float32 z per step with t > 0, in descending t
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 8, 8), dtype=np.float32)
    zs = {t: rng.standard_normal(x.shape, dtype=np.float32) for t in sched.timesteps if t > 0}
    for t in sched.timesteps:
        x = sched.step(dummy_eps(x, t), t, x, noise=zs.get(t)).prev_sample
    np.testing.assert_array_equal(x, first)


# --- errors ------------------------------------------------------------------
X, RNG = np.zeros(SHAPE, np.float32), np.random.default_rng(0)


def strided(n=50):
    sched = DDPMScheduler()
    sched.set_timesteps(n)
    return sched


@pytest.mark.parametrize("call, match", [
    *[(lambda n=n: strided(n), r"num_inference_steps=.*expected an int in \[1, 1000\]")
      for n in (1001, 0, -1, 2.5, True, "50")],
    (lambda: strided().step(X, 999, X, rng=RNG), r"t=999 is not in .* timesteps \[980, 960"),
    (lambda: strided().step(X, 980.0, X, rng=RNG), "single integer timestep"),
    (lambda: strided().step(X, np.array([980, 960]), X, rng=RNG), "single integer timestep"),
    (lambda: strided().step(X[:, :2], 980, X, rng=RNG),
     r"eps has shape \(2, 2, 4, 4\) but x_t has shape \(2, 3, 4, 4\)"),
    (lambda: strided().step(X, 980, X.astype(np.int64), rng=RNG), "x_t has dtype int64"),
    (lambda: strided().step(X, 980, X), "t=980 adds noise: pass rng="),
    (lambda: strided().step(X, 980, X, rng=RNG, noise=X), "either rng or noise"),
    (lambda: strided().step(X, 980, X, noise=X[0]), r"noise has shape \(3, 4, 4\), expected"),
    (lambda: strided().step(X, 980, X, rng=np.random.RandomState(0)), "Generator.*default_rng"),
    (lambda: DDPMScheduler.init_noise(SHAPE, None), "init_noise needs rng"),
    (lambda: DDPMScheduler(dtype=np.int32), "dtype=int32 is not supported"),
    (lambda: strided().add_noise(X, X, 1000), r"t=.*1000.* out of range: expected 0 <= t < 1000"),
    (lambda: strided().add_noise(X, X, np.array([-1, 3])), "out of range"),
    (lambda: strided().add_noise(X, X, np.array([1, 2, 3])), r"\[N=2\] ints"),
    (lambda: strided().add_noise(X, X[:1], 3), "noise has shape"),
])
def test_errors_say_what_was_received_and_expected(call, match):
    with pytest.raises(ValueError, match=match):
        call()
