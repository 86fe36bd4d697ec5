import pytest
import torch

from ddpm_export.model.config import PRESETS, UNetConfig, get_preset
from ddpm_export.model.unet import UNet, count_parameters, timestep_embedding


def test_cifar10_parameter_count_is_the_papers():
    assert count_parameters(UNet(PRESETS["cifar10"].unet)) == 35_746_307


def test_digits_preset_is_small():
    n = count_parameters(UNet(PRESETS["digits"].unet))
    assert 1_000_000 < n < 2_000_000, n


@pytest.mark.parametrize("preset", ["tiny", "digits"])
def test_forward_shape_and_dtype(preset):
    cfg = PRESETS[preset].unet
    m = UNet(cfg).eval()
    x = torch.randn(3, cfg.in_channels, cfg.image_size, cfg.image_size)
    for t in (torch.tensor([0, 500, 999]), torch.tensor([0.0, 500.0, 999.0]), torch.tensor([1, 2, 3], dtype=torch.int32)):
        y = m(x, t)
        assert y.shape == x.shape and y.dtype == torch.float32


def test_int_and_float_timesteps_agree():
    m = UNet(PRESETS["tiny"].unet).eval()
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(m(x, torch.tensor([3, 999])), m(x, torch.tensor([3.0, 999.0])))


def test_timestep_embedding_sin_first():
    e = timestep_embedding(torch.tensor([0.0, 1.0]), 8)
    # t = 0: sin(0) = 0 on the first half, cos(0) = 1 on the second
    assert torch.equal(e[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    # freqs[0] = 1, freqs[-1] = 1/10000 exactly (divided by half - 1)
    assert e[1, 0] == pytest.approx(torch.sin(torch.tensor(1.0)).item())
    assert e[1, 3] == pytest.approx(torch.sin(torch.tensor(1e-4)).item(), rel=1e-5)


def test_config_round_trip_and_checks():
    cfg = PRESETS["digits"].unet
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="not divisible by 2"):
        UNetConfig(image_size=30, ch_mult=(1, 2, 2, 2))
    with pytest.raises(ValueError, match="num_groups"):
        UNetConfig(ch=20)
    with pytest.raises(ValueError, match="unknown UNetConfig fields"):
        UNetConfig.from_dict({**cfg.to_dict(), "heads": 4})
    with pytest.raises(ValueError, match="unknown preset 'lsun'.*cifar10"):
        get_preset("lsun")


def test_zero_init_layers_are_near_zero_and_others_not():
    m = UNet(PRESETS["tiny"].unet)
    assert m.conv_out.weight.abs().max() < 1e-9
    assert m.down[0].block[0].conv2.weight.abs().max() < 1e-9
    assert m.down[0].block[0].conv1.weight.abs().max() > 1e-3
