"""runtime.contract: constants, batch range, manifest build / validate / write / read."""
import copy
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime import contract
from runtime.contract import BatchRange, ManifestError

ROOT = Path(__file__).resolve().parents[2]
SHA = "ab" * 32


def _manifest(**over):
    kw = dict(image_shape=(3, 32, 32),
              schedule={"kind": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_timesteps": 1000,
                        "variance_type": "fixedlarge", "clip_denoised": True},
              precision="fp16", source={"checkpoint": "m.pt", "checkpoint_sha256": SHA},
              tools={"torch": "2.13.0"}, command="ddpm-export export --checkpoint m.pt")
    kw.update(over)
    return contract.manifest_dict(**kw)


def test_engines_exported_earlier_still_meet_the_contract():
    """The contract is a file format: the shipped engines, exported by an earlier version,
    must still match it (names, dtypes, batch axis, manifest key and version)."""
    onnx = pytest.importorskip("onnx")
    for name in ("digits.onnx", "digits-fp16.onnx"):
        path = ROOT / "engines" / name
        g = onnx.load(str(path), load_external_data=False).graph
        t_type = onnx.helper.tensor_dtype_to_np_dtype(g.input[1].type.tensor_type.elem_type)
        assert [i.name for i in g.input] == [contract.INPUT_X, contract.INPUT_T]
        assert [o.name for o in g.output] == [contract.OUTPUT]
        assert t_type == np.dtype(contract.T_DTYPE)
        for v in list(g.input) + list(g.output):
            assert v.type.tensor_type.shape.dim[0].dim_param == contract.BATCH_AXIS
        embedded = json.loads(contract.read_embedded_manifest(path))
        assert embedded["manifest_version"] in contract.MANIFEST_VERSIONS
        spec = contract.io_spec(embedded["image_shape"])
        assert contract.read_manifest(path)["io"] == spec == embedded["io"]
    # the exporter's dynamic axes are the io spec's batch axes
    axes = {v["name"]: {0: v["shape"][0]} for v in spec["inputs"] + spec["outputs"]}
    assert contract.dynamic_axes() == axes


def test_sidecar_path():
    assert contract.sidecar_path("engines/a.plan") == Path("engines/a.json")
    assert contract.sidecar_path("engines/a.onnx") == Path("engines/a.json")


def test_batch_range_defaults_and_errors():
    assert contract.DEFAULT_BATCH_RANGE.to_dict() == {"min": 1, "opt": 8, "max": 64}
    assert BatchRange.coerce(None) is contract.DEFAULT_BATCH_RANGE
    assert BatchRange.coerce((2, 4, 8)) == BatchRange(2, 4, 8) == BatchRange.coerce({"min": 2, "opt": 4, "max": 8})
    with pytest.raises(ManifestError, match="received min=8, opt=1, max=64; expected 1 <= min"):
        BatchRange.coerce((8, 1, 64))
    with pytest.raises(ManifestError, match="expected \\(min, opt, max\\)"):
        BatchRange.coerce("1,8,64")
    with pytest.raises(ManifestError, match="missing \\['max'\\]"):
        BatchRange.coerce({"min": 1, "opt": 2})
    with pytest.raises(ManifestError, match="batch_range.min: received 1.5"):
        BatchRange.coerce([1.5, 8, 64])
    with pytest.raises(ManifestError, match="batch_range.max: received True"):
        BatchRange(1, 1, True)


