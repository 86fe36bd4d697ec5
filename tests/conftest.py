import os

import pytest

# Tests share 2 cores: keep torch's thread pool to what the machine has.
os.environ.setdefault("OMP_NUM_THREADS", "2")


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


# --- the tiny model, shared by the export and runtime tests ------------------------------------

@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """(folder, tiny.pt, model): tiny_model() saved as a checkpoint of step 20."""
    pytest.importorskip("torch")
    from ddpm_export.model.checkpoint import save_checkpoint
    from ddpm_export.model.config import PRESETS
    from runtime.schedulers.schedule import ScheduleConfig

    from tiny_unet import tiny_model

    d = tmp_path_factory.mktemp("tiny")
    model = tiny_model()
    ckpt = d / "tiny.pt"
    save_checkpoint({"model_config": PRESETS["tiny"].unet.to_dict(),
                     "schedule_config": ScheduleConfig().to_dict(), "ema": model.state_dict(),
                     "step": 20, "provenance": {"command": "ddpm-export train --preset tiny", "seed": 0}},
                    ckpt)
    return d, ckpt, model


@pytest.fixture(scope="session")
def tiny_export(tiny_checkpoint):
    """The tiny checkpoint exported (float32) once per session: {model, checkpoint, onnx,
    manifest, dir}; the ONNX is engines/tiny.onnx beside the checkpoint."""
    pytest.importorskip("onnx")
    from ddpm_export.export.onnx_export import export_onnx
    from tiny_unet import TINY_EXPORT_COMMAND

    d, ckpt, model = tiny_checkpoint
    onnx_path = d / "engines" / "tiny.onnx"
    manifest = export_onnx(ckpt, onnx_path, command=TINY_EXPORT_COMMAND)
    return {"model": model, "checkpoint": ckpt, "onnx": onnx_path, "manifest": manifest, "dir": d}


@pytest.fixture(scope="session")
def cond_digits(tmp_path_factory):
    """A class-conditional 1x16x16 checkpoint (10 labels + null, T = 100, default guidance 2)
    exported once per session (tests/cond_digits.py): {checkpoint, onnx, manifest, model, dir}."""
    pytest.importorskip("diffusers")
    pytest.importorskip("onnx")
    from cond_digits import make_cond_digits

    return make_cond_digits(tmp_path_factory.mktemp("cond_digits"))
