"""DPM-Solver++ (ODE and SDE) and UniPC against diffusers' DPMSolverMultistepScheduler and
UniPCMultistepScheduler (test-only references): per step and over whole chains, driven by
the same eps function and the same noise.

Per-step error bound (ours float64, diffusers float32: it stores its sigmas in float32 and
casts the sample to float32 in step()). u = 2**-24. Every coefficient diffusers forms comes
from s = sqrt((1 - abar)/abar) in float32; abar is a few ulp off (<= 6.05 ulp, pinned in
test_ddim/test_ddpm), so s and lambda = -log s carry a relative/absolute error <= K u k0 with
k0 = 1/(1 - abar) the cancellation factor of "1 - abar" at the grid points involved. The
step's weights on x and on the data predictions m_j are smooth in lambda except through the
divided differences (m_j - m_k) / r, r = h_k / h, which amplify a lambda error by up to
rho = max(h / h_k, 1); so every weight is off by at most K u k0 (1 + rho)^2 relatively, and
  |d prev| <= K u k0 (1 + rho)^2 (|x| + 3 M) + u |prev|,   M = max |m_j| (history included),
the 3 M covering the weights' sum (<= 3 for orders <= 3: |D terms| <= |m0| + 2 |m1 - m2| / ...
bounded by the order-3 weights' absolute sum, < 3 on these grids). The data prediction itself
(x - sigma eps) / alpha is covered by the same form with M. The SDE variant adds the noise
term, covered by |z| in |x|'s place. K = 8 as in scheduler_checks. Measured worst err/bound: 0.02-0.07 over the fast grid, 0.33
with Karras sigmas (its grid reaches t = 0, k0 = 1e4): 3x-50x of headroom, with bounds of
1e-6 to 1e-4 absolute on samples of size ~1.
Whole chains (free-running, each its own history): the sum of the per-step bounds; this eps
(0.9 x + c) keeps every step's gain on x below 1, so errors do not grow between steps.
"""
from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from runtime.schedulers import make_scheduler
from runtime.schedulers.ddim import DDIMScheduler
from runtime.schedulers.schedule import ScheduleConfig
from scheduler_checks import K, dummy_eps  # noqa: E402

U32 = 2.0**-24
SHAPE3 = (3, 1, 8, 8)  # an odd batch


DIFFUSERS_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def make_pair(method, steps, order=2, spacing="linspace", karras=False, lof=True, variant="bh2",
              corrector=True, clip=True, threshold=None, prediction="eps", kind="linear",
              schedule_threshold=None):
    diffusers = pytest.importorskip("diffusers")
    pytest.importorskip("torch")
    opts = dict(order=order, spacing=spacing, karras=karras, lower_order_final=lof, clip=clip)
    if method == "unipc":
        opts.update(variant=variant, corrector=corrector)
    if threshold:
        opts.update(threshold_ratio=threshold[0], threshold_max=threshold[1])
    cfg = ScheduleConfig(clip_denoised=clip, prediction=prediction, kind=kind)
    if schedule_threshold:  # the schedule's own thresholding (no method options)
        cfg = ScheduleConfig(clip_denoised=False, prediction=prediction, kind=kind, thresholding=True,
                             dynamic_thresholding_ratio=schedule_threshold[0],
                             sample_max_value=schedule_threshold[1])
        threshold = schedule_threshold
    ours = make_scheduler(cfg, method, steps, **opts)
    ours.dtype = np.dtype(np.float64)
    common = dict(num_train_timesteps=1000, beta_schedule=kind, beta_start=1e-4, beta_end=0.02,
                  solver_order=order, timestep_spacing=spacing, use_karras_sigmas=karras,
                  lower_order_final=lof, thresholding=clip or bool(schedule_threshold),
                  sample_max_value=threshold[1] if threshold else 1.0,
                  dynamic_thresholding_ratio=threshold[0] if threshold else 0.995,
                  prediction_type=DIFFUSERS_PREDICTION[prediction])
    if method == "unipc":
        theirs = diffusers.UniPCMultistepScheduler(
            solver_type=variant, disable_corrector=[] if corrector else list(range(steps)), **common)
    else:
        theirs = diffusers.DPMSolverMultistepScheduler(algorithm_type=method, **common)
    theirs.set_timesteps(steps)
    np.testing.assert_array_equal(theirs.timesteps.numpy(), ours.timesteps)
    return ours, theirs


