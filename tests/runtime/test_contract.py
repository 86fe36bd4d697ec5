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
        assert embedded["manifest_version"] == contract.MANIFEST_VERSION
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
    (lambda d: d.update(manifest_version=2), "received 2, expected 1; upgrade ddpm-export"),
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
