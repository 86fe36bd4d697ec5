"""Prediction types (eps / x0 / v), beta schedules, dynamic thresholding, timestep spacing and
explicit timesteps of DDPM and DDIM against diffusers' DDPMScheduler / DDIMScheduler.

Two separate comparisons, so a failure says which part is off:
- the schedule tables: ours (float64) vs diffusers' (float32), within float32 rounding;
- the step formulas: whole chains from the same x_T and the same noise, diffusers run on our
  float64 tables (swapped in), so only the formulas differ. Tolerance: 1e-10 absolute on
  values of size ~1 (chains of 20 steps; float64 rounding is ~1e-16, amplified at most by
  1/sqrt(1 - abar_0) ~ 1e2 where eps is derived from x0, and by the chain).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from runtime.schedulers import make_scheduler
from runtime.schedulers.base import spaced_timesteps
from runtime.schedulers.ddim import DDIMScheduler
from runtime.schedulers.ddpm import DDPMScheduler
from runtime.schedulers.schedule import Schedule, ScheduleConfig

SHAPE = (2, 3, 6, 6)
DIFFUSERS_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
CHAIN_TOL = 1e-10


def sigmoid_betas(T, start=-3.0, end=3.0, tau=1.0):
    """denoising-diffusion-pytorch's sigmoid_beta_schedule (Jabri et al. 2022), float64: a
    schedule no diffusers beta_schedule names, so it travels as explicit betas."""
    t = np.linspace(0, T, T + 1) / T
    v_start = 1 / (1 + np.exp(-start / tau))
    v_end = 1 / (1 + np.exp(-end / tau))
    abar = (-1 / (1 + np.exp(-((t * (end - start) + start) / tau))) + v_end) / (v_end - v_start)
    abar = abar / abar[0]
    return np.clip(1 - abar[1:] / abar[:-1], 0, 0.999)


def config(kind, prediction="eps", T=1000, **kw):
    if kind == "explicit":
        kw.update(betas=sigmoid_betas(T))
    if kind == "scaled_linear":
        kw.setdefault("beta_start", 0.00085)
        kw.setdefault("beta_end", 0.012)
    return ScheduleConfig(kind=kind, prediction=prediction, num_timesteps=T, **kw)


def diffusers_kwargs(cfg: ScheduleConfig):
    kw = dict(num_train_timesteps=cfg.num_timesteps, beta_start=cfg.beta_start, beta_end=cfg.beta_end,
              prediction_type=DIFFUSERS_PREDICTION[cfg.prediction], clip_sample=cfg.clip_denoised,
              clip_sample_range=cfg.clip_sample_range, thresholding=cfg.thresholding,
              dynamic_thresholding_ratio=cfg.dynamic_thresholding_ratio,
              sample_max_value=cfg.sample_max_value, timestep_spacing=cfg.timestep_spacing,
              steps_offset=cfg.steps_offset)
    if cfg.kind == "explicit":
        kw.update(trained_betas=list(cfg.betas))
    else:
        kw.update(beta_schedule=cfg.kind)
    return kw


def model_output(x, t):
    """A stand-in network, float32 like an engine: smooth in x and t, magnitude ~1 whatever
    the prediction type, so x0_hat is clipped now and then."""
    return (0.9 * x + 0.3 * np.sin(t / 70.0 + np.arange(x.shape[1])[:, None, None])).astype(np.float32)


def chain_against_diffusers(ours, theirs, torch, eta=None, seed=0):
    """Run both from the same x_T with the same z per step; each starts from its own x.
    Returns the largest difference of prev_sample and of pred_original_sample over the chain."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(SHAPE)
    xd = torch.from_numpy(x.copy())
    worst_prev = worst_x0 = 0.0
    for t in ours.timesteps:
        g = torch.Generator().manual_seed(int(t))
        z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(int(t)), dtype=torch.float64)
        out = ours.step(model_output(x, t), t, x, noise=z.numpy())
        kw = {"generator": g} if eta is None else {"eta": eta, "variance_noise": z,
                                                   "use_clipped_model_output": False}
        res = theirs.step(torch.from_numpy(model_output(xd.numpy(), t).astype(np.float64)), int(t), xd, **kw)
        xd, x = res.prev_sample, out.prev_sample
        worst_prev = max(worst_prev, float(np.max(np.abs(x - xd.numpy()))))
        worst_x0 = max(worst_x0, float(np.max(np.abs(out.pred_original_sample
                                                      - res.pred_original_sample.numpy()))))
    return worst_prev, worst_x0


