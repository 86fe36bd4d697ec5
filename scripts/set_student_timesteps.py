"""Set the timesteps a distilled student samples at one call count (its checkpoint's ``sampling``
section, which ``ddpm-export export`` copies into the manifest), e.g. a list chosen with
scripts/distill_timesteps.py on held-out seeds:

    PYTHONPATH=. python scripts/set_student_timesteps.py engines/digits-distilled.pt \\
        --calls 4 --timesteps 999,500,375,250 --why "examples/distilled-timesteps.json, seeds 10-12"

then re-export (the checkpoint's sha256 changes, so its old engines no longer match it):

    ddpm-export export --checkpoint engines/digits-distilled.pt --out engines/digits-distilled.onnx

The checkpoint is rewritten in place (atomically) unless ``--out`` is given. The change is kept in
its provenance, under ``sampling_changes`` ({calls, from, to, why, command}, oldest first). A list
with timesteps the student was not trained at (the union of its other lists) is refused unless
``--allow-untrained``: the student never saw those inputs.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any, Dict, List, Optional, Sequence


def set_timesteps(ckpt: Dict[str, Any], calls: int, timesteps: Sequence[int], why: str, command: str,
                  allow_untrained: bool = False, default: bool = False) -> Dict[str, Any]:
    """A copy of ``ckpt`` whose sampling section lists ``timesteps`` for ``calls`` calls
    (and makes ``calls`` the default with ``default``); ValueError for a checkpoint that is
    not a student, a call count it does not allow, or a bad list."""
    from runtime.contract import SAMPLING_KEY, _check_sampling
    from runtime.schedulers.base import check_timesteps

    sec = ckpt.get(SAMPLING_KEY)
    if sec is None:
        raise ValueError("this checkpoint has no 'sampling' section: it is not a student of 'ddpm-export distill'")
    T = int(ckpt["schedule_config"]["num_timesteps"])
    ts = [int(t) for t in check_timesteps(list(timesteps), T)]
    if calls not in sec["allowed_steps"]:
        raise ValueError(f"calls={calls}: the student allows {sec['allowed_steps']} calls")
    if len(ts) != calls:
        raise ValueError(f"{len(ts)} timesteps {ts} for {calls} calls: give exactly {calls}")
    trained = sorted({int(t) for lst in sec["timesteps"].values() for t in lst}, reverse=True)
    off = [t for t in ts if t not in trained]
    if off and not allow_untrained:
        raise ValueError(f"timesteps {off} are not among those the student was trained at {trained}; "
                         f"pass --allow-untrained to use them anyway")
    new = dict(sec, timesteps={k: list(v) for k, v in sec["timesteps"].items()})
    old = new["timesteps"][str(calls)]
    new["timesteps"][str(calls)] = ts
    if default:
        new["steps"] = calls
    _check_sampling(new, T)
    prov = dict(ckpt.get("provenance") or {})
    prov["sampling_changes"] = list(prov.get("sampling_changes", [])) + [
        {"calls": calls, "from": old, "to": ts, "why": why, "command": command}]
    return dict(ckpt, sampling=new, provenance=prov)


def main(argv: Optional[List[str]] = None) -> int:
    from ddpm_export.model.checkpoint import load_checkpoint, save_checkpoint

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--calls", type=int, required=True)
    p.add_argument("--timesteps", required=True, help="comma-separated, descending, e.g. 999,500,375,250")
    p.add_argument("--why", required=True, help="the measurement that chose the list (kept in the provenance)")
    p.add_argument("--default", action="store_true", help="also make --calls the default call count")
    p.add_argument("--allow-untrained", action="store_true")
    p.add_argument("--out", default=None, help="write here instead of rewriting the checkpoint")
    a = p.parse_args(argv)
    command = shlex.join(["python", "scripts/set_student_timesteps.py"] + list(sys.argv[1:] if argv is None else argv))
    try:
        ts = [int(t) for t in a.timesteps.split(",") if t.strip()]
        ckpt = load_checkpoint(a.checkpoint)
        new = set_timesteps(ckpt, a.calls, ts, a.why, command, a.allow_untrained, a.default)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    save_checkpoint(new, a.out or a.checkpoint)
    sec = new["sampling"]
    print(f"{a.out or a.checkpoint}: {a.calls} calls at {sec['timesteps'][str(a.calls)]} "
          f"(default {sec['steps']} calls); re-export its engines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
