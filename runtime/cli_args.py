"""What the runtime's two command lines (``runtime.sample``, ``runtime.sample_many``) share."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from runtime.loop import DDIM_DEFAULT_STEPS, METHODS, SPACINGS


def add_method_args(p: argparse.ArgumentParser) -> None:
    """--method/--steps/--eta/--spacing, shared with runtime.sample_many."""
    p.add_argument("--method", choices=METHODS, default="ddpm", help="ddpm (ancestral) or ddim (default ddpm)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"sampling steps (default: all T for ddpm, {DDIM_DEFAULT_STEPS} for ddim; <= T)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta in [0, 1] (default 0: deterministic)")
    p.add_argument("--spacing", choices=SPACINGS, default=SPACINGS[0],
                   help=f"DDIM timestep spacing (default {SPACINGS[0]})")


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
