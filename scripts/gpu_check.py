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
  tensorrt       only if tensorrt imports: build (dynamic 1/64/256), validate vs ONNX
                 Runtime/PyTorch at batches inside and between the profile points,
                 calls/s through runtime.load(), then a static-64 build with a CUDA graph
  torch_compile  torch.compile FP16 at batch 1, 64, 256 (last: compiling is slow)
On a GPU without TensorRT (PyTorch + onnx + CPU ONNX Runtime) everything but
``tensorrt`` runs, well within the 420 s budget.

--smoke (CI, no GPU needed): the tiny model, small batches and few iterations;
sections that need CUDA or TensorRT say "skipped: needs CUDA/TensorRT". Any other
error fails the run.
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NEEDS = "skipped: needs CUDA/TensorRT"
TIMESTEPS = (0, 1, 10, 100, 250, 500, 750, 999)


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


def timed(fn, sync, iters, warmup=3):
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - t0) / iters


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
            rep.row(sec, {"graph": prec, "export_seconds": round(time.time() - t0, 1), "batch": b,
                          "max_vs_torch_fp32": float(np.abs(got.astype(np.float64) - want).max()),
                          "finite": bool(np.isfinite(got).all())})
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

    try:
        import tensorrt as trt  # noqa: F401
        trt_skip = gpu_only
    except Exception as e:
        trt_skip = f"{NEEDS} (tensorrt not importable: {type(e).__name__}: {e})"

    def _tensorrt(sec):
        import runtime
        from ddpm_export.export.tensorrt import BuildConfig, build_engine, export_precision

        prec = export_precision(trt.__version__, True)
        onnx = onnx_files.get(prec)
        if onnx is None:
            raise RuntimeError(f"the onnx section did not export the {prec} graph (see its error)")
        sec["tensorrt"] = trt.__version__
        cache = str(tmp / "timing.cache")
        m = build_engine(BuildConfig(onnx=str(onnx), fp16=True, min_batch=1, opt_batch=64,
                                     max_batch=256, timing_cache=cache), log=lambda s_: None)
        sec["build"] = m["engine"]
        rep.save()
        rng = np.random.default_rng(0)
        ts = np.array(TIMESTEPS, np.int32)
        with runtime.load(onnx_files["fp32"], providers=["CUDAExecutionProvider", "CPUExecutionProvider"]) as ref, \
                runtime.load(onnx.with_suffix(".plan")) as eng:
            sec["runner"] = {"cuda_graph": eng.runner.use_cuda_graph, "device": str(eng.runner.device)}
            for b in (1, 3, 64, 100, 256):  # profile points and between them
                x = rng.standard_normal((b, c, s, s)).astype(np.float32)
                t = np.resize(ts, b)
                got = eng(x, t)
                with torch.no_grad():
                    torch_ref = m32(torch.from_numpy(x).to(dev), torch.from_numpy(t).to(dev)).cpu().numpy()
                ort = ref(x, t)
                per_t = {}
                for tv in TIMESTEPS:
                    sel = t == tv
                    if sel.any():
                        d = np.abs(got[sel].astype(np.float64) - torch_ref[sel])
                        per_t[int(tv)] = {"max": float(d.max()), "mean": float(d.mean())}
                rep.row(sec, {"validate_batch": b, "finite": bool(np.isfinite(got).all()),
                              "max_vs_torch": float(np.abs(got - torch_ref).max()),
                              "max_vs_onnxruntime_fp32": float(np.abs(got - ort).max()),
                              "per_timestep_vs_torch": per_t})
            for b in batches:
                x = rng.standard_normal((b, c, s, s)).astype(np.float32)
                t = np.full((b,), 500, np.int32)
                dt = timed(lambda: eng(x, t), lambda: None, 50 if b < 64 else 20)
                rep.row(sec, {"bench_batch": b, "image_steps_per_s_via_runtime": b / dt,
                              "ms_per_call": dt * 1e3})
        if time.time() < deadline - 60:
            static_plan = tmp / "cifar10-static64.plan"
            build_engine(BuildConfig(onnx=str(onnx), fp16=True, static_batch=64, out=str(static_plan),
                                     timing_cache=cache), log=lambda s_: None)
            with runtime.load(static_plan) as eng:
                x = rng.standard_normal((64, c, s, s)).astype(np.float32)
                t = np.full((64,), 500, np.int32)
                dt = timed(lambda: eng(x, t), lambda: None, 50)
                with torch.no_grad():
                    d = float(np.abs(eng(x, t) - m32(torch.from_numpy(x).to(dev), torch.from_numpy(t).to(dev)).cpu().numpy()).max())
                sec["static64"] = {"cuda_graph": eng.runner.use_cuda_graph,
                                   "cuda_graph_error": eng.runner.cuda_graph_error,
                                   "image_steps_per_s_via_runtime": 64 / dt, "max_vs_torch": d}
    rep.section("tensorrt", _tensorrt, deadline, skip=trt_skip)

    def _compile(sec):
        sec["mode"] = "default, FP16 with FP32 islands"
        comp = torch.compile(m16, dynamic=False)
        for b in batches:
            if time.time() > deadline - 30:
                rep.row(sec, {"batch": b, "skipped": "time budget"})
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
    print(json.dumps(summary, indent=1))
    errors = rep.errors()
    print(f"wrote {out}; sections with errors: {errors or 'none'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