def step_bound(ours, i, x, z, prev):
    """The per-step bound of the module docstring at grid index i (history as it is now)."""
    idx = [j for j in range(max(0, i - 3), min(i + 2, ours.num_inference_steps))]
    k0 = max(1.0 / (1.0 - 1.0 / (1.0 + ours.sigmas[j] ** 2)) for j in idx)  # 1/(1 - abar)
    lam = ours.lambdas
    hs = [lam[j + 1] - lam[j] for j in range(max(0, i - 2), i + 1) if np.isfinite(lam[j + 1])]
    rho = max([1.0] + [hs[-1] / h for h in hs[:-1]]) if hs else 1.0
    m = max(float(np.max(np.abs(a))) for a in ours._history)
    mx = float(np.max(np.abs(x))) + (float(np.max(np.abs(z))) if z is not None else 0.0)
    return K * U32 * k0 * (1.0 + rho) ** 2 * (mx + 3.0 * m) + U32 * float(np.max(np.abs(prev)))


def run_both(ours, theirs, shape=SHAPE3, seed=0, teacher_forced=True):
    """Drive both with dummy_eps and the same noise. teacher_forced: each step starts both from
    diffusers' x (per-step check); else both run free (chain check). Returns (errors, bounds)."""
    import torch

    sde = ours.takes_noise if hasattr(ours, "takes_noise") else False
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    xd = torch.from_numpy(x.copy())
    errs, bounds = [], []
    for i, t in enumerate(ours.timesteps):
        z = rng.standard_normal(shape).astype(np.float32) if sde else None
        x_in = xd.numpy().copy() if teacher_forced else x
        out = ours.step(dummy_eps(x_in, t), t, x_in, noise=z)
        kw = {"variance_noise": torch.from_numpy(z)} if sde else {}
        xd = theirs.step(torch.from_numpy(dummy_eps(xd.numpy(), t)), int(t), xd, **kw).prev_sample
        x = out.prev_sample
        if i == len(ours.timesteps) - 1 and getattr(ours, "variant", None) == "bh1":
            # diffusers' bh1 step into sigma = 0 computes B(h) * 0 with B(h) = -h = -inf: NaN
            # (diffusers 0.42). Ours returns the data prediction there (the exact solution).
            assert torch.isnan(xd).all()
            break
        errs.append(float(np.max(np.abs(x - xd.numpy().astype(np.float64)))))
        bounds.append(step_bound(ours, i, x_in, z, x))
    return errs, bounds


METHOD_ORDERS = [("dpmsolver++", 1), ("dpmsolver++", 2), ("dpmsolver++", 3),
                 ("sde-dpmsolver++", 1), ("sde-dpmsolver++", 2),
                 ("unipc", 1), ("unipc", 2), ("unipc", 3)]
SPACINGS = ("linspace", "leading", "trailing")
STEPS = (5, 10, 20, 37)
# fast grid: every (method, order) x every spacing, step counts rotated through 5/10/20/37
FAST = [(m, o, sp, STEPS[(k + j) % 4]) for k, (m, o) in enumerate(METHOD_ORDERS)
        for j, sp in enumerate(SPACINGS)]
FULL = [(m, o, sp, n) for (m, o), sp, n in itertools.product(METHOD_ORDERS, SPACINGS, STEPS)
        if (m, o, sp, n) not in FAST]


