"""What the runtime's command lines (``runtime.sample``, ``runtime.sample_many``, the Jetson
app) share."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Dict, Optional, Sequence

from runtime.schedulers import METHODS, REGISTRY


def add_method_args(p: argparse.ArgumentParser) -> None:
    """--method/--steps and every method option, shared with runtime.sample_many.

    No argparse choices: runtime.schedulers checks the values and says, in one line,
    which ones the chosen method takes (exit 1 through cli_main)."""
    summary = "; ".join(f"{m.name}: {m.summary}" for m in REGISTRY.values())
    g = p.add_argument_group("method", "how to sample; every option defaults to the method's own default")
    g.add_argument("--method", default=None,
                   help=f"one of {', '.join(METHODS)} (default: the manifest's sampling method, which a "
                        f"distilled student has (binding) and an imported diffusers DDIMPipeline has (ddim "
                        f"with the pipeline's eta and steps; any flag overrides it), else ddpm). {summary}")
    g.add_argument("--steps", type=int, default=None,
                   help="sampling steps = engine calls per image (default: the manifest's sampling steps, "
                        "else all T for ddpm, 50 for ddim, 20 for the solvers, 4 for consistency)")
    g.add_argument("--eta", type=float, default=None, help="ddim only: eta in [0, 1] (default 0: deterministic)")
    g.add_argument("--spacing", default=None,
                   help="timesteps: ddpm and ddim default to the model's own timestep_spacing/steps_offset (as "
                        "diffusers' set_timesteps); ddim also uniform (that default)|quadratic|leading|trailing|"
                        "linspace; solvers linspace|leading|trailing (default linspace)")
    g.add_argument("--order", type=int, default=None,
                   help="solver order: dpmsolver++ and unipc 1-3, sde-dpmsolver++ 1-2 (default 2)")
    g.add_argument("--variant", default=None,
                   help="ddim: consistent (eps re-derived from the clipped x0; default) or diffusers "
                        "(network eps kept); unipc: bh1 or bh2 (default bh2)")
    g.add_argument("--no-corrector", dest="corrector", action="store_const", const=False, default=None,
                   help="unipc: predictor only (UniP), no UniC corrector")
    g.add_argument("--no-lower-order-final", dest="lower_order_final", action="store_const", const=False,
                   default=None, help="solvers: keep the full order on the last steps of short chains")
    g.add_argument("--karras", action="store_const", const=True, default=None,
                   help="solvers: Karras et al. sigma spacing instead of --spacing")
    g.add_argument("--clip", dest="clip", action="store_const", const=True, default=None,
                   help="limit x0_hat as the model's schedule does (clipping to +-clip_sample_range, or its dynamic "
                        "thresholding), or clamp to [-1, 1] when it has no limit (default: the schedule decides)")
    g.add_argument("--no-clip", dest="clip", action="store_const", const=False, help="no limit on x0_hat at all")
    g.add_argument("--threshold-ratio", type=float, default=None,
                   help="solvers: dynamic thresholding quantile (Imagen; e.g. 0.995); needs clipping")
    g.add_argument("--threshold-max", type=float, default=None,
                   help="solvers: dynamic thresholding's largest s (>= 1); needs clipping")


OPTION_NAMES = ("eta", "spacing", "order", "variant", "corrector", "lower_order_final", "karras", "clip",
                "threshold_ratio", "threshold_max")


def method_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The method options given on the command line (None = not given)."""
    return {k: getattr(args, k) for k in OPTION_NAMES if getattr(args, k) is not None}


def add_condition_args(p: argparse.ArgumentParser) -> None:
    """--label, --cond NAME=FILE.npy and --guidance, for conditional engines."""
    g = p.add_argument_group("conditions", "for a conditional engine (its manifest lists its conditions)")
    g.add_argument("--label", default=None,
                   help="class label(s) of a class-conditional engine: one label for every sample, or a "
                   "comma-separated list, one label per sample, cycled (e.g. 0,1,2,...,9)")
    g.add_argument("--cond", action="append", default=[], metavar="NAME=FILE.npy",
                   help="a condition input from a .npy file: the per-sample shape (the same for every "
                   "sample) or [num, ...] (one per sample); repeat for several conditions")
    g.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale w: out = uncond + w (cond - uncond); 1 = the "
                   "conditional model alone, 0 = the unconditional one (default: the manifest's)")


def _parse_labels(text: str) -> list:
    try:
        labels = [int(v) for v in text.split(",") if v.strip() != ""]
    except ValueError:
        labels = []
    if not labels:
        raise ValueError(f"--label {text!r}: expected an int or a comma-separated list of ints, e.g. 3 or 0,1,2")
    return labels


def condition_values(args: argparse.Namespace, conditions: Sequence[Any], num: int,
                     first: int = 0, whole_run: bool = False) -> Optional[Dict[str, Any]]:
    """The ``cond=`` of engine.sample_float from --label / --cond: None when none was given.
    Labels of a list are cycled over samples first, first + 1, ... (so a shard gets the
    labels its samples have in the whole run). whole_run: the values are for a whole run of
    ``num`` samples, so a --cond file of one row per sample must have exactly ``num`` rows
    (not more, which would be cut silently)."""
    import numpy as np

    cond: Dict[str, Any] = {}
    labels = [c for c in conditions if c.kind == "class_label"]
    if args.label is not None:
        if len(labels) != 1:
            raise ValueError(
                f"--label: this engine has {len(labels)} class-label conditions "
                f"({[c.name for c in labels]}); expected exactly one (use --cond NAME=FILE.npy)")
        ids = _parse_labels(args.label)
        cond[labels[0].name] = np.array([ids[(first + i) % len(ids)] for i in range(num)], dtype=np.int64)
    for item in args.cond:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--cond {item!r}: expected NAME=FILE.npy")
        if name in cond:
            raise ValueError(f"--cond {name}: given twice (or with --label)")
        a = np.load(path, allow_pickle=False)
        spec = [c for c in conditions if c.name == name]
        if spec and a.ndim == len(spec[0].shape) + 1 and a.shape[0] != 1:
            if whole_run and a.shape[0] != num:
                raise ValueError(
                    f"--cond {name}={path}: received {a.shape[0]} rows (shape {a.shape}), expected one per "
                    f"sample, {num} rows (--num), or one value of shape {tuple(spec[0].shape)} for every sample")
            a = a[first:first + num]  # one per sample of the whole run: this run's rows
        cond[name] = a
    return cond or None


def add_allow_host_code_arg(p: argparse.ArgumentParser) -> None:
    """--allow-host-code, shared with runtime.sample_many (see runtime.load)."""
    p.add_argument("--allow-host-code", action="store_true",
                   help="TensorRT only: load a version-compatible plan, which embeds TensorRT's "
                   "lean runtime as host code that runs in this process. Pass it only for a plan "
                   "you trust (engines, like programs, must come from trusted sources); without "
                   "it such a plan is refused")


def cli_main(run: Callable[[argparse.Namespace], int], args: argparse.Namespace, interrupted: str) -> int:
    """Run a command: one clear error line and exit 1 instead of a traceback, 130 on Ctrl-C."""
    try:
        return run(args)
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    except Exception as e:  # one clear line, no traceback (DDPM_EXPORT_DEBUG=1 shows it)
        if os.environ.get("DDPM_EXPORT_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 1
