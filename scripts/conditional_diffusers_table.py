"""The diffusers equality table of docs/conditional.md: class-conditional diffusers UNet2DModels
(tiny, random weights, saved as DDPMPipeline folders), imported with --verify, exported, and
the ONNX engine's eps against diffusers' own network at the same labels.

    .venv/bin/python scripts/conditional_diffusers_table.py
"""
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import runtime  # noqa: E402
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel  # noqa: E402
from ddpm_export.export.onnx_export import export_onnx  # noqa: E402
from ddpm_export.weights import import_diffusers  # noqa: E402

TINY = dict(sample_size=16, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(16, 32),
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=8)
CASES = [("num_class_embeds=10 (nn.Embedding)", dict(num_class_embeds=10), 9),
         ("num_class_embeds=10, class_embed_type='timestep'", dict(num_class_embeds=10, class_embed_type="timestep"), 9),
         ("class_embed_type='identity' (embeddings in)", dict(class_embed_type="identity"), None)]


def main() -> int:
    print("| model | import --verify: eps max abs | 10-step DDPM loop with labels, [0, 1] | ONNX eps vs diffusers, max abs |")
    print("|---|---|---|---|")
    for name, extra, null in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            torch.manual_seed(0)
            unet = UNet2DModel(**TINY, **extra).eval()
            DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(tmp / "p")
            ck = import_diffusers(tmp / "p", tmp / "m.pt", verify=True, null_label=null)
            rep = ck["provenance"]["verify"]
            export_onnx(tmp / "m.pt", tmp / "m.onnx")
            rng = np.random.default_rng(0)
            x = rng.standard_normal((8, 3, 16, 16)).astype(np.float32)
            t = np.array([0, 1, 100, 250, 500, 750, 998, 999], np.int32)
            lab = (np.arange(8) % 10) if null is not None else rng.standard_normal((8, 64)).astype(np.float32)
            with runtime.load(tmp / "m.onnx") as eng:
                got = eng(x, t, class_labels=lab)
            with torch.no_grad():
                want = unet(torch.from_numpy(x), torch.from_numpy(t).long(),
                            class_labels=torch.from_numpy(lab)).sample.numpy()
            print(f"| {name} | {rep['eps']['max_abs']:.2g} | {rep['chain']['max_abs_01']:.2g} | "
                  f"{np.abs(got - want).max():.2g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