def use_our_tables(d, sched, torch):
    """Swap diffusers' float32 schedule tables for ours (float64): formulas compared alone."""
    s = sched.schedule
    d.betas = torch.from_numpy(s.betas.copy())
    d.alphas = 1.0 - d.betas
    d.alphas_cumprod = torch.from_numpy(s.alphas_cumprod.copy())
    d.one = torch.tensor(1.0, dtype=torch.float64)
    d.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)


KINDS = ("linear", "scaled_linear", "squaredcos_cap_v2", "explicit")


@pytest.mark.parametrize("kind", KINDS)
def test_schedule_tables_equal_diffusers_to_float32_rounding(kind):
    diffusers = pytest.importorskip("diffusers")
    cfg = config(kind)
    d = diffusers.DDPMScheduler(**diffusers_kwargs(cfg))
    s = Schedule(cfg)
    betas = d.betas.numpy().astype(np.float64)
    # betas: float32 rounding of the same float64 numbers (diffusers forms them in float32 for
    # the linear kinds: a few ulp)
    assert np.max(np.abs(betas / s.betas - 1)) <= 4 * 2.0**-24
    # abar: the float32 cumprod drifts by a few ulp (6 ulp measured for linear, test_ddpm), and
    # each alpha = 1 - beta in float32 carries beta's rounding amplified by beta / alpha (the
    # cosine schedule's last alpha is 0.001: 1000x). Bound: 16 ulp + 2 ulp * sum_k beta_k / alpha_k
    u = 2.0**-24
    rel = np.abs(d.alphas_cumprod.numpy().astype(np.float64) / s.alphas_cumprod - 1)
    bound = 16 * u + 2 * u * np.cumsum(s.betas / s.alphas)
    worst = int(np.argmax(rel / bound))
    assert rel[worst] <= bound[worst], f"{kind}: abar[{worst}] differs by {rel[worst] / u:.1f} ulp"


def test_cosine_schedule_is_the_improved_ddpm_formula():
    """Nichol & Dhariwal 2021 eq. (17) directly: abar_t = f(t)/f(0), f(t) = cos((t/T + s)/(1 + s) pi/2)^2,
    until a beta reaches the 0.999 cap (only the last one for T = 1000)."""
    s = Schedule(config("squaredcos_cap_v2"))
    T = 1000
    f = np.cos((np.arange(T + 1) / T + 0.008) / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(s.alphas_cumprod[:-1], (f / f[0])[1:-1], rtol=1e-12)
    assert s.betas[-1] == 0.999 and s.betas[:-1].max() < 0.999


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_chain_matches_diffusers_by_prediction_and_schedule(method, kind, prediction):
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    cfg = config(kind, prediction, variance_type="fixedsmall")
    if method == "ddpm":
        ours = DDPMScheduler(cfg, dtype=np.float64)
        d = diffusers.DDPMScheduler(variance_type="fixed_small", **diffusers_kwargs(cfg))
        eta = None
    else:
        ours = make_scheduler(cfg, "ddim", 20, variant="diffusers", eta=1.0)
        ours.dtype = np.dtype(np.float64)
        d = diffusers.DDIMScheduler(set_alpha_to_one=True, **diffusers_kwargs(cfg))
        eta = 1.0
    ours.set_timesteps(20)
    d.set_timesteps(20)
    np.testing.assert_array_equal(d.timesteps.numpy(), ours.timesteps)
    use_our_tables(d, ours, torch)
    worst_prev, worst_x0 = chain_against_diffusers(ours, d, torch, eta)
    assert worst_prev <= CHAIN_TOL and worst_x0 <= CHAIN_TOL, (worst_prev, worst_x0)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_dynamic_thresholding_and_clip_range_match_diffusers(method, prediction):
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    for extra in (dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5),
                  dict(thresholding=True, clip_denoised=False),  # thresholding replaces clipping
                  dict(clip_sample_range=0.7)):
        cfg = config("linear", prediction, variance_type="fixedlarge", **extra)
        if method == "ddpm":
            ours = DDPMScheduler(cfg, dtype=np.float64)
            d = diffusers.DDPMScheduler(variance_type="fixed_large", **diffusers_kwargs(cfg))
            eta = None
        else:
            ours = DDIMScheduler(cfg, eta=0.0, use_clipped_model_output=False, dtype=np.float64)
            d = diffusers.DDIMScheduler(set_alpha_to_one=True, **diffusers_kwargs(cfg))
            eta = 0.0
        ours.set_timesteps(10)
        d.set_timesteps(10)
        use_our_tables(d, ours, torch)
        worst_prev, worst_x0 = chain_against_diffusers(ours, d, torch, eta, seed=3)
        assert worst_prev <= CHAIN_TOL and worst_x0 <= CHAIN_TOL, (extra, worst_prev, worst_x0)


