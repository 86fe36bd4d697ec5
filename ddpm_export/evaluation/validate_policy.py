"""``ddpm-export validate`` for a policy engine: both engines and the whole chunk vs PyTorch.

A policy export is two engines tied by one manifest (runtime/policy.py). Checking the denoiser
alone (what validate did before it knew policies: it passed on the U-Net and never opened the
encoder, the normalization statistics or the action slice) would let a wrong encoder or a wrong
manifest deploy silently. Three levels, each against the checkpoint's own PyTorch modules
(ddpm_export.model.policy_reference.PolicyReference):

1. encoder: NAME-encoder.onnx (through runtime.load_policy, so its sha256 is checked) vs the
   PyTorch observation encoder on the same normalized history, at several batch sizes;
   max abs global_cond difference.
2. denoiser: NAME.onnx vs the PyTorch U-Net at t = 0, t_stride, ..., T-1 and several batch
   sizes, global_cond drawn N(0, 1) (validate.one_step, as for any conditional engine).
3. chunk: ``runtime.load_policy(NAME.onnx).predict_chunk(history, seed)`` vs
   ``PolicyReference.predict_chunk(history, seed)``: raw observations in (within the
   statistics' range, images in [0, 1]), the same sampler and the same noise streams on both
   sides; the gate is on the actions normalized by the checkpoint's statistics (the sampler's
   [-1, 1] scale, so one limit fits every robot's units; a manifest whose statistics are not the
   checkpoint's fails here); the raw difference is reported beside it.

Limits (``PolicyThresholds``): the encoder 1e-4 (the export's own parity limit,
export.policy_export.ENCODER_ATOL); the denoiser the image engines' eps limits (1e-4 float32,
2e-2 FP16); the chunk 1e-3 float32 (the image chain's final-image limit, validate.Thresholds)
and 5e-2 FP16: a 100-step chain accumulates the FP16 denoiser's ~1e-3 eps errors, and clipping
to the sample range keeps it bounded (the measured values are in docs/policies.md).
A check that fails is a refusal: the CLI exits 1.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from runtime.contract import (conditions_of, policy_of, read_manifest, sample_shape_of,
                              sha256_file)
from runtime.policy import normalize, unnormalize

ENCODER_LIMIT = 1e-4  # = ddpm_export.export.policy_export.ENCODER_ATOL (export does not import evaluation)


@dataclass
class PolicyThresholds:
    encoder: float = ENCODER_LIMIT  # max abs global_cond, encoder ONNX vs PyTorch
    eps_fp32: float = 1e-4  # max abs denoiser output, float32 engine
    eps_fp16: float = 2e-2  # max abs denoiser output, FP16 engine
    chunk_fp32: float = 1e-3  # max abs normalized action of the whole chunk, float32 denoiser
    chunk_fp16: float = 5e-2  # the same, FP16 denoiser


def is_policy_engine(path) -> bool:
    """True when the engine's manifest has a ``policy`` section (an exported LeRobot policy)."""
    try:
        return "policy" in read_manifest(path)
    except (OSError, ValueError):
        return False


def policy_checkpoint(engine, manifest: Dict[str, Any], checkpoint: Optional[str]) -> Path:
    """The checkpoint to build the PyTorch reference from: ``checkpoint`` when given, else the
    manifest's ``source.checkpoint`` (beside the engine, or as written); refuses when neither is a file."""
    if checkpoint is not None:
        return Path(checkpoint)
    name = (manifest.get("source") or {}).get("checkpoint")
    if not name:
        raise ValueError(f"{engine}: the manifest names no source checkpoint; pass --checkpoint POLICY.pt "
                         f"(the .pt of 'ddpm-export import --format lerobot')")
    for cand in (Path(engine).parent / Path(name).name, Path(name)):
        if cand.is_file():
            return cand
    raise ValueError(f"{engine}: its manifest's source checkpoint {name!r} is neither beside the engine nor at "
                     f"that path; pass --checkpoint POLICY.pt")


