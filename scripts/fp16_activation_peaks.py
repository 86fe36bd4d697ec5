"""Largest |output| of every leaf module of the train_unconditional / tutorial UNet2DModel
(random weights, 128x128) at t = 0, 500, 999 in float32: whether its FP16 export's NaN could be a
plain activation overflow (FP16 max 65504). Usage: .venv/bin/python scripts/fp16_activation_peaks.py
"""
import torch, time
from diffusers import UNet2DModel
torch.manual_seed(0); torch.set_num_threads(2)
m = UNet2DModel(sample_size=128, in_channels=3, out_channels=3, layers_per_block=2,
    block_out_channels=(128, 128, 256, 256, 512, 512),
    down_block_types=("DownBlock2D",)*4 + ("AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",)*4).eval()
peak = {}
def hook(name):
    def f(mod, inp, out):
        o = out[0] if isinstance(out, tuple) else out
        if hasattr(o, "sample"): o = o.sample
        if torch.is_tensor(o): peak[name] = max(peak.get(name, 0.0), float(o.abs().max()))
    return f
for n, mod in m.named_modules():
    if n and len(list(mod.children())) == 0: mod.register_forward_hook(hook(n))
x = torch.randn(1, 3, 128, 128)
t0 = time.time()
with torch.no_grad():
    for t in (0, 500, 999):
        m(x, torch.tensor([t]))
print(f"forward x3 in {time.time()-t0:.1f}s")
top = sorted(peak.items(), key=lambda kv: -kv[1])[:8]
for n, v in top: print(f"{v:12.1f}  {n}")
print("modules over 65504:", sum(v > 65504 for v in peak.values()), "of", len(peak))
