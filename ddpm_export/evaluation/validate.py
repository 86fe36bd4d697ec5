"""Does an engine reproduce the PyTorch reference? One step, one trajectory, the distribution.

Level 1, one step: eps of the engine vs the float32 PyTorch model at
t = 0..T-1 (a stride) and several batch sizes (by default the profile points
of the engine's batch range and the midpoints between them): max, mean and
relative error. A TensorRT plan is also compared with ONNX Runtime running the
float32 ONNX model (``onnx_reference``).

Level 2, one trajectory: the full ancestral chain, both sides fed identical
noise (the canonical order of runtime.loop): max |x_engine - x_ref| after
every step, the final images' error, and the x0 predictions along both chains
(the paper's progressive-generation picture). A chaotic 1000-step chain
amplifies FP16 rounding, so for FP16 engines the trajectory is reported, not
gated: the distribution level judges them.

Level 3, the distribution: many samples from each engine and from the
reference. For the digits model (1x16x16) the project's digits classifier
gives a Frechet distance to held-out real digits (with the real-vs-real floor
at the same sample count) and a confident-label share; the gate is that an
engine is not measurably further from real digits than the reference is.
Other image shapes use FID/KID through torch-fidelity when given Inception
weights (ddpm_export.evaluation.fidelity), and otherwise say that this level was skipped.

Level 4, the likelihood: the variational bound in bits/dim
(ddpm_export.evaluation.likelihood) of each engine and of the PyTorch model on the
same held-out digits with the same timesteps and noise, so the paired difference
shows the engine's numerics rather than Monte Carlo noise. It is a coarse check (an
eps error enters the bound only through its product with the model's own error),
reported with a loose gate; the one-step level is the sensitive one.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from runtime.contract import compute_precision, sha256_file
from runtime.schedulers.schedule import ScheduleConfig
from runtime.seeding import ImageStreams

from ddpm_export.evaluation.digits import DIGITS_SHAPE
from ddpm_export.model.checkpoint import load_model
from ddpm_export.model.external import image_shape_of
from ddpm_export.model.diffusion import GaussianDiffusion
from ddpm_export.model.reference_sampler import stream_noise

FRAME_EVERY = 100  # progressive-generation frames: x0_hat at t = 900, 800, ..., 0


@dataclass
class Thresholds:
    """Pass/fail limits; None: report only. Defaults are documented in ``ddpm-export validate --help``."""

    eps_fp32: float = 1e-4  # max abs eps error: the export's own parity limit
    eps_fp16: float = 2e-2  # the FP16 export's limit (eps is ~unit scale)
    final_fp32: Optional[float] = 1e-3  # final images of the 1000-step chain, [-1, 1] scale
    final_fp16: Optional[float] = None  # chaotic chain: judged by the distribution instead
    # distribution: Frechet(engine, real) - Frechet(reference, real) <= fd_excess * floor, where
    # the floor is Frechet(real, real) at the same sample count (the scale of sampling noise)
    fd_excess: Optional[float] = 1.0
    # confident-label share of the engine's samples >= confident_ratio * the reference's
    confident_ratio: Optional[float] = 0.9
    # likelihood: |mean paired bits/dim difference engine - reference|; measured FP16 <= 4e-5,
    # float32 <= 1e-7 on the shipped digits engines, so 1e-3 is a loose gate (validate --help)
    nll_bpd: Optional[float] = 1e-3


def profile_batches(batch_range: Dict[str, int]) -> List[int]:
    """The profile points min/opt/max and the midpoints between them (TensorRT picks kernels per point)."""
    lo, opt, hi = int(batch_range["min"]), int(batch_range["opt"]), int(batch_range["max"])
    return sorted({lo, (lo + opt) // 2, opt, (opt + hi) // 2, hi})


def one_step(engine, model, num_timesteps: int, t_stride: int = 50, batches: Sequence[int] = (1, 3, 8),
             seed: int = 0, onnx_reference=None) -> List[Dict[str, Any]]:
    """Rows {t, batch, max_abs, mean_abs, rel[, max_abs_vs_onnx]} of eps_engine vs eps_pytorch."""
    rng = np.random.default_rng(seed)
    ts = sorted(set(range(0, num_timesteps, t_stride)) | {num_timesteps - 1})
    shape = tuple(engine.image_shape)
    rows = []
    for b in batches:
        for t in ts:
            x = rng.standard_normal((b,) + shape, dtype=np.float32)
            tt = np.full((b,), t, dtype=np.int32)
            got = engine(x, tt).astype(np.float64)
            with torch.no_grad():
                ref = model(torch.from_numpy(x), torch.from_numpy(tt).long()).numpy().astype(np.float64)
            d = np.abs(got - ref)
            row = {"t": t, "batch": b, "max_abs": float(d.max()), "mean_abs": float(d.mean()),
                   "rel": float(d.max() / max(np.sqrt(np.mean(ref ** 2)), 1e-12))}
            if onnx_reference is not None:
                row["max_abs_vs_onnx"] = float(np.abs(got - onnx_reference(x, tt)).max())
            rows.append(row)
    return rows


def trajectory(engine, model, schedule: ScheduleConfig, num: int = 4,
               seed: int = 0, method: str = "ddpm", steps: Optional[int] = None,
               method_options: Optional[Dict[str, Any]] = None,
               ) -> Tuple[Dict[str, Any], Dict[str, List[Tuple[int, np.ndarray]]]]:
    """Drift of the engine's chain from the reference chain on identical noise.

    DDPM over all T steps: the reference is the PyTorch sampler. Any other method or step
    count: the PyTorch model driven through the same runtime scheduler (same noise).
    Returns the JSON part and the x0_hat frames {"reference": [(t, x0)], "engine": [...]}.
    """
    opts = dict(method_options or {})
    if method != "ddpm" or (steps is not None and steps != schedule.num_timesteps) or opts:
        return _trajectory_same_scheduler(engine, model, schedule, num, seed, method, steps, opts)
    shape = (num,) + tuple(engine.image_shape)
    got: Dict[int, np.ndarray] = {}
    frames: List[Tuple[int, np.ndarray]] = []

    def on_engine_step(i, t, x, x0):
        got[t] = x.copy()
        if t % FRAME_EVERY == 0:
            frames.append((t, x0.copy()))

    res = engine.sample_float(num, seed=seed, batch=num, callback=on_engine_step)
    T = schedule.num_timesteps
    drift: Dict[int, float] = {}

    def on_step(t, x):
        drift[t] = float(np.abs(got[t].astype(np.float64) - x.numpy()).max())

    # the same per-image streams as the engine's run: images 0..num-1 of seed
    ref, ref_frames = GaussianDiffusion(schedule).sample(
        model, shape, callback=on_step, trajectory_every=FRAME_EVERY,
        **stream_noise(ImageStreams(seed, 0, num), shape))
    final = float(np.abs(res.images.astype(np.float64) - ref.numpy()).max())
    steps = sorted(drift, reverse=True)
    part = {"num_images": num, "final_max_abs": final,
            "drift": [{"t": t, "max_abs": drift[t]} for t in steps],
            "first_step_above_1e-3": next((T - t for t in steps if drift[t] > 1e-3), None)}
    return part, {"reference": [(t, a.numpy()) for t, a in ref_frames], "engine": frames}


def _trajectory_same_scheduler(engine, model, schedule, num, seed, method, steps, opts):
    from runtime.loop import sample as run_loop

    chains: Dict[str, Dict[int, np.ndarray]] = {"engine": {}, "reference": {}}
    frames: Dict[str, List[Tuple[int, np.ndarray]]] = {"engine": [], "reference": []}

    def recorder(name):
        def on_step(i, t, x, x0):
            chains[name][t] = x.astype(np.float64)
            frames[name].append((t, x0.copy()))
        return on_step

    from runtime.contract import plan_steps, sampling_plan

    kw = dict(seed=seed, method=method, batch=num, **opts)
    res = engine.sample_float(num, callback=recorder("engine"), steps=steps, **kw)
    # the reference runs the timesteps the engine ran (a student's: its manifest's list)
    ref = run_loop(_torch_runner(model), tuple(engine.image_shape), schedule.to_dict(), num,
                   callback=recorder("reference"), **plan_steps(sampling_plan(engine.manifest, method, steps)),
                   **kw)
    ts = list(chains["engine"])
    drift = {t: float(np.abs(chains["engine"][t] - chains["reference"][t]).max()) for t in ts}
    final = float(np.abs(res.images.astype(np.float64) - ref.images.astype(np.float64)).max())
    part = {"num_images": num, "method": method, "steps": len(ts), "options": opts, "final_max_abs": final,
            "drift": [{"t": t, "max_abs": drift[t]} for t in ts],
            "first_step_above_1e-3": next((i + 1 for i, t in enumerate(ts) if drift[t] > 1e-3), None)}
    return part, frames


def _torch_runner(model):
    """The PyTorch model as a runtime runner: (x_t float32 [N, C, H, W], t int32 [N]) -> output."""
    def run(x, t):
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(t.astype(np.int64))).numpy()
    return run


def _engine_name(path: str, paths: Sequence[str]) -> str:
    name = Path(path).name
    return name if sum(Path(p).name == name for p in paths) == 1 else str(path)


def _open_onnx_reference(engine_path: str, manifest: Dict[str, Any], explicit: Optional[str]):
    """ONNX Runtime on the float32 ONNX model, for a TensorRT plan (None for ONNX engines)."""
    import runtime

    if explicit is None and Path(engine_path).suffix == ".onnx":
        return None
    path = explicit
    if path is None:  # the plan's own source, or its float32 sibling NAME.onnx beside NAME-fp16.onnx
        src = (manifest.get("engine") or {}).get("onnx")
        if src:
            cand = [Path(engine_path).parent / src, Path(engine_path).parent / src.replace("-fp16", "")]
            path = next((str(c) for c in cand if c.is_file() and read_precision(c) == "fp32"), None)
    if path is None:
        return None
    ref = runtime.load(path)
    if ref.manifest["precision"] != "fp32":
        raise ValueError(f"--onnx-reference {path} is a {ref.manifest['precision']} model; give the float32 ONNX")
    return ref


def read_precision(onnx_path: Path) -> Optional[str]:
    from runtime.contract import read_manifest

    try:
        return read_manifest(onnx_path)["precision"]
    except Exception:
        return None


def reference_samples(model, schedule: ScheduleConfig, num: int, seed: int, path: Optional[str],
                      progress: bool) -> np.ndarray:
    """The reference side of the distribution level: a stored .npz or fresh PyTorch samples."""
    from ddpm_export.model.reference_sampler import load_samples_npz, sample_images

    if path:
        x = load_samples_npz(path)
        if len(x) < num:
            raise ValueError(f"{path} holds {len(x)} reference samples, fewer than --samples {num}; "
                             f"lower --samples or omit --reference-samples to draw them")
        return x[:num].astype(np.float32)
    x, _ = sample_images(model, schedule, num, seed=seed, batch_size=min(num, 64), progress=progress)
    return x


def distribution_level(image_shape: Tuple[int, ...], reference: np.ndarray, engine_samples: Dict[str, np.ndarray],
                       thresholds: Thresholds, inception_weights: Optional[str] = None) -> Dict[str, Any]:
    """Compare the sample sets; returns {method, sets..., checks per engine} or {skipped: reason}."""
    if tuple(image_shape) == DIGITS_SHAPE:
        from ddpm_export.evaluation.digits import FLOOR, digits_distribution, train_digits_classifier

        rep = digits_distribution(train_digits_classifier(), {"reference": reference, **engine_samples},
                                  reference="reference")
        rep["method"] = "digits classifier features (Frechet distance) and confident-label share"
        floor = rep["sets"][FLOOR]["frechet_to_real"]
        ref = rep["sets"]["reference"]
        rep["checks"] = {}
        for name in engine_samples:
            row = rep["sets"][name]
            excess = row["frechet_to_real"] - ref["frechet_to_real"]
            ratio = row["confident_share"] / ref["confident_share"] if ref["confident_share"] else float("nan")
            lim_fd = None if thresholds.fd_excess is None else thresholds.fd_excess * floor
            rep["checks"][name] = {
                "frechet_excess": {"value": excess, "limit": lim_fd,
                                   "passed": None if lim_fd is None else bool(excess <= lim_fd)},
                "confident_ratio": {"value": ratio, "limit": thresholds.confident_ratio,
                                    "passed": None if thresholds.confident_ratio is None
                                    else bool(ratio >= thresholds.confident_ratio)},
            }
        return rep
    if inception_weights:
        from runtime.io import to_uint8

        from ddpm_export.evaluation.fidelity import fidelity_metrics

        ref8 = to_uint8(reference)
        sets = {name: fidelity_metrics(to_uint8(x), ref8, inception_weights=inception_weights,
                                       metrics=("fid", "kid"), kid_subset_size=min(1000, len(x), len(ref8)))
                for name, x in engine_samples.items()}
        return {"method": "torch-fidelity FID/KID of each engine's samples against the reference samples "
                          "(reported, not gated: no real-vs-real floor without the training data)",
                "n": int(len(reference)), "sets": sets, "checks": {}}
    return {"skipped": distribution_skip_reason(image_shape, inception_weights)}


def distribution_skip_reason(image_shape: Tuple[int, ...], inception_weights: Optional[str]) -> Optional[str]:
    """Why the distribution level cannot run (None when it can): known before any sampling."""
    if tuple(image_shape) == DIGITS_SHAPE or inception_weights:
        return None
    return (f"no distribution metric for images of shape {list(image_shape)} without Inception "
            f"weights: pass --inception-weights PATH (FID/KID via torch-fidelity)")


def validate(checkpoint: str, engines: Sequence[str], thresholds: Thresholds = Thresholds(),
             t_stride: int = 50, batches: Optional[Sequence[int]] = None, trajectory_images: int = 4,
             samples: int = 0, reference_samples_path: Optional[str] = None,
             inception_weights: Optional[str] = None, onnx_reference: Optional[str] = None,
             seed: int = 0, force: bool = False, progress: bool = False,
             likelihood_images: int = 0, likelihood_t_samples: Optional[int] = 50,
             log: Callable[[str], None] = lambda s: None, method: Optional[str] = None,
             steps: Optional[int] = None, method_options: Optional[Dict[str, Any]] = None,
             allow_host_code: bool = False) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Compare each engine with the checkpoint's PyTorch model.

    Returns (report, artifacts): the JSON-able report and the arrays the plots
    need (samples per set, progressive frames). method / steps / method_options: how the
    engines sample for the trajectory and distribution levels (any runtime.schedulers
    method; None: the checkpoint's ``sampling`` section, a distilled student's, else ddpm);
    the distribution's reference stays the PyTorch model's DDPM over all T steps, except for a
    student: the PyTorch student through its own sampler. A student has no likelihood level.
    allow_host_code: load version-compatible TensorRT plans (see runtime.load).
    """
    import runtime
    from runtime.schedulers import make_scheduler

    from runtime.contract import is_student, plan_options, plan_steps, sampling_plan

    model, ckpt = load_model(checkpoint)
    schedule = ScheduleConfig.from_dict(ckpt["schedule_config"])
    student = is_student(ckpt)  # a few-step student of 'ddpm-export distill'
    plan = sampling_plan({"schedule": ckpt["schedule_config"], "sampling": ckpt.get("sampling")}, method, steps)
    method, steps = plan["method"], plan["steps"]
    # a non-binding default's options (an imported DDIMPipeline's eta, variant) made explicit, so the
    # engine and the PyTorch reference run the same sampler
    method_options = plan_options(plan, method_options)
    make_scheduler(schedule, method, **plan_steps(plan), **method_options)  # bad method/options: fail now
    ckpt_sha = sha256_file(checkpoint)
    report: Dict[str, Any] = {"checkpoint": str(checkpoint), "checkpoint_sha256": ckpt_sha,
                              "thresholds": asdict(thresholds), "seed": seed, "engines": []}
    artifacts: Dict[str, Any] = {"samples": {}, "frames": {}}
    # the reference network is whatever the checkpoint holds: our U-Net, or the external network
    # it was imported as (diffusers' own UNet2DModel), with its (C, H, W)
    model_shape = image_shape_of(model)
    opened = []
    for path in engines:  # every check that needs no computation first: fail in seconds, not minutes
        engine = runtime.load(path, allow_host_code=allow_host_code)
        m = engine.manifest
        if tuple(m["image_shape"]) != model_shape:
            raise ValueError(f"{path}: image shape {m['image_shape']} is not the checkpoint's model's "
                             f"{list(model_shape)}; validate each engine with its own checkpoint")
        source_sha = m.get("source", {}).get("checkpoint_sha256")
        if source_sha != ckpt_sha and not force:
            raise ValueError(
                f"{path} was not made from {checkpoint} (manifest checkpoint_sha256 "
                f"{str(source_sha)[:12]}..., file {ckpt_sha[:12]}...); pass the engine's own "
                f"checkpoint, or --force to compare anyway"
            )
        if source_sha != ckpt_sha:
            log(f"WARNING: {path} names another checkpoint (sha256 {str(source_sha)[:12]}...); "
                f"comparing anyway because of --force")
        opened.append((path, engine, _open_onnx_reference(path, m, onnx_reference)))
    engine_samples: Dict[str, np.ndarray] = {}
    skip = distribution_skip_reason(model_shape, inception_weights) if samples else None
    if skip:  # say so now, and draw no samples that nothing could score
        log(f"distribution level skipped: {skip}")
        report["distribution"] = {"skipped": skip}
        samples = 0
    ref = None
    if samples and reference_samples_path:  # a stored file: read and check it before any sampling
        ref = reference_samples(model, schedule, samples, seed, reference_samples_path, progress)
    for path, engine, onnx_ref in opened:
        name = _engine_name(path, engines)
        m = engine.manifest
        with engine:
            b_list = list(batches) if batches else profile_batches(engine.batch_range)
            log(f"{name}: one step at batches {b_list}, every {t_stride} timesteps")
            if onnx_ref is not None:
                with onnx_ref:
                    one = one_step(engine, model, schedule.num_timesteps, t_stride, b_list, seed, onnx_ref)
            else:
                one = one_step(engine, model, schedule.num_timesteps, t_stride, b_list, seed)
            traj = None
            if trajectory_images:
                log(f"{name}: one {method} trajectory of {trajectory_images} images")
                traj, frames = trajectory(engine, model, schedule, trajectory_images, seed,
                                          method, steps, method_options)
                artifacts["frames"].setdefault("reference", frames["reference"])
                artifacts["frames"][name] = frames["engine"]
            if samples:
                log(f"{name}: {samples} samples for the distribution level")
                res = engine.sample_float(samples, seed=seed + 1, progress=progress, method=method,
                                          steps=steps, **method_options)
                engine_samples[name] = res.images
        precision = compute_precision(m, path)  # an FP16 builder-flag plan of the float32 graph is fp16; its ONNX is not
        fp16 = precision == "fp16"
        eps_limit = thresholds.eps_fp16 if fp16 else thresholds.eps_fp32
        final_limit = thresholds.final_fp16 if fp16 else thresholds.final_fp32
        eps_max = max(r["max_abs"] for r in one)
        checks = {"eps_max_abs": {"value": eps_max, "limit": eps_limit, "passed": eps_max <= eps_limit}}
        if traj is not None:
            checks["final_max_abs"] = {"value": traj["final_max_abs"], "limit": final_limit,
                                       "passed": None if final_limit is None else traj["final_max_abs"] <= final_limit}
        report["engines"].append({
            "engine": str(path), "name": name, "precision": precision, "backend": engine.runner.backend,
            "onnx_reference": None if onnx_ref is None else str(onnx_ref.runner.path),
            "one_step": one, "trajectory": traj, "checks": checks,
        })
    if samples:
        log(f"reference: {samples} samples" + (f" from {reference_samples_path}" if reference_samples_path
                                                else " from the PyTorch model"))
        if ref is None and student:
            from runtime.loop import sample as run_loop

            ref = run_loop(_torch_runner(model), model_shape, schedule.to_dict(), samples, seed=seed,
                           method=method, **plan_steps(plan), batch=min(samples, 64), **method_options).images
        if ref is None:
            ref = reference_samples(model, schedule, samples, seed, reference_samples_path, progress)
        dist = distribution_level(model_shape, ref, engine_samples, thresholds, inception_weights)
        report["distribution"] = dist
        artifacts["samples"] = {"reference": ref, **engine_samples}
        for e in report["engines"]:
            e["checks"].update({f"distribution_{k}": v for k, v in dist.get("checks", {}).get(e["name"], {}).items()})
    if likelihood_images and student:
        report["likelihood"] = {"skipped": "a distilled student has no variational bound (it jumps to the end "
                                           "of the teacher's ODE): score its teacher with 'ddpm-export nll'"}
    elif likelihood_images:
        report["likelihood"] = lik = likelihood_level(
            model, schedule, [(_engine_name(p, engines), e) for p, e, _ in opened], likelihood_images,
            likelihood_t_samples, seed, thresholds.nll_bpd, log)
        for e in report["engines"]:
            if e["name"] in lik.get("checks", {}):
                e["checks"]["likelihood_bpd_diff"] = lik["checks"][e["name"]]
    for e in report["engines"]:
        e["passed"] = all(c["passed"] is not False for c in e["checks"].values())
    report["passed"] = all(e["passed"] for e in report["engines"])
    return report, artifacts


