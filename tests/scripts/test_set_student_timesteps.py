"""scripts/set_student_timesteps.py: rewrites only a student's sampling list (weights untouched),
records why in the provenance, and refuses lists the student cannot take."""
import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
SAMPLING = {"method": "consistency", "steps": 4, "allowed_steps": [1, 2, 4, 8],
            "timesteps": {"1": [999], "2": [999, 500], "4": [999, 749, 500, 250],
                          "8": [999, 874, 749, 624, 500, 375, 250, 125]}}


def _script():
    spec = importlib.util.spec_from_file_location("set_student_timesteps", ROOT / "scripts" / "set_student_timesteps.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def student(tmp_path):
    from ddpm_export.model.checkpoint import save_checkpoint
    from ddpm_export.model.config import PRESETS
    from runtime.schedulers.schedule import ScheduleConfig
    from tiny_unet import tiny_model

    path = tmp_path / "student.pt"
    save_checkpoint({"model_config": PRESETS["tiny"].unet.to_dict(),
                     "schedule_config": ScheduleConfig(prediction="v").to_dict(),
                     "ema": tiny_model(seed=3).state_dict(), "step": 6,
                     "provenance": {"command": "ddpm-export distill --teacher tiny.pt"}, "sampling": SAMPLING}, path)
    return path


def test_sets_one_list_keeps_the_weights_and_records_why(student, tmp_path):
    from ddpm_export.model.checkpoint import load_checkpoint

    out = tmp_path / "new.pt"
    assert _script().main([str(student), "--calls", "4", "--timesteps", "999,500,375,250", "--why", "search J, seeds 10-12",
                           "--out", str(out)]) == 0
    old, new = load_checkpoint(student), load_checkpoint(out)
    assert new["sampling"]["timesteps"]["4"] == [999, 500, 375, 250]
    assert {k: v for k, v in new["sampling"]["timesteps"].items() if k != "4"} == \
        {k: v for k, v in SAMPLING["timesteps"].items() if k != "4"}
    assert new["sampling"]["steps"] == 4 and old["sampling"] == SAMPLING  # --out leaves the input alone
    change = new["provenance"]["sampling_changes"]
    assert len(change) == 1 and change[0]["from"] == [999, 749, 500, 250] and change[0]["to"] == [999, 500, 375, 250]
    assert change[0]["why"] == "search J, seeds 10-12"
    assert "--timesteps 999,500,375,250 --why 'search J, seeds 10-12'" in change[0]["command"]
    assert new["provenance"]["command"] == old["provenance"]["command"]
    for k, v in old["ema"].items():
        assert torch.equal(v, new["ema"][k]), k


@pytest.mark.parametrize("args, message", [
    (["--calls", "4", "--timesteps", "999,500,250"], "3 timesteps"),
    (["--calls", "3", "--timesteps", "999,500,250"], r"allows \[1, 2, 4, 8\] calls"),
    (["--calls", "4", "--timesteps", "999,500,250,60"], r"\[60\] are not among those the student was trained at"),
    (["--calls", "4", "--timesteps", "999,250,500,125"], "not strictly descending"),
])
def test_refuses_what_the_student_cannot_take(student, args, message, capsys):
    import re

    assert _script().main([str(student), *args, "--why", "x"]) == 1
    assert re.search(message, capsys.readouterr().err)


def test_untrained_timesteps_need_the_flag(student):
    from ddpm_export.model.checkpoint import load_checkpoint

    assert _script().main([str(student), "--calls", "2", "--timesteps", "999,300", "--why", "x",
                           "--allow-untrained", "--default"]) == 0
    ckpt = load_checkpoint(student)
    assert ckpt["sampling"]["timesteps"]["2"] == [999, 300] and ckpt["sampling"]["steps"] == 2
