"""The variational bound L_vlb in bits/dim through any engine, and the rate-distortion curve.

NumPy only (plus ``runtime``): no torch, so it runs beside the runtime on a
deployment machine. ``eps_fn`` is anything called as ``eps_fn(x_t, t) -> eps``
with x_t float32 [B, C, H, W] and t int32 [B] (``runtime.load(path)`` returns such
an engine; so does the known-answer oracle of the tests).

The definition is the official code of Ho et al. 2020, ``diffusion_tf/diffusion_utils_2.py``
in github.com/hojonathanho/diffusion (``normal_kl``, ``discretized_gaussian_log_likelihood``,
``GaussianDiffusion2._vb_terms_bpd`` and ``calc_bpd_loop``):

* prior L_T = KL(q(x_T | x_0) || N(0, I));
* for code timestep t >= 1, L_t = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)): the true
  posterior (mean, clipped log variance) against the model's mean (the posterior mean at
  x0_hat read from the output by the schedule's prediction type (eps, x0 or v) and limited as the
  samplers limit it: clipped to [-1, 1] when the schedule says so, as ``calc_bpd_loop(clip_denoised=True)``)
  and its fixed log variance (fixedlarge: log(append(posterior_variance[1], betas[1:])),
  fixedsmall: the clipped posterior log variance; ``runtime.schedulers.schedule``);
* decoder L_0 = -log p(x_0 | x_1), a Gaussian discretized to 256 bins on [-1, 1]
  (bin half-width 1/255, open-ended edge bins), with the official tanh approximation
  of the normal CDF;
* every term averaged over dimensions and divided by ln 2; x_t for each t drawn from
  q(x_t | x_0) with fresh noise; total = prior + sum over t (``calc_bpd_loop``).

``t_samples=K`` is an unbiased Monte Carlo estimate from K timesteps per image: the
decoder term (t = 0) always, since it alone is a large share of the total and would
dominate the variance, plus a stratified sample of the KL terms: 1..T-1 cut into K - 1
consecutive strata whose bounds grow geometrically (1, 2, 3, ..., then wider and wider,
at least one timestep each), one timestep drawn uniformly in each, its term weighted
by its stratum's size. The terms fall steeply with t (roughly like 1/t at small t), so
geometric strata put the draws where the terms and their spread are: on the digits
model far less noisy than T x the mean of K uniformly drawn terms. Its standard error is the collapsed-strata estimate (adjacent strata in
pairs): an approximation (on Gaussian test data it came out 0.8x the spread of
repeated estimates); K = T is exact (s.e. 0).

Noise is drawn per image from image ``image_index``'s own stream of ``seed``, the one
scheme every sampler uses (``runtime.seeding.image_generator``): timesteps first, then
one x_t noise per timestep, in descending t. So two engines evaluated with the same seed
see the same x_t whatever the batch size: differences between engines are paired, not
drowned by Monte Carlo noise.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from runtime.schedulers.prediction import limiter, resolve_limit
from runtime.schedulers.schedule import Schedule, ScheduleConfig
from runtime.seeding import image_generator

EpsFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
LN2 = math.log(2.0)
BIN_HALF_WIDTH = 1.0 / 255.0  # 256 bins on [-1, 1]: centres k / 127.5 - 1, half-width 1 / 255
RD_TIMESTEPS = (1000, 500, 200, 100, 50, 20, 10, 5, 2, 1)  # paper t of the rate-distortion table


# --- the official formulas ---------------------------------------------------------------
def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element, in nats (``normal_kl``)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + np.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * np.exp(-logvar2))


def approx_standard_normal_cdf(x):
    """The tanh approximation of Phi the official code uses (max error ~1e-4 absolute)."""
    return 0.5 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log P(bin of x) under N(means, e^(2 log_scales)) cut into 256 bins on [-1, 1], nats.

    x must lie on the bin centres (uint8 rescaled to [-1, 1]); the edge bins reach to
    -inf and +inf; every probability is floored at 1e-12 (official definition).
    """
    centred = x - means
    inv_std = np.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centred + BIN_HALF_WIDTH))
    cdf_min = approx_standard_normal_cdf(inv_std * (centred - BIN_HALF_WIDTH))
    log_cdf_plus = np.log(np.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = np.log(np.maximum(1.0 - cdf_min, 1e-12))
    log_delta = np.log(np.maximum(cdf_plus - cdf_min, 1e-12))
    return np.where(x < -0.999, log_cdf_plus, np.where(x > 0.999, log_one_minus_cdf_min, log_delta))


# --- data on the 256-bin grid -----------------------------------------------------------
def quantize(x: np.ndarray) -> np.ndarray:
    """Float images in [-1, 1] -> the nearest of the 256 bin centres (what saving a uint8 PNG does)."""
    u8 = np.clip(np.round((np.asarray(x, dtype=np.float64) + 1.0) * 127.5), 0, 255)
    return u8 / 127.5 - 1.0


def from_uint8(images: np.ndarray) -> np.ndarray:
    """uint8 [N, C, H, W] -> float64 bin centres in [-1, 1]."""
    return np.asarray(images, dtype=np.float64) / 127.5 - 1.0


def check_on_grid(x0: np.ndarray) -> np.ndarray:
    x0 = np.asarray(x0, dtype=np.float64)
    if x0.ndim != 4 or not len(x0):
        raise ValueError(f"x0 must be a non-empty array [N, C, H, W], got shape {x0.shape}")
    off = np.abs(quantize(x0) - x0).max()
    if off > 1e-4:
        raise ValueError(
            f"x0 is not on the 256-bin grid of [-1, 1] (max distance {off:.3g} from a bin centre); "
            f"the bound is a discrete likelihood: pass uint8 images rescaled with from_uint8(), "
            f"or quantize() float images first")
    return x0


def check_t_samples(t_samples: Optional[int], num_timesteps: int) -> Optional[int]:
    if t_samples is None:
        return None
    if isinstance(t_samples, bool) or not isinstance(t_samples, (int, np.integer)) \
            or not 3 <= t_samples <= num_timesteps:
        raise ValueError(f"t_samples={t_samples!r} is invalid: expected an int in [3, {num_timesteps}] "
                         f"(the decoder term plus at least two strata of the T-1={num_timesteps - 1} KL "
                         f"terms, for a standard error), "
                         f"or None for every timestep")
    return int(t_samples)


def strata(num_timesteps: int, t_samples: int):
    """Bounds [lo, hi) of the t_samples - 1 strata of the KL timesteps 1..T-1 (ascending)."""
    T, m = int(num_timesteps), int(t_samples) - 1
    geometric = np.round(np.geomspace(1, T, m + 1)).astype(np.int64)
    edges = [1]
    for i in range(1, m + 1):  # geometric, but at least one timestep per stratum
        edges.append(min(max(edges[-1] + 1, int(geometric[i])), T - (m - i)))
    edges = np.asarray(edges, dtype=np.int64)
    return edges[:-1], edges[1:]


# --- the noise plan ----------------------------------------------------------------------
class NoisePlan:
    """Timesteps [n, K] (descending per image) and, step by step, the x_t noise of a batch of images.

    Image ``indices[i]`` draws from ``image_generator(seed, indices[i])`` (runtime.seeding): its timesteps (for K < T,
    one uniform draw in each of the K - 1 strata of 1..T-1, descending, then 0; else T-1..0), then one
    float32 standard normal per timestep. ``noise(k)`` must be called for k = 0, 1, ... in order.
    """

    def __init__(self, seed: int, indices: Sequence[int], num_timesteps: int, t_samples: Optional[int],
                 image_shape: Sequence[int]):
        self.shape = tuple(int(s) for s in image_shape)
        self._rngs = [image_generator(int(seed), int(i)) for i in indices]
        T = int(num_timesteps)
        if t_samples is None or t_samples == T:
            self.timesteps = np.tile(np.arange(T - 1, -1, -1, dtype=np.int64), (len(indices), 1))
        else:
            lo, hi = strata(T, t_samples)
            self.timesteps = np.stack([np.append(r.integers(lo, hi)[::-1], 0) for r in self._rngs])
        self._next = 0

    def noise(self, k: int) -> np.ndarray:
        if k != self._next:
            raise ValueError(f"noise steps must be drawn in order: asked for {k}, next is {self._next}")
        self._next += 1
        return np.stack([r.standard_normal(self.shape, dtype=np.float32) for r in self._rngs])


# --- one term ----------------------------------------------------------------------------
def _at(a: np.ndarray, t: np.ndarray) -> np.ndarray:
    return a[t].reshape(-1, 1, 1, 1)


def _mean_flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(len(a), -1).mean(axis=1)


def posterior_log_variance_clipped(s: Schedule) -> np.ndarray:
    """log of eq. (7)'s variance, its zero at t = 0 replaced by the t = 1 value (official)."""
    return np.log(np.append(s.posterior_variance[1], s.posterior_variance[1:]))


def q_sample(s: Schedule, x0: np.ndarray, t: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (eq. 4), float64."""
    return _at(s.sqrt_alphas_cumprod, t) * x0 + _at(s.sqrt_one_minus_alphas_cumprod, t) * noise


def prior_bpd(s: Schedule, x0: np.ndarray) -> np.ndarray:
    """L_T per image in bits/dim: KL(q(x_T | x_0) || N(0, I)) (``_prior_bpd``)."""
    t = np.full(len(x0), s.num_timesteps - 1)
    mean = _at(s.sqrt_alphas_cumprod, t) * x0
    logvar = np.log(1.0 - _at(s.alphas_cumprod, t)) * np.ones_like(x0)
    return _mean_flat(normal_kl(mean, logvar, 0.0, 0.0)) / LN2


def predict_x0(s: Schedule, x_t: np.ndarray, t: np.ndarray, out: np.ndarray) -> np.ndarray:
    """x0_hat from the network output (eps, x0 or v by ``s.config.prediction``), limited as the
    samplers limit it (``runtime.schedulers.prediction``): dynamic thresholding when the schedule
    has it, else clipping to +-clip_sample_range when clip_denoised. Float64; the same arithmetic
    as the PyTorch reference's ``GaussianDiffusion.predict_x0``."""
    cfg = s.config
    out = np.asarray(out, dtype=np.float64)
    if cfg.prediction == "eps":
        x0_hat = _at(s.sqrt_recip_alphas_cumprod, t) * x_t - _at(s.sqrt_recipm1_alphas_cumprod, t) * out
    elif cfg.prediction == "v":
        x0_hat = _at(s.sqrt_alphas_cumprod, t) * x_t - _at(s.sqrt_one_minus_alphas_cumprod, t) * out
    else:
        x0_hat = out.copy()
    limit = limiter(resolve_limit(cfg))
    return x0_hat if limit is None else limit(x0_hat)


def vb_terms_bpd(s: Schedule, x0: np.ndarray, x_t: np.ndarray, t: np.ndarray, out: np.ndarray):
    """(bits/dim [B], x0_hat [B, ...]) of ``_vb_terms_bpd``: decoder NLL where t == 0, else the KL.

    ``out`` is the network's output, read by the schedule's prediction type."""
    x0_hat = predict_x0(s, x_t, t, out)
    c1, c2 = _at(s.posterior_mean_coef1, t), _at(s.posterior_mean_coef2, t)
    model_mean = c1 * x0_hat + c2 * x_t
    model_logvar = _at(s.model_log_variance, t)
    true_mean = c1 * x0 + c2 * x_t
    true_logvar = _at(posterior_log_variance_clipped(s), t)
    kl = _mean_flat(normal_kl(true_mean, true_logvar, model_mean, model_logvar)) / LN2
    nll = -_mean_flat(discretized_gaussian_log_likelihood(
        x0, model_mean, 0.5 * model_logvar * np.ones_like(x0))) / LN2
    return np.where(t == 0, nll, kl), x0_hat


# --- the bound over images ----------------------------------------------------------------
@dataclass
class Bound:
    """Per-image terms of the bound (bits/dim); column k of ``timesteps``/``terms``/``mse`` is one x_t."""

    num_timesteps: int
    t_samples: Optional[int]  # None: every timestep (the exact sum)
    seed: int
    timesteps: np.ndarray  # [N, K] int64, descending per image
    terms: np.ndarray  # [N, K] bits/dim: the decoder NLL at t = 0, else the KL term
    mse: np.ndarray  # [N, K] mean squared error of x0_hat on [-1, 1]
    prior: np.ndarray  # [N] bits/dim
    seconds: float = 0.0

    @property
    def exact(self) -> bool:
        return self.timesteps.shape[1] == self.num_timesteps

    @property
    def decoder(self) -> np.ndarray:
        """[N] L_0 (always evaluated: one column per image has t = 0)."""
        return np.where(self.timesteps == 0, self.terms, 0.0).sum(axis=1)

    def _weighted_kl(self) -> np.ndarray:
        """[N, K-1] each sampled KL term times its stratum's size (1 when exact), descending t."""
        if self.exact:
            return self.terms[:, :-1]
        lo, hi = strata(self.num_timesteps, self.timesteps.shape[1])
        return self.terms[:, :-1] * (hi - lo)[::-1]

    @property
    def kl_sum(self) -> np.ndarray:
        """[N] sum of L_t over t >= 1 (its stratified estimate with t_samples)."""
        return self._weighted_kl().sum(axis=1)

    @property
    def total(self) -> np.ndarray:
        """[N] bits/dim: prior + sum of L_t (or its estimate) + decoder."""
        return self.prior + self.kl_sum + self.decoder

    @property
    def mc_se(self) -> np.ndarray:
        """[N] standard error of each image's total from timestep sampling (0 when exact)."""
        if self.exact:
            return np.zeros(len(self.terms))
        y = self._weighted_kl()
        m = y.shape[1] - y.shape[1] % 2
        pairs = (y[:, 0:m:2] - y[:, 1:m:2]) ** 2  # collapsed strata: pair h and h + 1
        var = pairs.sum(axis=1)
        if y.shape[1] % 2:  # an odd last stratum borrows its neighbour's pair
            var += 0.5 * (y[:, -1] - y[:, -2]) ** 2
        return np.sqrt(var)

    def summary(self) -> Dict[str, Any]:
        n = len(self.total)
        se = float(self.total.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
        return {"num_images": n, "num_timesteps": self.num_timesteps,
                "t_samples": self.t_samples, "exact": self.exact, "seed": self.seed,
                "bits_per_dim": float(self.total.mean()), "se_over_images": se,
                "mc_se_mean": float(self.mc_se.mean()),
                "prior_bpd": float(self.prior.mean()), "kl_sum_bpd": float(self.kl_sum.mean()),
                "decoder_bpd": float(self.decoder.mean()), "seconds": self.seconds,
                "network_evaluations": int(self.terms.size)}

    def per_image(self) -> List[Dict[str, float]]:
        return [{"bits_per_dim": float(a), "mc_se": float(b), "prior": float(c), "kl_sum": float(d),
                 "decoder": float(e)} for a, b, c, d, e in
                zip(self.total, self.mc_se, self.prior, self.kl_sum, self.decoder)]


ProgressFn = Callable[[int], None]  # called with the number of image-timesteps just done


def compute_bound(eps_fn: EpsFn, x0: np.ndarray, schedule: ScheduleConfig, t_samples: Optional[int] = None,
                  batch: int = 64, seed: int = 0, indices: Optional[Sequence[int]] = None,
                  progress: Optional[ProgressFn] = None, cond: Optional[Dict[str, np.ndarray]] = None) -> Bound:
    """L_vlb of each image of x0 [N, C, H, W] (bin centres in [-1, 1]) through ``eps_fn``.

    ``batch`` images go through the network together, each at its own timestep.
    ``indices`` (default 0..N-1) name the images for the noise plan, so a subset
    of a data set keeps its images' noise. ``cond``: a conditional model's inputs by name,
    one row per image ([N, ...], e.g. each image's class label), passed as
    ``eps_fn(x_t, t, **cond)``: the bound is then that of p(x | cond).
    """
    x0 = check_on_grid(x0)
    s = Schedule(schedule)
    T = s.num_timesteps
    t_samples = check_t_samples(t_samples, T)
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"batch={batch!r} is invalid: expected an int >= 1")
    indices = np.arange(len(x0)) if indices is None else np.asarray(indices)
    if len(indices) != len(x0):
        raise ValueError(f"{len(indices)} indices for {len(x0)} images")
    cond = dict(cond or {})
    bad = {k: np.shape(v) for k, v in cond.items() if len(np.shape(v)) < 1 or np.shape(v)[0] != len(x0)}
    if bad:
        raise ValueError(f"cond: received {bad}, expected one row per image ({len(x0)} images)")
    K = T if t_samples is None else t_samples
    timesteps = np.empty((len(x0), K), dtype=np.int64)
    terms = np.empty((len(x0), K))
    mse = np.empty((len(x0), K))
    start = time.perf_counter()
    for lo in range(0, len(x0), batch):
        xb = x0[lo:lo + batch]
        plan = NoisePlan(seed, indices[lo:lo + batch], T, t_samples, xb.shape[1:])
        timesteps[lo:lo + len(xb)] = plan.timesteps
        cond_b = {k: np.asarray(v)[lo:lo + len(xb)] for k, v in cond.items()}
        for k in range(K):
            t = plan.timesteps[:, k]
            x_t = q_sample(s, xb, t, plan.noise(k))
            eps = eps_fn(x_t.astype(np.float32), t.astype(np.int32), **cond_b)
            if np.shape(eps) != xb.shape:
                raise ValueError(f"the model returned eps of shape {np.shape(eps)} for x_t of shape "
                                 f"{xb.shape}; expected the same shape (a DDPM denoiser: eps, x0 or v, as its schedule says)")
            terms[lo:lo + len(xb), k], x0_hat = vb_terms_bpd(s, xb, x_t, t, eps)
            mse[lo:lo + len(xb), k] = _mean_flat((x0_hat - xb) ** 2)
            if progress is not None:
                progress(len(xb))
    return Bound(T, t_samples, seed, timesteps, terms, mse, prior_bpd(s, x0),
                 seconds=time.perf_counter() - start)


# --- rate-distortion (paper Section 4.3, Figure 5) ---------------------------------------
def rate_distortion(bound: Bound) -> Dict[str, np.ndarray]:
    """Rate and distortion at paper time t = 1..T from an exact bound (every timestep).

    Having received x_t, the progressive code has spent rate(t) = L_T + sum of the KL terms
    of x_{T-1}, ..., x_t (bits/dim, averaged over images); distortion(t) is the RMSE of
    x0_hat(x_t) against x_0 on the [0, 255] scale (root of the mean over images and pixels).
    Code timestep i = t - 1 holds both x_t's x0_hat and the KL term that yields x_{t-1}.
    """
    if not bound.exact:
        raise ValueError("the rate-distortion curve needs every timestep; run without t_samples")
    T = bound.num_timesteps
    order = np.argsort(bound.timesteps[0])  # columns in code-timestep order 0..T-1
    terms = bound.terms[:, order].mean(axis=0)
    mse = bound.mse[:, order].mean(axis=0)
    # rate before code step i: prior + KL terms of steps j > i (step 0's term is the decoder)
    kl = np.where(np.arange(T) > 0, terms, 0.0)
    after = np.concatenate([np.cumsum(kl[::-1])[::-1][1:], [0.0]])
    return {"t": np.arange(1, T + 1), "rate_bpd": float(bound.prior.mean()) + after,
            "distortion_rmse": 127.5 * np.sqrt(mse), "decoder_bpd": float(terms[0]),
            "kl_bpd": terms}


def rate_distortion_rows(rd: Dict[str, np.ndarray], ts: Sequence[int] = RD_TIMESTEPS) -> List[Dict[str, float]]:
    T = len(rd["t"])
    return [{"t": int(t), "rate_bpd": float(rd["rate_bpd"][t - 1]),
             "distortion_rmse": float(rd["distortion_rmse"][t - 1])} for t in ts if 1 <= t <= T]


def format_bound(name: str, summary: Dict[str, Any]) -> str:
    how = "every t" if summary["exact"] else f"{summary['t_samples']} sampled t per image"
    line = (f"{name}: {summary['bits_per_dim']:.4f} +- {summary['se_over_images']:.4f} bits/dim "
            f"(s.e. over {summary['num_images']} images; {how}")
    if not summary["exact"]:
        line += f"; mean Monte Carlo s.e. per image {summary['mc_se_mean']:.4f}"
    return line + (f") = prior {summary['prior_bpd']:.5f} + sum of L_t {summary['kl_sum_bpd']:.4f} "
                   f"+ decoder {summary['decoder_bpd']:.4f}")
