"""A small program that embeds the ddpm-export runtime: the starting point of a Jetson app.

It loads an engine once, then samples on request and reports each request's
latency and memory. Given a TensorRT plan (NAME.plan) it runs the plan; when
TensorRT or a CUDA GPU is missing, or the plan was built for another TensorRT or
GPU, it says why and falls back to ONNX Runtime on the ONNX export of the same
model (NAME.onnx next to the plan, or --onnx). A plan that TensorRT refuses
although its manifest says it fits (a damaged file, or not the plan its
NAME.json describes) is an error, not a fallback: rebuild it. A
version-compatible plan runs only with --allow-host-code (it embeds code that
TensorRT runs in this process; pass it only for plans you trust).

    python3 examples/jetson_app/app.py --engine engines/cifar10-fp16.plan --requests 3
    python3 examples/jetson_app/app.py --engine engines/digits.onnx --num 4 --method ddim --steps 20
    echo "8 42" | python3 examples/jetson_app/app.py --engine engines/digits.onnx --stdin
    python3 examples/jetson_app/app.py --engine engines/digits-cond.onnx --label 3 --guidance 2

With --stdin each input line is one request "NUM [SEED [LABELS]]". The last line printed
is a JSON summary (machine-readable). A conditional engine takes --label (one label, or a
comma-separated list cycled over each request's images; a stdin line's LABELS replace it
for that request), --cond NAME=FILE.npy and --guidance (default: the manifest's); each
request's line and JSON row then carry its "labels" and "guidance". Needs only the runtime's dependencies
(NumPy, a backend, Pillow for --out); Python >= 3.8 (JetPack 5).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

try:
    import runtime
except ImportError:  # run from a checkout without installing: the repo root is two levels up
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import runtime

from runtime.api import TRT_SUFFIXES
from runtime.cli_args import add_condition_args, condition_values
from runtime.contract import default_guidance
from runtime.backends.onnxrt import BackendMissing as OrtMissing
from runtime.backends.tensorrt import BackendMissing as TrtMissing
from runtime.backends.tensorrt import NoCudaDevice
from runtime.backends.tensorrt.compat import EngineMismatch
from runtime.io import make_grid, save_png, to_uint8
from runtime.loop import METHODS

# why a plan cannot run on this machine: then ONNX Runtime takes over. PlanNotLoadable (TensorRT
# refused a plan that fits this machine by its manifest) and its PlanManifestMismatch (the plan's
# I/O or batch profile is not its NAME.json's: plan and manifest mixed up) are a broken plan,
# never a fallback. EngineMismatch means only "built for another TensorRT or GPU".
PLAN_UNAVAILABLE = (TrtMissing, NoCudaDevice, EngineMismatch)


def open_with_fallback(path: Path, onnx_fallback: Path, load: Callable[[Path], Any],
                       log: Callable[[str], None]) -> Tuple[Any, Optional[str]]:
    """(load(path), None); for a TensorRT plan that cannot run on this machine
    (PLAN_UNAVAILABLE) (load(onnx_fallback), why), saying so through log. A plan TensorRT
    refuses although it fits this machine (PlanNotLoadable) is raised, never a fallback. The
    sampler (SamplerApp) and the policy control loop (control_loop.py) both open this way."""
    if path.suffix not in TRT_SUFFIXES:
        return load(path), None
    try:
        return load(path), None
    except PLAN_UNAVAILABLE as e:
        reason = f"{type(e).__name__}: {e}"
    if not onnx_fallback.is_file():
        raise RuntimeError(
            f"cannot run the TensorRT plan {path} ({reason}), and there is no ONNX export to fall back "
            f"to at {onnx_fallback}: copy NAME.onnx next to the plan or pass --onnx")
    log(f"warning: the TensorRT plan {path} cannot run here ({reason}); falling back to ONNX Runtime "
        f"on {onnx_fallback} (same manifest; slower, and CPU-only unless onnxruntime-gpu is installed)")
    return load(onnx_fallback), reason


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class SamplerApp:
    """Load once (``open``), sample on request (``handle``), close at the end."""

    def __init__(self, engine_path: str, onnx_fallback: Optional[str] = None, threads: Optional[int] = None,
                 log=lambda s: print(s, file=sys.stderr), allow_host_code: bool = False):
        self.engine_path = Path(engine_path)
        self.onnx_fallback = Path(onnx_fallback) if onnx_fallback else self.engine_path.with_suffix(".onnx")
        self.threads = threads
        self.allow_host_code = allow_host_code
        self.log = log
        self.engine = None
        self.backend: Optional[str] = None
        self.fallback_reason: Optional[str] = None
        self.load_seconds = 0.0

    def open(self) -> "SamplerApp":
        t0 = time.perf_counter()

        def load(path: Path):
            if path.suffix in TRT_SUFFIXES:
                return runtime.load(path, allow_host_code=self.allow_host_code).__enter__()
            return runtime.load(path, threads=self.threads).__enter__()
        self.engine, self.fallback_reason = open_with_fallback(self.engine_path, self.onnx_fallback, load,
                                                               self.log)
        self.backend = str(getattr(self.engine.runner, "backend", "?"))
        self.load_seconds = time.perf_counter() - t0
        return self

    def handle(self, num: int, seed: int, **sample_kw: Any) -> Dict[str, Any]:
        """One request: ``num`` uint8 images [num, H, W, C] for ``seed`` (an array engine's float
        samples as they are), with latency and memory. A conditional engine's ``cond=`` and
        ``guidance=`` go in sample_kw."""
        tracemalloc.start()
        t0 = time.perf_counter()
        try:
            res = self.engine.sample_float(num, seed=seed, **sample_kw)
            images = to_uint8(res.images) if self.engine.sample_kind == "image" else res.images
            seconds = time.perf_counter() - t0
            _, traced_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return {"images": images, "num": num, "seed": seed, "latency_s": seconds,
                "images_per_s": num / seconds, "network_calls": res.network_calls,
                "ms_per_call": 1e3 * res.seconds / max(res.network_calls, 1),
                "python_heap_peak_mb": traced_peak / 2**20, "peak_rss_mb": peak_rss_mb()}

    def close(self) -> None:
        if self.engine is not None:
            self.engine.__exit__(None, None, None)
            self.engine = None


def _requests(args) -> List[Dict[str, Any]]:
    if not args.stdin:
        return [{"num": args.num, "seed": args.seed + k, "label": args.label} for k in range(args.requests)]
    out = []
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) > 3:
                raise ValueError
            num, seed = int(parts[0]), int(parts[1]) if len(parts) > 1 else args.seed
        except ValueError:
            raise ValueError(f"request line {line.strip()!r}: expected 'NUM [SEED [LABELS]]', e.g. '8 42' "
                             f"or '8 42 3,5'") from None
        out.append({"num": num, "seed": seed, "label": parts[2] if len(parts) > 2 else args.label})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Embed the ddpm-export runtime: load once, sample on request, "
                                "report latency and memory; a .plan falls back to its .onnx when TensorRT "
                                "or the GPU is missing.")
    p.add_argument("--engine", required=True, help="NAME.plan (TensorRT) or NAME.onnx (ONNX Runtime)")
    p.add_argument("--onnx", default=None, help="ONNX export to fall back to (default: NAME.onnx next to the plan)")
    p.add_argument("--num", type=int, default=4, help="images per request (default 4)")
    p.add_argument("--requests", type=int, default=3, help="number of requests without --stdin (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first request; request k uses seed + k (default 0)")
    p.add_argument("--stdin", action="store_true", help="read requests 'NUM [SEED [LABELS]]' from standard input, "
                   "one a line (LABELS: a conditional engine's labels for that request, as --label)")
    # the frontier (docs/results.md): on the digits model UniPC at 10 engine calls scores a lower Frechet
    # distance than DDPM over all 1000 steps
    p.add_argument("--method", choices=METHODS, default=None,
                   help="sampler (default: the manifest's for a distilled student, else unipc)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps = engine calls (default: the manifest's for a student, else 10)")
    p.add_argument("--batch", type=int, default=None, help="images per engine call (default: min(num, engine max)); "
                   "does not change the images")
    p.add_argument("--allow-host-code", action="store_true",
                   help="run a version-compatible plan, which embeds host code TensorRT runs in this "
                        "process; only for plans you trust")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: ONNX Runtime's)")
    p.add_argument("--out", default=None, help="folder for one PNG grid per request (needs Pillow)")
    add_condition_args(p)
    args = p.parse_args(argv)
    if args.num < 1 or args.requests < 1:
        p.error(f"--num and --requests must be >= 1, got {args.num} and {args.requests}")

    app = SamplerApp(args.engine, args.onnx, threads=args.threads, allow_host_code=args.allow_host_code)
    # stdout carries only the app's own lines (the last one is the JSON summary). TensorRT's log
    # reaches Python through Polygraphy's logger, which prints to sys.stdout: while the runtime
    # loads and samples, sys.stdout is stderr, so nothing else lands between those lines.
    out = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            app.open()
        print(f"loaded {args.engine if not app.fallback_reason else app.onnx_fallback} "
              f"({app.backend}) in {app.load_seconds:.2f} s; peak RSS {peak_rss_mb():.0f} MB", file=out)
        rows = []
        how = {"method": args.method, "steps": args.steps}
        if "sampling" not in app.engine.manifest:  # a student's (or a DDIMPipeline's) manifest says how it samples
            how = {"method": args.method or "unipc", "steps": 10 if args.steps is None else args.steps}
        conditional = bool(app.engine.conditions)
        if args.out and app.engine.sample_kind != "image":
            raise ValueError(f"{args.engine}: its samples are arrays of shape {app.engine.sample_shape}, not "
                             f"images, so there is no PNG grid to write; leave out --out")
        if conditional:  # what the stdout lines report; sample_float checks it
            guidance = default_guidance(app.engine.manifest) if args.guidance is None else args.guidance
            how["guidance"] = guidance
        elif args.guidance is not None:
            how["guidance"] = args.guidance  # refused by the runtime: the model is unconditional
        for k, req in enumerate(_requests(args)):
            cond = condition_values(argparse.Namespace(label=req["label"], cond=args.cond),
                                    app.engine.conditions, req["num"])
            with contextlib.redirect_stdout(sys.stderr):
                r = app.handle(req["num"], req["seed"], batch=args.batch, cond=cond, **how)
            told = ""
            if conditional:
                labels = [c.name for c in app.engine.conditions if c.kind == "class_label"]
                r["labels"] = ([int(v) for v in cond[labels[0]]] if len(labels) == 1 and cond
                               and labels[0] in cond else None)
                r["guidance"] = float(how["guidance"])
                told = (f", labels {','.join(map(str, r['labels']))}" if r["labels"] is not None else "") + \
                    f", guidance {r['guidance']:g}"
            if args.out:
                Path(args.out).mkdir(parents=True, exist_ok=True)
                save_png(make_grid(r["images"]), Path(args.out) / f"request-{k:03d}.png", scale=4)
            print(f"request {k}: {r['num']} images, seed {r['seed']}{told}: {1e3 * r['latency_s']:.0f} ms "
                  f"({r['images_per_s']:.1f} images/s, {r['network_calls']} engine calls, "
                  f"{r['ms_per_call']:.2f} ms each); Python heap peak {r['python_heap_peak_mb']:.1f} MB, "
                  f"process peak RSS {r['peak_rss_mb']:.0f} MB", file=out)
            rows.append({k2: v for k2, v in r.items() if k2 != "images"})
    except (OSError, ValueError, RuntimeError, OrtMissing) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 1
    finally:
        with contextlib.redirect_stdout(sys.stderr):
            app.close()
    print(json.dumps({"engine": str(args.engine), "backend": app.backend,
                      "fallback_reason": app.fallback_reason, "load_s": app.load_seconds,
                      "requests": rows}), file=out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
