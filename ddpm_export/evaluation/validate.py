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

A conditional engine (its manifest lists conditions) is checked at fixed conditions, the
same on both sides: class labels cycled over the samples (every label 0..K-1, or the ones
given), other conditions drawn once from the seed, and the guidance scale w (the
manifest's default unless given). One step compares the raw network output at those
conditions and, when guidance applies (w != 1), also at the null conditions and the guided
mix; the chains and the distribution sample with the conditions and w on both sides, the
reference mixing on the PyTorch model's raw output (``ddpm_export.model.conditions.
GuidedModel``, as runtime.guidance documents). For a class-conditional digits model (10
classes) the distribution level adds, per class, the label accuracy (the share of samples
the digits classifier assigns to the requested label) and the Frechet distance to the real
digits of that class. The likelihood level scores p(x | y) with the held-out digits' own
labels (the conditional model alone: a guided mix has no likelihood of its own). The report
records the conditions and w.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from runtime.contract import (Condition, compute_precision, conditions_of, default_guidance,
                              sample_kind_of, sample_shape_of, sha256_file)
from runtime.schedulers.schedule import ScheduleConfig
from runtime.seeding import ImageStreams

from ddpm_export.evaluation.digits import DIGITS_SHAPE
from ddpm_export.model.checkpoint import load_model
from ddpm_export.model.conditions import GuidedModel, WithConditions, condition_tensors, model_conditions
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
    # class-conditional digits engines: label accuracy of the engine >= this x the reference's
    label_accuracy_ratio: Optional[float] = 0.9


class Conditioning:
    """The fixed conditions of a validation run and its guidance scale (module docstring).

    ``values(num, offset)``: the condition arrays for samples offset, ..., offset + num - 1:
    class labels cycled over ``labels`` (default every label 0..K-1), other conditions
    N(0, 1) from the run's seed (the same draw for the same samples). ``guided``: whether
    guidance applies (w != 1), so that the null branch is checked too."""

    def __init__(self, conditions: Sequence[Condition], labels: Optional[Sequence[int]] = None,
                 guidance: float = 1.0, seed: int = 0):
        self.conditions = tuple(conditions)
        self.guidance = float(guidance)
        self.seed = seed
        class_labels = [c for c in self.conditions if c.kind == "class_label"]
        if labels is not None and len(class_labels) != 1:
            raise ValueError(f"labels: this model has {len(class_labels)} class-label conditions "
                             f"({[c.name for c in class_labels]}); labels need exactly one")
        self.labels = {c.name: list(range(c.num_classes)) if labels is None else [int(v) for v in labels]
                       for c in class_labels}

    @property
    def guided(self) -> bool:
        return bool(self.conditions) and self.guidance != 1.0

    def values(self, num: int, offset: int = 0) -> Dict[str, np.ndarray]:
        out: Dict[str, np.ndarray] = {}
        for j, c in enumerate(self.conditions):
            if c.kind == "class_label":
                ids = self.labels[c.name]
                out[c.name] = np.array([ids[(offset + i) % len(ids)] for i in range(num)], dtype=np.int64)
            else:  # sample i's value is row offset + i of one draw per condition
                rng = np.random.default_rng([self.seed, 1 + j])
                out[c.name] = rng.standard_normal((offset + num,) + tuple(c.shape), dtype=np.float32)[offset:]
        return out

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"guidance": self.guidance, "conditions": []}
        for c in self.conditions:
            e = dict(c.to_dict())
            e["values"] = ({"labels": self.labels[c.name], "cycled": True} if c.kind == "class_label"
                           else {"draw": f"N(0, 1), numpy default_rng([seed={self.seed}, {1 + self.conditions.index(c)}])"})
            d["conditions"].append(e)
        return d


