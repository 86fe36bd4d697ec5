"""The prepared GPU check (run through scripts/gpu_check.sh): one JSON report.

Sections, each recorded even when another fails (its error goes in the report,
and the run then exits 1); rows are written to the report as they finish, so a
run killed mid-section keeps every finished row:
  device         GPU, CUDA, torch, TensorRT versions
  precision      eps error of FP16 (our FP32 islands) and of a naive .half() copy vs
                 float32, per timestep; TF32 is off for the whole run, so the float32
                 reference is true FP32
  onnx           export of the float32 and FP16 graphs, ONNX Runtime (CPU) vs PyTorch
  torch          image-steps/s: eager FP32/FP16, CUDA graphs FP16, at batch 1, 64, 256
  host           runtime host cost per step: NumPy DDPM step + pinned H2D/D2H copies,
                 relative to one FP16 U-Net call (CUDA graph) at the same batch
  tensorrt       only if tensorrt imports: build (dynamic 1/64/256); every plan is then
                 loaded in a fresh Python process, as python -m runtime.sample and the
                 Jetson app load it (nothing of the build, e.g. Polygraphy's plugin
                 registration, carries over), validated there vs PyTorch FP32 and ONNX
                 Runtime FP32 (CUDA provider, TF32 off) at batches inside and between
                 the profile points, and sampled once with python -m runtime.sample;
                 calls/s through runtime.load(); then a static-64 build and one
                 --version-compatible build (loaded with --allow-host-code). Gates:
                 every output finite and within the FP16 limit (the export's FP16
                 gate, FP16_ATOL; twice PyTorch's own FP16-with-islands error when that
                 is larger, as with random weights); a broken gate fails the section
  torch_compile  torch.compile FP16 at batch 1, 64, 256 (last: compiling is slow)
                 A fourth plan on TensorRT 10.x: the float32 graph with the FP16 builder
                 flag, whose build stops unless every FP32-island normalization, softmax and
                 timestep-embedding matmul was found and pinned (and which must pin some).
                 The section's "paths" says what it exercised (builds, the runtime module
                 that loaded each plan, each FP16 gate's basis) and what it never does
                 (lean/dispatch loads, cross-version loads, FP32 plans).
On a GPU without TensorRT (PyTorch + onnx + CPU ONNX Runtime) everything but
``tensorrt`` runs, well within the 420 s budget, and the run is incomplete (exit 2):
a missing TensorRT is never "all passed"; one that is installed but fails to import
fails the run (exit 1).

--smoke (CI, no GPU needed): the tiny model, small batches and few iterations;
sections that need CUDA or TensorRT say "skipped: needs CUDA/TensorRT"; the
fresh-process loader is checked on the ONNX export. Any other error fails the run.

Exit status: 0 all ran and passed; 1 a section failed (an error or a broken gate);
2 nothing failed but the run is incomplete (a section or step was skipped because
the time budget was spent: listed under "incomplete" in the report and summary).
The weights are random unless --checkpoint names a cifar10 checkpoint: error numbers
from random weights are a proxy, say so when you report them.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NEEDS = "skipped: needs CUDA/TensorRT"
TIMESTEPS = (0, 1, 10, 100, 250, 500, 750, 999)
# The float32 reference on ONNX Runtime: its CUDA provider turns TF32 on by default
# (cuda_execution_provider_info.h: use_tf32 true), which is not a float32 reference.
ORT_FP32_PROVIDERS = [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]


class Report:
    """The JSON report, written atomically after every row and section."""

    def __init__(self, out: Path, **head):
        self.out, self.data, self.start = out, dict(head), time.time()
        self.save()

    def save(self):
        self.data["elapsed_seconds"] = round(time.time() - self.start, 1)
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        os.replace(tmp, self.out)

    def section(self, name, fn, deadline, skip=None):
        """Run fn(sec) where sec is the section's dict, already in the report; rows appended to
        sec["rows"] survive a later failure or kill. skip: a reason not to run."""
        sec = self.data[name] = {}
        t0 = time.time()
        if skip:
            sec["skipped"] = skip
        elif time.time() > deadline:
            sec["skipped"] = "time budget spent"
            self.incomplete(f"{name}: not run (time budget spent)")
        else:
            try:
                fn(sec)
            except Exception as e:  # record and go on: one failing section must not hide the others
                sec["error"] = f"{type(e).__name__}: {e}"
                sec["traceback"] = traceback.format_exc()[-3000:]
        sec["seconds"] = round(time.time() - t0, 1)
        self.save()

    def row(self, sec, row):
        sec.setdefault("rows", []).append(row)
        self.save()

    def errors(self):
        return [k for k, v in self.data.items() if isinstance(v, dict) and "error" in v]

    def incomplete(self, what=None):
        """Record a step left out for time (with what), or return the list of them."""
        if what is not None:
            self.data.setdefault("incomplete", []).append(what)
            self.save()
        return list(self.data.get("incomplete", []))

    def exit_status(self):
        return 1 if self.errors() else 2 if self.incomplete() else 0


def timed(fn, sync, iters, warmup=3):
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - t0) / iters


FRESH_CHILD = r"""
import json, sys
import numpy as np
import runtime
inputs, engine, out, allow = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
d = np.load(inputs)
kw = {"allow_host_code": True} if allow else {}
eps, i = {}, 0
with runtime.load(engine, **kw) as eng:
    while f"x{i}" in d.files:
        eps[f"eps{i}"] = eng(d[f"x{i}"], d[f"t{i}"])
        i += 1
    r = eng.runner
    info = {"backend": r.backend, "runtime_kind": getattr(r, "runtime_kind", None),
            "trt_version": getattr(r, "trt_version", None), "device": str(getattr(r, "device", None))}
