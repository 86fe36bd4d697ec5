"""Class conditioning of the UNet (UNetConfig.num_classes; classifier-free guidance's null label)."""
import hashlib
from pathlib import Path

import pytest
import torch

from ddpm_export.model.checkpoint import build_model, load_checkpoint, load_model, save_checkpoint
from ddpm_export.model.config import PRESETS, UNetConfig
from ddpm_export.model.diffusion import GaussianDiffusion
from ddpm_export.model.unet import UNet
from runtime.schedulers.schedule import ScheduleConfig

ROOT = Path(__file__).resolve().parents[3]
TINY = PRESETS["tiny"].unet
TINY_COND = PRESETS["tiny-cond"].unet  # tiny with num_classes=10


def _randomized(cfg: UNetConfig, seed: int = 0) -> UNet:
    """A model whose zero-initialised layers are not ~0, so every input reaches the output."""
    torch.manual_seed(seed)
    m = UNet(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return m


def _inputs(cfg: UNetConfig, n: int = 4):
    g = torch.Generator().manual_seed(7)
    return torch.randn(n, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g), \
        torch.tensor([0, 250, 500, 999][:n])


def _digest(state) -> str:
    h = hashlib.sha256()
    for k, v in state.items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.contiguous().numpy().tobytes())
    return h.hexdigest()


def test_digits_cond_is_digits_with_ten_classes_and_the_null_label_last():
    d, c = PRESETS["digits"], PRESETS["digits-cond"]
    assert c.unet == UNetConfig.from_dict({**d.unet.to_dict(), "num_classes": 10})
    assert (c.schedule, c.steps, c.data, c.hflip) == (d.schedule, d.steps, d.data, d.hflip)
    assert c.label_dropout == 0.1
    m = UNet(c.unet)
    assert m.null_label == c.unet.null_label == 10 and d.unet.null_label is None
    assert tuple(m.class_embedding.weight.shape) == (11, 4 * c.unet.ch)  # rows 0..9 + null


def test_unconditional_model_is_unchanged():
    """num_classes=0 adds nothing: the config dict, the state_dict keys and the seeded initial
    weights are those of the code before conditioning (digest taken from that code)."""
    shipped = load_checkpoint(ROOT / "engines" / "digits.pt")
    assert PRESETS["digits"].unet.to_dict() == shipped["model_config"]  # no num_classes key
    assert list(UNet(PRESETS["digits"].unet).state_dict()) == list(shipped["ema"])
    torch.manual_seed(0)
    assert _digest(UNet(TINY).state_dict()) == \
        "d65290f3f9d9b359d778f7062cb9519712066ceaccf3949a00e4fc80661c3fcd"
    # and the conditional model is the same network plus exactly one embedding
    extra = set(UNet(TINY_COND).state_dict()) - set(UNet(TINY).state_dict())
    assert extra == {"class_embedding.weight"}


def test_labels_change_the_output_and_the_null_label_is_its_own():
    m = _randomized(TINY_COND)
    x, t = _inputs(TINY_COND)
    null = torch.full((4,), m.null_label)
    three, seven = torch.full((4,), 3), torch.full((4,), 7)
    out = {k: m(x, t, class_labels=y) for k, y in (("null", null), ("3", three), ("7", seven))}
    scale = out["null"].abs().mean()
    for a, b in (("null", "3"), ("null", "7"), ("3", "7")):
        assert (out[a] - out[b]).abs().mean() > 1e-3 * scale, (a, b)
    # each image sees only its own label: mixing labels in a batch = per-image calls
    mixed = m(x, t, class_labels=torch.tensor([3, 7, 10, 3]))
    torch.testing.assert_close(mixed[1], out["7"][1], rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed[2], out["null"][2], rtol=0, atol=1e-6)
    # int32 labels are the same labels
    torch.testing.assert_close(m(x, t, class_labels=three.to(torch.int32)), out["3"], rtol=0, atol=0)


