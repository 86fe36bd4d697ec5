"""Few-step students: distil a DDPM teacher into a model sampled in 1-8 calls.

Method (trajectory-endpoint regression, Luhman & Luhman 2021 extended to several
timesteps, sampled like a consistency model, Song et al. 2023):

1. The teacher solves its probability-flow ODE with UniPC (``teacher_steps`` calls,
   the solvers' linspace timesteps) from x_T drawn from the runtime's per-image
   streams of ``data_seed``; the state x_t entering each call at the student's
   timesteps and the ODE's end x_0 are stored in the run folder (``teacher/``).
2. The student, initialised from the teacher's weights, predicts v; its
   x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v is regressed (mean squared error)
   onto the trajectory's end x_0 from every stored x_t. A v head rather than eps:
   recovering x0 from eps multiplies errors by sigma/alpha (157 at t = 999).
3. It is sampled by ``runtime.schedulers.consistency``: one call at t = T-1 gives
   a sample; N calls re-noise it to the next timestep and ask again.

The run folder behaves like ``train``'s: a lock, exact resume from ``last.pt``
(weights, EMA, Adam, step, generator states; the teacher data is regenerated
bit-for-bit or reread), ``metrics.jsonl``, a progress bar, sample grids in
``samples/`` (rows: 1, 2, 4, 8 calls) and provenance. ``model.pt`` carries the
student's schedule (``prediction: "v"``) and a ``sampling`` section that
``ddpm-export export`` copies into the manifest.

Class-conditional teachers (one ``class_labels`` input with a null label; "the student sampled
with guidance"): every trajectory has a label, the classes in turn, and a share
``label_dropout`` of them (drawn from ``data_seed``) is the null label, so the teacher solves
its unconditional ODE there. The student keeps the teacher's architecture and null label and
is trained on each trajectory with that trajectory's label: it learns both branches, and the
runtime samples it with classifier-free guidance like any conditional engine (the mix is
taken on its v output, which at a fixed x_t is the same as mixing its x0 jumps). Guidance is
not distilled into the student: a guided sample costs two student evaluations per call.

Policy teachers (a LeRobot DiffusionPolicy from ``import --format lerobot``: action chunks
[horizon, action_dim] conditioned on ``global_cond``, the observation encoder's output) take
``observations``: an .npz of raw observation histories {feature: [N, n_obs_steps, *shape]}
(``ddpm-export rollout --record-observations`` writes one from the teacher's own rollouts). The
teacher's PyTorch encoder turns each history into its global_cond (normalized as the runtime
does it); trajectory i is solved at history i mod N, and the student (a copy of the teacher's
1-D U-Net, its encoder kept as it is) is trained on that condition. The student's checkpoint
keeps the teacher's ``policy`` section, so ``export`` writes both engines and the policy runtime
samples the student at the manifest's call count.
"""
from __future__ import annotations

import copy
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from runtime.io import (FolderLocked, folder_lock, load_npz, remove_stale_temporaries, save_grid, save_npz,
                        sha256_file, write_json)
from runtime.schedulers.base import check_timesteps
from runtime.schedulers.consistency import consistency_timesteps
from runtime.schedulers.schedule import Schedule, ScheduleConfig
from runtime.schedulers.solver_base import solver_timesteps
from runtime.seeding import ImageStreams

from ddpm_export.model.checkpoint import build_model, load_checkpoint, save_checkpoint, slim
from ddpm_export.model.conditions import model_conditions
from ddpm_export.model.external import ExternalDenoiser, image_shape_of, weights_module
from ddpm_export.training.train import ema_update

SAMPLING_METHOD = "consistency"  # runtime.schedulers registry name of the student's sampler
STUDENT_PREDICTION = "v"
TEACHER_METHOD = "unipc"
LOCK_FILE = ".distill.lock"
LABEL_DROPOUT = 0.1  # class-conditional teachers: share of trajectories drawn with the null label


