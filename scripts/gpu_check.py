"""The prepared GPU check (run through scripts/gpu_check.sh): one JSON report.

Sections, each recorded even when another fails (its error goes in the report):
  device      GPU, CUDA, torch, TensorRT versions
  precision   cifar10-architecture eps error, FP16 (our FP32 islands) and naive .half(),
              vs FP32, per timestep
  torch       image-steps/s: eager FP32/FP16, CUDA graphs FP16, torch.compile FP16,
              at batch 1, 64, 256
  host        runtime host cost per step: NumPy DDPM step + pinned H2D/D2H copies,
              relative to one FP16 U-Net call (CUDA graph) at the same batch
  tensorrt    only if tensorrt imports: export, build (dynamic 1/64/256), validate vs
              ONNX Runtime/PyTorch at batches inside and between the profile points,
              calls/s through runtime.load(), then a static-64 build with a CUDA graph
The weights are random unless --checkpoint names a cifar10 checkpoint: error numbers
from random weights are a proxy, say so when you report them.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCHES = (1, 64, 256)
TIMESTEPS = (0, 1, 10, 100, 250, 500, 750, 999)


def section(report, name, deadline):
    """Decorator that runs the function at once, storing its result (or error) as report[name]."""
    def deco(fn):
        t0 = time.time()
        if time.time() > deadline:
            report[name] = {"skipped": "time budget spent"}
            return fn
        try:
            report[name] = fn()
        except Exception as e:  # record and go on: one failing section must not hide the others
            report[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        report[name + "_seconds"] = round(time.time() - t0, 1)
        return fn
    return deco


def timed(fn, sync, iters, warmup=3):
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - t0) / iters


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--budget", type=float, default=420.0, help="seconds for all sections")
    args = ap.parse_args()
    start = time.time()
    deadline = start + args.budget
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "python": platform.python_version(),
              "weights": "checkpoint " + args.checkpoint if args.checkpoint else "random (seed 0)"}
    out = Path(args.out)

    def save():
        report["elapsed_seconds"] = round(time.time() - start, 1)
        out.write_text(json.dumps(report, indent=2, default=str) + "\n")

    import torch

    from ddpm_export.model.checkpoint import build_model, load_checkpoint, save_checkpoint
    from ddpm_export.model.config import PRESETS
    from ddpm_export.export.fp16 import Fp16EpsModel
    from ddpm_export.model.unet import UNet
    from runtime.schedulers.schedule import Schedule, ScheduleConfig

    dev = torch.device("cuda")
    report["device"] = {"name": torch.cuda.get_device_name(0),
                        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
                        "torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import tensorrt

        report["device"]["tensorrt"] = tensorrt.__version__
    except Exception as e:
        report["device"]["tensorrt"] = f"not importable: {type(e).__name__}: {e}"
    save()

    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    if args.checkpoint:
        ckpt_path = Path(args.checkpoint)
        model, _, sched_cfg = build_model(load_checkpoint(ckpt_path), ckpt_path, "ema")
    else:
        torch.manual_seed(0)
        model = UNet(PRESETS["cifar10"].unet)
        with torch.no_grad():  # zero-initialized output layers would make eps trivially 0
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
        sched_cfg = ScheduleConfig()
        ckpt_path = tmp / "cifar10-random.pt"
        save_checkpoint({"model_config": PRESETS["cifar10"].unet.to_dict(),
                         "schedule_config": sched_cfg.to_dict(), "ema": model.state_dict()}, ckpt_path)
    model = model.eval()
    c, s = model.config.in_channels, model.config.image_size
    m32 = copy.deepcopy(model).to(dev).eval()
    m16 = Fp16EpsModel(model).to(dev).eval()
    naive = copy.deepcopy(model).half().to(dev).eval()
    sched = Schedule(sched_cfg)
    sync = torch.cuda.synchronize

    @section(report, "precision", deadline)
    def _precision():
        g = torch.Generator(device="cpu").manual_seed(0)
        rows = []
        with torch.no_grad():
            for t in TIMESTEPS:
                x0 = torch.rand(16, c, s, s, generator=g) * 2 - 1  # image-like range
                noise = torch.randn(16, c, s, s, generator=g)
                ab = float(sched.alphas_cumprod[t])
                x = (ab ** 0.5 * x0 + (1 - ab) ** 0.5 * noise).to(dev)
                tt = torch.full((16,), t, dtype=torch.int32, device=dev)
                ref = m32(x, tt).double()
                ours = (m16(x, tt).double() - ref).abs()
                nv = (naive(x.half(), tt).double() - ref).abs()
                rows.append({"t": t, "fp16_islands_max": ours.max().item(), "fp16_islands_mean": ours.mean().item(),
                             "naive_half_max": nv.max().item(), "naive_half_mean": nv.mean().item(),
                             "naive_half_finite": bool(torch.isfinite(nv).all())})
        return {"batch": 16, "reference": "PyTorch FP32 on GPU (TF32 off)", "rows": rows}

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    save()

    def cuda_graph_fn(mod, x, t):
        s_ = torch.cuda.Stream()
        s_.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s_), torch.no_grad():
            for _ in range(3):
                mod(x, t)
        torch.cuda.current_stream().wait_stream(s_)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            out = mod(x, t)
        return graph.replay, out

    @section(report, "torch", deadline)
    def _torch():
        res = []
        for b in BATCHES:
            x = torch.randn(b, c, s, s, device=dev)
            t = torch.randint(0, 1000, (b,), device=dev, dtype=torch.int32)
            iters = 50 if b < 64 else 20
            row = {"batch": b}
            with torch.no_grad():
                row["eager_fp32"] = b / timed(lambda: m32(x, t), sync, iters)
                row["eager_fp16"] = b / timed(lambda: m16(x, t), sync, iters)
            replay, _ = cuda_graph_fn(m16, x, t)
            row["cuda_graph_fp16"] = b / timed(replay, sync, iters)
            res.append(row)
            save()
        return {"unit": "image-steps/s", "fp16": "FP16 with FP32 islands (the ONNX FP16 graph's model)",
                "rows": res}

    save()

    @section(report, "host", deadline)
    def _host():
        from runtime.schedulers.ddpm import DDPMScheduler

        sch = DDPMScheduler(sched_cfg)
        sch.set_timesteps()
        rng = np.random.default_rng(0)
        res = []
        for b in BATCHES:
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
            res.append({"batch": b, "numpy_step_ms": step * 1e3, "h2d_d2h_sync_ms": cp * 1e3,
                        "unet_fp16_graph_ms": unet * 1e3, "host_over_unet": (step + cp) / unet})
        return {"rows": res}

    save()

    @section(report, "tensorrt", deadline)
    def _tensorrt():
        try:
            import tensorrt as trt
        except Exception as e:
            return {"skipped": f"tensorrt not importable: {type(e).__name__}: {e}"}
        import runtime
        from ddpm_export.export.tensorrt import BuildConfig, build_engine, export_precision
        from ddpm_export.export.onnx_export import export_onnx

        res = {"tensorrt": trt.__version__}
        prec = export_precision(trt.__version__, True)
        onnx = tmp / f"cifar10{'-fp16' if prec == 'fp16' else ''}.onnx"
        t0 = time.time()
        export_onnx(ckpt_path, onnx, fp16=prec == "fp16", batch_range=(1, 64, 256))
        onnx32 = tmp / "cifar10-ref.onnx"
        export_onnx(ckpt_path, onnx32, fp16=False, batch_range=(1, 64, 256), check=False)
        res["export_seconds"] = round(time.time() - t0, 1)
        cache = str(tmp / "timing.cache")
        m = build_engine(BuildConfig(onnx=str(onnx), fp16=True, min_batch=1, opt_batch=64,
                                     max_batch=256, timing_cache=cache), log=lambda s_: None)
        res["build"] = m["engine"]
        report["tensorrt"] = res
        save()
        rng = np.random.default_rng(0)
        val = []
        ts = np.array(TIMESTEPS, np.int32)
        with runtime.load(onnx32, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]) as ref, \
                runtime.load(onnx.with_suffix(".plan")) as eng:
            res["runner"] = {"cuda_graph": eng.runner.use_cuda_graph, "device": str(eng.runner.device)}
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
                val.append({"batch": b, "finite": bool(np.isfinite(got).all()),
                            "max_vs_torch": float(np.abs(got - torch_ref).max()),
                            "max_vs_onnxruntime_fp32": float(np.abs(got - ort).max()),
                            "per_timestep_vs_torch": per_t})
            res["validate"] = val
            save()
            bench = []
            for b in BATCHES:
                x = rng.standard_normal((b, c, s, s)).astype(np.float32)
                t = np.full((b,), 500, np.int32)
                dt = timed(lambda: eng(x, t), lambda: None, 50 if b < 64 else 20)
                bench.append({"batch": b, "image_steps_per_s_via_runtime": b / dt, "ms_per_call": dt * 1e3})
            res["bench_dynamic"] = bench
        save()
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
                res["static64"] = {"cuda_graph": eng.runner.use_cuda_graph,
                                   "cuda_graph_error": eng.runner.cuda_graph_error,
                                   "image_steps_per_s_via_runtime": 64 / dt, "max_vs_torch": d}
        return res

    save()

    @section(report, "torch_compile", deadline - 30)
    def _compile():
        res = []
        comp = torch.compile(m16, dynamic=False)
        for b in BATCHES:
            if time.time() > deadline - 30:
                res.append({"batch": b, "skipped": "time budget"})
                continue
            x = torch.randn(b, c, s, s, device=dev)
            t = torch.randint(0, 1000, (b,), device=dev, dtype=torch.int32)
            t0 = time.time()
            with torch.no_grad():
                comp(x, t)
                sync()
                compile_s = time.time() - t0
                rate = b / timed(lambda: comp(x, t), sync, 50 if b < 64 else 20)
            res.append({"batch": b, "compile_seconds": round(compile_s, 1), "image_steps_per_s": rate})
            save()
        return {"mode": "default, FP16 with FP32 islands", "rows": res}

    save()
    print(json.dumps({k: v for k, v in report.items() if k.endswith("_seconds") or k == "device"}, indent=1))
    errors = [k for k, v in report.items() if isinstance(v, dict) and "error" in v]
    print(f"wrote {out}; sections with errors: {errors or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
