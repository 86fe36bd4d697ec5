import os

import pytest

# Tests share 2 cores: keep torch's thread pool to what the machine has.
os.environ.setdefault("OMP_NUM_THREADS", "2")


# A tiny trained-shape model exported to ONNX once per session (runtime and likelihood tests).
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


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def _has_cuda_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--runslow")
    gpu = None
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: run with  make test-slow  (pytest --runslow -m slow)"))
        if "gpu" in item.keywords:
            gpu = _has_cuda_gpu() if gpu is None else gpu
            if not gpu:
                item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU with CUDA (none visible)"))
