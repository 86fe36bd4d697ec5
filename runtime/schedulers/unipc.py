"""UniPC (Zhao et al. 2023, arXiv 2302.04867): the multistep predictor UniP and the
corrector UniC in data-prediction form, B(h) variants bh1 / bh2, as a NumPy scheduler.

Notation in runtime.schedulers.solver_base; h = lambda_t - lambda_s0 > 0, hh = -h (data
prediction), m0 = the newest data prediction, m_k the k-th older one at lambda_{s_k},
r_k = (lambda_{s_k} - lambda_s0) / h, D_k = (m_k - m0) / r_k.
  UniP-p (Algorithm 2 / eq. (8) in data-prediction form):
      x_t = (sigma_t/sigma_s0) x_s0 - alpha_t (e^hh - 1) m0 - alpha_t B(h) sum_k a_k D_k
  UniC-p (Algorithm 1 / eq. (7)): the same from the previous x_s0, plus the new prediction
      m_t at the predicted x_t:  ... - alpha_t B(h) (sum_k a_k D_k + a_p (m_t - m0))
  B(h) = hh (bh1) or e^hh - 1 (bh2) (Section 3.3). The coefficients a solve R a = b
  (eq. (6), "order conditions"): R_{jk} = r_k^(j-1), b_j = h phi_{j+1}(hh) j! / B(h), with
  h phi_1 = e^hh - 1, phi_{j+1} = (phi_j - 1/j!)/hh. As in the paper's code (and diffusers),
  the second-order predictor uses a = 1/2 and the first-order corrector a_p = 1/2.
The corrector reuses the model call of the next step (no extra engine call): step i first
corrects x_{t_i} with eps(x_{t_i}), then predicts x_{t_{i+1}}; the data prediction used
for the history is the one at the uncorrected x_{t_i} (as the paper's code). The last step
(into sigma = 0) is first order and returns its data prediction.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np

from runtime.schedulers.solver_base import MultistepSolver

VARIANTS = ("bh1", "bh2")


class UniPCScheduler(MultistepSolver):
    """UniPC multistep (orders 1-3, default 2); variant bh1 | bh2 (default bh2); corrector
    on by default (corrector=False: UniP alone). Other options: see MultistepSolver."""

    name = "unipc"
    max_order = 3

    def __init__(self, *args: Any, variant: str = "bh2", corrector: bool = True, **kw: Any):
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r} is unknown for unipc: expected one of {VARIANTS}")
        self.variant = variant
        self.corrector = bool(corrector)
        super().__init__(*args, **kw)

    def _plan(self, n: int) -> List[int]:
        """Order of the predictor at step i: warm-up (i + 1), capped by the steps left with
        lower_order_final; the last step (into sigma = 0) is always first order."""
        out = []
        for i in range(n):
            k = min(self.order, i + 1)
            if self.lower_order_final:
                k = min(k, n - i)
            out.append(1 if i == n - 1 else k)
        return out

    def reset(self) -> None:
        super().reset()
        self._last_x = None  # x_{t_{i-1}} the previous predictor started from
        if not hasattr(self, "_coef_cache") or getattr(self, "_cache_for", None) is not self.sigmas:
            self._coef_cache: Dict[Tuple[int, int, int, bool], Tuple] = {}
            self._cache_for = self.sigmas

    def _coefficients(self, s0: int, t: int, order: int, corrector: bool):
        """(r_k, a, h phi_1, B(h)) for a step from grid index s0 to t with ``order``
        predictions (history indices s0, s0-1, ...); cached per chain grid."""
        key = (s0, t, order, corrector)
        hit = self._coef_cache.get(key)
        if hit is not None:
            return hit
        lam = self.lambdas
        h = lam[t] - lam[s0]
        hh = -h
        h_phi_1 = np.expm1(hh)
        B_h = hh if self.variant == "bh1" else h_phi_1
        rks = np.array([(lam[s0 - k] - lam[s0]) / h for k in range(1, order)] + [1.0])
        # eq. (6): R a = b with b_j = h phi_{j+1}(hh) j! / B(h)
        R, b = [], []
        h_phi_k = h_phi_1 / hh - 1.0
        fact = 1
        for j in range(1, order + 1):
            R.append(rks ** (j - 1))
            b.append(h_phi_k * fact / B_h)
            fact *= j + 1
            h_phi_k = h_phi_k / hh - 1.0 / fact
        R, b = np.array(R), np.array(b)
        if corrector:
            a = np.array([0.5]) if order == 1 else np.linalg.solve(R, b)
        else:
            a = np.array([0.5]) if order == 2 else (
                np.linalg.solve(R[:-1, :-1], b[:-1]) if order > 2 else np.zeros(0))
        out = (rks[:-1], a, h_phi_1, B_h)
        self._coef_cache[key] = out
        return out

    def _update(self, i: int, eps: np.ndarray, x: np.ndarray, rng: Any, noise: Any):
        m = self.data_prediction(eps, x, i)  # at the uncorrected x_{t_i}
        hist = self._history
        if i > 0 and self.corrector and self._last_x is not None:
            # UniC: x_{t_i} again from x_{t_{i-1}}, now with m = x_theta(x_{t_i}) (eq. (7))
            k = self.orders[i - 1]
            rks, a, h_phi_1, B_h = self._coefficients(i - 1, i, k, True)
            m0 = hist[-1]
            res = a[-1] * (m - m0)
            for j in range(k - 1):
                res = res + a[j] * ((hist[-(j + 2)] - m0) / rks[j])
            x = (self.sigma[i] / self.sigma[i - 1]) * self._last_x - (self.alpha[i] * h_phi_1) * m0 \
                - (self.alpha[i] * B_h) * res
        self._push(m)
        self._last_x = x
        if i == self.num_inference_steps - 1:  # into sigma = 0: h = inf, the solution is m
            return m, m
        # UniP (eq. (8)): x_{t_{i+1}} from x_{t_i} and the last k predictions
        k = self.orders[i]
        rks, a, h_phi_1, B_h = self._coefficients(i, i + 1, k, False)
        prev = (self.sigma[i + 1] / self.sigma[i]) * x - (self.alpha[i + 1] * h_phi_1) * m
        if k > 1:
            res = a[0] * ((hist[-2] - m) / rks[0])
            for j in range(1, k - 1):
                res = res + a[j] * ((hist[-(j + 2)] - m) / rks[j])
            prev = prev - (self.alpha[i + 1] * B_h) * res
        return prev, m