def test_manifest_dict_validates_and_round_trips(tmp_path):
    d = _manifest()
    assert contract.validate_manifest(d) == d and d["onnx_sha256"] is None
    path = contract.write_manifest(tmp_path / "engines" / "m.onnx", d)
    assert path == tmp_path / "engines" / "m.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["m.json"]  # no temporary left
    assert contract.read_manifest(path) == d
    assert contract.read_manifest(tmp_path / "engines" / "m.plan") == d  # engine -> same sidecar
    extra = dict(d, engine={"tensorrt": "10.3"})  # later tools may add sections
    assert contract.validate_manifest(extra)["engine"] == {"tensorrt": "10.3"}


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.pop("schedule"), "manifest schedule: received '<missing>', expected present"),
    (lambda d: d["io"]["inputs"][1].update(dtype="int64"),
     "io.inputs\\[1\\].dtype: received 'int64', expected 'int32'; re-export"),
    (lambda d: d["io"]["outputs"][0].update(name="out"), "io.outputs\\[0\\].name: received 'out'"),
    (lambda d: d["io"]["inputs"][0].update(shape=[1, 3, 32, 32]), "io.inputs\\[0\\].shape"),
    (lambda d: d.update(precision="int8"), "precision: received 'int8', expected one of"),
    (lambda d: d.update(manifest_version=4), "received 4, expected 1 or 2 or 3; upgrade ddpm-export"),
    (lambda d: d.update(manifest_version=3), "sample_shape: received .<missing>., expected present in a version-3"),
    (lambda d: d.update(image_shape=[3, 32]), "image_shape: received \\[3, 32\\]"),
    (lambda d: d["schedule"].pop("num_timesteps"), "schedule.num_timesteps: received '<missing>'"),
    (lambda d: d["schedule"].update(beta_start=0.5),
     r"schedule: beta_start=0.5, beta_end=0.02 \(expected 0 < beta_start < beta_end < 1"),
    (lambda d: d.update(batch_range={"min": 0, "opt": 1, "max": 2}), "expected 1 <= min <= opt <= max"),
    (lambda d: d["source"].pop("checkpoint_sha256"), "source.checkpoint_sha256: received '<missing>'"),
    (lambda d: d.update(onnx_sha256="xyz"), "onnx_sha256: received 'xyz'"),
    (lambda d: d.update(command=None), "command: received None"),
])
def test_validate_names_field_received_expected_and_fix(mutate, match):
    d = copy.deepcopy(_manifest())
    mutate(d)
    with pytest.raises(ManifestError, match=match) as e:
        contract.validate_manifest(d)
    assert "expected" in str(e.value) and ("export" in str(e.value) or "upgrade" in str(e.value))


def test_write_refuses_an_invalid_manifest_and_keeps_the_old_file(tmp_path):
    d = _manifest()
    contract.write_manifest(tmp_path / "m.json", d)
    with pytest.raises(ManifestError):
        contract.write_manifest(tmp_path / "m.json", dict(d, precision="int8"))
    assert json.loads((tmp_path / "m.json").read_text()) == d


def test_read_checks_the_onnx_hash_and_reports_missing_files(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"not the exported bytes")
    contract.write_manifest(tmp_path / "m.onnx", _manifest(onnx_sha256=SHA))
    with pytest.raises(ManifestError, match="come from different exports"):
        contract.read_manifest(tmp_path / "m.onnx")
    assert contract.read_manifest(tmp_path / "m.onnx", verify_sha256=False)["onnx_sha256"] == SHA
    with pytest.raises(FileNotFoundError, match="no such file"):
        contract.read_manifest(tmp_path / "nope.plan")
    (tmp_path / "e.plan").write_bytes(b"engine")
    with pytest.raises(ManifestError, match="no manifest sidecar"):
        contract.read_manifest(tmp_path / "e.plan")
    (tmp_path / "j.json").write_text("{oops")
    with pytest.raises(ManifestError, match="not valid JSON"):
        contract.read_manifest(tmp_path / "j.json")


@pytest.mark.parametrize("reader", ["onnx", "onnxruntime"])
def test_read_embedded_manifest(tmp_path, monkeypatch, reader):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["a"], ["b"])], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    d = _manifest()
    helper.set_model_props(model, {"other": "x", contract.MANIFEST_KEY: json.dumps(d)})
    onnx.save(model, str(tmp_path / "m.onnx"))
    if reader == "onnxruntime":  # the runtime without the onnx package
        pytest.importorskip("onnxruntime")
        monkeypatch.setitem(sys.modules, "onnx", None)
    assert contract.read_manifest(tmp_path / "m.onnx") == d  # no sidecar: embedded copy
    helper.set_model_props(model, {"other": "x"})
    onnx.save(model, str(tmp_path / "plain.onnx"))
    with pytest.raises(ManifestError, match="not written by 'ddpm-export export'"):
        contract.read_manifest(tmp_path / "plain.onnx")
    (tmp_path / "cut.onnx").write_bytes((tmp_path / "m.onnx").read_bytes()[:-40])
    with pytest.raises(ManifestError, match="truncated or not ONNX"):
        contract.read_manifest(tmp_path / "cut.onnx")