def likelihood_level(model, schedule: ScheduleConfig, engines: Sequence[Tuple[str, Any]], num: int,
                     t_samples: Optional[int], seed: int, limit: Optional[float],
                     log: Callable[[str], None] = lambda s: None) -> Dict[str, Any]:
    """Bits/dim of the reference and each (name, engine) on the first ``num`` held-out digits,
    paired (same timesteps and noise); {skipped: reason} for models other than digits."""
    from ddpm_export.evaluation.likelihood import compute_bound, from_uint8
    from ddpm_export.evaluation.likelihood_data import load_test_images
    from ddpm_export.evaluation.likelihood_reference import reference_bound

    shape = image_shape_of(model)
    if shape != DIGITS_SHAPE:
        return {"skipped": f"no held-out test images for shape {list(shape)}; score them with "
                           f"'ddpm-export nll --engine E --checkpoint C --data FOLDER'"}
    x0 = from_uint8(load_test_images("digits", shape, num)[0])
    how = f"{t_samples} timesteps per image" if t_samples else "every timestep"
    log(f"likelihood: reference on {num} held-out digits, {how}")
    ref = reference_bound(model, x0, schedule, t_samples=t_samples, batch=num, seed=seed)
    sets = {"reference": {**ref.summary(), "per_image_bpd": ref.total.tolist()}}
    checks = {}
    for name, engine in engines:
        log(f"likelihood: {name}")
        with engine:
            b = compute_bound(engine, x0, schedule, t_samples=t_samples,
                              batch=min(num, int(engine.batch_range["max"])), seed=seed)
        d = b.total - ref.total
        sets[name] = {**b.summary(), "per_image_bpd": b.total.tolist(), "per_image_diff": d.tolist(),
                      "diff_mean": float(d.mean()), "diff_max_abs": float(np.abs(d).max())}
        checks[name] = {"value": float(d.mean()), "limit": limit,
                        "passed": None if limit is None else bool(abs(d.mean()) <= limit)}
    return {"num_images": num, "t_samples": t_samples, "seed": seed, "limit": limit,
            "data": "held-out digits (uint8)", "sets": sets, "checks": checks}


