"""Shared by test_ddpm.py and test_ddim.py: the per-step error bound vs diffusers
and a fixed stand-in for eps_theta."""
from __future__ import annotations

import numpy as np

# Tolerance of ours (float64) vs diffusers, per step; u = unit roundoff of the dtype
# diffusers runs in (2**-24 as shipped; 2**-53 once its float32 tables are swapped
# for our float64 ones, which isolates the formulas from float32 rounding):
#   |d x0|   <= K u k0 S0,  S0 = sqrt(1/abar_t)|x_t| + sqrt(1/abar_t - 1)|eps|
#   |d prev| <= K u (k (c |x0| + |x_t| + |eps| + |z|) + c k0 S0)
# k0 = 1/(1 - abar_t) and k = 1/min(1 - abar_t, 1 - abar_t/abar_prev, 1 - abar_prev) are
# the cancellation factors of the "1 - (number near 1)" the step forms from abar (at
# t = 0 diffusers' float32 1 - abar_0 = 1e-4 keeps ~10 of 24 bits), c = the weight of x0
# in prev (<= 1). K = 8: diffusers' float32 cumprod of 1000 factors drifts by up to
# 6.05 ulp (pinned in test_diffusers_schedule_is_a_few_ulp_away) plus O(1) ulp per
# operation. Measured worst error/bound over both test files: x0 0.50 and prev 0.18 in
# float32, x0 0.33 and prev 0.13 in float64: the bound sits 2x-8x above what is seen.
K = 8


def check_against(ours, theirs, s, t, t_prev, c, x, eps, z, u):
    m = lambda a: float(np.max(np.abs(a)))  # noqa: E731
    a = s.alphas_cumprod[t]
    ap = s.alphas_cumprod[t_prev] if t_prev >= 0 else 1.0
    k0 = 1.0 / (1.0 - a)
    k = 1.0 / min([1.0 - a, 1.0 - a / ap] + ([1.0 - ap] if ap < 1.0 else []))
    s0 = m(x) * np.sqrt(1.0 / a) + m(eps) * np.sqrt(1.0 / a - 1.0)
    tol_x0 = K * u * k0 * s0
    tol_prev = K * u * (k * (c * m(ours.pred_original_sample) + m(x) + m(eps) + m(z)) + c * k0 * s0)
    err_x0 = m(ours.pred_original_sample - theirs.pred_original_sample.numpy())
    err_prev = m(ours.prev_sample - theirs.prev_sample.numpy())
    assert err_x0 <= tol_x0, f"t={t}: x0 differs by {err_x0:.3g} > {tol_x0:.3g}"
    assert err_prev <= tol_prev, f"t={t}: prev differs by {err_prev:.3g} > {tol_prev:.3g}"


def dummy_eps(x, t):
    """A fixed stand-in for eps_theta, float32 like an engine's output; eps ~ x_t keeps
    samples in range (few clipped), so the stored numbers depend on every step."""
    return (0.9 * x + 0.1 * np.sin(t / 70.0)).astype(np.float32)


def run_loop(sched, seed, shape=(2, 3, 8, 8), eps_fn=None):
    """A whole chain: x_T from numpy.random.default_rng(seed), then one step per timestep."""
    eps_fn = dummy_eps if eps_fn is None else eps_fn
    rng = np.random.default_rng(seed)
    x = sched.init_noise(shape, rng)
    for t in sched.timesteps:
        x = sched.step(eps_fn(x, t), t, x, rng=rng).prev_sample
    return x
