"""A small class-conditional digits-shaped model for the command tests (fixture
``cond_digits`` in tests/conftest.py): diffusers' UNet2DModel with ``num_class_embeds`` =
10 digits + the null label 10, 1x16x16 like the digits model (so the digits classifier's
levels apply), T = 100 so that full chains take seconds, saved as a checkpoint whose
external model_config carries the condition, and exported with a default guidance of 2."""

K = 10  # digit classes; label K is the null (label dropout's extra embedding row)
T = 100
GUIDANCE = 2.0


def make_cond_digits(folder):
    """{checkpoint, onnx, manifest, model} in ``folder``; needs diffusers."""
    import torch
    from diffusers import UNet2DModel

    from ddpm_export.export.onnx_export import export_onnx
    from ddpm_export.model.checkpoint import load_model, save_checkpoint
    from ddpm_export.model.external import diffusers_model_config
    from runtime.contract import Condition

    torch.manual_seed(0)
    net = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
                      block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
                      num_class_embeds=K + 1).eval()
    with torch.no_grad():  # labels change the output visibly; a smooth eps as trained models have
        net.class_embedding.weight.mul_(3.0)
        net.conv_out.weight.mul_(0.3)
        net.conv_out.bias.mul_(0.3)
    labels = Condition("class_labels", "class_label", (), K, K)
    ckpt = folder / "cond.pt"
    save_checkpoint({"model_config": diffusers_model_config(dict(net.config), (1, 16, 16), [labels]),
                     "schedule_config": {"kind": "linear", "beta_start": 1e-4, "beta_end": 0.02,
                                         "num_timesteps": T, "variance_type": "fixedsmall",
                                         "clip_denoised": True},
                     "ema": net.state_dict(), "step": 1,
                     "provenance": {"command": "tests/cond_digits.py", "seed": 0}}, ckpt)
    onnx = folder / "cond.onnx"
    manifest = export_onnx(ckpt, onnx, batch_range=(1, 4, 16), guidance={"default": GUIDANCE})
    model, _ = load_model(ckpt)
    return {"checkpoint": ckpt, "onnx": onnx, "manifest": manifest, "model": model, "dir": folder}
