"""The "bring your model" table: which DDPM configurations deploy, and how close they are.

For each configuration: a model built from the published configuration with random
weights (channel counts divided where marked "tiny"), saved as diffusers saves it, then
``import_diffusers(..., verify=True)``: eps max abs difference against diffusers' own
``UNet2DModel.from_pretrained`` at 5 timesteps, and the max abs difference of a
``--steps``-step chain (runtime DDPM scheduler + the imported model) against
``DDPMPipeline`` from the same noise, on [0, 1] images. Refused configurations show
the first part of their one-line reason. denoising-diffusion-pytorch rows compare the
exported ONNX model's runtime chain with the library's ``p_sample_loop``.

``--full`` adds the train_unconditional.py / tutorial model at its real size
(128x128, six levels, 128..512 channels; diffusers' initialization, unperturbed): import +
verify, float32 and FP16 export with every gate on (times, and the gates' share), and one
runtime step (ONNX Runtime CPU, batch 1) per precision, each in a
fresh process for its time and peak memory (ru_maxrss).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/deploy_table.py --out reports/deploy [--full]

Writes OUT/table.md and OUT/table.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRAIN_UNCONDITIONAL = dict(
    sample_size=128, in_channels=3, out_channels=3, layers_per_block=2,
    block_out_channels=(128, 128, 256, 256, 512, 512),
    down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D",
                      "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
)
HUB_CIFAR10 = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None,
    norm_num_groups=32, norm_eps=1e-6, act_fn="silu", flip_sin_to_cos=False, freq_shift=1,
    downsample_padding=0, time_embedding_type="positional", center_input_sample=False, mid_block_scale_factor=1,
)
HUB_256 = dict(HUB_CIFAR10, sample_size=256, block_out_channels=(128, 128, 256, 256, 512, 512),
               down_block_types=TRAIN_UNCONDITIONAL["down_block_types"],
               up_block_types=TRAIN_UNCONDITIONAL["up_block_types"])
CIFAR_SCHED = dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=True,
                   num_train_timesteps=1000, variance_type="fixed_large")
LSUN_SCHED = dict(CIFAR_SCHED, variance_type="fixed_small")


def tiny(cfg, div=8, groups=4, size=None):
    c = dict(cfg)
    c["block_out_channels"] = tuple(b // div for b in cfg["block_out_channels"])
    c["norm_num_groups"] = groups
    if size is not None:
        c["sample_size"] = size
    return c


# name, unet config, scheduler kwargs
ROWS = [
    ("google/ddpm-cifar10-32 (full size)", HUB_CIFAR10, CIFAR_SCHED),
    ("ddpm-{celebahq,church,bedroom,cat}-256 (+ema) structure, tiny /8 at 64 px", tiny(HUB_256, size=64),
     LSUN_SCHED),
    ("same, non-square 64x32", tiny(HUB_256, size=(64, 32)), LSUN_SCHED),
    ("train_unconditional / tutorial, tiny /8 at 64 px (epsilon, linear)", tiny(TRAIN_UNCONDITIONAL, size=64), {}),
    ("  + prediction_type v_prediction", tiny(TRAIN_UNCONDITIONAL, size=64), dict(prediction_type="v_prediction")),
    ("  + prediction_type sample", tiny(TRAIN_UNCONDITIONAL, size=64), dict(prediction_type="sample")),
    ("  + beta_schedule scaled_linear", tiny(TRAIN_UNCONDITIONAL, size=64),
     dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)),
    ("  + beta_schedule squaredcos_cap_v2", tiny(TRAIN_UNCONDITIONAL, size=64),
     dict(beta_schedule="squaredcos_cap_v2")),
    ("  + trained_betas", tiny(TRAIN_UNCONDITIONAL, size=64),
     dict(trained_betas=np.linspace(1e-4, 0.03, 1000).tolist())),
    ("  + thresholding", tiny(TRAIN_UNCONDITIONAL, size=64), dict(thresholding=True)),
    ("  + clip_sample false, fixed_large", tiny(TRAIN_UNCONDITIONAL, size=64),
     dict(clip_sample=False, variance_type="fixed_large")),
    ("  + timestep_spacing linspace", tiny(TRAIN_UNCONDITIONAL, size=64), dict(timestep_spacing="linspace")),
    ("  + timestep_spacing trailing", tiny(TRAIN_UNCONDITIONAL, size=64), dict(timestep_spacing="trailing")),
    ("  + steps_offset 1", tiny(TRAIN_UNCONDITIONAL, size=64), dict(steps_offset=1)),
    ("  + timestep_spacing trailing, fixed_large", tiny(TRAIN_UNCONDITIONAL, size=64),
     dict(timestep_spacing="trailing", variance_type="fixed_large")),
    ("  + variance_type learned_range", dict(tiny(TRAIN_UNCONDITIONAL, size=64), out_channels=6),
     dict(variance_type="learned_range")),
    ("  + class conditional (num_class_embeds=10)", dict(tiny(TRAIN_UNCONDITIONAL, size=64), num_class_embeds=10),
     {}),
    ("  + beta_schedule sigmoid", tiny(TRAIN_UNCONDITIONAL, size=64), dict(beta_schedule="sigmoid")),
]


def make_unet(cfg, seed=0, perturb=0.05):
    """UNet2DModel(**cfg) from torch.manual_seed(seed), every parameter + perturb * N(0, 1).

    The perturbation (absolute, not relative to each parameter's scale) makes 3x3 conv
    weights ~6x their init scale at 512 channels: fine for the tiny rows, but at the real
    tutorial size (128 px, 128..512 channels) float32 activations reach 1.5e5, beyond
    FP16's 65504 (up_blocks.2.upsamplers.0.conv first), so the full row uses perturb=0.
    """
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    net = UNet2DModel(**cfg).eval()
    if perturb:
        with torch.no_grad():
            for p in net.parameters():
                p.add_(perturb * torch.randn_like(p))
    return net


def save(path: Path, net, sched_kw):
    from diffusers import DDPMPipeline, DDPMScheduler

    try:
        sched = DDPMScheduler(**sched_kw)
    except Exception:  # diffusers itself cannot build it (e.g. sigmoid in DDPMScheduler): write the JSON
        sched = None
    if sched is not None:
        DDPMPipeline(unet=net, scheduler=sched).save_pretrained(str(path))
    else:
        net.save_pretrained(str(path / "unet"))
        (path / "scheduler").mkdir(parents=True, exist_ok=True)
        (path / "scheduler" / "scheduler_config.json").write_text(
            json.dumps({"_class_name": "DDPMScheduler", **sched_kw}))


def diffusers_rows(work: Path, steps: int):
    from ddpm_export.weights import import_diffusers

    out = []
    for i, (name, cfg, sched_kw) in enumerate(ROWS):
        d = work / f"row{i}"
        row = {"configuration": name}
        t0 = time.time()
        try:
            save(d, make_unet(cfg), sched_kw)
            ck = import_diffusers(d, d / "m.pt", verify=True, verify_steps=steps)
            v = ck["provenance"]["verify"]
            row.update(deploys="yes", network=ck["provenance"]["network"], eps_max_diff=v["eps"]["max_abs"],
                       chain_max_diff=v["chain"]["max_abs_01"])
        except Exception as e:  # a refusal: its one line
            msg = str(e)
            row.update(deploys="refused", reason=msg.split(": ", 1)[-1][:220], one_line="\n" not in msg)
        row["seconds"] = round(time.time() - t0, 1)
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def ddp_rows(work: Path):
    """denoising-diffusion-pytorch: exported ONNX + runtime chain vs p_sample_loop."""
    sys.path.insert(0, str(ROOT / "tests" / "ddpm_export" / "weights"))
    rows = []
    try:
        from test_denoising_diffusion_pytorch import _import_ddp

        ddp = _import_ddp()
    except BaseException as e:  # pytest.skip raises a BaseException subclass
        return [{"configuration": "denoising-diffusion-pytorch", "deploys": "not run", "reason": str(e)[:200]}]
    import runtime
    from ddpm_export.export.onnx_export import export_module
    from ddpm_export.model.external import from_denoising_diffusion_pytorch
    from ddpm_export.weights.verify import runtime_chain

    for name, kw in (("denoising-diffusion-pytorch Unet(dim=16, (1,2,4)) defaults (pred_v, sigmoid), T=100", {}),
                     ("  objective pred_noise, cosine", dict(objective="pred_noise", beta_schedule="cosine")),
                     ("  objective pred_x0, linear", dict(objective="pred_x0", beta_schedule="linear"))):
        torch.manual_seed(0)
        unet = ddp.Unet(dim=16, dim_mults=(1, 2, 4), channels=3, flash_attn=False)
        with torch.no_grad():
            for p in unet.parameters():
                p.add_(0.05 * torch.randn_like(p))
        diffusion = ddp.GaussianDiffusion(unet, image_size=32, timesteps=100, **kw).eval()
        model, schedule = from_denoising_diffusion_pytorch(diffusion)
        onnx_path = work / f"ddp{len(rows)}.onnx"
        man = export_module(model, schedule, None, onnx_path, batch_range=(1, 1, 2))
        shape = (1, 3, 32, 32)
        torch.manual_seed(3)
        with torch.inference_mode():
            want = diffusion.p_sample_loop(shape).numpy().astype(np.float64)
        with runtime.load(onnx_path) as engine:
            _, raw = runtime_chain(engine, man["schedule"], shape, steps=100, seed=3)
        rows.append({"configuration": name, "deploys": "yes", "network": "denoising_diffusion_pytorch.Unet",
                     "eps_max_diff": man["checks"]["parity"]["max_abs_diff"],
                     "eps_reference": "ONNX vs PyTorch",
                     "chain_max_diff": float(np.abs((raw + 1) / 2 - want).max()),
                     "chain_reference": "p_sample_loop, 100 steps, [0, 1]"})
        print(json.dumps(rows[-1]), flush=True)
    return rows


STEP_CHILD = r"""
import json, resource, sys, time
import numpy as np
sys.path.insert(0, sys.argv[2])
import runtime
from runtime.schedulers import make_scheduler
t0 = time.time()
with runtime.load(sys.argv[1]) as engine:
    load_s = time.time() - t0
    sch = make_scheduler(engine.manifest["schedule"], "ddpm", 10)
    x = np.random.default_rng(0).standard_normal((1, *engine.image_shape)).astype(np.float32)
    t = int(sch.timesteps[0])
    engine(x, np.array([t], np.int32))  # warm-up
    times = []
    for _ in range(3):
        s = time.time()
        out = engine(x, np.array([t], np.int32))
        x2 = sch.step(out, t, x, noise=np.zeros_like(x)).prev_sample
        times.append(time.time() - s)
# VmHWM: this process's own peak (ru_maxrss would include the parent's, kept across exec)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({"load_s": load_s, "step_s_median": float(np.median(times)), "step_s_all": times,
                  "output_finite": bool(np.isfinite(out).all()), "peak_rss_mb": int(hwm) / 1024}))
