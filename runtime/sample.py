"""python -m runtime.sample --engine engines/digits.onnx [--num 64 --seed 0 --out samples.png]
python -m runtime.sample --engine engines/digits-cond.onnx --label 3 --guidance 2 --num 16

Samples from an exported engine with the NumPy runtime; every default comes
from the engine's manifest. Needs NumPy, Pillow and the engine's backend; no torch.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

import numpy as np

from runtime.cli_args import (add_allow_host_code_arg, add_condition_args, add_method_args, cli_main,
                              condition_values, method_options)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runtime.sample",
        description="Sample images from a DDPM engine (.onnx or .plan) with the NumPy runtime. "
        "Schedule, image shape, conditions and batch range come from the engine's manifest (NAME.json). "
        "A conditional engine takes --label / --cond and --guidance; an engine whose samples are not "
        "images (e.g. a policy's action chunks) writes them with --npz.",
    )
    p.add_argument("--engine", required=True, help="NAME.onnx or NAME.plan (its NAME.json beside it)")
    p.add_argument("--num", type=int, default=64,
                   help="number of images, all held in memory (default 64); a number that cannot fit "
                   "is refused: use python -m runtime.sample_many for many")
    p.add_argument("--seed", type=int, default=0, help="seed: image i draws its noise from its own stream (seed, i), so the "
                   "images do not depend on --batch (default 0)")
    p.add_argument("--out", default="samples.png", help="PNG grid to write (default samples.png; image engines)")
    add_method_args(p)
    add_condition_args(p)
    p.add_argument("--batch", type=int, default=None,
                   help="images per engine call (default: min(num, the engine's max batch))")
    p.add_argument("--trajectory", default=None,
                   help="also write the progressive x0 predictions of the first batch to this PNG")
    p.add_argument("--npz", default=None, help="also save the float samples [N, C, H, W] to this .npz")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    add_allow_host_code_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    return cli_main(_run, build_parser().parse_args(argv), "interrupted; no samples PNG written")


def _run(args) -> int:
    from runtime.api import load
    from runtime.io import require_pillow, save_grid, save_npz, save_trajectory
    from runtime.limits import SAMPLE_CLI_BYTES_PER_VALUE, check_images_fit

    if args.num < 1:
        raise ValueError(f"--num {args.num}: expected at least 1")
    from runtime.contract import plan_options, plan_steps, sampling_plan
    from runtime.schedulers import make_scheduler

    require_pillow()
    engine = load(args.engine, threads=args.threads, allow_host_code=args.allow_host_code)
    # method and options checked before anything is sampled or written
    plan = sampling_plan(engine.manifest, args.method, args.steps)
    make_scheduler(engine.manifest["schedule"], plan["method"], **plan_steps(plan),
                   **plan_options(plan, method_options(args)))
    # every image stays in memory until the grid is written: refuse what cannot fit, now
    check_images_fit(args.num, engine.sample_shape, SAMPLE_CLI_BYTES_PER_VALUE, name="--num")
    image = engine.sample_kind == "image"
    if not image and (args.trajectory or not args.npz):
        raise ValueError(f"{args.engine}: its samples are arrays of shape {engine.sample_shape}, not images; "
                         f"pass --npz OUT.npz to keep them (no PNG grid or --trajectory)")
    cond = condition_values(args, engine.conditions, args.num, whole_run=True)
    with engine:
        res = engine.sample_float(
            args.num, seed=args.seed, steps=args.steps, method=args.method, batch=args.batch,
            progress=not args.no_progress, trajectory_frames=10 if args.trajectory else 0,
            cond=cond, guidance=args.guidance, **method_options(args),
        )
    extra = {k: np.asarray(v) for k, v in (cond or {}).items()}
    if not image:
        save_npz(args.npz, samples=res.images, seed=np.int64(args.seed), **extra)
        print(f"wrote {args.npz}: {args.num} samples {tuple(engine.sample_shape)}, {res.network_calls} engine "
              f"calls in {res.seconds:.2f} s")
        return 0
    h = engine.image_shape[1]
    scale = max(1, 64 // h)
    # the side outputs first, the samples PNG last: a failure leaves no result-looking grid
    if args.npz:
        save_npz(args.npz, samples=res.images, seed=np.int64(args.seed), **extra)
    if args.trajectory:
        save_trajectory(res.trajectory, args.trajectory, scale=scale)
    save_grid(res.images, args.out, scale=scale)
    print(
        f"wrote {args.out}: {args.num} images, {res.network_calls} engine calls in {res.seconds:.2f} s "
        f"= {args.num / res.seconds:.2f} images/s ({res.image_steps / res.seconds:.1f} image-steps/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
