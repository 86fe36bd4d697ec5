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

from runtime.contract import compute_precision, plan_options, sampling_plan
from runtime.io import NpzError, load_npz, save_npz, sha256_file, to_uint8, write_json
from runtime.progress import progress_bar
from runtime.schedulers import make_scheduler, resolve_options

RUN_FILE = "run.json"
SHARD_PATTERN = "shard-{:05d}.npz"
FORMAT = "ddpm-export-shards"
# version 2: one noise stream per image (version 1 seeded each shard; its images differ)
FORMAT_VERSION = 2
# the keys of run.json's "config" that decide the images; a re-run must match every one
DEFAULT_SHARD_SIZE = 1000  # images per shard file: the most an interruption loses
INTERRUPTED = "interrupted; finished shards are kept; re-run the same command to resume"
# (the batch is recorded but changes only the speed, so a resumed run may use another)
CONFIG_KEYS = ("engine_sha256", "image_shape", "num", "shard_size", "seed",
               "method", "steps", "eta", "spacing", "options")
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
    **options: Any,
) -> Dict[str, Any]:
    """Write ``num`` uint8 samples of ``engine`` (a runtime.Engine) to out_dir in shards.

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
    config = _config(engine, num, shard_size, seed, batch, method, steps, eta, spacing, options)
    n_shards = -(-num // shard_size)
    _open_run(out, config, engine, n_shards)

    hwc = _hwc(config["image_shape"])
    todo: List[int] = []
    redone = 0
    for k in range(n_shards):
        p = shard_path(out, k)
        if not p.exists():
            todo.append(k)
            continue
        problem = _read_shard(p, k, config, hwc)[1]
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
            res = engine.sample_float(n, seed=seed, first_image=k * shard_size, steps=config["steps"],
                                      method=method, eta=eta, spacing=spacing, **options,
                                      batch=config["batch"], callback=on_step if bar is not None else None)
            p = shard_path(out, k)
            save_npz(p, images=to_uint8(res.images), index_start=np.int64(k * shard_size),
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
    """All images of a finished sample_shards run, in order: uint8 [num, H, W, C]."""
    out = Path(out_dir)
    config = _read_run(out)["config"]
    n_shards = -(-config["num"] // config["shard_size"])
    hwc = _hwc(config["image_shape"])
    missing = [k for k in range(n_shards) if not shard_path(out, k).is_file()]
    if missing:
        names = ", ".join(shard_path(out, k).name for k in missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise ShardsError(
            f"{out}: {len(missing)} of {n_shards} shards missing ({names}): the run did not finish; "
            f"run the same sample-many command again to sample only those"
        )
    parts = []
    for k in range(n_shards):
        images, problem = _read_shard(shard_path(out, k), k, config, hwc)
        if problem:
            raise ShardsError(
                f"{shard_path(out, k)} {problem}; run the same sample-many command again: "
                f"it samples damaged shards again"
            )
        parts.append(images)
    return np.concatenate(parts)


def write_merged(out_dir, path) -> int:
    """All images in one .npz under ``arr_0`` (uint8 [N, H, W, C], the layout of
    OpenAI's guided-diffusion evaluator and of np.savez(path, x)); returns N."""
    images = load_shards(out_dir)
    save_npz(path, arr_0=images)
    return int(images.shape[0])


# --- configuration and run.json ------------------------------------------------

def _config(engine, num, shard_size, seed, batch, method, steps, eta, spacing, options) -> Dict[str, Any]:
    """Checked, resolved configuration (None defaults made explicit, so that
    --steps 50 and the DDIM default compare equal)."""
    for name, value, least in (("num", num, 1), ("shard_size", shard_size, 1), ("seed", seed, 0)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name} (--{name.replace('_', '-')}) = {value!r}: expected an int >= {least}")
    max_batch = int(engine.runner.max_batch)
    if batch is None:
        batch = min(shard_size, max_batch)
    if batch < 1 or batch > max_batch:
        raise ValueError(f"batch (--batch) = {batch}: expected 1 to {max_batch}, the engine's max "
                         f"batch; leave it out for min(shard size, {max_batch})")
    sched = make_scheduler(engine.manifest["schedule"], method, steps, eta=eta, spacing=spacing, **options)
    resolved = {k: v for k, v in resolve_options(method, dict(options, eta=eta, spacing=spacing)).items()
                if v is not None}
    eta, spacing = resolved.pop("eta", 0.0), resolved.pop("spacing", "uniform")
    return {
        "engine_sha256": sha256_file(engine.runner.path),
        "image_shape": [int(v) for v in engine.image_shape],
        "num": int(num), "shard_size": int(shard_size), "seed": int(seed), "batch": int(batch),
        "method": method, "steps": int(sched.num_inference_steps),
        "eta": float(eta), "spacing": spacing, "options": resolved,
    }


def _open_run(out: Path, config: Dict[str, Any], engine, n_shards: int) -> None:
    """Check out against an earlier run, or start a new one by writing run.json."""
    if out.exists() and not out.is_dir():
        raise ShardsError(f"{out}: exists and is not a folder; --out takes a folder (created if missing)")
    if (out / RUN_FILE).is_file():
        run = _read_run(out)
        old = run["config"]
        diffs = [f"{k} {config.get(k)!r} asked, {old.get(k)!r} in its {RUN_FILE}" for k in CONFIG_KEYS
                 if k != "engine_sha256" and config.get(k) != old.get(k, {} if k == "options" else None)]
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
    write_json(out / RUN_FILE, {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "config": config,
        "engine": {"path": str(engine.runner.path), "backend": getattr(engine.runner, "backend", None),
                   "precision": compute_precision(manifest, engine.runner.path), "onnx_sha256": manifest.get("onnx_sha256"),
                   "checkpoint_sha256": (manifest.get("source") or {}).get("checkpoint_sha256")},
        "shards": n_shards,
        "layout": "shard-NNNNN.npz: images uint8 [n, H, W, C] = images [k*shard_size, ...), "
                  "index_start, seed; image i's noise stream: "
                  "Generator(PCG64(SeedSequence(seed, spawn_key=(i,))))",
    })


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
    if d.get("format_version") != FORMAT_VERSION:
        raise ShardsError(f"{run}: format_version {d.get('format_version')!r}, expected {FORMAT_VERSION} "
                          f"(version 1 runs seeded each shard, so their images differ from this "
                          f"version's); choose another --out or delete {out} to sample it again")
    return d


def _hwc(image_shape) -> Tuple[int, int, int]:
    c, h, w = (int(v) for v in image_shape)
    return h, w, c


def _shard_len(config: Dict[str, Any], k: int) -> int:
    return min(config["shard_size"], config["num"] - k * config["shard_size"])


def _read_shard(path: Path, k: int, config: Dict[str, Any], hwc) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """(images, None) for a good shard k, else (None, what is wrong with it)."""
    want = (_shard_len(config, k),) + tuple(hwc)
    try:
        z = load_npz(path, "a sample-many shard", keys=("images", "index_start", "seed"))
        images, start, seed = z["images"], int(z["index_start"]), int(z["seed"])
    except (NpzError, TypeError, ValueError) as e:  # damaged, pickled objects, missing key, not scalars
        return None, f"is unreadable: {e.reason}" if isinstance(e, NpzError) else \
            f"is unreadable ({type(e).__name__}: {e})"
    if images.dtype != np.uint8 or images.shape != want:
        return None, f"holds {images.dtype} {images.shape}, expected uint8 {want}"
    if start != k * config["shard_size"] or seed != config["seed"]:
        return None, (f"has index_start {start} and seed {seed}, expected "
                      f"{k * config['shard_size']} and {config['seed']}")
    return images, None


def _progress_bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    return progress_bar(total=total, initial=initial, desc="sample-many", unit="img")
