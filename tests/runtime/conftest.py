"""Fixtures: a tiny trained-shape model exported to ONNX once per session."""
import pytest


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from ddpm_export.model.checkpoint import save_checkpoint
    from ddpm_export.model.config import PRESETS
    from ddpm_export.export.onnx_export import export_onnx
    from ddpm_export.model.unet import UNet
    from runtime.schedulers.schedule import ScheduleConfig

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    model = UNet(PRESETS["tiny"].unet)
    with torch.no_grad():  # zero-initialized layers would hide mistakes
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    ckpt = root / "tiny.pt"
    save_checkpoint({"model_config": PRESETS["tiny"].unet.to_dict(),
                     "schedule_config": ScheduleConfig().to_dict(),
                     "ema": model.state_dict()}, ckpt)
    onnx_path = root / "tiny.onnx"
    export_onnx(ckpt, onnx_path)
    return {"model": model, "checkpoint": ckpt, "onnx": onnx_path, "dir": root}