def profile_batches(batch_range: Dict[str, int]) -> List[int]:
    """The profile points min/opt/max and the midpoints between them (TensorRT picks kernels per point)."""
    lo, opt, hi = int(batch_range["min"]), int(batch_range["opt"]), int(batch_range["max"])
    return sorted({lo, (lo + opt) // 2, opt, (opt + hi) // 2, hi})


def one_step(engine, model, num_timesteps: int, t_stride: int = 50, batches: Sequence[int] = (1, 3, 8),
             seed: int = 0, onnx_reference=None, conditioning: Optional[Conditioning] = None
             ) -> List[Dict[str, Any]]:
    """Rows {t, batch, max_abs, mean_abs, rel[, max_abs_vs_onnx]} of eps_engine vs eps_pytorch.

    A conditional model: both sides at the same fixed conditions (labels cycled on from row to
    row, so a batch of 1 sees every label over the timesteps); when guidance applies, also
    max_abs_null (both at the null conditions) and max_abs_guided (the mixes)."""
    rng = np.random.default_rng(seed)
    ts = sorted(set(range(0, num_timesteps, t_stride)) | {num_timesteps - 1})
    shape = tuple(engine.image_shape)
    conds = () if conditioning is None else conditioning.conditions
    rows = []
    offset = 0
    for b in batches:
        for t in ts:
            x = rng.standard_normal((b,) + shape, dtype=np.float32)
            tt = np.full((b,), t, dtype=np.int32)
            cond = conditioning.values(b, offset) if conds else {}
            offset += b
            got = engine(x, tt, **cond).astype(np.float64)
            ref = _torch_out(model, x, tt, conds, cond)
            d = np.abs(got - ref)
            row = {"t": t, "batch": b, "max_abs": float(d.max()), "mean_abs": float(d.mean()),
                   "rel": float(d.max() / max(np.sqrt(np.mean(ref ** 2)), 1e-12))}
            if conds and conditioning.guided:
                from runtime.guidance import null_conditions

                null = null_conditions(conds, b)
                got_u = engine(x, tt, **null).astype(np.float64)
                ref_u = _torch_out(model, x, tt, conds, null)
                w = conditioning.guidance
                row["max_abs_null"] = float(np.abs(got_u - ref_u).max())
                row["max_abs_guided"] = float(np.abs((got_u + w * (got - got_u)) - (ref_u + w * (ref - ref_u))).max())
            if onnx_reference is not None:
                row["max_abs_vs_onnx"] = float(np.abs(got - onnx_reference(x, tt, **cond)).max())
            rows.append(row)
    return rows


def _torch_out(model, x: np.ndarray, t: np.ndarray, conditions: Sequence[Condition],
               cond: Dict[str, np.ndarray]) -> np.ndarray:
    """model(x, t, *cond) in float64 (conditions in input order)."""
    with torch.no_grad():
        return model(torch.from_numpy(x), torch.from_numpy(t).long(),
                     *condition_tensors(conditions, cond)).numpy().astype(np.float64)


def trajectory(engine, model, schedule: ScheduleConfig, num: int = 4,
               seed: int = 0, method: str = "ddpm", steps: Optional[int] = None,
               method_options: Optional[Dict[str, Any]] = None, conditioning: Optional[Conditioning] = None,
               ) -> Tuple[Dict[str, Any], Dict[str, List[Tuple[int, np.ndarray]]]]:
    """Drift of the engine's chain from the reference chain on identical noise.

    DDPM over all T steps: the reference is the PyTorch sampler. Any other method or step
    count: the PyTorch model driven through the same runtime scheduler (same noise).
    A conditional model: both chains at the conditioning's conditions and guidance (the
    reference mixes with GuidedModel, not with the runtime's GuidedDenoiser).
    Returns the JSON part and the x0_hat frames {"reference": [(t, x0)], "engine": [...]}.
    """
    opts = dict(method_options or {})
    if method != "ddpm" or (steps is not None and steps != schedule.num_timesteps) or opts:
        return _trajectory_same_scheduler(engine, model, schedule, num, seed, method, steps, opts, conditioning)
    conds = () if conditioning is None else conditioning.conditions
    ckw: Dict[str, Any] = {}
    net = model
    if conds:
        cond = conditioning.values(num)
        ckw = {"cond": cond, "guidance": conditioning.guidance}
        net = WithConditions(GuidedModel(model, conds, conditioning.guidance), condition_tensors(conds, cond))
    shape = (num,) + tuple(engine.image_shape)
    got: Dict[int, np.ndarray] = {}
    frames: List[Tuple[int, np.ndarray]] = []

    def on_engine_step(i, t, x, x0):
        got[t] = x.copy()
        if t % FRAME_EVERY == 0:
            frames.append((t, x0.copy()))

    res = engine.sample_float(num, seed=seed, batch=num, callback=on_engine_step, **ckw)
    T = schedule.num_timesteps
    drift: Dict[int, float] = {}

    def on_step(t, x):
        drift[t] = float(np.abs(got[t].astype(np.float64) - x.numpy()).max())

    # the same per-image streams as the engine's run: images 0..num-1 of seed
    ref, ref_frames = GaussianDiffusion(schedule).sample(
        net, shape, callback=on_step, trajectory_every=FRAME_EVERY,
        **stream_noise(ImageStreams(seed, 0, num), shape))
    final = float(np.abs(res.images.astype(np.float64) - ref.numpy()).max())
    steps = sorted(drift, reverse=True)
    part = {"num_images": num, "final_max_abs": final,
            "drift": [{"t": t, "max_abs": drift[t]} for t in steps],
            "first_step_above_1e-3": next((T - t for t in steps if drift[t] > 1e-3), None)}
    return part, {"reference": [(t, a.numpy()) for t, a in ref_frames], "engine": frames}


def _trajectory_same_scheduler(engine, model, schedule, num, seed, method, steps, opts, conditioning=None):
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
    conds = () if conditioning is None else conditioning.conditions
    ekw: Dict[str, Any] = {}
    rkw: Dict[str, Any] = {}
    if conds:
        cond = conditioning.values(num)
        ekw = {"cond": cond, "guidance": conditioning.guidance}
        rkw = {"conditions": conds, "cond": cond}  # the reference runner mixes itself: loop guidance 1
    res = engine.sample_float(num, callback=recorder("engine"), steps=steps, **kw, **ekw)
    # the reference runs the timesteps the engine ran (a student's: its manifest's list)
    ref = run_loop(_torch_runner(model, conditioning), tuple(engine.image_shape), schedule.to_dict(), num,
                   callback=recorder("reference"), **plan_steps(sampling_plan(engine.manifest, method, steps)),
                   **kw, **rkw)
    ts = list(chains["engine"])
    drift = {t: float(np.abs(chains["engine"][t] - chains["reference"][t]).max()) for t in ts}
    final = float(np.abs(res.images.astype(np.float64) - ref.images.astype(np.float64)).max())
    part = {"num_images": num, "method": method, "steps": len(ts), "options": opts, "final_max_abs": final,
            "drift": [{"t": t, "max_abs": drift[t]} for t in ts],
            "first_step_above_1e-3": next((i + 1 for i, t in enumerate(ts) if drift[t] > 1e-3), None)}
    return part, frames


def _torch_runner(model, conditioning: Optional[Conditioning] = None):
    """The PyTorch model as a runtime runner: (x_t float32 [N, C, H, W], t int32 [N], **cond) ->
    output; a conditional model's output guided by the conditioning's scale (GuidedModel), so
    that the runtime loop runs it at guidance 1."""
    conds = () if conditioning is None else conditioning.conditions
    net = GuidedModel(model, conds, conditioning.guidance) if conds else model

    def run(x, t, **cond):
        with torch.no_grad():
            return net(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(t.astype(np.int64)),
                       *condition_tensors(conds, cond)).numpy()
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
                      progress: bool, conditioning: Optional[Conditioning] = None) -> np.ndarray:
    """The reference side of the distribution level: a stored .npz or fresh PyTorch samples
    (a conditional model's at the conditioning's conditions and guidance)."""
    from ddpm_export.model.reference_sampler import load_samples_npz, sample_images

    if path:
        x = load_samples_npz(path)
        if len(x) < num:
            raise ValueError(f"{path} holds {len(x)} reference samples, fewer than --samples {num}; "
                             f"lower --samples or omit --reference-samples to draw them")
        return x[:num].astype(np.float32)
    ckw: Dict[str, Any] = {}
    if conditioning is not None and conditioning.conditions:
        ckw = {"conditions": conditioning.conditions, "cond": conditioning.values(num),
               "guidance": conditioning.guidance}
    x, _ = sample_images(model, schedule, num, seed=seed, batch_size=min(num, 64), progress=progress, **ckw)
    return x


def digits_labels_apply(image_shape: Tuple[int, ...], conditions: Sequence[Condition]) -> Optional[str]:
    """Why the per-class digits scores do not apply to a class-conditional model (None: they do)."""
    labels = [c for c in conditions if c.kind == "class_label"]
    if not labels:
        return "the model has no class-label condition"
    if tuple(image_shape) != DIGITS_SHAPE or len(conditions) != 1 or labels[0].num_classes != 10:
        return (f"the digits classifier scores 10 classes of {list(DIGITS_SHAPE)} images; this model has "
                f"{[(c.name, c.kind, c.num_classes) for c in conditions]} conditions on {list(image_shape)} samples")
    return None


def distribution_level(image_shape: Tuple[int, ...], reference: np.ndarray, engine_samples: Dict[str, np.ndarray],
                       thresholds: Thresholds, inception_weights: Optional[str] = None,
                       labels: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """Compare the sample sets; returns {method, sets..., checks per engine} or {skipped: reason}.

    labels: the class label every sample (of every set, the reference's too) was drawn for, for
    a class-conditional digits model: adds ``per_class`` (label accuracy and per-class Frechet,
    digits.label_scores) and the label-accuracy gate."""
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
        if labels is not None:
            from ddpm_export.evaluation.digits import label_scores

            per = rep["per_class"] = label_scores(train_digits_classifier(), {"reference": reference,
                                                                             **engine_samples}, labels)
            ref_acc = per["sets"]["reference"]["label_accuracy"]
            lim = thresholds.label_accuracy_ratio
            for name in engine_samples:
                ratio = per["sets"][name]["label_accuracy"] / ref_acc if ref_acc else float("nan")
                rep["checks"][name]["label_accuracy_ratio"] = {
                    "value": ratio, "limit": lim, "passed": None if lim is None else bool(ratio >= lim)}
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


def distribution_skip_reason(image_shape: Tuple[int, ...], inception_weights: Optional[str],
                             sample_kind: str = "image") -> Optional[str]:
    """Why the distribution level cannot run (None when it can): known before any sampling."""
    if sample_kind != "image":
        return (f"samples of shape {list(image_shape)} are arrays, not images: no image metric "
                f"(digits classifier, FID/KID) applies")
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
             allow_host_code: bool = False, labels: Optional[Sequence[int]] = None,
             guidance: Optional[float] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Compare each engine with the checkpoint's PyTorch model.

    Returns (report, artifacts): the JSON-able report and the arrays the plots
    need (samples per set, progressive frames). method / steps / method_options: how the
    engines sample for the trajectory and distribution levels (any runtime.schedulers
    method; None: the checkpoint's ``sampling`` section, a distilled student's, else ddpm);
    the distribution's reference stays the PyTorch model's DDPM over all T steps, except for a
    student: the PyTorch student through its own sampler. A student has no likelihood level.
    allow_host_code: load version-compatible TensorRT plans (see runtime.load).
    labels / guidance: a conditional model's class labels, cycled over the samples of every level
    (None: every label 0..K-1), and guidance scale (None: the engines' manifest default); the
    report's ``conditioning`` records them (module docstring). An unconditional model refuses both.
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
    model_conds = model_conditions(model)
    opened = []
    defaults = set()
    for path in engines:  # every check that needs no computation first: fail in seconds, not minutes
        engine = runtime.load(path, allow_host_code=allow_host_code)
        m = engine.manifest
        if sample_shape_of(m) != tuple(model_shape):
            raise ValueError(f"{path}: image shape {list(sample_shape_of(m))} is not the checkpoint's model's "
                             f"{list(model_shape)}; validate each engine with its own checkpoint")
        got = [c.to_dict() for c in conditions_of(m)]
        if got != [c.to_dict() for c in model_conds]:
            raise ValueError(f"{path}: conditions {got or 'none'} are not the checkpoint's model's "
                             f"{[c.to_dict() for c in model_conds] or 'none'}; validate each engine with "
                             f"its own checkpoint")
        defaults.add(default_guidance(m))
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
    conditioning = _conditioning(model_conds, labels, guidance, defaults, seed)
    if conditioning is not None:
        report["conditioning"] = conditioning.to_dict()
        log(f"conditions: {_conditioning_text(conditioning)}")
        if samples and reference_samples_path:
            raise ValueError(f"--reference-samples {reference_samples_path}: stored samples do not say which "
                             f"conditions and guidance drew them; for a conditional model omit it, and validate "
                             f"draws the reference with the PyTorch model at the same conditions")
    engine_samples: Dict[str, np.ndarray] = {}
    skip = distribution_skip_reason(model_shape, inception_weights, sample_kind_of(opened[0][1].manifest)
                                    if opened else "image") if samples else None
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
                    one = one_step(engine, model, schedule.num_timesteps, t_stride, b_list, seed, onnx_ref,
                                   conditioning=conditioning)
            else:
                one = one_step(engine, model, schedule.num_timesteps, t_stride, b_list, seed,
                               conditioning=conditioning)
            traj = None
            if trajectory_images:
                log(f"{name}: one {method} trajectory of {trajectory_images} images")
                traj, frames = trajectory(engine, model, schedule, trajectory_images, seed,
                                          method, steps, method_options, conditioning)
                artifacts["frames"].setdefault("reference", frames["reference"])
                artifacts["frames"][name] = frames["engine"]
            if samples:
                log(f"{name}: {samples} samples for the distribution level")
                ckw = ({} if conditioning is None else
                       {"cond": conditioning.values(samples), "guidance": conditioning.guidance})
                res = engine.sample_float(samples, seed=seed + 1, progress=progress, method=method,
                                          steps=steps, **method_options, **ckw)
                engine_samples[name] = res.images
        precision = compute_precision(m, path)  # an FP16 builder-flag plan of the float32 graph is fp16; its ONNX is not
        fp16 = precision == "fp16"
        eps_limit = thresholds.eps_fp16 if fp16 else thresholds.eps_fp32
        final_limit = thresholds.final_fp16 if fp16 else thresholds.final_fp32
        eps_max = max(max(r["max_abs"], r.get("max_abs_null", 0.0)) for r in one)
        checks = {"eps_max_abs": {"value": eps_max, "limit": eps_limit, "passed": eps_max <= eps_limit}}
        if conditioning is not None and conditioning.guided:
            # the mix u + w (c - u) can add up to (|1 - w| + |w|) times the branches' error
            w = conditioning.guidance
            g_max, g_lim = max(r["max_abs_guided"] for r in one), eps_limit * (abs(1.0 - w) + abs(w))
            checks["eps_guided_max_abs"] = {"value": g_max, "limit": g_lim, "passed": g_max <= g_lim}
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

            rkw = {} if conditioning is None else {"conditions": conditioning.conditions,
                                                   "cond": conditioning.values(samples)}
            ref = run_loop(_torch_runner(model, conditioning), model_shape, schedule.to_dict(), samples,
                           seed=seed, method=method, **plan_steps(plan), batch=min(samples, 64),
                           **method_options, **rkw).images
        if ref is None:
            ref = reference_samples(model, schedule, samples, seed, reference_samples_path, progress,
                                    conditioning)
        dist_labels = None
        if conditioning is not None:
            why = digits_labels_apply(model_shape, conditioning.conditions)
            if why is None:
                dist_labels = conditioning.values(samples)[conditioning.conditions[0].name]
        dist = distribution_level(model_shape, ref, engine_samples, thresholds, inception_weights, dist_labels)
        if conditioning is not None and dist_labels is None and "skipped" not in dist:
            dist["per_class"] = {"skipped": f"no per-class scores: {why}"}
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
            likelihood_t_samples, seed, thresholds.nll_bpd, log, model_conds)
        for e in report["engines"]:
            if e["name"] in lik.get("checks", {}):
                e["checks"]["likelihood_bpd_diff"] = lik["checks"][e["name"]]
    for e in report["engines"]:
        e["passed"] = all(c["passed"] is not False for c in e["checks"].values())
    report["passed"] = all(e["passed"] for e in report["engines"])
    return report, artifacts


def _conditioning(conditions: Sequence[Condition], labels: Optional[Sequence[int]], guidance: Optional[float],
                  defaults: set, seed: int) -> Optional[Conditioning]:
    """The run's Conditioning (None for an unconditional model), every refusal up front."""
    from runtime.guidance import check_condition, check_guidance, null_conditions

    if not conditions:
        given = [f for f, v in (("--label", labels), ("--guidance", guidance)) if v is not None]
        if given and not (guidance is not None and labels is None and float(guidance) == 1.0):
            raise ValueError(f"{' and '.join(given)}: received for an unconditional model (it takes no "
                             f"conditions); omit {' and '.join(given)}")
        return None
    if guidance is None:
        if len(defaults) > 1:
            raise ValueError(f"the engines' manifests give different default guidance scales "
                             f"{sorted(defaults)}; pass --guidance W to validate them at one scale")
        guidance = next(iter(defaults), 1.0)
    c = Conditioning(conditions, labels, check_guidance(guidance), seed)
    for cond in conditions:
        if cond.kind == "class_label":
            check_condition(cond, np.asarray(c.labels[cond.name], dtype=np.int64), len(c.labels[cond.name]))
    if c.guided:
        null_conditions(conditions, 1)  # no null form: refused here, with how to fix it
    return c


def _conditioning_text(c: Conditioning) -> str:
    parts = [f"{name} {ids} cycled" for name, ids in c.labels.items()]
    parts += [f"{x.name} N(0, 1) per sample" for x in c.conditions if x.kind != "class_label"]
    return ", ".join(parts) + f"; guidance {c.guidance:g}" + (" (the null branch is checked too)" if c.guided else "")


def likelihood_level(model, schedule: ScheduleConfig, engines: Sequence[Tuple[str, Any]], num: int,
                     t_samples: Optional[int], seed: int, limit: Optional[float],
                     log: Callable[[str], None] = lambda s: None,
                     conditions: Sequence[Condition] = ()) -> Dict[str, Any]:
    """Bits/dim of the reference and each (name, engine) on the first ``num`` held-out digits,
    paired (same timesteps and noise); {skipped: reason} for models other than digits.
    A class-conditional digits model: p(x | y) with each digit's own label (guidance 1)."""
    from ddpm_export.evaluation.likelihood import compute_bound, from_uint8
    from ddpm_export.evaluation.likelihood_data import load_test_images
    from ddpm_export.evaluation.likelihood_reference import reference_bound

    shape = image_shape_of(model)
    if shape != DIGITS_SHAPE:
        return {"skipped": f"no held-out test images for shape {list(shape)}; score them with "
                           f"'ddpm-export nll --engine E --checkpoint C --data FOLDER'"}
    cond, rkw, what = None, {}, "held-out digits (uint8)"
    if conditions:
        why = digits_labels_apply(shape, conditions)
        if why is not None:
            return {"skipped": f"a conditional model's likelihood is p(x | its conditions), and only the "
                               f"digits' class labels are known here: {why}"}
        from ddpm_export.evaluation.likelihood_data import test_labels

        cond = {conditions[0].name: test_labels("digits", num)}
        rkw = {"conditions": conditions, "cond": cond}
        what = "held-out digits (uint8), p(x | y) with each digit's own label (guidance 1)"
    x0 = from_uint8(load_test_images("digits", shape, num)[0])
    how = f"{t_samples} timesteps per image" if t_samples else "every timestep"
    log(f"likelihood: reference on {num} held-out digits, {how}" + (", with their labels" if cond else ""))
    ref = reference_bound(model, x0, schedule, t_samples=t_samples, batch=num, seed=seed, **rkw)
    sets = {"reference": {**ref.summary(), "per_image_bpd": ref.total.tolist()}}
    checks = {}
    for name, engine in engines:
        log(f"likelihood: {name}")
        with engine:
            b = compute_bound(engine, x0, schedule, t_samples=t_samples,
                              batch=min(num, int(engine.batch_range["max"])), seed=seed, cond=cond)
        d = b.total - ref.total
        sets[name] = {**b.summary(), "per_image_bpd": b.total.tolist(), "per_image_diff": d.tolist(),
                      "diff_mean": float(d.mean()), "diff_max_abs": float(np.abs(d).max())}
        checks[name] = {"value": float(d.mean()), "limit": limit,
                        "passed": None if limit is None else bool(abs(d.mean()) <= limit)}
    return {"num_images": num, "t_samples": t_samples, "seed": seed, "limit": limit,
            "data": what, "sets": sets, "checks": checks}


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
    per = (dist or {}).get("per_class")
    if per and "skipped" in per:
        lines += ["", f"Per-class scores skipped: {per['skipped'].replace('no per-class scores: ', '')}"]
    elif per:
        lines += ["", f"Per class ({per['n']} samples per set, labels cycled; label accuracy = the share the "
                      f"digits classifier assigns to the requested label; classifier accuracy on real digits "
                      f"{per['classifier_test_accuracy']:.3f}):",
                  "| set | label accuracy | accuracy per class 0..9 | Frechet to real, per class |",
                  "|---|---|---|---|"]
        for name, row in per["sets"].items():
            fd = [c["frechet_to_real_class"] for c in row["per_class"]]
            lines.append(f"| {name} | {row['label_accuracy']:.3f} | "
                         + " ".join(f"{c['accuracy']:.2f}" for c in row["per_class"]) + " | "
                         + " ".join("-" if v is None else f"{v:.1f}" for v in fd) + " |")
    lines += format_likelihood(report.get("likelihood"))
    cond = report.get("conditioning")
    if cond:
        parts = [f"{c['name']} {c['values']['labels']} cycled" if c["kind"] == "class_label"
                 else f"{c['name']} {c['values']['draw']}" for c in cond["conditions"]]
        lines = [f"Conditions (both sides, every level): {', '.join(parts)}; guidance {cond['guidance']:g}", ""] + lines
    return "\n".join(lines)