def raw_history(spec, batch: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """A raw observation history {name: [batch, n_obs_steps, *shape]}: images uniform in [0, 1],
    other features the unnormalization of U(-1, 1) (within a min/max range, about the mean)."""
    out = {}
    for f in spec.observations:
        shape = (batch, spec.n_obs_steps) + tuple(f.shape)
        if f.type == "VISUAL":
            out[f.name] = rng.uniform(0.0, 1.0, shape).astype(np.float32)
        else:
            out[f.name] = unnormalize(rng.uniform(-1.0, 1.0, shape).astype(np.float32), f.normalization)
    return out


def _encoder_level(policy, ref, spec, batches: Sequence[int], rng) -> List[Dict[str, Any]]:
    got_names = [i["name"] for i in policy.spec["encoder"]["inputs"]]
    if got_names != list(ref.encoder.input_names):
        raise ValueError(f"the manifest's encoder inputs {got_names} are not the checkpoint's encoder's "
                         f"{list(ref.encoder.input_names)}; re-export the policy from this checkpoint")
    rows = []
    for b in batches:
        feeds = ref.encoder_feeds(raw_history(spec, b, rng))
        got = policy.encoder({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds.items()})
        want = ref.encode(feeds)
        if got.shape != want.shape:
            raise ValueError(f"encoder output {list(got.shape)} at batch {b}, the checkpoint's encoder gives "
                             f"{list(want.shape)}; re-export the policy from this checkpoint")
        d = np.abs(got.astype(np.float64) - want)
        rows.append({"batch": b, "max_abs": float(d.max()), "mean_abs": float(d.mean()),
                     "scale": float(np.abs(want).max())})
    return rows


def _chunk_level(policy, ref, spec, batch: int, seeds: Sequence[int], method, steps, rng) -> List[Dict[str, Any]]:
    rows = []
    for seed in seeds:
        hist = raw_history(spec, batch, rng)
        got = policy.predict_chunk(hist, seed=seed)
        want = ref.predict_chunk(hist, seed=seed, method=method, steps=steps)  # its own plan: the checkpoint's
        if got.shape != want["actions"].shape:
            raise ValueError(f"the runtime's chunk {list(got.shape)} is not the reference's "
                             f"{list(want['actions'].shape)}; re-export the policy from this checkpoint")
        norm = normalize(got, ref.action_norm)  # the checkpoint's statistics, never the manifest's copy
        rows.append({"seed": seed, "batch": batch,
                     "max_abs": float(np.abs(norm.astype(np.float64) - want["normalized"]).max()),
                     "raw_max_abs": float(np.abs(got.astype(np.float64) - want["actions"]).max()),
                     "raw_scale": float(np.abs(want["actions"]).max()),
                     "engine_calls": int(policy.last_timing["engine_calls"])})
    return rows


def _check(value: float, limit: float) -> Dict[str, Any]:
    return {"value": value, "limit": limit, "passed": bool(value <= limit)}


def validate_policy(engines: Sequence[str], checkpoint: Optional[str] = None,
                    thresholds: PolicyThresholds = PolicyThresholds(), t_stride: int = 10,
                    batches: Optional[Sequence[int]] = None, chunk_batch: int = 3, seeds: Sequence[int] = (0, 1),
                    seed: int = 0, method: Optional[str] = None, steps: Optional[int] = None,
                    force: bool = False, log: Callable[[str], None] = lambda s: None) -> Dict[str, Any]:
    """Check each policy engine (NAME.onnx with a ``policy`` manifest section) against the PyTorch
    policy of its checkpoint (module docstring); returns the JSON-able report. checkpoint: None =
    each manifest's source checkpoint. method/steps: the chunk's sampler (None: the manifest's)."""
    import runtime

    from ddpm_export.evaluation.validate import Conditioning, one_step
    from ddpm_export.model.policy_reference import PolicyReference

    report: Dict[str, Any] = {"kind": "policy", "thresholds": asdict(thresholds), "seed": seed, "engines": []}
    refs: Dict[str, Any] = {}
    for path in engines:
        m = read_manifest(path)
        spec = policy_of(m)
        if spec is None:
            raise ValueError(f"{path}: not a policy engine (its manifest has no 'policy' section); validate "
                             f"image engines and policy engines in separate runs")
        ckpt_path = policy_checkpoint(path, m, checkpoint)
        sha = sha256_file(ckpt_path)
        src = (m.get("source") or {}).get("checkpoint_sha256")
        if src != sha and not force:
            raise ValueError(f"{path} was not made from {ckpt_path} (manifest checkpoint_sha256 {str(src)[:12]}..., "
                             f"file {sha[:12]}...); pass the engine's own checkpoint, or --force to compare anyway")
        if src != sha:
            log(f"WARNING: {path} names another checkpoint; comparing anyway because of --force")
        if str(ckpt_path) not in refs:
            refs[str(ckpt_path)] = PolicyReference(ckpt_path)
        ref = refs[str(ckpt_path)]
        if tuple(sample_shape_of(m)) != ref.sample_shape or \
                [c.to_dict() for c in conditions_of(m)] != [c.to_dict() for c in ref.conditions]:
            raise ValueError(f"{path}: sample shape {list(sample_shape_of(m))} / conditions are not those of "
                             f"{ckpt_path}'s denoiser {list(ref.sample_shape)}; validate each engine with its "
                             f"own checkpoint")
        rng = np.random.default_rng(seed)
        engine = runtime.load(path)
        b_list = list(batches) if batches else sorted({1, chunk_batch, int(m["batch_range"]["opt"])})
        log(f"{Path(path).name}: encoder and denoiser at batches {b_list}, denoiser every {t_stride} timesteps")
        policy = runtime.load_policy(path, seed=seed, method=method, steps=steps)
        try:
            enc_rows = _encoder_level(policy, ref, spec, b_list, rng)
            with engine:
                den_rows = one_step(engine, ref.model, int(m["schedule"]["num_timesteps"]), t_stride, b_list, seed,
                                    conditioning=Conditioning(conditions_of(m), seed=seed))
            log(f"{Path(path).name}: {len(seeds)} chunks of batch {chunk_batch} ({policy.plan['method']}, "
                f"{policy.engine_calls_per_chunk} calls each) vs the PyTorch policy")
            chunk_rows = _chunk_level(policy, ref, spec, chunk_batch, seeds, method, steps, rng)
        finally:
            policy.close()
        fp16 = m["precision"] == "fp16"
        enc_prec = policy.spec["encoder"].get("precision", "fp32")
        checks = {
            "encoder_max_abs": _check(max(r["max_abs"] for r in enc_rows),
                                      thresholds.encoder if enc_prec == "fp32" else thresholds.eps_fp16),
            "eps_max_abs": _check(max(r["max_abs"] for r in den_rows),
                                  thresholds.eps_fp16 if fp16 else thresholds.eps_fp32),
            "chunk_max_abs": _check(max(r["max_abs"] for r in chunk_rows),
                                    thresholds.chunk_fp16 if fp16 else thresholds.chunk_fp32),
        }
        report["engines"].append({
            "engine": str(path), "name": Path(path).name, "checkpoint": str(ckpt_path), "checkpoint_sha256": sha,
            "precision": m["precision"], "encoder_precision": enc_prec, "encoder": enc_rows, "one_step": den_rows,
            "chunk": {"method": policy.plan["method"], "steps": policy.engine_calls_per_chunk,
                      "options": policy.options, "rows": chunk_rows},
            "checks": checks, "passed": all(c["passed"] for c in checks.values())})
    report["passed"] = all(e["passed"] for e in report["engines"])
    return report


def format_policy_report(report: Dict[str, Any]) -> str:
    from ddpm_export.evaluation.validate import _fmt

    lines = ["| engine | precision (encoder) | encoder global_cond max abs (limit) | denoiser max abs (limit) "
             "| chunk sampler | chunk max abs, normalized actions (limit) | chunk max abs, raw actions "
             "| result |", "|---|---|---|---|---|---|---|---|"]
    for e in report["engines"]:
        c, ch = e["checks"], e["chunk"]
        raw = max(r["raw_max_abs"] for r in ch["rows"])
        scale = max(r["raw_scale"] for r in ch["rows"])
        lines.append(f"| {e['name']} | {e['precision']} ({e['encoder_precision']}) | {_fmt(c['encoder_max_abs'])} "
                     f"| {_fmt(c['eps_max_abs'])} | {ch['method']}-{ch['steps']} | {_fmt(c['chunk_max_abs'])} "
                     f"| {raw:.2e} (actions up to {scale:.2f}) | {'PASS' if e['passed'] else 'FAIL'} |")
    lines += ["", "Encoder: NAME-encoder.onnx vs the checkpoint's PyTorch encoder on the same normalized history; "
                  "denoiser: NAME.onnx vs the PyTorch U-Net, global_cond N(0, 1); chunk: runtime.load_policy"
                  "(...).predict_chunk vs the PyTorch policy (ddpm_export.model.policy_reference) from the same raw "
                  "observations and noise."]
    return "\n".join(lines)
