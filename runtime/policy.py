"""A diffusion policy on the runtime: observations in, robot actions out, no torch.

    import runtime
    policy = runtime.load_policy("engines/NAME.onnx", seed=0)      # + NAME-encoder.onnx beside it
    policy = runtime.load_policy("engines/NAME.plan", seed=0)      # TensorRT: + NAME-encoder.plan
    policy.observation_shapes      # {"observation.state": (2,), ...}: per-sample shapes
    policy.reset()                 # at every episode start
    action = policy.select_action({"observation.state": s, ...})  # [B, *shape] -> [B, action_dim]
    chunk = policy.predict_chunk(history, seed=3)   # [B, n_obs_steps, *shape] -> [B, n_action_steps, A]

A policy exported by ``ddpm-export export`` from a LeRobot DiffusionPolicy is two engines tied
by the denoiser's manifest (its ``policy`` section, see runtime/contract.py and
docs/policies.md): the observation encoder (normalized observation history -> ``global_cond``,
run once per chunk) and the denoiser (an ordinary array engine with a ``global_cond``
condition), sampled by ``runtime.loop.sample`` with any method and step count of the runtime.

Semantics are LeRobot 0.4.4's ``select_action`` with its pre/post processors:
- observations are normalized as LeRobot's NormalizerProcessorStep does (mean_std: (x - mean)
  / (std + eps); min_max: 2 (x - min) / d - 1 with d = max - min, eps where d == 0; quantiles
  likewise with q01/q99 or q10/q90; identity), actions unnormalized by its inverse;
- the history holds the last ``n_obs_steps`` observations; after reset() the first observation
  fills it; the action queue holds ``n_action_steps`` actions of a chunk (chunk[action_start:
  action_start + n_action_steps]) and is refilled when empty;
- noise: the k-th chunk predicted after load or reset() is ``predict_chunk(history, seed=seed +
  k)``; sample j of a batch draws x_T and every step's z from runtime.seeding's stream j of that
  seed, so a chunk does not depend on the batch size.
Python 3.8, NumPy + the backend's runtime.
"""
from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any, Deque, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from runtime.contract import (IMAGES_INPUT, NORM_STATS, POLICY_COND as COND, plan_options, plan_steps,
                              read_manifest, sampling_plan)
from runtime.io import sha256_file
from runtime.loop import sample
from runtime.schedulers import make_scheduler

__all__ = ["Policy", "PolicyError", "load_policy", "normalize", "unnormalize"]

_STATS = {k: v for k, v in NORM_STATS.items() if v}  # mode -> its two stats


class PolicyError(ValueError):
    """A policy file or an observation that cannot be used exactly."""


def _stats(norm: Mapping[str, Any]) -> Tuple[str, Optional[np.ndarray], Optional[np.ndarray], float]:
    mode = norm.get("mode")
    if mode == "identity":
        return mode, None, None, 0.0
    if mode not in _STATS:
        raise PolicyError(f"normalization mode {mode!r}: expected identity or one of {sorted(_STATS)}; "
                          f"re-export the policy with this ddpm-export")
    a, b = (np.asarray(norm[k], dtype=np.float32) for k in _STATS[mode])
    return mode, a, b, float(norm.get("eps", 1e-8))


def normalize(x: np.ndarray, norm: Mapping[str, Any]) -> np.ndarray:
    """LeRobot's normalization of raw values x (float32), per the manifest's ``normalization``."""
    mode, a, b, eps = _stats(norm)
    x = np.asarray(x, dtype=np.float32)
    if mode == "identity":
        return x
    if mode == "mean_std":
        return (x - a) / (b + np.float32(eps))
    return np.float32(2) * (x - a) / _span(a, b, eps) - np.float32(1)


def _span(lo: np.ndarray, hi: np.ndarray, eps: float) -> np.ndarray:
    """hi - lo, with eps where the two are equal (LeRobot's guard against a constant feature)."""
    d = hi - lo
    return np.where(d == 0, np.float32(eps), d).astype(np.float32)