np.savez(out, **eps)
print(json.dumps(info))
"""


def eps_in_fresh_process(engine, batches, work, allow_host_code=False, timeout=300):
    """eps for each (x, t) in batches from ``engine`` loaded by runtime.load in a new Python
    process that has imported nothing else (the way python -m runtime.sample and the Jetson app
    load it). Returns (list of eps, info about the runner)."""
    import subprocess

    work = Path(work)
    inputs, out = work / "fresh_inputs.npz", work / "fresh_eps.npz"
    arrays = {}
    for i, (x, t) in enumerate(batches):
        arrays[f"x{i}"], arrays[f"t{i}"] = x, t
    np.savez(inputs, **arrays)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", FRESH_CHILD, str(inputs), str(engine), str(out),
                        "1" if allow_host_code else "0"], capture_output=True, text=True,
                       env=env, timeout=timeout, cwd=str(work))
    if r.returncode != 0:
        raise RuntimeError(f"loading {engine} in a fresh process failed (exit {r.returncode}): "
                           f"{(r.stderr or r.stdout).strip()[-1500:]}")
    with np.load(out) as d:
        eps = [d[f"eps{i}"] for i in range(len(batches))]
    return eps, json.loads(r.stdout.strip().splitlines()[-1])


def sample_in_fresh_process(engine, work, allow_host_code=False, timeout=300):
    """python -m runtime.sample on the engine, as a user runs it: {"rc", "seconds", "tail"}."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "runtime.sample", "--engine", str(engine), "--num", "4",
           "--method", "ddim", "--steps", "5", "--no-progress",
           "--out", str(Path(work) / (Path(engine).stem + "-samples.png"))]
    if allow_host_code:
        cmd.append("--allow-host-code")
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=str(work))
    return {"rc": r.returncode, "seconds": round(time.time() - t0, 1),
            "tail": (r.stderr or r.stdout).strip()[-600:]}


def fp16_limit(export_gate, torch_fp16_error):
    """(limit, basis) for a TensorRT FP16 engine's max |eps - PyTorch FP32|."""
    if torch_fp16_error > export_gate:
        return 2 * torch_fp16_error, (f"2 x PyTorch FP16-with-islands error {torch_fp16_error:.3g} "
                                      f"(above the export gate {export_gate:g}: random weights?)")
    return export_gate, f"the export's FP16 gate (FP16_ATOL = {export_gate:g})"