def check(ours, theirs, shape=SHAPE3):
    errs, bounds = run_both(ours, theirs, shape)
    for i, (e, b) in enumerate(zip(errs, bounds)):
        assert e <= b, f"step {i} (t={ours.timesteps[i]}): differs by {e:.3g} > bound {b:.3g}"
    ours.reset()
    theirs.set_timesteps(ours.num_inference_steps)
    chain_errs, _ = run_both(ours, theirs, shape, teacher_forced=False)
    assert chain_errs[-1] <= sum(bounds), f"chain differs by {chain_errs[-1]:.3g} > {sum(bounds):.3g}"


@pytest.mark.parametrize("method, order, spacing, steps", FAST)
def test_matches_diffusers_fast_grid(method, order, spacing, steps):
    check(*make_pair(method, steps, order, spacing))


@pytest.mark.slow
@pytest.mark.parametrize("method, order, spacing, steps", FULL)
def test_matches_diffusers_full_grid(method, order, spacing, steps):
    check(*make_pair(method, steps, order, spacing))


@pytest.mark.parametrize("variant, corrector, order, steps", [
    ("bh1", True, 2, 10), ("bh1", False, 3, 20), ("bh2", False, 2, 37), ("bh1", True, 3, 5)])
def test_unipc_variants_and_no_corrector(variant, corrector, order, steps):
    check(*make_pair("unipc", steps, order, "trailing", variant=variant, corrector=corrector))


@pytest.mark.parametrize("method, order", [("dpmsolver++", 2), ("dpmsolver++", 3), ("unipc", 3),
                                           ("sde-dpmsolver++", 2)])
@pytest.mark.parametrize("batch", [1, 5])
def test_thresholding_karras_and_odd_batches(method, order, batch):
    shape = (batch, 1, 8, 8)
    check(*make_pair(method, 10, order, threshold=(0.9, 1.5)), shape)  # dynamic thresholding
    check(*make_pair(method, 10, order, clip=False), shape)  # no clipping at all
    check(*make_pair(method, 20, order, karras=True), shape)


@pytest.mark.parametrize("method, order", [("dpmsolver++", 2), ("dpmsolver++", 3), ("sde-dpmsolver++", 2),
                                           ("unipc", 2), ("unipc", 3)])
@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_x0_and_v_models_match_diffusers(method, order, prediction):
    """The data prediction from an x0 or v network (diffusers' prediction_type sample /
    v_prediction), clipped, then the same solver: same bound as for eps models."""
    check(*make_pair(method, 10, order, "trailing", prediction=prediction))
    check(*make_pair(method, 12, order, prediction=prediction, kind="squaredcos_cap_v2", clip=False))


@pytest.mark.parametrize("method", ["dpmsolver++", "unipc"])
def test_schedule_thresholding_matches_diffusers(method):
    """thresholding from the schedule (a pipeline's thresholding=True), not from the options:
    it applies even with clip_denoised false, as in diffusers."""
    check(*make_pair(method, 10, 2, prediction="v", schedule_threshold=(0.9, 1.5)))


def test_lower_order_final_off():
    check(*make_pair("dpmsolver++", 10, 3, lof=False))
    check(*make_pair("dpmsolver++", 5, 2, "trailing", lof=False))


@pytest.mark.slow
@pytest.mark.parametrize("method, order", METHOD_ORDERS)
@pytest.mark.parametrize("steps", STEPS)
def test_thresholding_and_karras_full(method, order, steps):
    if steps < make_scheduler(ScheduleConfig(), method, 20, order=order).min_steps():
        pytest.skip("too few steps for this order")
    check(*make_pair(method, steps, order, threshold=(0.995, 2.0)), (3, 1, 8, 8))
    check(*make_pair(method, steps, order, karras=True), (3, 1, 8, 8))


