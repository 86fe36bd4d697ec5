"""The closed-loop table of docs/policies.md: rollout results per sampler, latency per chunk
measured side by side in one run, and the plot of success against engine calls per chunk.

    python -m ddpm_export.tasks.table OUT_DIR [--rounds 10]

reads OUT_DIR/<name>.json (``ddpm-export rollout --json``, one per row of ROWS that exists;
``--rollouts`` first runs the rollouts whose JSON is missing, seeds 0,1,2 x 200 episodes),
times one chunk at batch 1 for every row in turn (round-robin, so a change of the machine's
load hits every row alike; the median of ``--rounds`` chunks, the encoder and the denoiser
apart), prints the markdown table with the machine's load, and writes OUT_DIR/table.json and
OUT_DIR/success-vs-calls.png. ``scripts/policy_rollout_table.sh`` is this with ``--rollouts``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

TEACHER = "engines/obstacle-policy.onnx"
STUDENT = "engines/obstacle-student.onnx"
# (json name, label, engine, method, steps, line of the plot); method None = the manifest's
ROWS: Tuple[Tuple[str, str, Optional[str], Optional[str], Optional[int], str], ...] = (
    ("expert", "scripted expert", None, None, None, ""),
    ("ddpm-100", "DDPM-100 (teacher, as trained)", TEACHER, "ddpm", 100, "DDPM"),
    ("ddim-10", "DDIM-10", TEACHER, "ddim", 10, "DDIM"),
    ("ddim-4", "DDIM-4", TEACHER, "ddim", 4, "DDIM"),
    ("ddim-2", "DDIM-2", TEACHER, "ddim", 2, "DDIM"),
    ("ddim-1", "DDIM-1", TEACHER, "ddim", 1, "DDIM"),
    ("unipc-10", "UniPC-10", TEACHER, "unipc", 10, "UniPC"),
    ("unipc-4", "UniPC-4", TEACHER, "unipc", 4, "UniPC"),
    ("dpmsolver++-10", "DPM-Solver++-10", TEACHER, "dpmsolver++", 10, "DPM-Solver++"),
    ("student-4", "student, 4 calls", STUDENT, None, 4, "student (distilled)"),
    ("student-2", "student, 2 calls", STUDENT, None, 2, "student (distilled)"),
    ("student-1", "student, 1 call", STUDENT, None, 1, "student (distilled)"),
)


def chunk_latency(specs: Sequence[Tuple[str, str, Optional[str], Optional[int]]], rounds: int = 10,
                  threads: int = 1) -> Dict[str, Dict[str, float]]:
    """{name: median chunk_s, encoder_s, denoiser_s over ``rounds``} at batch 1, one chunk of each
    spec (name, engine, method, steps) in turn per round, after one warm-up chunk each."""
    from runtime import load_policy

    from ddpm_export.tasks.obstacle import ObstacleTask

    obs = ObstacleTask(1, seed=0).reset()
    pols = {}
    for name, engine, method, steps in specs:
        pol = load_policy(engine, seed=0, method=method, steps=steps, threads=threads)
        hist = {k: np.repeat(v[:, None], pol.n_obs_steps, axis=1) for k, v in obs.items()}
        pol.predict_chunk(hist, seed=0)
        pols[name] = (pol, hist)
    times: Dict[str, List[Dict[str, float]]] = {n: [] for n in pols}
    for r in range(int(rounds)):
        for name, (pol, hist) in pols.items():
            pol.predict_chunk(hist, seed=r + 1)
            times[name].append(dict(pol.last_timing))
    out = {}
    for name, ts in times.items():
        out[name] = {k: float(np.median([t[k] for t in ts])) for k in ("chunk_s", "encoder_s", "denoiser_s")}
        pols[name][0].close()
    return out


def run_rollouts(out: Path, seeds: str = "0,1,2", episodes: int = 200) -> None:
    """``ddpm-export rollout`` for every row whose OUT/<name>.json is missing (an engine that is
    not there is skipped with a line)."""
    import subprocess
    import sys

    out.mkdir(parents=True, exist_ok=True)
    for name, label, engine, method, steps, _ in ROWS:
        dest = out / f"{name}.json"
        if dest.is_file():
            continue
        if engine is not None and not Path(engine).is_file():
            print(f"{label}: {engine} is not there, row skipped", flush=True)
            continue
        cmd = [sys.executable, "-m", "ddpm_export.cli.main", "rollout", "--seeds", seeds, "--episodes",
               str(episodes), "--json", str(dest), "--no-progress"]
        cmd += ["--expert"] if engine is None else ["--policy", engine, "--steps", str(steps)]
        cmd += ["--method", method] if method else []
        print(" ".join(["ddpm-export"] + cmd[3:]), flush=True)
        subprocess.run(cmd, check=True)


def _cell(d: Dict[str, Any], k: str) -> str:
    return f"{d[k]:.3f} ({d[k + '_std']:.3f})"


def build_table(out: Path, rounds: int = 10) -> Dict[str, Any]:
    rows = [(r, json.loads((out / f"{r[0]}.json").read_text())) for r in ROWS if (out / f"{r[0]}.json").is_file()]
    if not rows:
        raise FileNotFoundError(f"{out}: no rollout JSON of {[r[0] for r in ROWS]}; run "
                                f"scripts/policy_rollout_table.sh {out} first")
    load0 = os.getloadavg()
    t0 = time.time()
    lat = chunk_latency([(r[0], r[2], r[3], r[4]) for r, _ in rows if r[2] is not None], rounds=rounds)
    load1 = os.getloadavg()
    lines = ["| sampler | engine calls per chunk | success | collisions | mode balance | "
             "ms per chunk (batch 1) | of which encoder |",
             "|---|---|---|---|---|---|---|"]
    table = []
    for (name, label, engine, method, steps, line), d in rows:
        lt = lat.get(name)
        ms = f"{lt['chunk_s'] * 1e3:.1f}" if lt else "-"
        enc = f"{lt['encoder_s'] * 1e3:.2f}" if lt else "-"
        lines.append(f"| {label} | {d['engine_calls_per_chunk']} | {_cell(d, 'success_rate')} | "
                     f"{_cell(d, 'collision_rate')} | {_cell(d, 'mode_balance')} | {ms} | {enc} |")
        table.append({"name": name, "label": label, "line": line, "engine": engine, "method": method,
                      "steps": steps, "seeds": d["seeds"], "episodes": d["episodes"],
                      "engine_calls_per_chunk": d["engine_calls_per_chunk"],
                      **{k: d[k] for k in d if k.startswith(("success_rate", "collision_rate", "mode_balance"))},
                      "per_seed": [{k: r[k] for k in ("seed", "success_rate", "collision_rate", "mode_balance")}
                                   for r in d.get("per_seed", [])],
                      "latency_batch1": lt})
    result = {"rows": table, "latency": {"rounds": rounds, "batch": 1, "threads": 1, "wall_s": time.time() - t0,
                                         "loadavg_before": load0, "loadavg_after": load1, "cpus": os.cpu_count()},
              "markdown": "\n".join(lines)}
    (out / "table.json").write_text(json.dumps(result, indent=1) + "\n")
    from ddpm_export.evaluation.plots import plot_success_vs_calls

    plot_success_vs_calls(table, out / "success-vs-calls.png")
    return result


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder of the rollout JSON files (scripts/policy_rollout_table.sh)")
    ap.add_argument("--rounds", type=int, default=10, help="chunks timed per row (median)")
    ap.add_argument("--rollouts", action="store_true", help="first run the rollouts whose JSON is missing")
    a = ap.parse_args(argv)
    if a.rollouts:
        run_rollouts(a.out)
    r = build_table(a.out, a.rounds)
    la = r["latency"]
    print(r["markdown"])
    print(f"\nlatency: median of {la['rounds']} chunks per row at batch 1, one ONNX Runtime CPU thread, rows "
          f"interleaved; load average {la['loadavg_before'][0]:.2f} before, {la['loadavg_after'][0]:.2f} after, "
          f"on {la['cpus']} CPUs")


if __name__ == "__main__":
    main()