def unnormalize(x: np.ndarray, norm: Mapping[str, Any]) -> np.ndarray:
    """The inverse of ``normalize``, as LeRobot's UnnormalizerProcessorStep computes it."""
    mode, a, b, eps = _stats(norm)
    x = np.asarray(x, dtype=np.float32)
    if mode == "identity":
        return x
    if mode == "mean_std":
        return x * b + a  # LeRobot's inverse has no eps
    return (x + np.float32(1)) / np.float32(2) * _span(a, b, eps) + a


def encoder_feeds(spec: Mapping[str, Any], history: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The encoder's inputs for a raw observation history {name: [B, n_obs_steps, *shape]}:
    each feature normalized as the policy section says, the cameras stacked (in
    image_features order) into one ``observation.images`` [B, n_obs_steps, cams, C, H, W],
    float32, in the encoder's input order. ``spec``: a manifest's (or checkpoint's) policy
    section with ``observations``, ``image_features`` and ``encoder.inputs``."""
    images = list(spec.get("image_features") or [])
    norms = {f["name"]: f["normalization"] for f in spec["observations"]}
    feeds = {k: normalize(history[k], n) for k, n in norms.items() if k not in images}
    if images:
        feeds[IMAGES_INPUT] = np.stack([normalize(history[k], norms[k]) for k in images], axis=2)
    return {i["name"]: np.ascontiguousarray(feeds[i["name"]], dtype=np.float32) for i in spec["encoder"]["inputs"]}


class _OnnxEncoder:
    def __init__(self, path: Path, spec: Mapping[str, Any], providers, threads):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(path), opts, providers=list(providers or ["CPUExecutionProvider"]))
        got = [i.name for i in self.session.get_inputs()]
        want = [i["name"] for i in spec["inputs"]]
        if got != want:
            raise PolicyError(f"{path}: encoder inputs {got}, the manifest says {want}; re-export the policy")

    def __call__(self, feeds: Dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([COND], feeds)[0]


class Policy:
    """See the module docstring. Made by ``load_policy``."""

    def __init__(self, engine, encoder, spec: Mapping[str, Any], seed: int = 0, method: Optional[str] = None,
                 steps: Optional[int] = None, **options: Any):
        self.engine, self.encoder, self.spec = engine, encoder, dict(spec)
        self.n_obs_steps = int(spec["n_obs_steps"])
        self.horizon = int(spec["horizon"])
        self.n_action_steps = int(spec["n_action_steps"])
        self.action_start = int(spec["action_start"])
        self.features = list(spec["observations"])
        self.observation_shapes: Dict[str, Tuple[int, ...]] = {f["name"]: tuple(int(v) for v in f["shape"])
                                                               for f in self.features}
        self.action_shape = tuple(int(v) for v in spec["action"]["shape"])
        self.image_features = list(spec.get("image_features") or [])
        self.seed = int(seed)
        self.plan = sampling_plan(engine.manifest, method, steps)
        self.options = plan_options(self.plan, options)
        sched = make_scheduler(engine.manifest["schedule"], self.plan["method"], **plan_steps(self.plan),
                               **self.options)  # also refuses a bad method/option now, not at the first chunk
        self.engine_calls_per_chunk = len(sched.timesteps)  # denoiser calls per chunk (no guidance)
        engine.runner.__enter__()
        self.last_timing: Dict[str, float] = {}
        self.reset()

    # -- state ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the observation history and the queued actions; chunk numbering restarts at seed."""
        self._history: Dict[str, Deque[np.ndarray]] = {k: deque(maxlen=self.n_obs_steps)
                                                       for k in self.observation_shapes}
        self._actions: Deque[np.ndarray] = deque()
        self._chunks = 0
        self._batch: Optional[int] = None

    def _check(self, obs: Mapping[str, Any], extra_axes: int) -> Dict[str, np.ndarray]:
        if not isinstance(obs, Mapping):
            raise PolicyError(f"observations: received {type(obs).__name__}, expected a dict keyed by "
                              f"{sorted(self.observation_shapes)}")
        names = set(self.observation_shapes)
        missing, unknown = sorted(names - set(obs)), sorted(set(obs) - names - {"action"})
        if missing or unknown:
            raise PolicyError(f"observations: missing {missing}, unknown {unknown}; expected exactly "
                              f"{sorted(names)} (policy.observation_shapes)")
        out, batch = {}, None
        for k, shape in self.observation_shapes.items():
            v = np.asarray(obs[k], dtype=np.float32)
            lead = v.shape[:v.ndim - len(shape)] if v.ndim >= len(shape) else v.shape
            want = "[B, " + ("n_obs_steps, " if extra_axes == 2 else "") + ", ".join(map(str, shape)) + "]"
            if v.ndim != len(shape) + extra_axes or tuple(v.shape[extra_axes:]) != shape or (
                    extra_axes == 2 and v.shape[1] != self.n_obs_steps):
                raise PolicyError(f"{k}: received shape {list(v.shape)}, expected {want}"
                                  f"{' with n_obs_steps ' + str(self.n_obs_steps) if extra_axes == 2 else ''}")
            if batch is not None and lead[0] != batch:
                raise PolicyError(f"{k}: batch {lead[0]}, but the other observations have batch {batch}; give "
                                  f"every observation the same leading batch size")
            batch = lead[0]
            if not np.isfinite(v).all():
                raise PolicyError(f"{k}: {int((~np.isfinite(v)).sum())} non-finite values (NaN/Inf); expected "
                                  f"finite raw observations")
            out[k] = v
        return out

    # -- acting --------------------------------------------------------------------------------
    def select_action(self, obs: Mapping[str, Any]) -> np.ndarray:
        """One action [B, *action_shape] in raw units for one observation {name: [B, *shape]}."""
        obs = self._check(obs, 1)
        b = next(iter(obs.values())).shape[0]
        if self._batch is not None and b != self._batch:
            raise PolicyError(f"observations: batch {b}, but this episode started with batch {self._batch}; "
                              f"call policy.reset() before changing the batch size")
        self._batch = b
        for k, v in obs.items():
            q = self._history[k]
            q.extend([v] * (self.n_obs_steps if not q else 1))
        if not self._actions:
            history = {k: np.stack(list(q), axis=1) for k, q in self._history.items()}
            chunk = self._chunk(history, self.seed + self._chunks)
            self._chunks += 1
            self._actions.extend(chunk.transpose(1, 0, *range(2, chunk.ndim)))
        return self._actions.popleft()

    def predict_chunk(self, history: Mapping[str, Any], seed: int = 0) -> np.ndarray:
        """The actions [B, n_action_steps, *action_shape] (raw units) that LeRobot's
        predict_action_chunk returns for one history {name: [B, n_obs_steps, *shape]}."""
        return self._chunk(self._check(history, 2), int(seed))

    def _chunk(self, history: Dict[str, np.ndarray], seed: int) -> np.ndarray:
        t0 = time.perf_counter()
        cond = self.encoder(encoder_feeds(self.spec, history))
        t1 = time.perf_counter()
        b = cond.shape[0]
        res = sample(self.engine.runner, self.engine.sample_shape, self.engine.manifest["schedule"], b, seed=seed,
                     method=self.plan["method"], **plan_steps(self.plan), batch=min(b, self.engine.runner.max_batch),
                     conditions=self.engine.conditions, cond={COND: cond}, **self.options)
        t2 = time.perf_counter()
        s = self.action_start
        actions = unnormalize(res.images[:, s:s + self.n_action_steps], self.spec["action"]["normalization"])
        self.last_timing = {"encoder_s": t1 - t0, "denoiser_s": t2 - t1, "chunk_s": time.perf_counter() - t0,
                            "engine_calls": float(res.network_calls)}
        return actions

    @property
    def chunks(self) -> int:
        """Chunks predicted since load or reset() (the next one uses seed + chunks)."""
        return self._chunks

    def close(self) -> None:
        self.engine.runner.close()
        _close_encoder(self.encoder)


def load_policy(path, seed: int = 0, method: Optional[str] = None, steps: Optional[int] = None,
                backend: Optional[str] = None, providers: Optional[Sequence[str]] = None,
                threads: Optional[int] = None, allow_host_code: bool = False, **options: Any) -> Policy:
    """Open the denoiser of an exported policy and its observation encoder: NAME.onnx with
    NAME-encoder.onnx (ONNX Runtime), or NAME.plan with NAME-encoder.plan (TensorRT, both built
    by 'ddpm-export build'; the manifest's policy.encoder.plan ties them).

    seed: chunk k after load/reset() uses seed + k. method/steps/options: any sampler of the
    runtime (runtime.METHODS); None = the manifest's sampling section, else DDPM over all T
    (LeRobot's default). allow_host_code: as runtime.load, for version-compatible plans. Load
    policies only from sources you trust (an engine is a program)."""
    from runtime.api import load

    p = Path(path)
    manifest = read_manifest(p) if p.is_file() else None
    if manifest is not None and "policy" not in manifest:
        raise PolicyError(f"{path}: a sampling engine without a 'policy' section; expected a policy exported "
                          f"by 'ddpm-export export --checkpoint policy.pt' (from 'ddpm-export import --format "
                          f"lerobot'); sample image models with runtime.load")
    engine = load(p, backend=backend, providers=providers, threads=threads, allow_host_code=allow_host_code)
    spec = engine.manifest["policy"]
    try:
        encoder = _open_encoder(p, engine, spec["encoder"], providers, threads, allow_host_code)
    except BaseException:
        engine.runner.close()
        raise
    try:
        return Policy(engine, encoder, spec, seed=seed, method=method, steps=steps, **options)
    except BaseException:
        _close_encoder(encoder)
        raise


def _open_encoder(p: Path, engine, enc: Mapping[str, Any], providers, threads, allow_host_code: bool):
    """The observation encoder on the denoiser's backend: its TensorRT plan beside a plan
    (active), else its ONNX export through ONNX Runtime."""
    if engine.runner.backend == "tensorrt":
        plan = enc.get("plan")
        if plan is None:
            raise PolicyError(f"{p}: its NAME.json ties no encoder plan (policy.encoder.plan): this plan was "
                              f"not built as a policy; build both plans with 'ddpm-export build --onnx "
                              f"{p.with_suffix('.onnx').name}'")
        enc_path = p.with_name(plan["file"])
        if not enc_path.is_file():
            raise PolicyError(f"{enc_path}: the policy's encoder plan is missing; 'ddpm-export build' writes "
                              f"it beside {p.name}: copy both plans")
        from runtime.backends.tensorrt import TensorRTEncoder  # checks the plan's sha256 when it loads

        return TensorRTEncoder(str(enc_path), enc, plan, allow_host_code=allow_host_code).__enter__()
    enc_path = p.with_name(enc["file"])
    if not enc_path.is_file():
        raise PolicyError(f"{enc_path}: the policy's observation encoder is missing; it is written beside "
                          f"{p.name} by 'ddpm-export export'")
    if enc.get("sha256") and sha256_file(enc_path) != enc["sha256"]:
        raise PolicyError(f"{enc_path}: sha256 differs from the manifest's encoder.sha256; the two files are "
                          f"not from one export: re-export both")
    return _OnnxEncoder(enc_path, enc, providers, threads)


def _close_encoder(encoder) -> None:
    close = getattr(encoder, "close", None)  # a TensorRT encoder holds GPU memory; ONNX Runtime's is freed by GC
    if close is not None:
        close()
