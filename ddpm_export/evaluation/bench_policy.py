"""``ddpm-export bench --policy``: seconds per action chunk at batch 1, side by side in one run.

Columns, at each sampler (DDPM-100 and DDIM-10 by default):
- LeRobot's eager ``select_action`` with its pre/post processors (LeRobot 0.4.4 in its own venv,
  a subprocess running scripts/lerobot_policy_reference.py ``bench``), on the SAME weights: the
  LeRobot folder is rebuilt from the checkpoint (``lerobot_folder_from_checkpoint``: LeRobot's
  own DiffusionPolicy from the checkpoint's LeRobot config, the weights loaded with strict=True,
  its processors made from the checkpoint's statistics), or given (``--lerobot-folder``);
- the runtime, ``runtime.load_policy(...).select_action``, on ONNX Runtime float32 and FP16 (the
  FP16 export beside the engine, NAME-fp16.onnx, else exported from the checkpoint into a
  temporary folder), the encoder and the denoiser timed apart (``Policy.last_timing``).
Every chunk starts from reset(), so every timed call predicts one chunk; the first is a warmup,
the median of the others is shown. LeRobot's DDIM is diffusers' DDIMScheduler (eta 0), the
runtime's the "diffusers" DDIM variant, so both run the same timesteps. The machine's load
(os.getloadavg) is printed before and after: on a shared host the numbers move with it.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from runtime.contract import policy_of, read_manifest

REPO = Path(__file__).resolve().parents[2]
LEROBOT_SCRIPT = REPO / "scripts" / "lerobot_policy_reference.py"
SAMPLERS: Tuple[Tuple[str, int], ...] = (("ddpm", 100), ("ddim", 10))
RUNTIME_OPTIONS = {"ddpm": {}, "ddim": {"eta": 0.0, "variant": "diffusers"}}  # = LeRobot's schedulers
LEROBOT_SCHEDULER = {"ddpm": "DDPM", "ddim": "DDIM"}


def lerobot_python(explicit: Optional[str] = None) -> Tuple[Optional[str], Optional[str]]:
    """(python, None) of the LeRobot venv, or (None, why not): explicit, $DDPM_LEROBOT_PYTHON,
    else <repo>/.venv-lerobot/bin/python (make setup-lerobot)."""
    cand = explicit or os.environ.get("DDPM_LEROBOT_PYTHON") or str(REPO / ".venv-lerobot" / "bin" / "python")
    if not LEROBOT_SCRIPT.is_file():
        return None, f"{LEROBOT_SCRIPT} is missing (it ships with the repository, not the installed package)"
    if Path(cand).is_file():
        return cand, None
    return None, (f"no LeRobot python at {cand}: run 'make setup-lerobot' or set DDPM_LEROBOT_PYTHON "
                  f"(or pass --lerobot-python)")


def _lerobot(py: str, *args, home) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    r = subprocess.run([py, str(LEROBOT_SCRIPT), *map(str, args)], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        tail = " ".join(r.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"LeRobot ({py} {LEROBOT_SCRIPT.name} {args[0]}) failed: {tail}")


def lerobot_folder_from_checkpoint(checkpoint, out: Path, py: str) -> Path:
    """A LeRobot pretrained_model folder holding the checkpoint's own policy (module docstring)."""
    import torch
    from safetensors.torch import save_file

    ckpt = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    pol = ckpt.get("policy")
    if not pol:
        raise ValueError(f"{checkpoint}: not a policy checkpoint (no 'policy' section)")
    src = out.parent / (out.name + "-parts")
    src.mkdir(parents=True, exist_ok=True)
    (src / "config.json").write_text(json.dumps(pol["lerobot_config"]))
    weights = {f"diffusion.unet.{k}": v for k, v in ckpt["ema"].items()}
    weights.update({f"diffusion.{k}": v for k, v in pol["encoder_state"].items()})
    save_file({k: v.contiguous() for k, v in weights.items()}, str(src / "model.safetensors"))
    stats = {f"{f['name']}.{k}": np.asarray(v, np.float32)
             for f in list(pol["observations"]) + [pol["action"]]
             for k, v in f["normalization"].items() if k not in ("mode", "eps")}
    np.savez(src / "stats.npz", **stats)
    _lerobot(py, "folder", "--src", src, "--out", out, home=out.parent)
    return out


def _median(rows: List[Dict[str, float]], key: str) -> float:
    return float(statistics.median(r[key] for r in rows))


def _runtime_chunks(policy, obs: Dict[str, np.ndarray], chunks: int) -> List[Dict[str, float]]:
    import time

    rows = []
    for _ in range(chunks + 1):  # the first: a warmup
        policy.reset()
        t0 = time.perf_counter()
        policy.select_action(obs)
        rows.append({"chunk_s": time.perf_counter() - t0, "encoder_s": policy.last_timing["encoder_s"],
                     "denoiser_s": policy.last_timing["denoiser_s"]})
    return rows[1:]


def _fp16_engine(engine: Path, checkpoint: Path, tmp: Path, log) -> Path:
    beside = engine.with_name(engine.stem + "-fp16.onnx")
    if beside.is_file():
        return beside
    from ddpm_export.export.onnx_export import export_onnx

    out = tmp / beside.name
    log(f"no {beside.name} beside {engine.name}: exporting it from {checkpoint} (ddpm-export export --fp16)")
    export_onnx(checkpoint, out, fp16=True, command="ddpm-export bench --policy (FP16 export)")
    return out


