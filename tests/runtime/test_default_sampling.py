"""A manifest's non-binding ``sampling`` section (``"binding": false``): a default method, step
count and options (what an imported diffusers DDIMPipeline folder samples with), that any
flag overrides; validated like the rest of the manifest. No engine runs here."""
import json
from pathlib import Path

import pytest

from runtime.contract import ManifestError, is_student, plan_options, sampling_plan, validate_manifest

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = {"binding": False, "method": "ddim", "steps": 50, "options": {"eta": 0.0, "variant": "diffusers"},
           "source": "diffusers DDIMPipeline's defaults"}


@pytest.fixture(scope="module")
def manifest():
    m = json.loads((ROOT / "engines" / "digits.json").read_text())
    assert "sampling" not in m
    return dict(m, sampling=DEFAULT)


def test_a_default_is_valid_and_not_a_student(manifest):
    validate_manifest(manifest)
    assert not is_student(manifest) and not is_student({"schedule": {}})
    assert is_student({"sampling": {"method": "consistency"}})  # binding absent = binding (older students)


def test_plan_takes_the_default_where_nothing_is_asked(manifest):
    opts = {"eta": 0.0, "variant": "diffusers"}
    assert sampling_plan(manifest) == {"method": "ddim", "steps": 50, "timesteps": None, "options": opts}
    assert sampling_plan(manifest, steps=10)["steps"] == 10
    assert sampling_plan(manifest, "ddim") == {"method": "ddim", "steps": 50, "timesteps": None, "options": opts}
    # another method: its own defaults, nothing of the DDIM default
    assert sampling_plan(manifest, "ddpm") == {"method": "ddpm", "steps": None, "timesteps": None, "options": {}}
    assert sampling_plan(manifest, "unipc", 10)["options"] == {}
    plan = sampling_plan(manifest)
    assert plan_options(plan, {"eta": 0.5, "variant": None, "spacing": None}) == {"eta": 0.5, "variant": "diffusers"}
    assert plan_options(plan) == opts and plan["options"] == opts  # merged into a copy


@pytest.mark.parametrize("bad, field", [
    (dict(DEFAULT, binding="no"), "sampling.binding"),
    (dict(DEFAULT, method="plms"), "sampling.method"),
    (dict(DEFAULT, steps=0), "sampling.steps"),
    (dict(DEFAULT, steps=1001), "sampling.steps"),
    (dict(DEFAULT, options=[("eta", 0.0)]), "sampling.options"),
    (dict(DEFAULT, options={"order": 2}), "sampling.options: option order=2 does not apply to method ddim"),
    (dict(DEFAULT, options={"eta": 2.0}), "sampling.options"),
    (dict(DEFAULT, options={"variant": "bh2"}), "sampling.options: variant='bh2' is not available"),
    (dict(DEFAULT, allowed_steps=[50]), "sampling: received \"keys \\['allowed_steps'\\]\""),
    (dict(DEFAULT, source=3), "sampling.source"),
])
def test_a_bad_default_is_refused_in_one_line(manifest, bad, field):
    with pytest.raises(ManifestError, match=f"manifest {field}") as e:
        validate_manifest(dict(manifest, sampling=bad))
    assert "\n" not in str(e.value)


def test_a_default_without_binding_false_is_a_student_section(manifest):
    """Without "binding": false the section is a student's and needs allowed_steps: an older
    runtime reading a default refuses it the same way instead of sampling with DDPM."""
    with pytest.raises(ManifestError, match="manifest sampling.allowed_steps"):
        validate_manifest(dict(manifest, sampling={k: v for k, v in DEFAULT.items() if k != "binding"}))
