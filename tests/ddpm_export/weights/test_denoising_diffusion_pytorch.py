"""A second public architecture through export_module: denoising-diffusion-pytorch's Unet +
GaussianDiffusion (its defaults: objective pred_v, sigmoid betas), sampled by the runtime
from the same noise as the library's own ancestral sampler (p_sample_loop).

The library imports torchvision at import time (for its Trainer's transforms and image
grid); nothing used here touches it. On the CPU-only test machines the only
torchvision wheels on the registries are CUDA builds that cannot load next to the CPU
torch, so, exactly as tests/ddpm_export/evaluation/test_fidelity.py does, a stand-in
module is put in sys.modules for the import when the real one cannot be imported, and
removed afterwards.
"""
import contextlib
import importlib
import importlib.machinery
import importlib.metadata
import sys
import types

import numpy as np
import pytest
import torch

pytest.importorskip("einops")
pytest.importorskip("onnxruntime")

import runtime  # noqa: E402
from ddpm_export.export.onnx_export import export_module  # noqa: E402
from ddpm_export.model.external import from_denoising_diffusion_pytorch  # noqa: E402
from ddpm_export.weights.verify import runtime_chain  # noqa: E402


@contextlib.contextmanager
def _torchvision_for_import():
    before = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "torchvision"}
    try:
        importlib.import_module("torchvision")
        real = True
    except Exception:
        real = False
    if not real:
        for k in [k for k in sys.modules if k.split(".")[0] == "torchvision"]:
            del sys.modules[k]
        for name in ("torchvision", "torchvision.transforms", "torchvision.utils"):
            m = types.ModuleType(name)
            m.__spec__ = importlib.machinery.ModuleSpec(name, None)
            m.__path__ = []
            sys.modules[name] = m
        sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
        sys.modules["torchvision"].utils = sys.modules["torchvision.utils"]
    try:
        yield
    finally:
        if not real:
            for k in [k for k in sys.modules if k.split(".")[0] == "torchvision"]:
                del sys.modules[k]
            sys.modules.update(before)


def _import_ddp():
    with _torchvision_for_import():
        try:
            return importlib.import_module("denoising_diffusion_pytorch")
        except ImportError as e:
            pytest.skip(f"denoising-diffusion-pytorch not importable: {e}")


@pytest.fixture(scope="module")
def ddp():
    return _import_ddp()


def _diffusion(ddp, **kw):
    torch.manual_seed(0)
    unet = ddp.Unet(dim=8, dim_mults=(1, 2), channels=3, attn_dim_head=8, attn_heads=2, flash_attn=False)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return ddp.GaussianDiffusion(unet, image_size=(16, 8), timesteps=40, **kw).eval()


@pytest.mark.parametrize("objective", [None, "pred_noise"])  # None: the library's default
def test_export_equals_the_librarys_sampler(tmp_path, ddp, objective):
    kw = {} if objective is None else {"objective": objective, "beta_schedule": "cosine"}
    diffusion = _diffusion(ddp, **kw)
    model, schedule = from_denoising_diffusion_pytorch(diffusion)
    if objective is None:
        assert diffusion.objective == "pred_v" and schedule["prediction"] == "v"
    assert schedule["kind"] == "explicit" and len(schedule["betas"]) == 40
    man = export_module(model, schedule, None, tmp_path / "ddp.onnx", batch_range=(1, 1, 2),
                        source={"library": "denoising-diffusion-pytorch " + importlib.metadata.version("denoising-diffusion-pytorch")})
    assert man["checks"]["parity"]["max_abs_diff"] < 1e-4
    assert man["schedule"]["prediction"] == schedule["prediction"]

    shape = (1, 3, 16, 8)
    torch.manual_seed(7)  # the library draws x_T and every step's noise from the global generator
    with torch.inference_mode():
        want = diffusion.p_sample_loop(shape).numpy().astype(np.float64)  # [0, 1]: (x + 1) / 2
    with runtime.load(tmp_path / "ddp.onnx") as engine:
        _, raw = runtime_chain(engine, man["schedule"], shape, steps=40, seed=7)
    # 40 steps: float64 runtime scheduler vs the library's float32 buffers, ONNX vs PyTorch kernels
    diff = np.abs((raw + 1) / 2 - want).max()
    print(f"ddp chain max abs diff {diff:.3g}")
    assert diff < 1e-4


def test_fp16_export_keeps_the_time_mlp_in_float32(tmp_path, ddp):
    model, schedule = from_denoising_diffusion_pytorch(_diffusion(ddp))
    assert model.fp32_modules == ("time_mlp",)
    man = export_module(model, schedule, None, tmp_path / "ddp16.onnx", fp16=True, batch_range=(1, 1, 2))
    assert man["precision"] == "fp16" and man["checks"]["fp16_error"]["max_abs"] < 2e-2


def test_refusals_in_one_line(ddp):
    diffusion = _diffusion(ddp)
    diffusion.self_condition = True
    diffusion.objective = "pred_score"
    with pytest.raises(ValueError) as e:
        from_denoising_diffusion_pytorch(diffusion)
    msg = str(e.value)
    assert "\n" not in msg and "objective='pred_score'" in msg and "self_condition=True" in msg