def test_contract_imports_without_torch_or_onnx():
    code = ("import sys\n"
            "for n in ('torch', 'onnx', 'onnxruntime', 'tensorrt', 'ddpm_export'):\n"
            "    sys.modules[n] = None\n"
            "import runtime.contract as c\n"
            "print(c.MANIFEST_KEY)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "ddpm_export.manifest", r.stderr


# --- schedule: prediction type, schedules, thresholding, spacing ----------------------
OLD_SCHEDULE = {"kind": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_timesteps": 1000,
                "variance_type": "fixedlarge", "clip_denoised": True}


def test_an_old_manifest_loads_with_todays_meaning():
    """A version-1 schedule (none of the later keys) is an eps model, linear betas, clipping to
    [-1, 1], leading spacing: every new field takes its default."""
    d = _manifest(schedule=dict(OLD_SCHEDULE))
    assert d["manifest_version"] == 1
    cfg = contract.schedule_config(d)
    assert contract.prediction(d) == "eps"
    assert (cfg.kind, cfg.betas, cfg.thresholding, cfg.clip_sample_range, cfg.timestep_spacing,
            cfg.steps_offset) == ("linear", None, False, 1.0, "leading", 0)
    assert cfg.is_legacy and cfg == contract.ScheduleConfig()
    shipped = contract.read_manifest(ROOT / "engines" / "digits.json")
    assert shipped["manifest_version"] == 1 and contract.prediction(shipped) == "eps"


def test_new_keys_round_trip_and_raise_the_version():
    """A schedule an older (version-1) runtime would misread is written as version 2, which
    that runtime refuses ("upgrade ddpm-export") instead of sampling v as eps."""
    betas = list(np.linspace(1e-4, 0.02, 50))
    sched = contract.ScheduleConfig(kind="explicit", betas=betas, num_timesteps=50, prediction="v",
                                    timestep_spacing="trailing", thresholding=True).to_dict()
    d = _manifest(schedule=sched)
    assert d["manifest_version"] == 2
    back = json.loads(json.dumps(d))  # through JSON, as on disk
    assert contract.validate_manifest(back)["schedule"] == sched
    assert contract.prediction(back) == "v"
    assert contract.schedule_config(back).betas == tuple(betas)
    # a kind a version-1 reader does not know: version 2 too (it says "upgrade", not "bad kind")
    assert _manifest(schedule=dict(OLD_SCHEDULE, kind="squaredcos_cap_v2"))["manifest_version"] == 2
    # eps with every later key at its default, written explicitly: still version 1
    assert _manifest(schedule=contract.ScheduleConfig().to_dict())["manifest_version"] == 1


def test_every_schedule_problem_in_one_line():
    bad = dict(OLD_SCHEDULE, kind="cosine", prediction="epsilon", thresholding="yes",
               dynamic_thresholding_ratio=1.5, sample_max_value=0.5, clip_sample_range=0,
               timestep_spacing="uniform", steps_offset=-1, betas=[0.1, 0.2])
    with pytest.raises(ManifestError) as e:
        contract.validate_manifest(dict(_manifest(), schedule=bad))
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("kind='cosine' (expected one of linear, scaled_linear, squaredcos_cap_v2, explicit)",
                 "betas=<2 values> with kind='cosine' (expected betas only with kind 'explicit'",
                 "prediction='epsilon' (expected one of eps, x0, v (diffusers' epsilon, sample, v_prediction))",
                 "thresholding='yes' (expected true or false)",
                 "dynamic_thresholding_ratio=1.5 (expected a quantile in (0, 1]",
                 "sample_max_value=0.5 (expected a number >= 1",
                 "clip_sample_range=0 (expected a number > 0)",
                 "timestep_spacing='uniform' (expected one of leading, trailing, linspace)",
                 "steps_offset=-1 (expected an int >= 0)"):
        assert part in msg, part


@pytest.mark.parametrize("schedule, match", [
    (dict(kind="explicit"), r"betas=None \(expected a list of at least 2 betas with kind 'explicit'\)"),
    (dict(kind="explicit", betas=[0.1, 1.0, 0.0, "x"], num_timesteps=4),
     r"betas\[1\]=1.0, betas\[2\]=0.0, betas\[3\]='x' \(expected every beta a number with 0 < beta < 1\)"),
    (dict(kind="explicit", betas=[0.1, 0.2]), r"num_timesteps=1000 but len\(betas\)=2"),
    (dict(kind="scaled_linear", beta_start=0.02, beta_end=0.01), r"0 < beta_start < beta_end < 1 for kind"),
    (dict(steps_offset=1000), r"steps_offset=1000 \(expected an int below num_timesteps=1000\)"),
    (dict(num_timesteps=10.5), r"num_timesteps=10.5 \(expected an int >= 2\)"),
])
def test_bad_schedules_are_refused(schedule, match):
    with pytest.raises(ValueError, match=match):
        contract.ScheduleConfig.from_dict(dict(OLD_SCHEDULE, **schedule))


def test_unknown_schedule_keys_are_refused_not_ignored():
    with pytest.raises(ManifestError, match=r"unknown key\(s\) 'rescale_betas_zero_snr' .*upgrade"):
        contract.validate_manifest(dict(_manifest(), schedule=dict(OLD_SCHEDULE, rescale_betas_zero_snr=True)))