def gate_failures(rows, limit, what):
    """One line per row that is not finite or exceeds the limit (rows from the validation)."""
    out = []
    for r in rows:
        if not r.get("finite", False):
            out.append(f"{what} batch {r.get('validate_batch')}: non-finite output")
        elif not r.get("max_vs_torch", float("inf")) <= limit:
            out.append(f"{what} batch {r.get('validate_batch')}: max |eps - PyTorch FP32| "
                       f"{r.get('max_vs_torch')} > {limit:.3g}")
    return out


# The plans the tensorrt section builds: (name, build options, batches validated in a fresh
# process, batches timed in this one ("all": the run's batches), loaded with --allow-host-code).
TRT_PLANS = (
    ("dynamic", {"min_batch": 1, "opt_batch": 64, "max_batch": 256},
     (1, 3, 64, 100, 256), "all", False),  # profile points and between them
    ("static64", {"static_batch": 64}, (64, 5), (64,), False),  # 5: padded up to 64
    ("version_compatible", {"min_batch": 1, "opt_batch": 8, "max_batch": 64,
                            "version_compatible": True}, (1, 8, 64), None, True),
    # TensorRT 10.x: the float32 graph with the FP16 builder flag and the FP32 islands pinned
    # (on 8.5-9.x that is the dynamic plan already; TensorRT 11 has no FP16 flag)
    ("builder_flag_fp16", {"min_batch": 1, "opt_batch": 8, "max_batch": 64, "graph": "fp32"},
     (1, 8, 64), None, False),
)
# What the tensorrt section never runs, whatever the machine (said in its report's "paths").
TRT_NOT_EXERCISED = (
    "loading through the lean runtime (tensorrt_lean) or the dispatch runtime (tensorrt_dispatch): "
    "every plan is loaded by the full tensorrt module",
    "loading a plan with another TensorRT version than the one that built it",
    "an FP32 plan (no --fp16)",
)


