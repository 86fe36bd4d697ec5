"""Multistep DPM-Solver++ (Lu et al. 2022, arXiv 2211.01095), orders 1-3, and its SDE
variant (sde-dpmsolver++, orders 1-2), as NumPy schedulers.

Data prediction x_theta = (x - sigma eps) / alpha (DPM-Solver++ Section 3.1), clipped or
dynamically thresholded (Section 3.2). With h = lambda_t - lambda_s (notation in
runtime.schedulers.solver_base), the exact solution of the diffusion ODE in data
prediction form is x_t = (sigma_t/sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^lambda x_theta dlambda;
approximating x_theta by a polynomial in lambda through the last k predictions gives:
  order 1 (= DDIM, eta 0):  x_t = (sigma_t/sigma_s) x_s - alpha_t (e^-h - 1) D0
  order 2 (Algorithm 2, DPM-Solver++(2M), "midpoint" form as diffusers):
                            x_t = (sigma_t/sigma_s) x_s - alpha_t (e^-h - 1) (D0 + D1/2)
  order 3 (DPM-Solver, Lu et al. 2022a, arXiv 2206.00927, Appendix B multistep third order):
                            x_t = (sigma_t/sigma_s) x_s - alpha_t (e^-h - 1) D0
                                  + alpha_t ((e^-h - 1)/h + 1) D1 - alpha_t ((e^-h - 1 + h)/h^2 - 1/2) D2
with D0 = m0, D1 = (m0 - m1)/r0 (order 2) or the divided differences of order 3 below,
r_k = h_k / h. The SDE variant (DPM-Solver++ Appendix, "SDE-DPM-Solver++", as diffusers):
  order 1: x_t = (sigma_t/sigma_s) e^-h x_s + alpha_t (1 - e^-2h) D0 + sigma_t sqrt(1 - e^-2h) z
  order 2: the same plus alpha_t (1 - e^-2h) D1 / 2.
The step into the clean end (sigma = 0, h = inf) is first order and returns D0 exactly
(diffusers' final_sigmas_type "zero"); the SDE variant draws no noise there.
Noise: one z per SDE step before the last, from ``draw_noise`` (the runtime's noise order).
"""
from __future__ import annotations

from typing import Any, List

import numpy as np

from runtime.schedulers.base import draw_noise
from runtime.schedulers.solver_base import MultistepSolver

# a plan switches to lower orders near the end only for short chains (diffusers' rule)
SHORT_CHAIN = 15


class DPMSolverPlusPlus(MultistepSolver):
    """Multistep DPM-Solver++ (ODE). Options: see MultistepSolver; order 1-3 (default 2)."""

    name = "dpmsolver++"
    max_order = 3

    def _plan(self, n: int) -> List[int]:
        """Order used at each step: warm-up 1, 2, ...; the last step first order (sigma = 0);
        with lower_order_final and N < 15 the second-to-last at most second order."""
        out = []
        for i in range(n):
            if self.order == 1 or i < 1 or i == n - 1:
                out.append(1)
            elif self.order == 2 or i < 2 or (i == n - 2 and self.lower_order_final and n < SHORT_CHAIN):
                out.append(2)
            else:
                out.append(3)
        return out

    def _update(self, i: int, eps: np.ndarray, x: np.ndarray, rng: Any, noise: Any):
        m0 = self.data_prediction(eps, x, i)
        self._push(m0)
        if i == self.num_inference_steps - 1:  # into sigma = 0: h = inf, the solution is D0
            return m0, m0
        k = self.orders[i]
        lam, a_t, s_t = self.lambdas, self.alpha[i + 1], self.sigma[i + 1]
        h = lam[i + 1] - lam[i]
        em = np.expm1(-h)  # e^-h - 1, without cancellation for small h
        ratio = s_t / self.sigma[i]
        if k == 1:
            D1 = D2 = None
        else:
            m1 = self._history[-2]
            r0 = (lam[i] - lam[i - 1]) / h
            D1_0 = (m0 - m1) / r0
            if k == 2:
                D1, D2 = D1_0, None
            else:  # third order: divided differences through three predictions
                m2 = self._history[-3]
                r1 = (lam[i - 1] - lam[i - 2]) / h
                D1_1 = (m1 - m2) / r1
                D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
                D2 = (D1_0 - D1_1) / (r0 + r1)
        if not self.takes_noise:
            prev = ratio * x - (a_t * em) * m0
            if k == 2:
                prev = prev - (0.5 * a_t * em) * D1
            elif k == 3:
                prev = prev + (a_t * (em / h + 1.0)) * D1 - (a_t * ((em + h) / h**2 - 0.5)) * D2
            return prev, m0
        em2 = -np.expm1(-2.0 * h)  # 1 - e^-2h
        prev = (ratio * np.exp(-h)) * x + (a_t * em2) * m0
        if k == 2:
            prev = prev + (0.5 * a_t * em2) * D1
        z = draw_noise(rng, noise, x.shape, int(self.timesteps[i]))
        return prev + (s_t * np.sqrt(em2)) * z, m0


class SDEDPMSolverPlusPlus(DPMSolverPlusPlus):
    """SDE-DPM-Solver++ (stochastic; order 1-2, default 2): needs rng or noise at every step
    but the last."""

    name = "sde-dpmsolver++"
    max_order = 2
    takes_noise = True
