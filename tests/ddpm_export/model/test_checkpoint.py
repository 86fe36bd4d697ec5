import pytest
import torch

from ddpm_export.model.checkpoint import (
    CheckpointError,
    build_model,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from ddpm_export.model.config import PRESETS
from ddpm_export.model.unet import UNet
from runtime.schedulers.schedule import ScheduleConfig


def _ckpt(preset="tiny"):
    m = UNet(PRESETS[preset].unet)
    return {"model_config": PRESETS[preset].unet.to_dict(),
            "schedule_config": ScheduleConfig().to_dict(), "ema": m.state_dict()}, m


def test_round_trip_rebuilds_the_model_from_the_checkpoint_alone(tmp_path):
    ck, m = _ckpt()
    save_checkpoint(ck, tmp_path / "a.pt")
    m2, loaded = load_model(tmp_path / "a.pt")
    assert loaded["format"] == "ddpm-export/1" and not m2.training
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 900])
    torch.testing.assert_close(m2(x, t), m.eval()(x, t), rtol=0, atol=0)


def test_missing_truncated_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.pt")
    ck, _ = _ckpt()
    save_checkpoint(ck, tmp_path / "a.pt")
    data = (tmp_path / "a.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt: cannot be read.*truncated"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a ddpm-export checkpoint.*ddpm-export import"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_weights_of_another_architecture_are_named(tmp_path):
    ck, _ = _ckpt()
    ck["model_config"] = PRESETS["digits"].unet.to_dict()  # config says digits, weights are tiny
    with pytest.raises(CheckpointError, match="do not fit the model architecture.*another shape"):
        build_model(ck, "x.pt")