def run_policy_bench(engine, checkpoint: Optional[str] = None, fp16_engine: Optional[str] = None,
                     lerobot_folder: Optional[str] = None, lerobot_py: Optional[str] = None,
                     samplers: Sequence[Tuple[str, int]] = SAMPLERS, chunks: int = 5, threads: int = 1,
                     seed: int = 0, log: Callable[[str], None] = lambda s: None) -> Dict[str, Any]:
    import runtime

    from ddpm_export.evaluation.validate_policy import policy_checkpoint, raw_history

    engine = Path(engine)
    m = read_manifest(engine)
    spec = policy_of(m)
    if spec is None:
        raise ValueError(f"{engine}: not a policy engine (its manifest has no 'policy' section); "
                         f"bench image engines with 'ddpm-export bench' without --policy")
    bad = [name for name, _ in samplers if name not in RUNTIME_OPTIONS]
    if bad:
        raise ValueError(f"samplers {bad}: expected ddpm or ddim (the schedulers LeRobot's policy has)")
    ckpt = policy_checkpoint(engine, m, checkpoint)
    hist = raw_history(spec, 1, np.random.default_rng(seed))
    obs = {k: np.ascontiguousarray(v[:, -1]) for k, v in hist.items()}  # one observation, batch 1
    res: Dict[str, Any] = {"engine": str(engine), "checkpoint": str(ckpt), "threads": threads, "chunks": chunks,
                           "batch": 1, "load_before": list(os.getloadavg()), "rows": []}
    import onnxruntime as ort
    import torch

    res.update(onnxruntime=ort.__version__, cpu_count=os.cpu_count())
    py, why = (None, "--lerobot-python none") if lerobot_py == "none" else lerobot_python(lerobot_py)
    with tempfile.TemporaryDirectory(prefix="bench-policy-") as d:
        tmp = Path(d)
        fp16 = Path(fp16_engine) if fp16_engine else _fp16_engine(engine, ckpt, tmp, log)
        folder = None
        if py is not None:
            folder = Path(lerobot_folder) if lerobot_folder else None
            if folder is None:
                log(f"rebuilding the LeRobot folder of {ckpt} in the LeRobot venv (strict weight load)")
                folder = lerobot_folder_from_checkpoint(ckpt, tmp / "lerobot", py)
            np.savez(tmp / "obs.npz", **obs)
        res["lerobot"] = {"python": py, "skipped": why,
                          "folder": str(lerobot_folder) if lerobot_folder else f"rebuilt from {ckpt}"}
        for name, steps in samplers:
            row: Dict[str, Any] = {"method": name, "steps": steps}
            if py is not None:
                log(f"{name}-{steps}: LeRobot eager select_action, {chunks} chunks")
                _lerobot(py, "bench", "--policy", folder, "--obs", tmp / "obs.npz", "--out", tmp / "lr.json",
                         "--chunks", chunks, "--scheduler", LEROBOT_SCHEDULER[name], "--steps", steps,
                         "--threads", threads, home=tmp)
                lr = json.loads((tmp / "lr.json").read_text())
                row["lerobot"] = {k: _median(lr["rows"], k) for k in ("chunk_s", "encoder_s", "denoiser_s")}
                res["lerobot"].update(torch=lr["torch"], version=lr["lerobot"])
            for label, path in (("fp32", engine), ("fp16", fp16)):
                log(f"{name}-{steps}: runtime, ONNX Runtime {label}, {chunks} chunks")
                policy = runtime.load_policy(path, seed=seed, method=name, steps=steps, threads=threads,
                                             **RUNTIME_OPTIONS[name])
                try:
                    if policy.engine_calls_per_chunk != steps:
                        raise ValueError(f"{path}: {name} with {steps} steps makes {policy.engine_calls_per_chunk} "
                                         f"engine calls per chunk, expected {steps}")
                    rows = _runtime_chunks(policy, obs, chunks)
                finally:
                    policy.close()
                row[label] = {k: _median(rows, k) for k in ("chunk_s", "encoder_s", "denoiser_s")}
            res["rows"].append(row)
    res["load_after"] = list(os.getloadavg())
    res["torch_here"] = torch.__version__
    return res


def format_policy_bench(res: Dict[str, Any]) -> str:
    lr = res["lerobot"]
    head = (f"{Path(res['engine']).name}: milliseconds per action chunk at batch 1 (median of {res['chunks']} chunks "
            f"after a warmup; chunk = encoder + denoiser + normalization), {res['threads']} thread(s); "
            f"onnxruntime {res['onnxruntime']}")
    if lr.get("skipped"):
        head += f"; LeRobot column skipped: {lr['skipped']}"
    else:
        head += f"; LeRobot {lr.get('version')} eager PyTorch {lr.get('torch')}"
    lines = [head, f"machine load (1, 5, 15 min) before {_load(res['load_before'])}, after "
                   f"{_load(res['load_after'])}, on {res['cpu_count']} CPUs",
             "| sampler | LeRobot select_action: chunk (encoder + denoiser) | runtime ORT fp32: chunk (encoder + "
             "denoiser) | runtime ORT FP16: chunk (encoder + denoiser) | LeRobot / fp32 | LeRobot / FP16 |",
             "|---|---|---|---|---|---|"]

    def cell(c):
        return "-" if c is None else (f"{1e3 * c['chunk_s']:.1f} ({1e3 * c['encoder_s']:.2f} + "
                                      f"{1e3 * c['denoiser_s']:.1f})")

    for r in res["rows"]:
        a = r.get("lerobot")
        ratio = ["-" if a is None else f"{a['chunk_s'] / r[k]['chunk_s']:.2f}x" for k in ("fp32", "fp16")]
        lines.append(f"| {r['method'].upper()}-{r['steps']} | {cell(a)} | {cell(r['fp32'])} | {cell(r['fp16'])} "
                     f"| {ratio[0]} | {ratio[1]} |")
    return "\n".join(lines)


def _load(v: Sequence[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in v)