@dataclass
class DistillConfig:
    teacher: str = "engines/digits.pt"  # teacher checkpoint (eps, x0 or v; no dynamic thresholding)
    out: str = "runs/digits-distilled"  # run folder: last.pt, model.pt, metrics.jsonl, samples/, teacher/
    teacher_steps: int = 8  # UniPC calls per teacher trajectory (linspace timesteps)
    student_steps: Tuple[int, ...] = (1, 2, 4, 8)  # call counts the student is trained for
    default_steps: int = 4  # the call count the manifest names as the default
    trajectories: int = 4096  # teacher trajectories (distinct x_T)
    data_seed: int = 1000  # runtime seed of the trajectories' x_T (evaluation uses 0, 1, 2)
    chunk: int = 256  # trajectories per teacher file and per teacher call
    steps: int = 3000  # optimizer steps
    batch_size: int = 64
    lr: float = 2e-4  # Adam learning rate after the linear warmup (constant: a run can be extended)
    warmup: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.995  # warmed up as min(decay, (1+s)/(10+s)); export uses the EMA
    seed: int = 0  # batch order and sample grids
    sample_every: int = 250  # steps between sample grids (0: never)
    ckpt_every: int = 50  # steps between checkpoints
    log_every: int = 10
    num_samples: int = 16  # images per row of each grid
    device: str = "cpu"
    resume: bool = False
    # class-conditional teachers: share of trajectories solved and trained with the null label, so
    # the student learns the unconditional branch guidance needs (None: LABEL_DROPOUT; 0: none)
    label_dropout: Optional[float] = None
    # policy teachers: .npz of raw observation histories {feature: [N, n_obs_steps, *shape]}, the
    # conditions the trajectories are solved at (trajectory i: history i mod N)
    observations: Optional[str] = None

    def check(self) -> "DistillConfig":
        c = copy.copy(self)
        c.student_steps = tuple(int(n) for n in c.student_steps)
        bad = [f"{k}={getattr(c, k)!r}" for k in ("teacher_steps", "trajectories", "chunk", "batch_size")
               if int(getattr(c, k)) < 1]
        bad += [f"{k}={getattr(c, k)!r}" for k in ("steps", "warmup", "sample_every", "ckpt_every",
                                                     "num_samples") if int(getattr(c, k)) < 0]
        if c.lr <= 0 or c.log_every < 1 or not c.student_steps or min(c.student_steps) < 1:
            bad.append(f"lr={c.lr!r}, log_every={c.log_every!r}, student_steps={c.student_steps!r}")
        if bad:
            raise ValueError(f"distill options out of range: {'; '.join(bad)}; expected counts >= 1 "
                             f"(steps, warmup and the *_every >= 0) and lr > 0")
        if c.label_dropout is not None:
            c.label_dropout = float(c.label_dropout)
            if not 0.0 <= c.label_dropout < 1.0:
                raise ValueError(f"label_dropout={c.label_dropout!r}: expected a share in [0, 1) of trajectories "
                                 f"drawn with the null label (default {LABEL_DROPOUT}; 0: no unconditional branch)")
        if c.default_steps not in c.student_steps:
            raise ValueError(f"default_steps={c.default_steps} is not among the student's call counts "
                             f"{list(c.student_steps)}; pick one of them")
        return c


class DistillError(RuntimeError):
    pass


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def student_timesteps(student_steps: Sequence[int], teacher_steps: int, T: int) -> Dict[int, List[int]]:
    """{N: the student's N timesteps}; each must lie on the teacher's UniPC grid, else ValueError."""
    grid = set(int(t) for t in solver_timesteps("linspace", teacher_steps, T))
    out, bad = {}, []
    for n in student_steps:
        ts = [int(t) for t in consistency_timesteps(int(n), T)]
        if not set(ts) <= grid:
            bad.append(n)
        out[int(n)] = ts
    if bad:
        fits = [n for n in range(1, teacher_steps + 1) if set(consistency_timesteps(n, T)) <= grid]
        raise ValueError(
            f"student call counts {bad} need timesteps off the teacher's {teacher_steps}-step grid; "
            f"with teacher_steps={teacher_steps} the call counts that fit are {fits} "
            f"(or raise teacher_steps to a multiple of every count)")
    return out


def sampling_section(timesteps: Dict[int, List[int]], default_steps: int) -> Dict[str, Any]:
    """The checkpoint's (and the manifest's) ``sampling`` section."""
    return {"method": SAMPLING_METHOD, "steps": int(default_steps),
            "allowed_steps": sorted(timesteps),
            "timesteps": {str(n): list(ts) for n, ts in sorted(timesteps.items())}}


