"""python -m runtime.sample_many --engine engines/digits.onnx --num 50000 --out samples/digits-50k
python -m runtime.sample_many --engine engines/digits-cond.onnx --num 50000 --label 0,1,2,3,4,5,6,7,8,9 --out ...

Writes many samples (for FID) to a folder of resumable shards; see runtime.shards.
Interrupt it at any time: the same command run again skips finished shards.
Needs NumPy and the engine's backend; no torch.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from runtime.cli_args import (add_allow_host_code_arg, add_condition_args, add_method_args, cli_main,
                              condition_values, method_options)
from runtime.shards import DEFAULT_SHARD_SIZE, INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runtime.sample_many",
        description="Sample N images (e.g. 50,000 for FID) from a DDPM engine (.onnx or .plan) into "
        "OUT/shard-NNNNN.npz files (uint8 [n, H, W, C] under 'images'), each written atomically. "
        "An interrupted run loses at most the shard in progress: run the same command again and it "
        "skips every finished shard, with identical results (every image has its own noise stream "
        "derived from --seed and its index). OUT/run.json records the configuration; a different one is refused. "
        "A conditional engine takes --label (a list is cycled over the whole run's sample indices, so each shard "
        "has its own samples' labels) or --cond NAME=FILE.npy, and --guidance; run.json and every shard record them, "
        "and a resume with other ones is refused. An engine whose samples are arrays stores float32 'samples'.",
        epilog="Read the result with runtime.shards.load_shards(OUT) -> uint8 [N, H, W, C] "
        "(runtime.shards.load_conditions(OUT) for the conditions), or pass --npz to also get one file.",
    )
    p.add_argument("--engine", required=True, help="NAME.onnx or NAME.plan (its NAME.json beside it)")
    p.add_argument("--num", type=int, required=True, help="number of images, e.g. 50000")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                   help=f"images per shard file: the most an interruption loses (default {DEFAULT_SHARD_SIZE})")
    p.add_argument("--seed", type=int, default=0, help="run seed: image i draws its noise from SeedSequence(seed, spawn_key=(i,)), "
                   "so the shards hold the images of one single run (default 0)")
    p.add_argument("--batch", type=int, default=None,
                   help="images per engine call (default: min(shard size, the engine's max batch)); "
                   "changes the speed, not the images, so a resumed run may use another")
    add_method_args(p)
    add_condition_args(p)
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    add_allow_host_code_arg(p)
    p.add_argument("--npz", default=None,
                   help="when all shards are done, also write every image to this one .npz "
                   "(key arr_0, uint8 [N, H, W, C], as OpenAI's guided-diffusion evaluator reads; an array "
                   "engine's float32 [N, ...]; a conditional run's conditions under their input names)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar: one line per shard instead")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    return cli_main(_run, build_parser().parse_args(argv), INTERRUPTED)


def _run(args) -> int:
    from runtime.api import load
    from runtime.shards import sample_shards, write_merged

    with load(args.engine, threads=args.threads, allow_host_code=args.allow_host_code) as engine:
        cond = condition_values(args, engine.conditions, args.num, whole_run=True)
        sample_shards(engine, args.out, args.num, shard_size=args.shard_size, seed=args.seed,
                      batch=args.batch, method=args.method, steps=args.steps,
                      progress=not args.no_progress, cond=cond, guidance=args.guidance,
                      **method_options(args))
        kind, names = engine.sample_kind, [c.name for c in engine.conditions]
    if args.npz:
        n = write_merged(args.out, args.npz)
        print(f"wrote {args.npz}: {merged_text(n, kind, names)}")
    return 0


def merged_text(n: int, kind: str, names) -> str:
    what = "images (arr_0, uint8 [N, H, W, C])" if kind == "image" else "samples (arr_0, float32 [N, ...])"
    return f"{n} {what}" + (f" and their conditions {', '.join(names)}" if names else "")


if __name__ == "__main__":
    sys.exit(main())