def tensorrt_section(sec, rep, ctx, trt_version):
    """The tensorrt section (see the module docstring); ctx: what main() prepared."""
    import torch

    import runtime
    from ddpm_export.export.onnx_export import FP16_ATOL
    from ddpm_export.export.tensorrt import BuildConfig, build_engine, export_precision

    onnx_files, tmp, preset, c, s, dev = ctx.onnx_files, ctx.tmp, ctx.preset, ctx.c, ctx.s, ctx.dev
    m32, m16, batches, deadline = ctx.m32, ctx.m16, ctx.batches, ctx.deadline

    prec = export_precision(trt_version, True)
    onnx = onnx_files.get(prec)
    if onnx is None:
        raise RuntimeError(f"the onnx section did not export the {prec} graph (see its error)")
    sec["tensorrt"] = trt_version
    cache = str(tmp / "timing.cache")
    rng = np.random.default_rng(0)
    ts = np.array(TIMESTEPS, np.int32)
    failures = []

    def build(name, graph=None, **kw):
        plan = tmp / f"{preset}-{name}.plan"
        src = onnx if graph is None else onnx_files[graph]
        m = build_engine(BuildConfig(onnx=str(src), fp16=True, out=str(plan), timing_cache=cache,
                                     **kw), log=lambda s_: None)
        sec.setdefault("builds", {})[name] = m["engine"]
        mode = m["engine"].get("precision_mode")
        if mode == "fp16_builder_flag" and not m["engine"].get("fp32_pinned_layers"):
            failures.append(f"{name}: FP16 builder-flag build pinned no FP32-island layer")
        paths.append(f"{name}: built from {Path(src).name} ({mode})")
        rep.save()
        return plan

    def validate(name, plan, sizes, allow_host_code=False):
        """Load the plan in a fresh process, compare with PyTorch and ONNX Runtime here."""
        batches = [(rng.standard_normal((b, c, s, s)).astype(np.float32), np.resize(ts, b))
                   for b in sizes]
        eps, info = eps_in_fresh_process(plan, batches, tmp, allow_host_code)
        sec.setdefault("fresh_process", {})[name] = info
        paths.append(f"{name}: loaded in a fresh process by the {info.get('runtime_kind')} runtime "
                     f"(TensorRT {info.get('trt_version')}), batches {list(sizes)}")
        rows = []
        with runtime.load(onnx_files["fp32"], providers=ORT_FP32_PROVIDERS) as ref:
            sec["onnxruntime_reference"] = {"providers": ref.runner.active_providers,
                                            "cuda_options": {"use_tf32": "0"}}
            for (x, t), got in zip(batches, eps):
                xt, tt = torch.from_numpy(x).to(dev), torch.from_numpy(t).to(dev)
                with torch.no_grad():
                    torch_ref = m32(xt, tt).double().cpu().numpy()
                    torch16 = m16(xt, tt).double().cpu().numpy()
                ort = ref(x, t)
                per_t = {}
                for tv in TIMESTEPS:
                    sel = t == tv
                    if sel.any():
                        d = np.abs(got[sel].astype(np.float64) - torch_ref[sel])
                        per_t[int(tv)] = {"max": float(d.max()), "mean": float(d.mean())}
                row = {"plan": name, "validate_batch": len(t), "finite": bool(np.isfinite(got).all()),
                       "max_vs_torch": float(np.abs(got - torch_ref).max()),
                       "max_vs_onnxruntime_fp32": float(np.abs(got - ort).max()),
                       "torch_fp16_islands_max_vs_torch": float(np.abs(torch16 - torch_ref).max()),
                       "per_timestep_vs_torch": per_t}
                rows.append(row)
                rep.row(sec, row)
        limit, basis = fp16_limit(FP16_ATOL, max(r["torch_fp16_islands_max_vs_torch"] for r in rows))
        sec.setdefault("limits", {})[name] = {"max_vs_torch": limit, "basis": basis}
        paths.append(f"{name}: FP16 gate max |eps - PyTorch FP32| <= {limit:.3g}: {basis}")
        failures.extend(gate_failures(rows, limit, name))
        sampled = sample_in_fresh_process(plan, tmp, allow_host_code)
        sec.setdefault("runtime_sample", {})[name] = sampled
        if sampled["rc"] != 0:
            failures.append(f"{name}: python -m runtime.sample exited {sampled['rc']}: {sampled['tail'][-300:]}")
        rep.save()

    def bench(name, plan, sizes):
        with runtime.load(plan) as eng:
            for b in sizes:
                x = rng.standard_normal((b, c, s, s)).astype(np.float32)
                t = np.full((b,), 500, np.int32)
                dt = timed(lambda: eng(x, t), lambda: None, 50 if b < 64 else 20)
                rep.row(sec, {"plan": name, "bench_batch": b, "image_steps_per_s_via_runtime": b / dt,
                              "ms_per_call": dt * 1e3})

    paths = []
    not_run = list(TRT_NOT_EXERCISED)
    major_minor = tuple(map(int, trt_version.split(".")[:2]))
    try:
        for k, (name, kw, sizes, bench_sizes, host) in enumerate(TRT_PLANS):
            if k and time.time() > deadline - 60:  # the first plan always runs
                sec[name] = {"skipped": "time budget"}
                rep.incomplete(f"tensorrt: {name} build/load not run (time budget spent)")
                not_run.append(f"{name} (time budget spent)")
                continue
            if kw.get("version_compatible") and major_minor < (8, 6):
                sec[name] = {"skipped": f"TensorRT {trt_version} has no version compatibility"}
                not_run.append(f"{name} ({sec[name]['skipped']})")
                continue
            if kw.get("graph") == "fp32" and prec == "fp32":
                sec[name] = {"skipped": f"on TensorRT {trt_version} the dynamic plan is the "
                                        f"FP16 builder-flag build of the float32 graph already"}
                continue
            if kw.get("graph") == "fp32" and major_minor >= (11, 0):
                sec[name] = {"skipped": f"TensorRT {trt_version} has no FP16 builder flag"}
                not_run.append(f"{name} ({sec[name]['skipped']})")
                continue
            plan = build(name, **kw)
            validate(name, plan, sizes, allow_host_code=host)
            if bench_sizes:
                bench(name, plan, batches if bench_sizes == "all" else bench_sizes)
    finally:
        sec["gate_failures"] = failures
        sec["paths"] = {"exercised": paths, "not_exercised": not_run}
        rep.save()
    if failures:
        raise RuntimeError(f"{len(failures)} TensorRT gate(s) failed: {'; '.join(failures[:5])}")