def test_refusals_say_what_was_passed_and_what_is_expected():
    cond, uncond = _randomized(TINY_COND), _randomized(TINY)
    x, t = _inputs(TINY_COND)
    with pytest.raises(ValueError, match=r"class-conditional \(num_classes=10\) and needs class_labels"):
        cond(x, t)
    with pytest.raises(ValueError, match=r"unconditional model \(num_classes=0\).*model\(x, t\)"):
        uncond(x, t, class_labels=torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"range over 0\.\.11, expected 0\.\.10"):
        cond(x, t, class_labels=torch.tensor([0, 1, 2, 11]))
    with pytest.raises(ValueError, match=r"range over -1\.\.2"):
        cond(x, t, class_labels=torch.tensor([-1, 0, 1, 2]))
    with pytest.raises(ValueError, match=r"shape \(3,\), expected \[4\]"):
        cond(x, t, class_labels=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="must be integers.*torch.float32"):
        cond(x, t, class_labels=torch.zeros(4))
    with pytest.raises(ValueError, match="num_classes must be an int >= 0"):
        UNetConfig(num_classes=-1)


def test_config_records_num_classes_and_null_label_and_checks_them():
    d = TINY_COND.to_dict()
    assert d["num_classes"] == 10 and d["null_label"] == 10
    assert UNetConfig.from_dict(d) == TINY_COND
    assert "num_classes" not in TINY.to_dict() and UNetConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="null_label 3 does not match num_classes 10"):
        UNetConfig.from_dict({**d, "null_label": 3})


def test_checkpoint_rebuilds_the_conditional_model(tmp_path):
    m = _randomized(TINY_COND)
    save_checkpoint({"model_config": TINY_COND.to_dict(), "schedule_config": ScheduleConfig().to_dict(),
                     "ema": m.state_dict()}, tmp_path / "c.pt")
    m2, ck = load_model(tmp_path / "c.pt")
    assert m2.config == TINY_COND and m2.null_label == 10
    x, t = _inputs(TINY_COND)
    y = torch.tensor([0, 5, 9, 10])
    torch.testing.assert_close(m2(x, t, class_labels=y), m(x, t, class_labels=y), rtol=0, atol=0)
    # the weights of a conditional model do not load into an unconditional config
    with pytest.raises(ValueError, match="1 unexpected \\(e.g. class_embedding.weight\\)"):
        build_model({**ck, "model_config": TINY.to_dict()})


def test_diffusion_passes_labels_to_the_model():
    m = _randomized(TINY_COND)
    diff = GaussianDiffusion(ScheduleConfig(num_timesteps=10))
    x0, t = _inputs(TINY_COND)
    t = t % 10
    noise = torch.randn_like(x0)
    a = diff.loss(m, x0, t, noise, class_labels=torch.full((4,), 3))
    b = diff.loss(m, x0, t, noise, class_labels=torch.full((4,), 10))
    assert a != b
    s3, _ = diff.sample(m, x0.shape, generator=torch.Generator().manual_seed(0),
                        class_labels=torch.full((4,), 3))
    s7, _ = diff.sample(m, x0.shape, generator=torch.Generator().manual_seed(0),
                        class_labels=torch.full((4,), 7))
    assert (s3 - s7).abs().max() > 1e-4
    with pytest.raises(ValueError, match="needs class_labels"):
        diff.loss(m, x0, t, noise)


def test_the_label_path_traces_as_a_graph_input():
    """The ONNX export traces the model: the labels must stay a graph input, not constants
    baked in at the labels it was traced with."""
    m = _randomized(TINY_COND)
    x, t = _inputs(TINY_COND)
    traced = torch.jit.trace(m, (x, t, torch.tensor([1, 2, 3, 4])), check_trace=False)
    y = torch.tensor([9, 10, 0, 5])
    torch.testing.assert_close(traced(x, t, y), m(x, t, class_labels=y), rtol=0, atol=1e-5)
