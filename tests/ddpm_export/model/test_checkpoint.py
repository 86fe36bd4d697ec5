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


# --- loading never runs code; old files; the shareable form --------------------------------

import json  # noqa: E402
import pathlib  # noqa: E402

import numpy as np  # noqa: E402

from ddpm_export.model.checkpoint import (  # noqa: E402
    convert_checkpoint,
    load_safetensors,
    save_safetensors,
)
from runtime.io import sha256_file  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[3]


def test_shipped_checkpoint_loads_weights_only_unchanged():
    """engines/digits.pt predates the weights-only rule (its provenance holds a TorchVersion):
    it loads as it is, so the sha256 its engines' manifests record still names it."""
    ck = load_checkpoint(ROOT / "engines" / "digits.pt")
    assert ck["provenance"]["torch"] == "2.13.0+cpu" and ck["step"] > 0
    sha = sha256_file(ROOT / "engines" / "digits.pt")
    for m in ("digits.json", "digits-fp16.json"):
        assert json.loads((ROOT / "engines" / m).read_text())["source"]["checkpoint_sha256"] == sha


def test_save_refuses_types_a_weights_only_load_would_not_admit(tmp_path):
    ck, _ = _ckpt()
    ck["provenance"] = {"when": object()}
    with pytest.raises(TypeError, match=r"checkpoint\['provenance'\]\['when'\] is a builtins.object"):
        save_checkpoint(ck, tmp_path / "a.pt")
    assert not (tmp_path / "a.pt").exists()
    ck["provenance"] = {"torch": torch.__version__, "out": pathlib.Path("runs/x"), "n": np.int64(3)}
    save_checkpoint(ck, tmp_path / "a.pt")  # str subclasses, paths, numpy scalars become plain
    prov = torch.load(tmp_path / "a.pt", weights_only=True)["provenance"]  # no allow-list needed
    assert prov == {"torch": str(torch.__version__), "out": "runs/x", "n": 3} and type(prov["n"]) is int


def test_trusted_old_file_converts_only_with_the_explicit_flag(tmp_path):
    ck, m = _ckpt()
    ck.update(format="ddpm-export/1", provenance={"out": pathlib.Path("runs/old")})
    torch.save(ck, tmp_path / "old.pt")  # a pickled PosixPath: what an older writer could leave
    with pytest.raises(CheckpointError, match=r"old.pt: refused: .*pathlib.*convert-checkpoint .*old.pt NEW.pt --trust-pickle"):
        load_checkpoint(tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="refused"):
        convert_checkpoint(tmp_path / "old.pt", tmp_path / "new.pt")
    assert not (tmp_path / "new.pt").exists()
    convert_checkpoint(tmp_path / "old.pt", tmp_path / "new.pt", trust_pickle=True)
    new = load_checkpoint(tmp_path / "new.pt")
    assert new["provenance"] == {"out": "runs/old"}
    assert all(torch.equal(new["ema"][k], v) for k, v in m.state_dict().items())


def test_safetensors_is_the_shareable_form(tmp_path):
    ck, m = _ckpt()
    ck.update(step=7, provenance={"seed": 1}, model=m.state_dict(), optimizer={"state": {}})
    save_checkpoint(ck, tmp_path / "a.pt")
    convert_checkpoint(tmp_path / "a.pt", tmp_path / "a.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "a.safetensors"), framework="pt") as f:  # plain JSON in the header
        assert json.loads(f.metadata()["model_config"]) == ck["model_config"]
    m2, loaded = load_model(tmp_path / "a.safetensors")
    assert loaded["step"] == 7 and loaded["provenance"] == {"seed": 1} and "optimizer" not in loaded
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 900])
    torch.testing.assert_close(m2(x, t), m.eval()(x, t), rtol=0, atol=0)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="foreign.safetensors: not a ddpm-export checkpoint"):
        load_checkpoint(tmp_path / "foreign.safetensors")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "a.safetensors").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cut.safetensors: cannot be read"):
        load_safetensors(tmp_path / "cut.safetensors")
    save_safetensors(ck, tmp_path / "raw.safetensors", weights="model")
    assert load_checkpoint(tmp_path / "raw.safetensors")["ema"].keys() == m.state_dict().keys()