def tensorrt_plan(cuda, gpu_only, rep, importer=None):
    """(function that runs the tensorrt section, skip reason or None).

    Without a CUDA device the section is skipped (smoke mode). With one, TensorRT is what this
    check is for: not installed (ModuleNotFoundError) leaves the run incomplete (exit 2), and a
    TensorRT that is installed but fails to import (a missing libnvinfer, a broken wheel) fails
    the section (exit 1); neither may end in "complete, all passed"."""
    def imp():
        import tensorrt
        return tensorrt

    try:
        trt = (importer or imp)()
    except ModuleNotFoundError as e:
        if not cuda:
            return None, f"{NEEDS} (tensorrt not installed)"
        rep.incomplete(f"tensorrt: not run: TensorRT is not installed on this CUDA machine ({e}); "
                       f"pip install tensorrt-cu12 polygraphy onnx (JetPack: python3-libnvinfer)")
        return None, f"not run: tensorrt not installed ({e})"
    except Exception as e:  # noqa: BLE001 - installed but broken
        if not cuda:
            return None, f"{NEEDS} (tensorrt not importable: {type(e).__name__}: {e})"
        err = f"{type(e).__name__}: {e}"

        def broken(sec):
            raise RuntimeError(f"tensorrt is installed but does not import on this CUDA machine "
                               f"({err}); fix the TensorRT installation (libnvinfer on the "
                               f"loader path, wheels for this CUDA major)")
        return broken, None
    if gpu_only:
        return None, gpu_only
    return (lambda sec, rep_, ctx: tensorrt_section(sec, rep_, ctx, trt.__version__)), None