def _fmt(check: Optional[Dict[str, Any]], fmt: str = ".2e") -> str:
    if check is None:
        return "-"
    lim = "report only" if check["limit"] is None else format(check["limit"], ".3g")
    return f"{format(check['value'], fmt)} ({lim})"


def format_likelihood(lik: Optional[Dict[str, Any]]) -> List[str]:
    if not lik:
        return []
    if "skipped" in lik:
        return ["", f"Likelihood level skipped: {lik['skipped']}"]
    how = f"{lik['t_samples']} timesteps per image" if lik["t_samples"] else "every timestep"
    lines = ["", f"Likelihood (bits/dim, {lik['num_images']} held-out digits, {how}, same noise for every set):",
             "| set | bits/dim +- s.e. over images | mean diff vs reference (limit) | max abs diff per image |",
             "|---|---|---|---|"]
    for name, row in lik["sets"].items():
        c = lik["checks"].get(name)
        lines.append(f"| {name} | {row['bits_per_dim']:.4f} +- {row['se_over_images']:.4f} "
                     f"| {_fmt(c, '+.2e')} | {'-' if c is None else format(row['diff_max_abs'], '.2e')} |")
    return lines


def format_report(report: Dict[str, Any]) -> str:
    lines = ["| engine | precision | eps max abs (limit) | eps mean abs | final image max abs (limit) "
             "| Frechet excess (limit) | result |",
             "|---|---|---|---|---|---|---|"]
    for e in report["engines"]:
        c = e["checks"]
        mean = float(np.mean([r["mean_abs"] for r in e["one_step"]]))
        lines.append(f"| {e['name']} | {e['precision']} | {_fmt(c['eps_max_abs'])} | {mean:.2e} "
                     f"| {_fmt(c.get('final_max_abs'))} | {_fmt(c.get('distribution_frechet_excess'), '.2f')} "
                     f"| {'PASS' if e['passed'] else 'FAIL'} |")
    dist = report.get("distribution")
    if dist and "real_reference_n" in dist:  # the digits level
        lines += ["", f"Distribution ({dist['n']} images per set vs {dist['real_reference_n']} held-out real digits):",
                  "| set | Frechet to real | Frechet to reference | confident share | smallest class share |",
                  "|---|---|---|---|---|"]
        for name, row in dist["sets"].items():
            to_ref = row.get("frechet_to_reference")
            lines.append(f"| {name} | {row['frechet_to_real']:.2f} | {'-' if to_ref is None else format(to_ref, '.2f')} "
                         f"| {row['confident_share']:.3f} | {row['class_min_share']:.3f} |")
    elif dist and "skipped" in dist:
        lines += ["", f"Distribution level skipped: {dist['skipped']}"]
    elif dist:
        lines += ["", "Distribution (torch-fidelity, engine vs reference samples):"]
        for name, row in dist["sets"].items():
            lines.append(f"  {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)))
    lines += format_likelihood(report.get("likelihood"))
    return "\n".join(lines)