"""


def full_size(work: Path, steps: int):
    from ddpm_export.export.fp16 import fp16_error_table
    from ddpm_export.export.onnx_export import export_onnx
    from ddpm_export.model.checkpoint import load_model
    from ddpm_export.weights import import_diffusers

    d = work / "tutorial128"
    res = {"configuration": "train_unconditional / tutorial model, real size (128x128, six levels, 128..512 ch)"}
    # diffusers' own initialization from seed 0, unperturbed: its float32 activations peak
    # at ~6.6, as a trained model's are O(1-100); make_unet's default perturbation would put
    # them at 1.5e5, past FP16's range, and FP16 eps would be inf/NaN whatever the export did.
    net = make_unet(TRAIN_UNCONDITIONAL, perturb=0)
    res["parameters"] = sum(p.numel() for p in net.parameters())
    save(d, net, {})
    del net
    t0 = time.time()
    ck = import_diffusers(d, d / "m.pt", verify=True, verify_steps=steps)
    res["import_verify_s"] = round(time.time() - t0, 1)
    v = ck["provenance"]["verify"]
    res.update(deploys="yes", network=ck["provenance"]["network"], eps_max_diff=v["eps"]["max_abs"],
               chain_max_diff=v["chain"]["max_abs_01"], verify_steps=steps)
    print(json.dumps(res), flush=True)
    from ddpm_export.export import onnx_export as oe

    gate_s = {}

    def timed(name, fn):
        def wrapped(*a, **k):
            s = time.time()
            try:
                return fn(*a, **k)
            finally:
                gate_s[name] = gate_s.get(name, 0.0) + time.time() - s
        return wrapped

    parity, table = oe.check_parity, oe.fp16_error_table
    oe.check_parity, oe.fp16_error_table = timed("parity", parity), timed("fp16_table", table)
    for fp16 in (False, True):
        tag = "fp16" if fp16 else "fp32"
        gate_s.clear()
        t0 = time.time()
        # with every gate on: parity (5 t, batch 1) and, for FP16, the error table (21 t x 4 images)
        try:
            man = export_onnx(d / "m.pt", d / f"m-{tag}.onnx", fp16=fp16, batch_range=(1, 1, 4), check=True)
        finally:
            res[f"export_{tag}_s"] = round(time.time() - t0, 1)
            res[f"export_{tag}_gate_s"] = {k: round(v, 1) for k, v in gate_s.items()}
        if fp16:
            res["fp16_gate"] = {"parity_max_abs": man["checks"]["parity"]["max_abs_diff"],
                                "table_max_abs": man["checks"]["fp16_error"]["max_abs"],
                                "table_mean_abs": man["checks"]["fp16_error"]["mean_abs"]}
        res[f"onnx_{tag}_mb"] = round((d / f"m-{tag}.onnx").stat().st_size / 2**20, 1)
        if not fp16:
            res["export_fp32_parity"] = man["checks"]["parity"]["max_abs_diff"]
        else:
            model, _ = load_model(d / "m.pt")
            rows = fp16_error_table(d / "m-fp16.onnx", model, timesteps=[0, 500, 999], batch=1)
            res["fp16_eps_max_abs_vs_fp32_torch"] = max(r["max_abs"] for r in rows)
            res["fp16_eps_max_abs_by_t"] = {str(r["t"]): r["max_abs"] for r in rows}
            del model
        print(json.dumps(res), flush=True)
        p = subprocess.run([sys.executable, "-c", STEP_CHILD, str(d / f"m-{tag}.onnx"), str(ROOT)],
                           capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        if p.returncode != 0:
            res[f"runtime_step_{tag}"] = {"error": p.stderr.strip().splitlines()[-1:]}
        else:
            res[f"runtime_step_{tag}"] = json.loads(p.stdout.strip().splitlines()[-1])
        print(json.dumps(res), flush=True)
    oe.check_parity, oe.fp16_error_table = parity, table
    res["parent_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def fmt(x):
    if isinstance(x, float):
        return f"{x:.2g}"
    return "" if x is None else str(x)


def markdown(rows, full):
    lines = ["| configuration | deploys? | network | eps max diff | chain max diff | note |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['configuration']} | {r['deploys']} | {r.get('network', '')} | "
                     f"{fmt(r.get('eps_max_diff'))} | {fmt(r.get('chain_max_diff'))} | {r.get('reason', '')} |")
    if full:
        lines += ["", "Real-size train_unconditional / tutorial model:", "", "```",
                  json.dumps(full, indent=1), "```"]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=10, help="DDPM steps of each verification chain")
    ap.add_argument("--full", action="store_true", help="add the real-size 128x128 tutorial model")
    ap.add_argument("--only-full", action="store_true")
    ap.add_argument("--rows", default=None,
                    help="only the diffusers rows whose configuration contains this text (e.g. 'trailing')")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    if a.rows:
        ROWS[:] = [r for r in ROWS if a.rows in r[0]]
        rows = [] if a.only_full else diffusers_rows(work, a.steps)
    else:
        rows = [] if a.only_full else diffusers_rows(work, a.steps) + ddp_rows(work)
    full = None
    if a.full or a.only_full:
        try:
            full = full_size(work, a.steps)
        except Exception:
            full = {"error": traceback.format_exc().splitlines()[-1]}
    (out / "table.json").write_text(json.dumps({"rows": rows, "full": full}, indent=1))
    (out / "table.md").write_text(markdown(rows, full))
    print(markdown(rows, full))


if __name__ == "__main__":
    main()