def naive_half(model):
    """Everything in FP16, the way a blanket .half() would run it. The sinusoidal timestep
    embedding is computed from the integer t in float32 and then fed to the half MLP, so its
    input is cast to half (a bare .half() stops there with a Float/Half dtype error)."""
    naive = copy.deepcopy(model).half()
    first = naive.temb.dense[0]
    first.register_forward_pre_hook(lambda mod, args: (args[0].to(mod.weight.dtype),) + args[1:])
    return naive.eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="the JSON report to write")
    ap.add_argument("--checkpoint", default=None, help="a cifar10 checkpoint (default: random weights)")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds for all sections")
    ap.add_argument("--smoke", action="store_true",
                    help="CI mode: tiny model, small batches; runs without a GPU")
    args = ap.parse_args(argv)
    deadline = time.time() + args.budget
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rep = Report(out, started=time.strftime("%Y-%m-%dT%H:%M:%S"), python=platform.python_version(),
                 mode="smoke" if args.smoke else "full",
                 weights="checkpoint " + args.checkpoint if args.checkpoint else "random (seed 0)")

    import torch

    from ddpm_export.export.fp16 import Fp16EpsModel
    from ddpm_export.model.checkpoint import build_model, load_checkpoint, save_checkpoint
    from ddpm_export.model.config import PRESETS
    from ddpm_export.model.unet import UNet
    from runtime.schedulers.schedule import Schedule, ScheduleConfig

    # TF32 off before anything runs: the float32 reference must be FP32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        rep.data["device"] = {"error": "no CUDA device visible to torch; use --smoke on a CPU"}
        rep.save()
        print(f"wrote {out}; no CUDA device (pass --smoke to run the CPU smoke check)", file=sys.stderr)
        return 1
    dev = torch.device("cuda" if cuda else "cpu")
    preset = "tiny" if args.smoke else "cifar10"
    batches = (1, 4) if args.smoke else (1, 64, 256)
    timesteps = (0, 500, 999) if args.smoke else TIMESTEPS
    nprec = 2 if args.smoke else 16

    def _device(sec):
        if cuda:
            sec.update(name=torch.cuda.get_device_name(0),
                       capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                       cuda=torch.version.cuda)
        else:
            sec.update(name="cpu (smoke mode)")
        sec["torch"] = torch.__version__
        sec["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32,
                       "cudnn": torch.backends.cudnn.allow_tf32}
        try:
            import tensorrt

            sec["tensorrt"] = tensorrt.__version__
        except Exception as e:
            sec["tensorrt"] = f"not importable: {type(e).__name__}: {e}"
    rep.section("device", _device, deadline)

    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    if args.checkpoint:
        ckpt_path = Path(args.checkpoint)
        model, _, sched_cfg = build_model(load_checkpoint(ckpt_path), ckpt_path, "ema")
    else:
        torch.manual_seed(0)
        model = UNet(PRESETS[preset].unet)
        with torch.no_grad():  # zero-initialized output layers would make eps trivially 0
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
        sched_cfg = ScheduleConfig()
        ckpt_path = tmp / f"{preset}-random.pt"
        save_checkpoint({"model_config": PRESETS[preset].unet.to_dict(),
                         "schedule_config": sched_cfg.to_dict(), "ema": model.state_dict()}, ckpt_path)
    model = model.eval()
    c, s = model.config.in_channels, model.config.image_size
    m32 = copy.deepcopy(model).to(dev).eval()
    m16 = Fp16EpsModel(model).to(dev).eval()
    naive = naive_half(model).to(dev)
    sched = Schedule(sched_cfg)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    gpu_only = None if cuda else NEEDS

    def _precision(sec):
        sec.update(batch=nprec, reference=f"PyTorch FP32 on {dev.type} (TF32 off)")
        g = torch.Generator(device="cpu").manual_seed(0)
        with torch.no_grad():
            for t in timesteps:
                x0 = torch.rand(nprec, c, s, s, generator=g) * 2 - 1  # image-like range
                noise = torch.randn(nprec, c, s, s, generator=g)
                ab = float(sched.alphas_cumprod[t])
                x = (ab ** 0.5 * x0 + (1 - ab) ** 0.5 * noise).to(dev)
                tt = torch.full((nprec,), t, dtype=torch.int32, device=dev)
                ref = m32(x, tt).double()
                ours = (m16(x, tt).double() - ref).abs()
                nv = (naive(x.half(), tt).double() - ref).abs()
                rep.row(sec, {"t": t, "fp16_islands_max": ours.max().item(),
                              "fp16_islands_mean": ours.mean().item(),
                              "naive_half_max": nv.max().item(), "naive_half_mean": nv.mean().item(),
                              "naive_half_finite": bool(torch.isfinite(nv).all())})
    rep.section("precision", _precision, deadline)

    onnx_files = {}

    def _onnx(sec):
        import runtime
        from ddpm_export.export.onnx_export import export_onnx

        sec["onnxruntime"] = "CPUExecutionProvider"
        big = batches[-1]
        for prec in ("fp32", "fp16"):
            path = tmp / f"{preset}{'-fp16' if prec == 'fp16' else ''}.onnx"
            t0 = time.time()
            export_onnx(ckpt_path, path, fp16=prec == "fp16", batch_range=(1, batches[1], big),
                        check=False)
            onnx_files[prec] = path
            rng = np.random.default_rng(0)
            b = 4
            x = rng.standard_normal((b, c, s, s)).astype(np.float32)
            t = np.resize(np.array(timesteps, np.int32), b)
            with runtime.load(path, providers=["CPUExecutionProvider"]) as eng:
                got = eng(x, t)
            with torch.no_grad():
                want = model(torch.from_numpy(x), torch.from_numpy(t)).numpy()
            (fresh,), info = eps_in_fresh_process(path, [(x, t)], tmp)
            rep.row(sec, {"graph": prec, "export_seconds": round(time.time() - t0, 1), "batch": b,
                          "max_vs_torch_fp32": float(np.abs(got.astype(np.float64) - want).max()),
                          "finite": bool(np.isfinite(got).all()),
                          "fresh_process_max_diff": float(np.abs(fresh - got).max()),
                          "fresh_process_backend": info["backend"]})
    rep.section("onnx", _onnx, deadline)

    def cuda_graph_fn(mod, x, t):
        s_ = torch.cuda.Stream()
        s_.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s_), torch.no_grad():
            for _ in range(3):
                mod(x, t)
        torch.cuda.current_stream().wait_stream(s_)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            out_ = mod(x, t)
        return graph.replay, out_

    def _torch(sec):
        sec.update(unit="image-steps/s", fp16="FP16 with FP32 islands (the ONNX FP16 graph's model)")
        for b in batches:
            x = torch.randn(b, c, s, s, device=dev)
            t = torch.randint(0, 1000, (b,), device=dev, dtype=torch.int32)
            iters = 50 if b < 64 else 20
            row = {"batch": b}
            with torch.no_grad():
                row["eager_fp32"] = b / timed(lambda: m32(x, t), sync, iters)
                row["eager_fp16"] = b / timed(lambda: m16(x, t), sync, iters)
            replay, _ = cuda_graph_fn(m16, x, t)
            row["cuda_graph_fp16"] = b / timed(replay, sync, iters)
            rep.row(sec, row)
    rep.section("torch", _torch, deadline, skip=gpu_only)

    def _host(sec):
        from runtime.schedulers.ddpm import DDPMScheduler

        sch = DDPMScheduler(sched_cfg)
        sch.set_timesteps()
        rng = np.random.default_rng(0)
        for b in batches:
            x = rng.standard_normal((b, c, s, s)).astype(np.float32)
            eps = rng.standard_normal((b, c, s, s)).astype(np.float32)
            step = timed(lambda: sch.step(eps, 500, x, rng=rng), lambda: None, 20, 2)
            pin_in = torch.from_numpy(x).pin_memory()
            pin_out = torch.empty_like(pin_in).pin_memory()
            dx = torch.empty(b, c, s, s, device=dev)

            def copies():
                dx.copy_(pin_in, non_blocking=True)
                pin_out.copy_(dx, non_blocking=True)
                torch.cuda.current_stream().synchronize()
            cp = timed(copies, sync, 20)
            tt = torch.full((b,), 500, dtype=torch.int32, device=dev)
            replay, _ = cuda_graph_fn(m16, dx, tt)
            unet = timed(replay, sync, 20)
            rep.row(sec, {"batch": b, "numpy_step_ms": step * 1e3, "h2d_d2h_sync_ms": cp * 1e3,
                          "unet_fp16_graph_ms": unet * 1e3, "host_over_unet": (step + cp) / unet})
    rep.section("host", _host, deadline, skip=gpu_only)

    ctx = SimpleNamespace(onnx_files=onnx_files, tmp=tmp, preset=preset, c=c, s=s, dev=dev,
                          m32=m32, m16=m16, batches=batches, deadline=deadline)
    run_trt, trt_skip = tensorrt_plan(cuda, gpu_only, rep)
    rep.section("tensorrt", lambda sec: run_trt(sec, rep, ctx), deadline, skip=trt_skip)

    def _compile(sec):
        sec["mode"] = "default, FP16 with FP32 islands"
        comp = torch.compile(m16, dynamic=False)
        for b in batches:
            if time.time() > deadline - 30:
                rep.row(sec, {"batch": b, "skipped": "time budget"})
                rep.incomplete(f"torch_compile: batch {b} not run (time budget spent)")
                continue
            x = torch.randn(b, c, s, s, device=dev)
            t = torch.randint(0, 1000, (b,), device=dev, dtype=torch.int32)
            t0 = time.time()
            with torch.no_grad():
                comp(x, t)
                sync()
                compile_s = time.time() - t0
                rate = b / timed(lambda: comp(x, t), sync, 50 if b < 64 else 20)
            rep.row(sec, {"batch": b, "compile_seconds": round(compile_s, 1), "image_steps_per_s": rate})
    rep.section("torch_compile", _compile, deadline - 30, skip=gpu_only)

    summary = {k: v.get("skipped") or v.get("error") or f"ok ({v.get('seconds')} s)"
               for k, v in rep.data.items() if isinstance(v, dict)}
    summary["incomplete"] = rep.incomplete() or "no: every section and step ran"
    paths = (rep.data.get("tensorrt") or {}).get("paths")
    if paths:
        summary["tensorrt_paths"] = paths
    print(json.dumps(summary, indent=1))
    errors, status = rep.errors(), rep.exit_status()
    state = {0: "complete, all passed", 1: "FAILED", 2: "INCOMPLETE (time budget spent; nothing failed)"}
    print(f"wrote {out}; {state[status]}; sections with errors: {errors or 'none'}; "
          f"incomplete: {rep.incomplete() or 'none'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
