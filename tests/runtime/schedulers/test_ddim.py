"""runtime.schedulers.ddim: the DDIM paper's formulas and subsets, diffusers, DDPM at eta=1, errors."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.schedulers.ddim import DDIMScheduler
from runtime.schedulers.ddpm import DDPMScheduler
from runtime.schedulers.schedule import Schedule, ScheduleConfig

SHAPE = (2, 3, 4, 4)
NO_CLIP = ScheduleConfig(clip_denoised=False)
from scheduler_checks import check_against, dummy_eps, run_loop  # noqa: E402


# --- timesteps and formulas ---------------------------------------------------
def test_timestep_subsets():
    sched = DDIMScheduler(spacing="uniform")
    np.testing.assert_array_equal(sched.timesteps, np.arange(999, -1, -1))
    sched.set_timesteps(50)
    assert sched.timesteps[:2].tolist() == [980, 960] and sched.timesteps[-1] == 0
    quad = DDIMScheduler(spacing="quadratic")
    quad.set_timesteps(10)
    paper = [int(v) for v in np.linspace(0, np.sqrt(800), 10) ** 2]  # DDIM runners/diffusion.py
    assert quad.timesteps.tolist() == paper[::-1] and quad.timesteps.dtype == np.int64
    quad.set_timesteps(100)  # the int cast repeats small t: 96 distinct of 100
    assert len(quad.timesteps) == 96 and quad.timesteps[0] == 800
    assert np.all(np.diff(quad.timesteps) < 0)


def test_quadratic_dropping_repeats_matches_the_paper_loop():
    """The DDIM repo's generalized_steps over the 100 quadratic t (repeats included, eta=0,
    no clipping there) gives our 96-step result: a step from t to t is the identity."""
    s = Schedule(NO_CLIP)
    eps64 = lambda x, t: 0.9 * x + 0.1 * np.sin(t / 70.0)  # noqa: E731  (float64: no rounding)
    seq = [int(v) for v in np.linspace(0, np.sqrt(800), 100) ** 2]
    abar = np.append(1.0, s.alphas_cumprod)  # compute_alpha(): index t + 1, so abar(-1) = 1
    x = x_T = np.random.default_rng(0).standard_normal(SHAPE)
    for i, j in zip(reversed(seq), reversed([-1] + seq[:-1])):
        at, an = abar[i + 1], abar[j + 1]
        e = eps64(x, i)
        x0 = (x - e * np.sqrt(1 - at)) / np.sqrt(at)
        x = np.sqrt(an) * x0 + np.sqrt(1 - an) * e
    sched = DDIMScheduler(NO_CLIP, spacing="quadratic", dtype=np.float64)
    sched.set_timesteps(100)
    ours = x_T
    for t in sched.timesteps:
        ours = sched.step(eps64(ours, t), t, ours).prev_sample
    # float64 rounding over ~100 steps (measured 6e-15 relative)
    np.testing.assert_allclose(ours, x, rtol=1e-13, atol=1e-13)


def test_eta1_step_is_eq12_with_sigma_eq16():
    s, sched = Schedule(), DDIMScheduler(eta=1.0, spacing="quadratic", dtype=np.float64)
    sched.set_timesteps(20)
    t, t_prev = int(sched.timesteps[5]), int(sched.timesteps[6])
    a, ap = s.alphas_cumprod[t], s.alphas_cumprod[t_prev]
    rng = np.random.default_rng(0)
    x, eps, z = (0.3 * rng.standard_normal(SHAPE) for _ in range(3))
    sigma = np.sqrt((1 - ap) / (1 - a)) * np.sqrt(1 - a / ap)
    x0 = np.clip((x - np.sqrt(1 - a) * eps) / np.sqrt(a), -1, 1)
    # default ("consistent"): the direction term uses eps re-derived from the clipped x0
    e = (x - np.sqrt(a) * x0) / np.sqrt(1 - a)
    expected = np.sqrt(ap) * x0 + np.sqrt(1 - ap - sigma**2) * e + sigma * z
    np.testing.assert_allclose(sched.step(eps, t, x, noise=z).prev_sample, expected, rtol=1e-13)
    # diffusers' convention: the network's eps
    sched.use_clipped_model_output = False
    expected = np.sqrt(ap) * x0 + np.sqrt(1 - ap - sigma**2) * eps + sigma * z
    np.testing.assert_allclose(sched.step(eps, t, x, noise=z).prev_sample, expected, rtol=1e-13)


@pytest.mark.parametrize("clip", [False, True])
def test_eta1_over_all_steps_is_ddpm_fixedsmall(clip):
    """sigma(eta=1)^2 = the posterior variance: DDIM becomes DDPM (DDIM paper, eq. 16),
    when eps is consistent with the clipped x0 (use_clipped_model_output)."""
    cfg = ScheduleConfig(variance_type="fixedsmall", clip_denoised=clip)
    ddim = DDIMScheduler(cfg, eta=1.0, use_clipped_model_output=True, dtype=np.float64)
    ddpm = DDPMScheduler(cfg, dtype=np.float64)
    rng = np.random.default_rng(0)
    for t in [999, 500, 10, 1, 0]:
        x, eps, z = (2 * rng.standard_normal(SHAPE) for _ in range(3))
        a, b = ddim.step(eps, t, x, noise=z), ddpm.step(eps, t, x, noise=z)
        # different float64 formulas for one number: rounding times 1/(1 - abar_t) <= 1e4
        # (t = 0) gives <= ~1e-12 of the scale; measured 1.1e-13
        tol = 2e-12 * np.abs(b.prev_sample).max()
        np.testing.assert_allclose(a.prev_sample, b.prev_sample, rtol=0, atol=tol)
        np.testing.assert_array_equal(a.pred_original_sample, b.pred_original_sample)


def test_last_step_returns_x0_and_draws_noise_only_when_sigma_positive():
    sched = DDIMScheduler(eta=1.0)
    sched.set_timesteps(10)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    out = sched.step(0.1 * x, 0, x)  # abar_prev = 1, sigma = 0: no rng needed
    np.testing.assert_array_equal(out.prev_sample, out.pred_original_sample)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    run = DDIMScheduler(eta=0.0)
    run.set_timesteps(10)
    for t in run.timesteps:
        run.step(0.1 * x, t, x, rng=rng)
    assert rng.bit_generator.state == state


# --- diffusers ---------------------------------------------------------------
@pytest.mark.parametrize("in_float64", [False, True], ids=["diffusers-f32", "diffusers-f64"])
@pytest.mark.parametrize("steps", [1000, 50, 10])
@pytest.mark.parametrize("clip, use_clipped", [(True, False), (True, True), (False, False)],
                         ids=["clip", "clip-eps", "noclip"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_step_matches_diffusers(eta, clip, use_clipped, steps, in_float64):
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    ours = DDIMScheduler(ScheduleConfig(clip_denoised=clip), eta=eta,
                         use_clipped_model_output=use_clipped, dtype=np.float64)
    d = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=clip,
                                set_alpha_to_one=True, timestep_spacing="leading", steps_offset=0)
    ours.set_timesteps(steps)
    d.set_timesteps(steps)
    np.testing.assert_array_equal(d.timesteps.numpy(), ours.timesteps)
    tdtype = torch.float64 if in_float64 else torch.float32
    if in_float64:  # run diffusers' formulas on our float64 tables
        d.alphas_cumprod = torch.from_numpy(ours.schedule.alphas_cumprod.copy())
        d.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    s, ts = ours.schedule, list(ours.timesteps)
    checked = ts if steps <= 100 else sorted(set(ts[:3] + ts[::23] + ts[-6:]), reverse=True)
    rng = np.random.default_rng(2)
    for t in checked:
        t_prev = ts[ts.index(t) + 1] if t != ts[-1] else -1
        x = (3 * rng.standard_normal(SHAPE)).astype(np.float32)
        eps = rng.standard_normal(SHAPE).astype(np.float32)
        z = rng.standard_normal(SHAPE).astype(np.float32)
        theirs = d.step(torch.from_numpy(eps).to(tdtype), int(t), torch.from_numpy(x).to(tdtype),
                        eta=eta, use_clipped_model_output=use_clipped,
                        variance_noise=torch.from_numpy(z).to(tdtype))
        out = ours.step(eps, t, x, noise=z)
        ap = s.alphas_cumprod[t_prev] if t_prev >= 0 else 1.0
        u = 2.0**-53 if in_float64 else 2.0**-24
        check_against(out, theirs, s, int(t), int(t_prev), np.sqrt(ap), x, eps, z, u)


# --- full loop ---------------------------------------------------------------
# Computed once with this code (NumPy 2.4, PCG64); see test_ddpm.py for the 1e-5.
@pytest.mark.parametrize("eta, spacing, clip, steps, ref_sum, ref_mean_abs", [
    (0.0, "uniform", True, 50, -34.346995021624025, 0.17333544484108643),
    (1.0, "quadratic", True, 20, -22.292513815453276, 0.3638590440380843),
    (0.5, "uniform", False, 100, 17.28644094313495, 0.5275820347324043),
])
def test_full_loop_reference_numbers(eta, spacing, clip, steps, ref_sum, ref_mean_abs):
    # pinned with diffusers' convention (the network's eps kept after clipping)
    sched = DDIMScheduler(ScheduleConfig(clip_denoised=clip), eta=eta, spacing=spacing,
                          use_clipped_model_output=False)
    sched.set_timesteps(steps)
    x = run_loop(sched, seed=0).astype(np.float64)
    assert abs(x.sum() - ref_sum) <= 1e-5 * (1 + abs(ref_sum))
    assert abs(np.abs(x).mean() - ref_mean_abs) <= 1e-5 * ref_mean_abs


def test_fixed_seed_is_reproducible_and_noise_order_is_canonical():
    sched = DDIMScheduler(eta=1.0)
    sched.set_timesteps(20)
    first = run_loop(sched, seed=3)
    np.testing.assert_array_equal(first, run_loop(sched, seed=3))
    rng = np.random.default_rng(3)  # x_T, then one z per step with sigma > 0 (all but the last)
    x = rng.standard_normal((2, 3, 8, 8), dtype=np.float32)
    zs = [rng.standard_normal(x.shape, dtype=np.float32) for _ in sched.timesteps[:-1]] + [None]
    for t, z in zip(sched.timesteps, zs):
        x = sched.step(dummy_eps(x, t), t, x, noise=z).prev_sample
    np.testing.assert_array_equal(x, first)


# --- errors ------------------------------------------------------------------
X = np.zeros(SHAPE, np.float32)


def ten_steps(eta=1.0):
    sched = DDIMScheduler(eta=eta)
    sched.set_timesteps(10)
    return sched


@pytest.mark.parametrize("call, match", [
    (lambda: DDIMScheduler(spacing="linear"),
     r"spacing='linear' is unknown: expected one of \('uniform', 'quadratic', 'leading', 'trailing', 'linspace'\)"),
    *[(lambda e=e: DDIMScheduler(eta=e), "eta=.* out of range: expected 0 <= eta <= 1")
      for e in (-0.1, 1.5, float("nan"))],
    *[(lambda n=n: DDIMScheduler().set_timesteps(n), r"expected an int in \[1, 1000\]")
      for n in (1001, 0, 3.0)],
    (lambda: ten_steps().step(X, 999, X), r"t=999 is not in .* timesteps \[900, 800"),
    (lambda: ten_steps().step(X[..., 0], 900, X), r"eps has shape \(2, 3, 4\) but x_t has shape"),
    (lambda: ten_steps().step(X, 900, X), "t=900 adds noise: pass rng="),
    (lambda: ten_steps().step(X, 900, X, rng=42), "numpy.random.Generator"),
])
def test_errors_say_what_was_received_and_expected(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("variant", ["consistent", "diffusers"])
@pytest.mark.parametrize("steps, eta", [(50, 0.0), (10, 1.0)])
def test_set_alpha_to_one_false_matches_diffusers(steps, eta, variant):
    """set_alpha_to_one=False (a DDIMPipeline folder may ship it): the step after the last
    timestep goes to alphas_cumprod[0], not 1, as diffusers' DDIMScheduler does; the last
    step of the default (True) ends 0.01-ish away on eps ~ N(0, 1)."""
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    from runtime.schedulers import make_scheduler

    cfg = ScheduleConfig(set_alpha_to_one=False, steps_offset=1)
    ours = make_scheduler(cfg, "ddim", steps, eta=eta, variant=variant, clip=False)
    d = diffusers.DDIMScheduler(set_alpha_to_one=False, steps_offset=1, clip_sample=False)
    d.set_timesteps(steps)
    np.testing.assert_array_equal(d.timesteps.numpy(), ours.timesteps)
    rng = np.random.default_rng(3)
    for t in ours.timesteps:
        x = rng.standard_normal(SHAPE).astype(np.float32)
        eps = rng.standard_normal(SHAPE).astype(np.float32)
        z = rng.standard_normal(SHAPE).astype(np.float32)
        want = d.step(torch.from_numpy(eps), int(t), torch.from_numpy(x), eta=eta,
                      variance_noise=torch.from_numpy(z)).prev_sample.numpy()
        got = ours.step(eps, int(t), x, noise=z).prev_sample
        assert np.abs(got - want).max() < 2e-5, f"t={t}"
    assert float(d.final_alpha_cumprod) == pytest.approx(ours.schedule.alphas_cumprod[0], rel=1e-6)


def test_set_alpha_to_one_in_the_schedule_contract():
    """Absent = true (what every older manifest meant); false needs manifest_version 2, so a
    version-1 reader refuses the file instead of ending the chain at alpha 1."""
    from runtime.contract import manifest_version_for

    assert ScheduleConfig.from_dict({"kind": "linear"}).set_alpha_to_one is True
    assert manifest_version_for(ScheduleConfig()) == 1
    assert manifest_version_for(ScheduleConfig(set_alpha_to_one=False)) == 2
    assert ScheduleConfig.from_dict(ScheduleConfig(set_alpha_to_one=False).to_dict()).set_alpha_to_one is False
    with pytest.raises(ValueError, match=r"set_alpha_to_one=0 \(expected true or false\)"):
        ScheduleConfig(set_alpha_to_one=0)
