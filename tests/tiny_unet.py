"""The tiny U-Net the export and runtime tests share (fixtures in tests/conftest.py)."""

TINY_EXPORT_COMMAND = "ddpm-export export --checkpoint tiny.pt"


def tiny_model(seed: int = 0):
    """The tiny preset's U-Net (1x8x8) with its near-zero-initialized layers and GroupNorm
    affines made non-trivial: zero-initialized layers would hide export mistakes."""
    import torch

    from ddpm_export.model.config import PRESETS
    from ddpm_export.model.unet import AttnBlock, ResnetBlock, UNet

    torch.manual_seed(seed)
    m = UNet(PRESETS["tiny"].unet)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, ResnetBlock):
                torch.nn.init.xavier_uniform_(mod.conv2.weight)
            elif isinstance(mod, AttnBlock):
                torch.nn.init.xavier_uniform_(mod.proj_out.weight)
            elif isinstance(mod, torch.nn.GroupNorm):
                mod.weight.add_(0.2 * torch.randn_like(mod.weight))
                mod.bias.add_(0.2 * torch.randn_like(mod.bias))
        torch.nn.init.xavier_uniform_(m.conv_out.weight)
    return m.eval()