def student_x0(schedule: Schedule, v: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v, in v's dtype."""
    a = torch.from_numpy(schedule.sqrt_alphas_cumprod).to(v.device)[t.long()].to(v.dtype)
    s = torch.from_numpy(schedule.sqrt_one_minus_alphas_cumprod).to(v.device)[t.long()].to(v.dtype)
    shape = (-1,) + (1,) * (v.ndim - 1)
    return a.reshape(shape) * x_t - s.reshape(shape) * v


@torch.no_grad()
def sample_student(model: nn.Module, schedule: ScheduleConfig, num: int, steps: Optional[int] = None, seed: int = 0,
                   first_image: int = 0, clip: Optional[bool] = None, device: str = "cpu",
                   timesteps: Optional[Sequence[int]] = None, class_labels: Optional[Sequence[int]] = None,
                   guidance: float = 1.0, cond: Optional[np.ndarray] = None) -> np.ndarray:
    """The PyTorch student's own sampler (float64 step math, float32 network), on the runtime's
    per-image noise streams: images first_image, ... of ``seed`` [num, C, H, W] float32.
    ``steps`` calls at consistency_timesteps(steps, T), or exactly ``timesteps`` (a manifest's list).
    A class-conditional student takes ``class_labels`` ([num] ints) and classifier-free
    ``guidance`` w: v = v(null) + w (v(label) - v(null)), as runtime.guidance mixes it. A student
    with one vector condition (a policy's global_cond) takes ``cond`` [num, *shape] float32."""
    s = Schedule(schedule)
    clip = schedule.clip_denoised if clip is None else clip
    if clip and schedule.thresholding:
        raise ValueError("sample_student clips to clip_sample_range; a schedule with dynamic thresholding "
                         "is not supported here: sample through the runtime instead")
    r = float(schedule.clip_sample_range)
    conds = model_conditions(model)
    if conds and conds[0].kind == "vector":
        return _sample_student_vector(model, s, schedule, conds[0], num, steps, seed, first_image, clip, device,
                                      timesteps, cond, class_labels, guidance)
    if cond is not None:
        raise ValueError("sample_student: cond is for a student with a vector condition; this one takes "
                         f"{[c.name for c in conds] or 'none'}: drop it")
    if conds and class_labels is None:
        raise ValueError(f"sample_student: the student is class-conditional ({conds[0].name}); pass class_labels "
                         f"({num} ints)")
    if not conds and (class_labels is not None or guidance != 1.0):
        raise ValueError(f"sample_student: the student is unconditional; received class_labels={class_labels!r}, "
                         f"guidance={guidance!r}: drop them")
    if conds and guidance != 1.0 and conds[0].null is None:
        raise ValueError(f"sample_student: guidance {guidance} needs the student's null label, and it has none; "
                         f"sample with guidance 1")
    ts = _student_ts(s, steps, timesteps)
    shape = (num, *image_shape_of(model))
    streams = ImageStreams(seed, first_image, num)
    x = torch.from_numpy(streams.standard_normal(shape, dtype=np.float32)).to(torch.float64)
    labels = None
    if conds:
        arr = np.asarray(class_labels)
        if arr.shape != (num,) or arr.dtype.kind not in "iu":
            raise ValueError(f"sample_student: class_labels has shape {arr.shape} and dtype {arr.dtype}, expected "
                             f"{num} integer labels (one per image)")
        labels = torch.from_numpy(arr.astype(np.int64)).to(device)
        null = torch.full_like(labels, int(conds[0].null)) if conds[0].null is not None else None

    def net(x32: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        if labels is None:
            return model(x32, tt).to("cpu", torch.float64)
        c = model(x32, tt, labels).to("cpu", torch.float64)
        if guidance == 1.0:
            return c
        u = model(x32, tt, null).to("cpu", torch.float64)
        return u + float(np.float32(guidance)) * (c - u)

    return _consistency_loop(model, net, s, ts, x, streams, clip, r, device)


def _student_ts(s: Schedule, steps: Optional[int], timesteps: Optional[Sequence[int]]) -> List[int]:
    if (steps is None) == (timesteps is None):
        raise ValueError(f"sample_student: pass steps or timesteps, not both or neither (steps={steps!r}, "
                         f"timesteps={timesteps!r})")
    return ([int(t) for t in consistency_timesteps(steps, s.num_timesteps)] if timesteps is None
            else [int(t) for t in check_timesteps(timesteps, s.num_timesteps)])


def _consistency_loop(model: nn.Module, net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], s: Schedule,
                      ts: Sequence[int], x: torch.Tensor, streams: ImageStreams, clip: bool, r: float,
                      device: str) -> np.ndarray:
    """Multistep consistency sampling from x (float64) as runtime.schedulers.consistency does it."""
    num, shape = x.shape[0], tuple(x.shape)
    was_training = model.training
    model.eval()
    try:
        for i, t in enumerate(ts):
            tt = torch.full((num,), t, dtype=torch.int64)
            v = net(x.to(torch.float32).to(device), tt.to(device))
            x0 = student_x0(s, v, x, tt)
            if clip:
                x0 = x0.clamp(-r, r)
            if i == len(ts) - 1:
                x = x0
            else:
                z = torch.from_numpy(streams.standard_normal(shape, dtype=np.float32)).to(torch.float64)
                nxt = ts[i + 1]
                x = float(s.sqrt_alphas_cumprod[nxt]) * x0 + float(s.sqrt_one_minus_alphas_cumprod[nxt]) * z
    finally:
        model.train(was_training)
    return x.to(torch.float32).numpy()


def _sample_student_vector(model, s, schedule, c, num, steps, seed, first_image, clip, device, timesteps, cond,
                           class_labels, guidance) -> np.ndarray:
    if class_labels is not None or guidance != 1.0:
        raise ValueError(f"sample_student: the student takes a vector condition ({c.name}), not class labels or "
                         f"guidance; received class_labels={class_labels!r}, guidance={guidance!r}")
    want = (num, *c.shape)
    arr = None if cond is None else np.asarray(cond)
    if arr is None or arr.shape != want or not np.isfinite(arr).all():
        got = "none" if arr is None else f"shape {list(arr.shape)}"
        raise ValueError(f"sample_student: the student takes {c.name} {list(want)} (finite float32); received "
                         f"{got}")
    ts = _student_ts(s, steps, timesteps)
    streams = ImageStreams(seed, first_image, num)
    x = torch.from_numpy(streams.standard_normal((num, *image_shape_of(model)), dtype=np.float32)).to(torch.float64)
    g = torch.from_numpy(arr.astype(np.float32)).to(device)

    def net(x32: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        return model(x32, tt, g).to("cpu", torch.float64)

    return _consistency_loop(model, net, s, ts, x, streams, clip, float(schedule.clip_sample_range), device)


def trajectory_labels(num: int, num_classes: int, null: int, label_dropout: float, seed: int) -> np.ndarray:
    """The label of every trajectory, int64 [num]: the classes in turn (0, 1, .., K-1, 0, ..),
    each replaced by ``null`` with probability ``label_dropout``, drawn from ``seed``."""
    labels = np.arange(num, dtype=np.int64) % int(num_classes)
    drop = np.random.default_rng(int(seed)).random(num) < float(label_dropout)
    return np.where(drop, np.int64(null), labels)


def teacher_chunk(model: nn.Module, schedule: ScheduleConfig, first: int, n: int, seed: int,
                  teacher_steps: int, record: Sequence[int], device: str = "cpu",
                  labels: Optional[np.ndarray] = None, cond: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """Trajectories first..first+n-1 of ``seed``: the UniPC state entering each call at the
    ``record`` timesteps [len(record), n, C, H, W] and the ODE's end x0 [n, C, H, W].
    A class-conditional teacher solves each trajectory's ODE at its label (``labels``, [n];
    the null label: the unconditional ODE), unguided; they are stored as ``labels``. A teacher
    with one vector condition (a policy's global_cond) solves trajectory j at ``cond[j]``
    ([n, *shape] float32), stored as ``cond``."""
    from runtime.loop import sample

    states: Dict[int, np.ndarray] = {}

    @torch.no_grad()
    def runner(x: np.ndarray, t: np.ndarray, **cond: np.ndarray) -> np.ndarray:
        if int(t[0]) in record:
            states[int(t[0])] = np.array(x, dtype=np.float32)
        extra = [torch.from_numpy(np.ascontiguousarray(v)).to(device) for v in cond.values()]
        out = model(torch.from_numpy(np.ascontiguousarray(x)).to(device), torch.from_numpy(t).long().to(device),
                    *extra)
        return out.to("cpu").numpy()

    conditions = model_conditions(model)
    given = (labels is not None) + (cond is not None)
    if len(conditions) != given or given > 1:
        raise ValueError(f"teacher_chunk: the teacher takes conditions {[c.name for c in conditions]}; received "
                         f"labels={'none' if labels is None else 'an array'}, cond="
                         f"{'none' if cond is None else 'an array'}: pass labels for a class-conditional "
                         f"teacher, cond for one with a vector condition, neither for an unconditional one")
    values = (None if not conditions else
              {conditions[0].name: np.asarray(labels, dtype=np.int64) if labels is not None
               else np.ascontiguousarray(cond, dtype=np.float32)})
    model.eval()
    res = sample(runner, image_shape_of(model), schedule.to_dict(), n, seed=seed,
                 steps=teacher_steps, method=TEACHER_METHOD, batch=n, first_image=first,
                 conditions=conditions, cond=values, guidance=1.0)
    out = {"states": np.stack([states[t] for t in record]), "x0": res.images.astype(np.float32),
           "timesteps": np.asarray(record, dtype=np.int64)}
    if labels is not None:
        out["labels"] = np.asarray(labels, dtype=np.int64)
    if cond is not None:
        out["cond"] = np.asarray(cond, dtype=np.float32)
    return out


def policy_conditions(teacher_ckpt: Dict[str, Any], observations: Optional[str], teacher: str,
                      trajectories: int) -> Tuple[np.ndarray, Dict[str, Any]]:
    """(global_cond of every trajectory [trajectories, D] float32, a description for the run's
    meta) from the observation histories in ``observations`` (.npz {feature: [N, n_obs_steps,
    *shape]}, raw units), encoded by the teacher's PyTorch encoder; trajectory i: history i mod N.
    Raises DistillError for a missing, mis-shaped or non-finite file."""
    from runtime.io import NpzError
    from runtime.policy import encoder_feeds

    from ddpm_export.model.lerobot_diffusion import build_lerobot_encoder, image_features

    pol = teacher_ckpt["policy"]
    cfg = pol["lerobot_config"]
    n_obs = int(cfg["n_obs_steps"])
    if not observations:
        raise DistillError(f"{teacher} is a policy (its action chunks are conditioned on observations); pass "
                           f"--observations FILE.npz, raw observation histories {{feature: [N, {n_obs}, *shape]}} "
                           f"such as 'ddpm-export rollout --policy ENGINE --record-observations FILE.npz' records")
    try:
        d = load_npz(observations, "observation histories")
    except (NpzError, OSError, ValueError) as e:
        raise DistillError(f"--observations {observations}: {e}") from None
    shapes = {f["name"]: tuple(int(v) for v in f["shape"]) for f in pol["observations"]}
    missing, unknown = sorted(set(shapes) - set(d)), sorted(set(d) - set(shapes))
    if missing:
        raise DistillError(f"--observations {observations}: missing {missing} (has {sorted(d)}, unknown {unknown}); "
                           f"the policy observes {sorted(shapes)}")
    bad, n = [], None
    for k, shape in shapes.items():
        v = d[k]
        if v.ndim != 2 + len(shape) or v.shape[1] != n_obs or tuple(v.shape[2:]) != shape:
            bad.append(f"{k} has shape {list(v.shape)}, expected [N, {n_obs}, {', '.join(map(str, shape))}]")
        elif not np.isfinite(v).all():
            bad.append(f"{k} has {int((~np.isfinite(v)).sum())} non-finite values")
        elif n is not None and len(v) != n:
            bad.append(f"{k} holds {len(v)} histories, the others {n}")
        n = len(v) if n is None else n
    if bad or not n:
        raise DistillError(f"--observations {observations}: {'; '.join(bad) or 'no histories'}; expected raw "
                           f"observation histories of the policy's features, the same N for each")
    enc = build_lerobot_encoder(teacher_ckpt)
    spec = {"observations": pol["observations"], "image_features": image_features(cfg),
            "encoder": {"inputs": [{"name": k} for k in enc.input_names]}}
    conds = []  # each history encoded once, in batches
    with torch.no_grad():
        for a in range(0, n, 256):
            feeds = encoder_feeds(spec, {k: np.asarray(d[k][a:a + 256], dtype=np.float32) for k in shapes})
            conds.append(enc(*[torch.from_numpy(feeds[k]) for k in enc.input_names]).numpy())
    meta = {"file_sha256": sha256_file(observations), "histories": int(n), "n_obs_steps": n_obs}
    return np.concatenate(conds).astype(np.float32)[np.arange(int(trajectories)) % n], meta


def distill(cfg: DistillConfig, progress: bool = True, log: Callable[[str], None] = _stderr) -> Dict[str, Any]:
    """Run (or resume) a distillation; returns a summary dict. Raises on bad input.

    Holds a lock on the run folder for the whole run (a second run on the same folder
    is refused), and removes the temporaries a killed run left there."""
    cfg = cfg.check()
    out = Path(cfg.out)
    try:
        with folder_lock(out, "another distillation", LOCK_FILE):
            removed = []
            for sub in (out, out / "samples", out / "teacher"):
                removed += remove_stale_temporaries(sub)
            if removed:
                log(f"removed {len(removed)} temporary file(s) that a killed run left in {out}: "
                    f"{', '.join(p.name for p, _ in removed)}")
            return _distill(cfg, progress, log)
    except FolderLocked as e:
        raise DistillError(str(e)) from None


# options that must not change on --resume (the run would not continue the same trajectory)
# (steps may change: nothing depends on the total, so a run can be extended or ended early)
_FIXED = ("teacher_steps", "student_steps", "trajectories", "data_seed", "chunk", "batch_size",
          "lr", "warmup", "grad_clip", "ema_decay", "seed", "label_dropout")


def teacher_label_condition(conditions: Sequence[Any], label_dropout: Optional[float], teacher: str) -> Tuple[Any, float]:
    """(the teacher's class-label Condition or None, the label dropout to use); raises
    DistillError for what the distillation cannot take."""
    if not conditions:
        if label_dropout:
            raise DistillError(f"--label-dropout {label_dropout} is for class-conditional teachers; {teacher} is "
                               f"unconditional: drop the option")
        return None, 0.0
    if len(conditions) != 1 or conditions[0].kind != "class_label":
        got = ", ".join(f"{c.name} ({c.kind})" for c in conditions)
        raise DistillError(f"{teacher}: the teacher takes conditions {got}; distill takes an unconditional teacher "
                           f"or one with a single class-label input (vector and image conditions are not "
                           f"supported yet)")
    c = conditions[0]
    p = LABEL_DROPOUT if label_dropout is None else float(label_dropout)
    if p > 0 and c.null is None:
        raise DistillError(f"{teacher}: the teacher's {c.name!r} has no null label, so it has no unconditional "
                           f"branch for the student to learn (label dropout {p}); pass --label-dropout 0 (a "
                           f"student sampled with guidance 1 only), or re-import the teacher naming its null label")
    return c, p


def _distill(cfg: DistillConfig, progress: bool, log: Callable[[str], None]) -> Dict[str, Any]:
    device = torch.device(cfg.device)
    out = Path(cfg.out)
    last = out / "last.pt"
    if last.exists() and not cfg.resume:
        raise DistillError(f"{last} already exists; pass --resume to continue it, or choose another --out "
                           f"(nothing was overwritten)")
    if cfg.resume and not last.exists():
        raise DistillError(f"--resume: no checkpoint at {last}; start without --resume")
    ckpt = load_checkpoint(last) if cfg.resume else None
    teacher_ckpt = load_checkpoint(cfg.teacher)
    teacher_sha = sha256_file(cfg.teacher)
    teacher, unet_cfg, t_sched = build_model(teacher_ckpt, cfg.teacher)
    # any prediction type: the teacher's ODE is solved by the runtime's UniPC, which reads its
    # output by the schedule's prediction; the student predicts v whatever the teacher did
    if t_sched.thresholding:
        raise DistillError(f"{cfg.teacher}: the teacher's schedule uses dynamic thresholding "
                           f"(thresholding=true); the student's PyTorch sampler only clips to "
                           f"clip_sample_range, so it would not sample as the teacher does: distill a "
                           f"teacher without thresholding")
    policy = teacher_ckpt.get("policy")
    cond_all, obs_meta = None, None
    if policy is not None:
        if cfg.label_dropout:
            raise DistillError(f"--label-dropout {cfg.label_dropout} is for class-conditional teachers; {cfg.teacher} "
                               f"is a policy (no null condition): drop the option")
        label_cond, label_dropout = None, 0.0
        cond_all, obs_meta = policy_conditions(teacher_ckpt, cfg.observations, cfg.teacher, cfg.trajectories)
    else:
        if cfg.observations:
            raise DistillError(f"--observations is for policy teachers; {cfg.teacher} is not a policy (no 'policy' "
                               f"section): drop the option")
        label_cond, label_dropout = teacher_label_condition(model_conditions(teacher), cfg.label_dropout, cfg.teacher)
    cfg = copy.copy(cfg)
    cfg.label_dropout = label_dropout  # resolved: recorded, and compared on --resume
    labels_all = (None if label_cond is None else
                  trajectory_labels(cfg.trajectories, label_cond.num_classes, label_cond.null, label_dropout,
                                    cfg.data_seed))
    teacher = teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    T = int(t_sched.num_timesteps)
    timesteps = student_timesteps(cfg.student_steps, cfg.teacher_steps, T)
    record = sorted({t for ts in timesteps.values() for t in ts}, reverse=True)
    s_sched = ScheduleConfig.from_dict(dict(t_sched.to_dict(), prediction=STUDENT_PREDICTION))
    schedule = Schedule(s_sched)
    sampling = sampling_section(timesteps, cfg.default_steps)

    if ckpt is not None:
        old = ckpt.get("distill_config", {})
        changed = [f"{k} {old[k]!r} -> {getattr(cfg, k)!r}" for k in _FIXED
                   if k in old and _norm(old[k]) != _norm(getattr(cfg, k))]
        if ckpt.get("provenance", {}).get("teacher_sha256") != teacher_sha:
            changed.append(f"teacher sha256 {str(ckpt.get('provenance', {}).get('teacher_sha256'))[:12]}... "
                           f"-> {teacher_sha[:12]}...")
        if changed:
            raise DistillError(f"{last}: resuming with other options ({'; '.join(changed)}) would not continue "
                               f"the same run; pass the options it was started with")

    # 1. the teacher's trajectories, one file per chunk (a killed run keeps the finished ones)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / "teacher"
    data_dir.mkdir(exist_ok=True)
    meta = {"teacher_sha256": teacher_sha, "method": TEACHER_METHOD, "teacher_steps": cfg.teacher_steps,
            "record": record, "data_seed": cfg.data_seed, "chunk": cfg.chunk}
    if label_cond is not None:  # (absent for an unconditional teacher: older run folders still match)
        meta["labels"] = {"name": label_cond.name, "num_classes": label_cond.num_classes, "null": label_cond.null,
                          "label_dropout": label_dropout}
    if obs_meta is not None:
        meta["observations"] = obs_meta
    meta_path = data_dir / "meta.json"
    if meta_path.exists():
        old_meta = json.loads(meta_path.read_text())
        if old_meta != meta:
            raise DistillError(f"{meta_path}: teacher data made with {old_meta}, this run needs {meta}; "
                               f"use another --out")
    else:
        write_json(meta_path, meta)
    n_chunks = (cfg.trajectories + cfg.chunk - 1) // cfg.chunk
    states_l, x0_l, extra_l = [], [], []  # extra: the trajectories' labels or global_cond
    data_seconds = 0.0  # the teacher's time, summed over the chunk files (whichever run made them)
    bar = _bar(progress, n_chunks, "teacher trajectories", "chunk")
    for k in range(n_chunks):
        path = data_dir / f"chunk{k:05d}.npz"
        n = min(cfg.chunk, cfg.trajectories - k * cfg.chunk)
        chunk_labels = None if labels_all is None else labels_all[k * cfg.chunk:k * cfg.chunk + n]
        chunk_cond = None if cond_all is None else cond_all[k * cfg.chunk:k * cfg.chunk + n]
        if path.exists():
            d = load_npz(path, "teacher trajectories")
            for key in ("states", "x0", "timesteps"):
                if key not in d:
                    raise DistillError(f"{path}: no {key!r} array; it was not written by distill: use another --out")
            data_seconds += float(d.get("seconds", 0.0))
            if d["x0"].shape[0] != n or list(d["timesteps"]) != record:
                raise DistillError(f"{path}: holds {d['x0'].shape[0]} trajectories at {list(d['timesteps'])}, "
                                   f"expected {n} at {record}; use another --out")
            if chunk_labels is not None and ("labels" not in d or not np.array_equal(d["labels"], chunk_labels)):
                raise DistillError(f"{path}: its trajectories' labels are not this run's (or it has none); "
                                   f"use another --out")
            if chunk_cond is not None and ("cond" not in d or not np.array_equal(d["cond"], chunk_cond)):
                raise DistillError(f"{path}: its trajectories' conditions are not this run's (or it has none); "
                                   f"use another --out")
        else:
            t0 = time.time()
            d = teacher_chunk(teacher, t_sched, k * cfg.chunk, n, cfg.data_seed, cfg.teacher_steps, record,
                              str(device), labels=chunk_labels, cond=chunk_cond)
            d["seconds"] = np.float64(time.time() - t0)
            save_npz(path, **d)
            data_seconds += float(d["seconds"])
        states_l.append(d["states"])
        x0_l.append(d["x0"])
        if chunk_labels is not None:
            extra_l.append(chunk_labels)
        if chunk_cond is not None:
            extra_l.append(chunk_cond)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    states = torch.from_numpy(np.concatenate(states_l, axis=1))  # [R, N, C, H, W]
    targets = torch.from_numpy(np.concatenate(x0_l))
    traj_extra = torch.from_numpy(np.concatenate(extra_l)) if extra_l else None
    del states_l, x0_l, extra_l
    t_of = torch.tensor(record, dtype=torch.int64)

    # 2. the student
    torch.manual_seed(cfg.seed)
    model = copy.deepcopy(teacher).train()
    for p in model.parameters():
        p.requires_grad_(True)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=1e-8)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, train_seconds = 0, 0.0
    command = " ".join(["ddpm-export"] + sys.argv[1:]) if sys.argv else ""
    commands = [command]  # every command that ran this folder, the first one first
    if ckpt is not None:
        old_prov = ckpt.get("provenance", {})
        commands = list(old_prov.get("commands", [old_prov.get("command", "")])) + [command]
        weights_module(model).load_state_dict(ckpt["model"])
        weights_module(ema).load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        step = int(ckpt["step"])
        gen.set_state(ckpt["rng"]["data"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        train_seconds = float(ckpt.get("train_state", {}).get("seconds", 0.0))
        ckpt = None

    provenance = {
        "command": command,
        "commands": commands,
        "argv": list(sys.argv),
        "method": "trajectory-endpoint regression (teacher UniPC ODE end from x_t), v head, "
                  "multistep consistency sampling",
        "teacher": str(cfg.teacher),
        "teacher_sha256": teacher_sha,
        "teacher_step": teacher_ckpt.get("step"),
        "conditioning": (None if label_cond is None else
                         f"class labels ({label_cond.name}, {label_cond.num_classes} classes, null label "
                         f"{label_cond.null}): each trajectory's own label, {label_dropout} of them the null label "
                         f"(the teacher's unconditional ODE); guidance is applied when the student is sampled, "
                         f"not distilled") if policy is None else
                        (f"policy observations: {obs_meta['histories']} histories from {cfg.observations} "
                         f"(sha256 {obs_meta['file_sha256'][:12]}...), encoded to global_cond by the teacher's "
                         f"encoder (kept unchanged); trajectory i at history i mod {obs_meta['histories']}"),
        "seed": cfg.seed,
        "torch": str(torch.__version__),
    }
    # the teacher's own model_config: for a wrapped network (an imported diffusers UNet) it holds
    # what rebuilds it (the UNet2DModel config), which the wrapper's config alone does not
    student_config = (copy.deepcopy(teacher_ckpt["model_config"]) if isinstance(teacher, ExternalDenoiser)
                      else unet_cfg.to_dict())
    teacher_ckpt = None

    def checkpoint(final: bool = False) -> None:
        c = {
            "model_config": student_config,
            "schedule_config": s_sched.to_dict(),
            "model": weights_module(model).state_dict(),
            "ema": weights_module(ema).state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "rng": {"data": gen.get_state(), "torch": torch.get_rng_state()},
            "distill_config": _plain_cfg(cfg),
            "train_state": {"seconds": train_seconds, "data_seconds": data_seconds},
            "provenance": dict(provenance, steps=step, wall_seconds=train_seconds + data_seconds),
            "sampling": sampling,
        }
        if policy is not None:
            c["policy"] = policy  # the encoder and the normalization: export writes both engines from it
        save_checkpoint(c, last)
        if final:
            save_checkpoint(dict(slim(c), sampling=sampling, **({"policy": policy} if policy is not None else {})),
                            out / "model.pt")

    def sample_grid() -> None:
        if cfg.num_samples <= 0 or policy is not None:  # action chunks are not pictures
            return
        grid_labels = None if label_cond is None else np.arange(cfg.num_samples) % label_cond.num_classes
        rows = [sample_student(ema, s_sched, cfg.num_samples, seed=cfg.seed, device=str(device),
                               timesteps=timesteps[n], class_labels=grid_labels) for n in sorted(timesteps)]
        save_grid(np.concatenate(rows), out / "samples" / f"step{step:07d}.png", nrow=cfg.num_samples, scale=2)

    metrics = open(out / "metrics.jsonl", "a")
    bar = _bar(progress, cfg.steps, "distill", "step", initial=step)
    n_traj, n_rec = targets.shape[0], len(record)
    t_last, s_last, loss_acc, loss_n = time.time(), step, 0.0, 0
    try:
        while step < cfg.steps:
            t0 = time.time()
            B = cfg.batch_size
            idx = torch.randint(n_traj, (B,), generator=gen)
            k = torch.randint(n_rec, (B,), generator=gen)
            x_t, t, target = states[k, idx].to(device), t_of[k].to(device), targets[idx].to(device)
            extra = () if traj_extra is None else (traj_extra[idx].to(device),)
            lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
            for g_ in opt.param_groups:
                g_["lr"] = lr
            loss = torch.mean((student_x0(schedule, model(x_t, t, *extra), x_t, t) - target) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            decay = min(cfg.ema_decay, (1.0 + step) / (10.0 + step))
            ema_update(ema, model, decay)
            step += 1
            train_seconds += time.time() - t0
            lv = float(loss.detach())
            if not np.isfinite(lv):
                raise DistillError(f"loss became {lv} at step {step}; lower --lr "
                                   f"(last good checkpoint: {last if last.exists() else 'none'})")
            loss_acc, loss_n = loss_acc + lv, loss_n + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{lv:.4f}")
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.time()
                metrics.write(json.dumps({
                    "step": step, "loss": loss_acc / loss_n, "lr": lr, "grad_norm": float(grad_norm),
                    "ema_decay": decay, "steps_per_s": (step - s_last) / max(now - t_last, 1e-9),
                    "train_seconds": train_seconds, "data_seconds": data_seconds}) + "\n")
                metrics.flush()
                t_last, s_last, loss_acc, loss_n = now, step, 0.0, 0
            if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step != cfg.steps:
                checkpoint()
            if cfg.sample_every and step % cfg.sample_every == 0 and step != cfg.steps:
                sample_grid()
        checkpoint(final=True)
        if cfg.sample_every:
            sample_grid()
    finally:
        if bar is not None:
            bar.close()
        metrics.close()
    return {"step": step, "train_seconds": train_seconds, "data_seconds": data_seconds,
            "checkpoint": str(last), "model": str(out / "model.pt"), "sampling": sampling}


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, (list, tuple)) else v


def _plain_cfg(cfg: DistillConfig) -> Dict[str, Any]:
    d = asdict(cfg)
    d["student_steps"] = list(cfg.student_steps)
    return d


def _bar(enabled: bool, total: int, desc: str, unit: str, initial: int = 0):
    if not enabled:
        return None
    from runtime.progress import progress_bar  # a bar on a terminal, a line per 10 % in a log

    return progress_bar(total=total, initial=initial, desc=desc, unit=unit)
