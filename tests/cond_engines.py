"""Tiny conditional engines the command tests share (runtime.sample_many / shards, Triton, the
Jetson app): made as tests/ddpm_export/export/test_conditional_export.py makes them, small
enough to export in a second or two. Import torch/diffusers lazily: call these from fixtures."""
from pathlib import Path

K = 4  # real classes of the class-conditional engine; label K is its null (num_class_embeds = K + 1)
SCHEDULE = {"kind": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_timesteps": 50,
            "variance_type": "fixedsmall", "clip_denoised": True}


def class_cond_engine(out_dir, name="cond", guidance=2.0, batch_range=(1, 4, 16)) -> Path:
    """A class-conditional diffusers UNet2DModel (1x8x8, K classes, null label K, T = 50)
    exported to out_dir/NAME.onnx with its manifest's default guidance; returns the path."""
    import torch
    from diffusers import UNet2DModel

    from ddpm_export.export.onnx_export import export_module
    from ddpm_export.model.external import DiffusersUNet
    from runtime.contract import Condition

    torch.manual_seed(0)
    net = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                      block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
                      num_class_embeds=K + 1).eval()
    with torch.no_grad():  # labels change eps visibly
        net.class_embedding.weight.mul_(3.0)
    out = Path(out_dir) / f"{name}.onnx"
    export_module(DiffusersUNet(net, conditions=[Condition("class_labels", "class_label", (), K, K)]),
                  SCHEDULE, (1, 8, 8), out, batch_range=batch_range,
                  guidance=None if guidance is None else {"default": guidance})
    return out


def array_cond_engine(out_dir, name="arr") -> Path:
    """An engine whose samples are [6, 2] float arrays, conditioned on a [5] vector (null zeros)."""
    import torch
    from torch import nn

    from ddpm_export.export.onnx_export import export_module
    from runtime.contract import Condition

    class ArrayDenoiser(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2 + 5, 2)

        def forward(self, x_t, t, global_cond):
            g = global_cond[:, None, :].expand(-1, x_t.shape[1], -1)
            return self.lin(torch.cat([x_t, g], dim=-1)) * (1 + 1e-4 * t[:, None, None])

    torch.manual_seed(0)
    out = Path(out_dir) / f"{name}.onnx"
    export_module(ArrayDenoiser().eval(), SCHEDULE, (6, 2), out, batch_range=(1, 4, 16),
                  conditions=[Condition("global_cond", "vector", (5,), null="zeros")])
    return out
