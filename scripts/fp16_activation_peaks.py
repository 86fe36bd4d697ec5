"""Largest |output| of every module (leaves and containers) of the train_unconditional / tutorial
UNet2DModel (random weights, 128x128) at t = 0, 500, 999 in float32: whether its FP16 export can hold
its activations (FP16 max 65504).

Two weight sets: diffusers' initialization from torch.manual_seed(0) (the default; peaks ~6.6), and
--perturb 0.05, the weights scripts/deploy_table.py gave every row before (init + 0.05 * N(0, 1) on
every parameter): their activations reach 1.5e5, first past 65504 at up_blocks.2.upsamplers.0.conv,
which is why that row's FP16 eps was NaN (issue 18).

Usage: .venv/bin/python scripts/fp16_activation_peaks.py [--perturb 0.05]
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deploy_table import TRAIN_UNCONDITIONAL, make_unet  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--perturb", type=float, default=0.0)
a = ap.parse_args()
torch.set_num_threads(2)
m = make_unet(TRAIN_UNCONDITIONAL, perturb=a.perturb)
peak, over = {}, []


def hook(name):
    def f(mod, inp, out):
        o = out[0] if isinstance(out, tuple) else out
        if hasattr(o, "sample"):
            o = o.sample
        if torch.is_tensor(o):
            v = float(o.abs().max())
            peak[name] = max(peak.get(name, 0.0), v)
            if v > 65504 and name not in [n for n, _ in over]:
                over.append((name, v))
    return f


for n, mod in m.named_modules():
    if n:
        mod.register_forward_hook(hook(n))
x = torch.randn(1, 3, 128, 128)
t0 = time.time()
with torch.no_grad():
    for t in (0, 500, 999):
        m(x, torch.tensor([t]))
print(f"perturb={a.perturb}: forward x3 in {time.time()-t0:.1f}s")
for n, v in sorted(peak.items(), key=lambda kv: -kv[1])[:8]:
    print(f"{v:12.1f}  {n}")
print("modules over 65504:", len(over), "of", len(peak), "; first:", over[:1])