def test_thresholding_changes_x0_where_clipping_would_not():
    """The check above could pass with thresholding ignored only if it never acted: it acts."""
    cfg = config("linear", "x0", thresholding=True, dynamic_thresholding_ratio=0.5, sample_max_value=2.0)
    sched = DDPMScheduler(cfg, dtype=np.float64)
    sched.set_timesteps(10)
    out = np.full((1, 1, 2, 2), 0.5)
    out[0, 0, 0, 0] = 1.8  # |x0| quantile 0.5 = 0.5 -> s = 1: plain clipping
    np.testing.assert_array_equal(sched.step(out, 0, out).pred_original_sample.ravel(), [1, .5, .5, .5])
    out = np.array([1.5, 1.6, 1.7, 3.0]).reshape(1, 1, 2, 2)  # quantile 1.65 -> s = 1.65
    x0 = sched.step(out, 0, out).pred_original_sample.ravel()
    np.testing.assert_allclose(x0, [1.5 / 1.65, 1.6 / 1.65, 1.0, 1.0], rtol=1e-15)


# --- timestep spacing --------------------------------------------------------
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("offset", [0, 1])
def test_spacing_equals_diffusers_set_timesteps(spacing, offset):
    diffusers = pytest.importorskip("diffusers")
    for T in (1000, 37):
        cfg = ScheduleConfig(num_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
        kw = dict(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
        d, dd = diffusers.DDPMScheduler(**kw), diffusers.DDIMScheduler(**kw)
        ddpm, ddim = DDPMScheduler(cfg), DDIMScheduler(cfg)
        for n in (1, 2, 3, 7, 10, 36, 50, 333, 999):
            if n > T or (spacing == "leading" and (n - 1) * (T // n) + offset > T - 1):
                continue  # diffusers would index past T - 1 (ours refuses, tested below)
            d.set_timesteps(n)
            dd.set_timesteps(n)
            ddpm.set_timesteps(n)
            ddim.set_timesteps(n)
            np.testing.assert_array_equal(ddpm.timesteps, d.timesteps.numpy(), err_msg=f"T={T} n={n}")
            np.testing.assert_array_equal(ddim.timesteps, dd.timesteps.numpy(), err_msg=f"T={T} n={n}")


@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_ddim_diffusers_variant_steps_like_diffusers_on_every_spacing(spacing):
    """diffusers' DDIM steps to t - T//N; with linspace (and trailing at N not dividing T) that
    is not the next timestep. The "diffusers" variant reproduces it; the default does not."""
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    cfg = ScheduleConfig(timestep_spacing=spacing, variance_type="fixedsmall")
    d = diffusers.DDIMScheduler(set_alpha_to_one=True, **diffusers_kwargs(cfg))
    ours = make_scheduler(cfg, "ddim", 7, variant="diffusers")
    ours.dtype = np.dtype(np.float64)
    d.set_timesteps(7)
    use_our_tables(d, ours, torch)
    worst_prev, worst_x0 = chain_against_diffusers(ours, d, torch, eta=0.0)
    assert worst_prev <= CHAIN_TOL and worst_x0 <= CHAIN_TOL
    consistent = make_scheduler(cfg, "ddim", 7, variant="consistent", clip=False)
    d.set_timesteps(7)
    assert chain_against_diffusers(consistent, d, torch, eta=0.0)[0] > 1e-3


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddpm_pipeline_with_trailing_spacing_matches_diffusers(prediction):
    """The issue's case: a pipeline saved with timestep_spacing="trailing", sampled at 10 steps
    (999, 899, ..., 99). diffusers' last step, from t = 99 to the clean sample, adds noise of
    std 1e-10 (fixed_small's variance 0, clamped at 1e-20); ours adds none: |z| <= 6 allows 6e-10."""
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    cfg = config("linear", prediction, variance_type="fixedsmall", timestep_spacing="trailing")
    ours = DDPMScheduler(cfg, dtype=np.float64)
    d = diffusers.DDPMScheduler(variance_type="fixed_small", **diffusers_kwargs(cfg))
    ours.set_timesteps(10)
    d.set_timesteps(10)
    assert ours.timesteps[-1] == 99
    use_our_tables(d, ours, torch)
    worst_prev, worst_x0 = chain_against_diffusers(ours, d, torch, seed=4)
    assert worst_prev <= CHAIN_TOL + 6e-10 and worst_x0 <= CHAIN_TOL, (worst_prev, worst_x0)


def test_ddpm_last_step_into_the_clean_sample_adds_no_noise():
    """Even with fixedlarge and a last timestep above 0 (where diffusers adds sqrt(1 - abar_t) z):
    the step into abar = 1 returns the posterior mean, i.e. x0_hat."""
    sched = DDPMScheduler(ScheduleConfig(timestep_spacing="trailing", clip_denoised=False), dtype=np.float64)
    sched.set_timesteps(10)
    x, eps = np.full(SHAPE, 0.3), np.full(SHAPE, 0.1)
    out = sched.step(eps, 99, x, noise=np.full(SHAPE, 100.0))
    np.testing.assert_allclose(out.prev_sample, out.pred_original_sample, rtol=1e-12)


@pytest.mark.parametrize("variance", ["fixedlarge", "fixedsmall"])
@pytest.mark.parametrize("spacing,offset", [("trailing", 0), ("leading", 1), ("linspace", 0)])
def test_final_step_noise_matches_diffusers_ddpm_pipeline_exactly(variance, spacing, offset):
    """final_step_noise (what the diffusers import sets): diffusers' rule, noise on every step
    whose t > 0, the last included (trailing with fixed_large: std sqrt(1 - abar_99) ~ 0.3).
    Chains equal within CHAIN_TOL, with no allowance for a missing last noise."""
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    cfg = config("linear", "eps", variance_type=variance, timestep_spacing=spacing, steps_offset=offset,
                 final_step_noise=True)
    ours = DDPMScheduler(cfg, dtype=np.float64)
    d = diffusers.DDPMScheduler(variance_type={"fixedlarge": "fixed_large", "fixedsmall": "fixed_small"}[variance],
                                **diffusers_kwargs(cfg))
    ours.set_timesteps(10)
    d.set_timesteps(10)
    use_our_tables(d, ours, torch)
    worst_prev, worst_x0 = chain_against_diffusers(ours, d, torch, seed=5)
    assert worst_prev <= CHAIN_TOL and worst_x0 <= CHAIN_TOL, (worst_prev, worst_x0)
    if variance == "fixedlarge" and ours.timesteps[-1] > 0:
        # the paper's rule (the default) differs there by the noise diffusers adds
        paper = DDPMScheduler(dataclasses.replace(cfg, final_step_noise=False), dtype=np.float64)
        paper.set_timesteps(10)
        d.set_timesteps(10)
        assert chain_against_diffusers(paper, d, torch, seed=5)[0] > 0.05


def test_final_step_noise_is_the_jump_to_abar_one():
    """The last step of a chain ending at t = 99 with final_step_noise adds sqrt(1 - abar_99) z
    (fixedlarge) to the posterior mean x0_hat; at t = 0 (full chains) it changes nothing."""
    cfg = ScheduleConfig(timestep_spacing="trailing", clip_denoised=False, final_step_noise=True)
    sched = DDPMScheduler(cfg, dtype=np.float64)
    sched.set_timesteps(10)
    x, eps, z = np.full(SHAPE, 0.3), np.full(SHAPE, 0.1), np.full(SHAPE, 2.0)
    out = sched.step(eps, 99, x, noise=z)
    abar = sched.schedule.alphas_cumprod[99]
    np.testing.assert_allclose(out.prev_sample, out.pred_original_sample + np.sqrt(1 - abar) * z, rtol=1e-12)
    full = DDPMScheduler(cfg, dtype=np.float64)
    full.set_timesteps(None)
    last = full.step(eps, 0, x, noise=z)
    np.testing.assert_allclose(last.prev_sample, last.pred_original_sample, rtol=1e-12)


def test_final_step_noise_is_validated_and_needs_manifest_version_2():
    with pytest.raises(ValueError, match=r"final_step_noise=1 \(expected true or false\)"):
        ScheduleConfig(final_step_noise=1)
    from runtime.contract import manifest_version_for
    assert manifest_version_for(ScheduleConfig()) == 1
    assert manifest_version_for(ScheduleConfig(final_step_noise=True)) == 2


def test_pipeline_steps_use_the_schedules_spacing_solvers_keep_linspace():
    cfg = ScheduleConfig(timestep_spacing="trailing")
    assert make_scheduler(cfg, "ddpm", 10).timesteps.tolist() == list(range(999, 0, -100))
    assert make_scheduler(cfg, "ddim", 10).timesteps.tolist() == list(range(999, 0, -100))
    assert make_scheduler(cfg, "ddim", 10, spacing="leading").timesteps[0] == 900
    assert make_scheduler(cfg, "dpmsolver++", 10).timesteps.tolist() == \
        make_scheduler(ScheduleConfig(), "dpmsolver++", 10).timesteps.tolist()
    off = ScheduleConfig(steps_offset=1)
    assert make_scheduler(off, "ddpm", 10).timesteps[-1] == 1
    assert make_scheduler(off, "unipc", 10, spacing="leading").timesteps[-1] == 91  # 90 + 1
    # all T steps are T-1 ... 0 whatever the spacing (diffusers' untouched DDPMScheduler)
    assert make_scheduler(off, "ddpm").timesteps.tolist() == list(range(999, -1, -1))


def test_leading_offset_past_the_last_timestep_is_refused():
    with pytest.raises(ValueError, match=r"steps=1000 with timestep_spacing 'leading' and "
                                         r"steps_offset=1 reaches t=1000, past the last timestep 999; "
                                         r"use fewer steps \(at most 999\)"):
        spaced_timesteps("leading", 1000, 1000, 1)


# --- explicit timesteps ------------------------------------------------------
STUDENT = [999, 749, 499, 249]


def test_explicit_timesteps_equal_diffusers_custom_timesteps():
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    for prediction in ("eps", "v"):
        cfg = config("linear", prediction, variance_type="fixedsmall")
        ours = DDPMScheduler(cfg, dtype=np.float64)
        d = diffusers.DDPMScheduler(variance_type="fixed_small", **diffusers_kwargs(cfg))
        ours.set_timesteps(timesteps=STUDENT)
        d.set_timesteps(timesteps=STUDENT)
        np.testing.assert_array_equal(ours.timesteps, STUDENT)
        use_our_tables(d, ours, torch)
        worst_prev, worst_x0 = chain_against_diffusers(ours, d, torch, seed=5)
        # the last step ends at t = 249 > 0, where diffusers still adds std 1e-10 noise (its
        # fixed_small variance 0 clamped at 1e-20); ours adds none: |z| <= 6 allows 6e-10
        assert worst_prev <= CHAIN_TOL + 6e-10 and worst_x0 <= CHAIN_TOL, (worst_prev, worst_x0)


@pytest.mark.parametrize("method", ["ddpm", "ddim", "dpmsolver++", "sde-dpmsolver++", "unipc"])
def test_every_method_samples_on_given_timesteps(method):
    sched = make_scheduler(ScheduleConfig(prediction="x0"), method)
    sched.set_timesteps(timesteps=STUDENT)
    assert sched.timesteps.tolist() == STUDENT and sched.num_inference_steps == 4
    rng = np.random.default_rng(0)
    x = sched.init_noise(SHAPE, rng)
    seen = []
    for t in sched.timesteps:
        seen.append(int(t))
        x = sched.step(model_output(x, t), t, x, rng=rng).prev_sample
    assert seen == STUDENT and np.isfinite(x).all()
    if method in ("ddim",):  # deterministic, last step returns x0_hat of t = 249
        assert np.abs(x).max() <= 1.0


def test_ddim_on_given_timesteps_steps_to_the_next_given_one():
    cfg = ScheduleConfig(clip_denoised=False)
    s = Schedule(cfg)
    sched = DDIMScheduler(cfg, dtype=np.float64)
    sched.set_timesteps(timesteps=[900, 300])
    x, eps = np.full(SHAPE, 0.5), np.full(SHAPE, 0.2)
    a, ap = s.alphas_cumprod[900], s.alphas_cumprod[300]
    x0 = (x - np.sqrt(1 - a) * eps) / np.sqrt(a)
    np.testing.assert_allclose(sched.step(eps, 900, x).prev_sample,
                               np.sqrt(ap) * x0 + np.sqrt(1 - ap) * eps, rtol=1e-13)


@pytest.mark.parametrize("timesteps, match", [
    ([999, 999, 500], r"not strictly descending at 999 -> 999"),
    ([10, 500], r"not strictly descending at 10 -> 500"),
    ([1000, 5, -1], r"outside \[0, 999\] \(T=1000\): \[1000, -1\]"),
    ([999.0, 500.5], r"not ints"),
    ([], r"expected a non-empty list of ints"),
    ("999", r"expected a non-empty list of ints"),
])
def test_bad_timesteps_are_refused_with_every_reason(timesteps, match):
    for method in ("ddpm", "ddim", "unipc"):
        with pytest.raises(ValueError, match=match):
            make_scheduler(ScheduleConfig(), method).set_timesteps(timesteps=timesteps)


@pytest.mark.parametrize("method", ["ddpm", "ddim", "dpmsolver++", "sde-dpmsolver++", "unipc"])
def test_a_short_explicit_schedule_samples_with_every_method(method):
    """T = 8 (a distilled or toy schedule): the solvers' default grid is capped at T steps."""
    cfg = ScheduleConfig(kind="explicit", betas=sigmoid_betas(8), num_timesteps=8, prediction="v")
    sched = make_scheduler(cfg, method, 4 if method != "ddpm" else None)
    assert len(sched.timesteps) == (8 if method == "ddpm" else 4) and sched.timesteps.max() <= 7
    rng = np.random.default_rng(0)
    x = sched.init_noise(SHAPE, rng)
    for t in sched.timesteps:
        x = sched.step(model_output(x, t), t, x, rng=rng).prev_sample
    assert np.isfinite(x).all() and np.abs(x).max() <= 1.0 + 1e-6


def test_make_scheduler_takes_given_timesteps():
    for method in ("ddpm", "ddim", "dpmsolver++", "unipc"):
        assert make_scheduler(ScheduleConfig(), method, timesteps=STUDENT).timesteps.tolist() == STUDENT
    with pytest.raises(ValueError, match=r"steps=4 and timesteps=\[999, 749, 499, 249\] given together"):
        make_scheduler(ScheduleConfig(), "ddim", 4, timesteps=STUDENT)


def test_timesteps_and_a_count_together_are_refused():
    with pytest.raises(ValueError, match="not both"):
        DDPMScheduler().set_timesteps(10, timesteps=STUDENT)
    with pytest.raises(ValueError, match="karras=True"):
        make_scheduler(ScheduleConfig(), "dpmsolver++", 10, karras=True).set_timesteps(timesteps=STUDENT)
