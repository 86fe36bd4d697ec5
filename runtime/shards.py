"""Many samples for evaluation (FID on 50,000 images) in resumable shards.

    import runtime
    from runtime.shards import load_shards, sample_shards

    with runtime.load("engines/cifar10.onnx") as engine:
        sample_shards(engine, "samples/cifar10-50k", 50_000)
    images = load_shards("samples/cifar10-50k")  # uint8 [50000, 32, 32, 3]

The folder OUT holds::

    run.json          the configuration, written first; a re-run must match it
    shard-00000.npz   images [0, S): "images" uint8 [n, H, W, C], "index_start",
    shard-00001.npz   "seed" (the run's seed)
    ...

A conditional engine's run (``cond=``, ``guidance=``) records both: run.json's config has
"guidance" (the scale used, the manifest's default made explicit) and "conditions" (per
input its dtype, the whole run's shape and the sha256 of its values), and each shard also
holds its own samples' rows under "cond.NAME" plus "guidance". A resumed run with other
conditions or another guidance is refused like any other change, and load_shards refuses
shards whose conditions are not the run's. An engine whose samples are arrays
(sample_kind "array") stores them as they are: "samples" float32 [n, *sample_shape]
instead of uint8 "images". These runs are format_version 3, so a runtime that knows only
version 2 refuses them instead of dropping their conditions; an unconditional image run
writes version 2, byte for byte as before.

Why shards: a run of hours is interrupted (Ctrl-C, preemption, a full disk);
it then loses at most the shard in progress, and the same command run again
skips every finished shard. Each shard is written atomically (temporary file +
rename), so a shard file that exists is complete; one that does not load
(damaged on disk, copied partially) is sampled again, with a warning.

Why the images do not depend on the shards: every image draws its noise from
its own stream, derived from (seed, global image index) (``runtime.seeding``), so
shard k holds exactly images k*S, ... of one ``engine.sample(num, seed=seed)``
run, whatever the shard size, the batch, which shards already existed or the
order they were made. A resumed run writes the same images as an uninterrupted
one, and any shard can be redrawn alone:
``engine.sample(n, seed=seed, first_image=k * shard_size, ...)``.

NumPy only (tqdm optional, for the progress bar on a terminal); no torch.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from runtime.contract import compute_precision, default_guidance, plan_options, sampling_plan
from runtime.guidance import check_guidance, null_conditions, prepare_conditions
from runtime.io import NpzError, load_npz, save_npz, sha256_file, to_uint8, write_json
from runtime.progress import progress_bar
from runtime.schedulers import make_scheduler, resolve_options

RUN_FILE = "run.json"
SHARD_PATTERN = "shard-{:05d}.npz"
FORMAT = "ddpm-export-shards"
# version 2: one noise stream per image (version 1 seeded each shard; its images differ)
FORMAT_VERSION = 2
# version 3: a conditional engine's run (conditions and guidance recorded) or array samples;
# an unconditional image run stays version 2, so older runtimes still read it
CONDITIONAL_FORMAT_VERSION = 3
FORMAT_VERSIONS = (FORMAT_VERSION, CONDITIONAL_FORMAT_VERSION)
# the keys of run.json's "config" that decide the images; a re-run must match every one
DEFAULT_SHARD_SIZE = 1000  # images per shard file: the most an interruption loses
INTERRUPTED = "interrupted; finished shards are kept; re-run the same command to resume"
# (the batch is recorded but changes only the speed, so a resumed run may use another)
CONFIG_KEYS = ("engine_sha256", "image_shape", "num", "shard_size", "seed",
               "method", "steps", "eta", "spacing", "options")
# and those of a version-3 run (absent from version 2; compared too, absent = None)
CONDITIONAL_KEYS = ("sample_kind", "sample_shape", "guidance", "conditions")
COND_PREFIX = "cond."  # a shard's condition rows: "cond.NAME"
_RESTART = ("re-run with that run's options to resume it, or choose another --out "
            "(or delete {out}) to start a new run")


class ShardsError(ValueError):
    """An output folder that cannot be resumed or read; the message says how to fix it."""


def shard_path(out_dir, k: int) -> Path:
    return Path(out_dir) / SHARD_PATTERN.format(k)


def sample_shards(
    engine,
    out_dir,
    num: int,
    shard_size: int = DEFAULT_SHARD_SIZE,
    seed: int = 0,
    batch: Optional[int] = None,
    method: Optional[str] = None,
    steps: Optional[int] = None,
    eta: Optional[float] = None,
    spacing: Optional[str] = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    on_shard: Optional[Callable[[int, Path], None]] = None,
    cond: Optional[Dict[str, Any]] = None,
    guidance: Optional[float] = None,
    **options: Any,
) -> Dict[str, Any]:
    """Write ``num`` uint8 samples of ``engine`` (a runtime.Engine) to out_dir in shards
    (float32 arrays for an engine whose sample_kind is "array").

    cond (a conditional engine): its inputs for the WHOLE run by name, each one value for
    every sample or one per sample of the run ([num, ...]); shard k samples rows
    [k*shard_size, ...) of them. guidance: the classifier-free guidance scale (None: the
    manifest's default). Both are recorded (module docstring) and a resume must match them.

    Shard k holds images [k*shard_size, min(num, (k+1)*shard_size)). Finished
    shards of an earlier run with the same configuration are kept; a different
    configuration in out_dir is refused (ShardsError). method/steps None: the manifest's
    ``sampling`` section when it has one (a non-binding default's options too), else ddpm
    (runtime.contract.sampling_plan). ``batch`` None means
    min(shard_size, the engine's max batch); it changes the speed, not the
    images (each image has its own noise stream), so a resumed run may use
    another. With ``progress``, shows the progress over images
    (``runtime.progress``: a bar on a terminal, a line per 10 % in a log), else
    logs one line per shard; logs a final throughput line. ``on_shard(k, path)`` runs after each shard is written.

    Returns a summary: out, num, shards, sampled, skipped, redone (damaged
    shards sampled again), images_sampled, seconds (wall time of sampling and
    writing, so throughput is end to end), images_per_s,
    image_steps_per_s, config.
    """
    out = Path(out_dir)
    plan = sampling_plan(engine.manifest, method, steps)
    method, steps = plan["method"], plan["steps"]  # a student's timesteps: engine.sample_float takes them
    # a non-binding default's options (a DDIMPipeline's eta, variant): explicit, so run.json records them
    options = plan_options(plan, dict(options, eta=eta, spacing=spacing))
    eta, spacing = options.pop("eta", None), options.pop("spacing", None)
    config, conds = _config(engine, num, shard_size, seed, batch, method, steps, eta, spacing, options,
                            cond, guidance)
    n_shards = -(-num // shard_size)
    _open_run(out, config, engine, n_shards)

    hwc = _sample_dims(config)
    todo: List[int] = []
    redone = 0
    for k in range(n_shards):
        p = shard_path(out, k)
        if not p.exists():
            todo.append(k)
            continue
        problem = _read_shard(p, k, config, hwc, _rows(conds, config, k))[1]
        if problem:
            log(f"warning: {p} {problem}; sampling it again")
            todo.append(k)
            redone += 1
    skipped = n_shards - len(todo)
    if skipped:
        log(f"{out}: {skipped} of {n_shards} shards already done, {len(todo)} to sample")

    n_steps = config["steps"]
    bar = _progress_bar(progress and bool(todo), num, num - sum(_shard_len(config, k) for k in todo))

    def on_step(i, t, x, x0):  # one bar update per finished batch
        if i == n_steps - 1:
            bar.update(x.shape[0])

    images_sampled = image_steps = 0
    start = time.perf_counter()
    try:
        for k in todo:
            n = _shard_len(config, k)
            t0 = time.perf_counter()
            rows = _rows(conds, config, k)
            extra = {} if conds is None else {"cond": rows, "guidance": config["guidance"]}
            res = engine.sample_float(n, seed=seed, first_image=k * shard_size, steps=config["steps"],
                                      method=method, eta=eta, spacing=spacing, **options, **extra,
                                      batch=config["batch"], callback=on_step if bar is not None else None)
            p = shard_path(out, k)
            save_npz(p, **_shard_arrays(config, res.images, rows), index_start=np.int64(k * shard_size),
                     seed=np.uint64(seed))
            images_sampled += n
            image_steps += res.image_steps
            if bar is None:
                dt = time.perf_counter() - t0
                log(f"shard {k + 1}/{n_shards} (images {k * shard_size}-{k * shard_size + n - 1}): "
                    f"{dt:.1f} s, {n / dt:.1f} images/s")
            if on_shard is not None:
                on_shard(k, p)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start

    summary = {
        "out": str(out), "num": num, "shards": n_shards, "sampled": len(todo),
        "skipped": skipped, "redone": redone, "images_sampled": images_sampled,
        "seconds": seconds,
        "images_per_s": images_sampled / seconds if images_sampled else 0.0,
        "image_steps_per_s": image_steps / seconds if images_sampled else 0.0,
        "config": config,
    }
    if todo:
        log(f"{out}: sampled {images_sampled} images ({len(todo)} shards, {skipped} already done) "
            f"in {seconds:.1f} s = {summary['images_per_s']:.2f} images/s "
            f"({summary['image_steps_per_s']:.1f} image-steps/s, {n_steps} steps); "
            f"all {num} images are there")
    else:
        log(f"{out}: nothing to do, all {n_shards} shards ({num} images) were already there")
    return summary


def load_shards(out_dir) -> np.ndarray:
    """All images of a finished sample_shards run, in order: uint8 [num, H, W, C] (an array
    engine's run: float32 [num, *sample_shape]). A conditional run's conditions:
    load_conditions."""
    return _load(Path(out_dir))[0]


def load_conditions(out_dir) -> Dict[str, np.ndarray]:
    """The conditions a finished run sampled with, by input name: [num, ...] each ({} for an
    unconditional run); checked against its run.json."""
    return _load(Path(out_dir))[1]


def _load(out: Path) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    config = _read_run(out)["config"]
    n_shards = -(-config["num"] // config["shard_size"])
    hwc = _sample_dims(config)
    missing = [k for k in range(n_shards) if not shard_path(out, k).is_file()]
    if missing:
        names = ", ".join(shard_path(out, k).name for k in missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise ShardsError(
            f"{out}: {len(missing)} of {n_shards} shards missing ({names}): the run did not finish; "
            f"run the same sample-many command again to sample only those"
        )
    parts = []
    cond_parts: Dict[str, List[np.ndarray]] = {}
    for k in range(n_shards):
        images, problem, rows = _read_shard(shard_path(out, k), k, config, hwc)
        if problem:
            raise ShardsError(
                f"{shard_path(out, k)} {problem}; run the same sample-many command again: "
                f"it samples damaged shards again"
            )
        parts.append(images)
        for name, a in rows.items():
            cond_parts.setdefault(name, []).append(a)
    conds = {name: np.concatenate(v) for name, v in cond_parts.items()}
    if config.get("conditions") is not None:
        got = _cond_record(conds)
        if got != config["conditions"]:
            raise ShardsError(
                f"{out}: the conditions stored in its shards ({_describe(got)}) are not the ones its "
                f"{RUN_FILE} records ({_describe(config['conditions'])}): shards of different runs were "
                f"mixed; delete the shards that do not belong and run the same sample-many command again")
    return np.concatenate(parts), conds


def write_merged(out_dir, path) -> int:
    """All images in one .npz under ``arr_0`` (uint8 [N, H, W, C], the layout of
    OpenAI's guided-diffusion evaluator and of np.savez(path, x)); returns N.
    An array engine's run: float32 [N, *sample_shape] under arr_0. A conditional run also
    writes each condition, [N, ...], under its input name."""
    images, conds = _load(Path(out_dir))
    save_npz(path, arr_0=images, **conds)
    return int(images.shape[0])


# --- configuration and run.json ------------------------------------------------

def _config(engine, num, shard_size, seed, batch, method, steps, eta, spacing, options,
            cond=None, guidance=None) -> Tuple[Dict[str, Any], Optional[Dict[str, np.ndarray]]]:
    """Checked, resolved configuration (None defaults made explicit, so that
    --steps 50 and the DDIM default compare equal), and the whole run's conditions
    ([num, ...] each; None for an unconditional engine)."""
    for name, value, least in (("num", num, 1), ("shard_size", shard_size, 1), ("seed", seed, 0)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name} (--{name.replace('_', '-')}) = {value!r}: expected an int >= {least}")
    conditions = tuple(getattr(engine, "conditions", ()) or ())
    kind = getattr(engine, "sample_kind", "image")
    # conditions and guidance checked now, before run.json or any shard is written
    conds = prepare_conditions(conditions, cond, int(num)) if (conditions or cond) else None
    w = check_guidance(default_guidance(engine.manifest) if guidance is None else guidance)
    if w != 1.0:
        null_conditions(conditions, 1)  # refuses guidance on a model without a null form
    max_batch = int(engine.runner.max_batch)
    if batch is None:
        guided = w not in (0.0, 1.0) and max_batch >= 2  # one call at 2N, as engine.sample_float
        batch = min(shard_size, max_batch // 2 if guided else max_batch)
    if batch < 1 or batch > max_batch:
        raise ValueError(f"batch (--batch) = {batch}: expected 1 to {max_batch}, the engine's max "
                         f"batch; leave it out for min(shard size, {max_batch})")
    sched = make_scheduler(engine.manifest["schedule"], method, steps, eta=eta, spacing=spacing, **options)
    resolved = {k: v for k, v in resolve_options(method, dict(options, eta=eta, spacing=spacing)).items()
                if v is not None}
    eta, spacing = resolved.pop("eta", 0.0), resolved.pop("spacing", "uniform")
    config = {
        "engine_sha256": sha256_file(engine.runner.path),
        "image_shape": [int(v) for v in engine.image_shape] if kind == "image" else None,
        "num": int(num), "shard_size": int(shard_size), "seed": int(seed), "batch": int(batch),
        "method": method, "steps": int(sched.num_inference_steps),
        "eta": float(eta), "spacing": spacing, "options": resolved,
    }
    if conditions or kind != "image":  # a version-3 run; any other keeps version 2's config exactly
        config.update({"sample_kind": kind, "sample_shape": [int(v) for v in engine.sample_shape],
                       "guidance": w, "conditions": _cond_record(conds or {})})
    return config, conds


def _cond_record(conds: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """What run.json records of a run's conditions: per name its dtype, shape and the sha256
    of its values (a resume must give exactly these)."""
    import hashlib

    return {name: {"dtype": str(a.dtype), "shape": [int(v) for v in a.shape],
                   "sha256": hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()}
            for name, a in sorted(conds.items())}


def _describe(record: Optional[Dict[str, Any]]) -> str:
    if not record:
        return "none"
    return ", ".join(f"{n} {r['dtype']} {r['shape']} sha256 {r['sha256'][:12]}..." for n, r in record.items())


def _rows(conds: Optional[Dict[str, np.ndarray]], config: Dict[str, Any], k: int) -> Optional[Dict[str, np.ndarray]]:
    """Shard k's rows of the run's conditions."""
    if conds is None:
        return None
    a = k * config["shard_size"]
    return {name: v[a:a + _shard_len(config, k)] for name, v in conds.items()}


def _is_v3(config: Dict[str, Any]) -> bool:
    return "sample_kind" in config


def _shard_arrays(config: Dict[str, Any], samples: np.ndarray, rows) -> Dict[str, np.ndarray]:
    if not _is_v3(config):
        return {"images": to_uint8(samples)}
    d = {"images": to_uint8(samples)} if config["sample_kind"] == "image" else \
        {"samples": np.ascontiguousarray(samples, dtype=np.float32)}
    d["guidance"] = np.float64(config["guidance"])
    d.update({COND_PREFIX + name: a for name, a in (rows or {}).items()})
    return d


def _open_run(out: Path, config: Dict[str, Any], engine, n_shards: int) -> None:
    """Check out against an earlier run, or start a new one by writing run.json."""
    if out.exists() and not out.is_dir():
        raise ShardsError(f"{out}: exists and is not a folder; --out takes a folder (created if missing)")
    if (out / RUN_FILE).is_file():
        run = _read_run(out)
        old = run["config"]
        diffs = [f"{k} {config.get(k)!r} asked, {old.get(k)!r} in its {RUN_FILE}" for k in CONFIG_KEYS
                 if k != "engine_sha256" and config.get(k) != old.get(k, {} if k == "options" else None)]
        shown = lambda k, c: _describe(c.get(k)) if k == "conditions" else repr(c.get(k))  # noqa: E731
        diffs += [f"{k} {shown(k, config)} asked, {shown(k, old)} in its {RUN_FILE}"
                  for k in CONDITIONAL_KEYS if config.get(k) != old.get(k)]
        if config["engine_sha256"] != old["engine_sha256"]:
            diffs.insert(0, f"engine {engine.runner.path} (sha256 {config['engine_sha256'][:12]}...) asked, "
                            f"{run.get('engine', {}).get('path')} (sha256 {old['engine_sha256'][:12]}...) "
                            f"in its {RUN_FILE}")
        if diffs:
            raise ShardsError(f"{out} holds a different run ({'; '.join(diffs)}): "
                              + _RESTART.format(out=out))
        return
    if out.is_dir() and any(out.glob("shard-*.npz")):
        raise ShardsError(f"{out}: holds shard files but no {RUN_FILE}, so what made them is unknown; "
                          f"choose another --out or delete {out}")
    manifest = engine.manifest
    v3 = _is_v3(config)
    write_json(out / RUN_FILE, {
        "format": FORMAT, "format_version": CONDITIONAL_FORMAT_VERSION if v3 else FORMAT_VERSION,
        "config": config,
        "engine": {"path": str(engine.runner.path), "backend": getattr(engine.runner, "backend", None),
                   "precision": compute_precision(manifest, engine.runner.path), "onnx_sha256": manifest.get("onnx_sha256"),
                   "checkpoint_sha256": (manifest.get("source") or {}).get("checkpoint_sha256")},
        "shards": n_shards,
        "layout": _LAYOUT_V3 if v3 else _LAYOUT,
    })


_LAYOUT = ("shard-NNNNN.npz: images uint8 [n, H, W, C] = images [k*shard_size, ...), "
           "index_start, seed; image i's noise stream: "
           "Generator(PCG64(SeedSequence(seed, spawn_key=(i,))))")
_LAYOUT_V3 = ("shard-NNNNN.npz: images uint8 [n, H, W, C] (sample_kind image) or samples float32 "
              "[n, *sample_shape] (sample_kind array) = samples [k*shard_size, ...), index_start, seed, "
              "guidance, cond.NAME (that shard's rows of each condition); sample i's noise stream: "
              "Generator(PCG64(SeedSequence(seed, spawn_key=(i,))))")


def _read_run(out: Path) -> Dict[str, Any]:
    if not out.is_dir():
        raise ShardsError(f"{out}: no such folder; expected the --out folder of a sample-many run")
    run = out / RUN_FILE
    if not run.is_file():
        what = "is empty" if not any(out.iterdir()) else f"has no {RUN_FILE}"
        raise ShardsError(f"{out} {what}: not a sample-many output folder; write one with "
                          f"'python -m runtime.sample_many --engine E --num N --out {out}'")
    try:
        d = json.loads(run.read_text(encoding="utf-8"))
        config = d["config"]
        missing = [k for k in CONFIG_KEYS if k not in config]
    except (ValueError, KeyError, TypeError) as e:
        raise ShardsError(f"{run}: unreadable ({type(e).__name__}: {e}); choose another --out or "
                          f"delete {out}") from None
    if d.get("format") != FORMAT or missing:
        raise ShardsError(f"{run}: not a {FORMAT} run file (format {d.get('format')!r}, missing "
                          f"{missing}); choose another --out or delete {out}")
    if d.get("format_version") not in FORMAT_VERSIONS:
        raise ShardsError(f"{run}: format_version {d.get('format_version')!r}, expected {FORMAT_VERSION} "
                          f"(or {CONDITIONAL_FORMAT_VERSION} for a conditional or array run) (version 1 runs seeded each shard, so their images differ "
                          f"from this version's); choose another --out or delete {out} to sample it again")
    v3_missing = [k for k in CONDITIONAL_KEYS if k not in config]
    if (d["format_version"] == CONDITIONAL_FORMAT_VERSION) != (not v3_missing) or (
            not v3_missing and config["sample_kind"] not in ("image", "array")):
        raise ShardsError(f"{run}: format_version {d['format_version']} with config keys "
                          f"{[k for k in CONDITIONAL_KEYS if k in config]} (version 3 has all of "
                          f"{list(CONDITIONAL_KEYS)}, version 2 none); choose another --out or delete {out}")
    return d


def _sample_dims(config: Dict[str, Any]) -> Tuple[int, ...]:
    """A shard's per-sample shape: (H, W, C) of uint8 images, else sample_shape."""
    if config.get("sample_kind", "image") == "array":
        return tuple(int(v) for v in config["sample_shape"])
    c, h, w = (int(v) for v in config["image_shape"])
    return h, w, c


def _shard_len(config: Dict[str, Any], k: int) -> int:
    return min(config["shard_size"], config["num"] - k * config["shard_size"])


def _read_shard(path: Path, k: int, config: Dict[str, Any], hwc, rows=None):
    """(images, None, its condition rows) for a good shard k, else (None, what is wrong with
    it, {}). rows: the condition rows it must hold (None: check them later, load_shards)."""
    want = (_shard_len(config, k),) + tuple(hwc)
    v3 = _is_v3(config)
    key, dtype = ("samples", np.float32) if v3 and config["sample_kind"] == "array" else ("images", np.uint8)
    names = sorted(config["conditions"]) if v3 else []
    keys = (key, "index_start", "seed") + (("guidance",) if v3 else ()) + tuple(COND_PREFIX + n for n in names)
    try:
        z = load_npz(path, "a sample-many shard", keys=keys)
        images, start, seed = z[key], int(z["index_start"]), int(z["seed"])
        guidance = float(z["guidance"]) if v3 else None
    except (NpzError, TypeError, ValueError) as e:  # damaged, pickled objects, missing key, not scalars
        return None, (f"is unreadable: {e.reason}" if isinstance(e, NpzError) else
                      f"is unreadable ({type(e).__name__}: {e})"), {}
    if images.dtype != dtype or images.shape != want:
        return None, f"holds {images.dtype} {images.shape}, expected {np.dtype(dtype)} {want}", {}
    if start != k * config["shard_size"] or seed != config["seed"]:
        return None, (f"has index_start {start} and seed {seed}, expected "
                      f"{k * config['shard_size']} and {config['seed']}"), {}
    got = {n: z[COND_PREFIX + n] for n in names}
    if v3 and guidance != config["guidance"]:
        return None, f"was sampled with guidance {guidance}, expected {config['guidance']} (its {RUN_FILE})", {}
    for n in names:
        r = config["conditions"][n]
        shape = [want[0]] + list(r["shape"][1:])
        if str(got[n].dtype) != r["dtype"] or list(got[n].shape) != shape:
            return None, (f"holds condition {n!r} {got[n].dtype} {list(got[n].shape)}, expected "
                          f"{r['dtype']} {shape}"), {}
        if rows is not None and not np.array_equal(got[n], rows[n]):
            return None, f"was sampled with other {n!r} values than this run's for its samples", {}
    return images, None, got


def _progress_bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    return progress_bar(total=total, initial=initial, desc="sample-many", unit="img")