# --- properties of our own ---------------------------------------------------------
def test_first_order_dpmsolver_is_ddim_with_eps_rederived_from_the_clipped_x0():
    """DPM-Solver++(1) with a clipped data prediction is DDIM (eta 0) whose eps is re-derived
    from the clipped x0: the runtime's default DDIM variant is the exact first-order solver."""
    dpm = make_scheduler(ScheduleConfig(), "dpmsolver++", 10, order=1, spacing="leading")
    dpm.dtype = np.dtype(np.float64)
    ddim = DDIMScheduler(ScheduleConfig(), dtype=np.float64)  # consistent variant by default
    s = ddim.schedule
    rng = np.random.default_rng(0)
    x = 2 * rng.standard_normal(SHAPE3)
    for i, t in enumerate(dpm.timesteps[:-1]):
        eps = rng.standard_normal(SHAPE3)
        got = dpm.step(eps, t, x).prev_sample
        a, ap = s.alphas_cumprod[t], s.alphas_cumprod[dpm.timesteps[i + 1]]
        x0 = np.clip((x - np.sqrt(1 - a) * eps) / np.sqrt(a), -1, 1)
        e = (x - np.sqrt(a) * x0) / np.sqrt(1 - a)
        np.testing.assert_allclose(got, np.sqrt(ap) * x0 + np.sqrt(1 - ap) * e, rtol=1e-12, atol=1e-12)
        x = got


@pytest.mark.parametrize("method", ["dpmsolver++", "sde-dpmsolver++", "unipc"])
def test_history_is_per_chain_and_restarts_at_the_first_timestep(method):
    def chain(sched, seed):
        rng = np.random.default_rng(seed)
        x = sched.init_noise(SHAPE3, rng)
        for t in sched.timesteps:
            x = sched.step(dummy_eps(x, t), t, x, rng).prev_sample
        return x

    one = make_scheduler(ScheduleConfig(), method, 10, order=2)
    a, b = chain(one, 0), chain(one, 1)  # the same instance, two chains in a row
    np.testing.assert_array_equal(a, chain(make_scheduler(ScheduleConfig(), method, 10, order=2), 0))
    np.testing.assert_array_equal(b, chain(make_scheduler(ScheduleConfig(), method, 10, order=2), 1))
    x = np.zeros(SHAPE3, np.float32)
    one.step(x, one.timesteps[0], x, np.random.default_rng(0))
    with pytest.raises(ValueError, match="out of order.*next expected t=" + str(one.timesteps[1])):
        one.step(x, one.timesteps[2], x, np.random.default_rng(0))


@pytest.mark.parametrize("method, kw, match", [
    ("unipc", dict(order=4), "order=4 is not available for method unipc: expected one of 1, 2, 3"),
    ("sde-dpmsolver++", dict(order=3), "expected one of 1, 2"),
    ("dpmsolver++", dict(eta=0.5), "takes no eta"),
    ("unipc", dict(variant="bh3"), "expected one of bh1, bh2"),
    ("dpmsolver++", dict(spacing="quadratic"), "expected one of linspace, leading, trailing"),
    ("ddim", dict(order=2), "does not apply to method ddim"),
    ("dpmsolver++", dict(clip=False, threshold_ratio=0.9), "needs clipping"),
    ("heun", {}, "unknown: expected one of ddpm, ddim, dpmsolver\\+\\+, sde-dpmsolver\\+\\+, unipc"),
])
def test_bad_options_name_the_valid_choices(method, kw, match):
    with pytest.raises(ValueError, match=match):
        make_scheduler(ScheduleConfig(), method, 20, **kw)


@pytest.mark.parametrize("method, order, need", [("dpmsolver++", 3, 5), ("unipc", 3, 5), ("dpmsolver++", 2, 3)])
def test_too_few_steps_for_the_order(method, order, need):
    with pytest.raises(ValueError, match=f"too few for {re.escape(method)} order {order}.*--steps >= {need}"):
        make_scheduler(ScheduleConfig(), method, need - 1, order=order)
    make_scheduler(ScheduleConfig(), method, need, order=order)
