"""'ddpm-export triton' with a policy engine (tests/tiny_policy.py, no LeRobot needed): one model
NAME_policy whose config lists every observation by its manifest name, and a real Triton server
(the nvidia-pytriton wheel's tritonserver, CPU) answering an observation history with the action
chunk runtime.load_policy(engine).predict_chunk returns, over HTTP and gRPC; every client mistake
is INVALID_ARG with a one-line message naming the input."""
import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] (Triton's config schema) is not installed")

import runtime  # noqa: E402
from ddpm_export.serving.triton_repo import (RepositoryConfig, RepositoryError, parse_config,  # noqa: E402
                                             write_repository)
from tiny_policy import tiny_policy  # noqa: E402

MODEL = "p_policy"
TIMEOUT = 60.0
MAX_BATCH = 4
STATE, ENV = "observation.state", "observation.environment_state"


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return tiny_policy(tmp_path_factory.mktemp("triton_policy"), "state")


def test_config_lists_every_observation_seed_method_steps_and_the_actions(policy, tmp_path):
    s = write_repository(RepositoryConfig(engine=str(policy), out=str(tmp_path / "r"), mode="inprocess"))
    assert s["models"] == [MODEL] and s["max_batch"] == 64  # the export's batch range
    assert s["policy"] == {"observations": {STATE: [3], ENV: [4]}, "n_obs_steps": 2, "actions": [4, 2]}
    c = parse_config((tmp_path / "r" / MODEL / "config.pbtxt").read_text())
    assert [(i.name, i.data_type, list(i.dims), i.optional) for i in c.input] == [
        (STATE, 11, [-1, 2, 3], True), (ENV, 11, [-1, 2, 4], True), ("seed", 9, [1], True),
        ("method", 13, [1], True), ("steps", 8, [1], True)]  # FP32, INT64, STRING, INT32
    assert [(o.name, o.data_type, list(o.dims)) for o in c.output] == [("actions", 11, [-1, 4, 2])]
    files = {p.name for p in (tmp_path / "r" / MODEL / "1").iterdir()}
    assert {"model.py", "model.onnx", "model.json", "p-encoder.onnx", "sampler_model.py", "runtime"} <= files


def test_a_policy_repository_refuses_bls_and_a_missing_encoder(policy, tmp_path):
    with pytest.raises(RepositoryError, match="a policy is served in inprocess mode"):
        write_repository(RepositoryConfig(engine=str(policy), out=str(tmp_path / "r"), mode="bls"))
    lone = tmp_path / "lone"
    lone.mkdir()
    for f in ("p.onnx", "p.json"):
        (lone / f).write_bytes(policy.with_name(f).read_bytes())
    with pytest.raises(RepositoryError, match="p-encoder.onnx: the policy's observation encoder is missing"):
        write_repository(RepositoryConfig(engine=str(lone / "p.onnx"), out=str(tmp_path / "r2"), mode="inprocess"))


# --- a real server -------------------------------------------------------------------------

http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

from ddpm_export.serving.local_server import LocalTritonServer, ServerUnavailable  # noqa: E402

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def image_policy(tmp_path_factory):
    return tiny_policy(tmp_path_factory.mktemp("triton_image_policy"), "image")


@pytest.fixture(scope="module")
def server(policy, image_policy, tmp_path_factory):
    from triton_helpers import merge_repos

    tmp = tmp_path_factory.mktemp("triton_policy_server")
    write_repository(RepositoryConfig(engine=str(policy), out=str(tmp / "a"), mode="inprocess",
                                      max_batch=MAX_BATCH))
    write_repository(RepositoryConfig(engine=str(image_policy), out=str(tmp / "b"), mode="inprocess", name="cam"))
    try:
        s = LocalTritonServer(merge_repos(tmp / "repo", tmp / "a", tmp / "b"), startup_timeout=180, exit_timeout=5,
                              log_path=tmp / "server.log").start()
    except ServerUnavailable as e:
        pytest.skip(f"the tritonserver binary cannot start on this platform: {e}")
    yield s
    s.stop()


def _history(b, seed=0):
    rng = np.random.default_rng(seed)
    return {STATE: rng.uniform(-2, 2, (b, 2, 3)).astype(np.float32),
            ENV: rng.uniform(-2, 2, (b, 2, 4)).astype(np.float32)}


def _inputs(mod, hist, seed=None, method=None, steps=None, extra=()):
    values = {k: (v, "FP32") for k, v in hist.items()}
    if seed is not None:
        values["seed"] = (np.array([seed], np.int64), "INT64")
    if method is not None:
        values["method"] = (np.array([method.encode()], dtype=object), "BYTES")
    if steps is not None:
        values["steps"] = (np.array([steps], np.int32), "INT32")
    values.update(dict(extra))
    out = []
    for name, (a, dt) in values.items():
        i = mod.InferInput(name, list(a.shape), dt)
        i.set_data_from_numpy(a)
        out.append(i)
    return out


def _clients(server):
    return {"http": (http.InferenceServerClient(server.http_url, network_timeout=TIMEOUT), http),
            "grpc": (grpc.InferenceServerClient(server.grpc_url), grpc)}


def test_the_action_chunk_is_predict_chunks_over_http_and_grpc(server, policy):
    clients = _clients(server)
    try:
        for kw in (dict(b=1, seed=3, method="ddim", steps=3), dict(b=3, seed=7, method="ddim", steps=5),
                   dict(b=2, seed=1, method=None, steps=None), dict(b=1, seed=None, method="unipc", steps=4)):
            hist = _history(kw["b"], seed=kw["b"])
            p = runtime.load_policy(policy, method=kw["method"], steps=kw["steps"])
            want = p.predict_chunk(hist, seed=kw["seed"] or 0)  # no seed sent: seed 0
            p.close()
            for proto, (c, mod) in clients.items():
                got = c.infer(MODEL, _inputs(mod, hist, kw["seed"], kw["method"], kw["steps"])).as_numpy("actions")
                assert got.dtype == np.float32 and got.shape == want.shape == (kw["b"], 4, 2)
                np.testing.assert_array_equal(got, want, err_msg=f"{proto} {kw}")
        # another seed, another chunk
        hist = _history(1)
        a = clients["http"][0].infer(MODEL, _inputs(http, hist, 1, "ddim", 3)).as_numpy("actions")
        b = clients["http"][0].infer(MODEL, _inputs(http, hist, 2, "ddim", 3)).as_numpy("actions")
        assert not np.array_equal(a, b)
    finally:
        for c, _ in clients.values():
            c.close()


def test_an_image_policy_takes_its_camera_history(server, image_policy):
    rng = np.random.default_rng(4)
    hist = {STATE: rng.uniform(-2, 2, (2, 2, 3)).astype(np.float32),
            "observation.image": rng.uniform(0, 1, (2, 2, 3, 32, 32)).astype(np.float32)}
    p = runtime.load_policy(image_policy, method="ddim", steps=3)
    want = p.predict_chunk(hist, seed=5)
    p.close()
    for c, mod in _clients(server).values():
        try:
            got = c.infer("cam_policy", _inputs(mod, hist, 5, "ddim", 3)).as_numpy("actions")
        finally:
            c.close()
        np.testing.assert_array_equal(got, want)


def _nan():
    h = _history(2)
    h[ENV][1, 0, 2] = np.nan
    return h


BAD = [  # (history, other inputs, the message's text); every one INVALID_ARG
    ({STATE: _history(1)[STATE]}, {}, f"input '{ENV}' is missing; send every observation of the policy"),
    (_nan(), {}, f"input {ENV}: 1 non-finite values (NaN/Inf)"),
    ({STATE: _history(2)[STATE], ENV: _history(1)[ENV]}, {}, "batch 1, but the other observations have batch 2"),
    (_history(MAX_BATCH + 1), {}, f"batch {MAX_BATCH + 1}: expected 1 <= B <= {MAX_BATCH}"),
    (_history(1), {"seed": (np.array([-1], np.int64), "INT64")}, "input 'seed': -1 is negative"),
    (_history(1), {"method": (np.array([b"euler"], dtype=object), "BYTES")}, "input 'method': 'euler' is unknown"),
    (_history(1), {"steps": (np.array([0], np.int32), "INT32")}, "input 'steps': 0 is out of range"),
    (_history(1), {"method": (np.array([b"unipc"], dtype=object), "BYTES"),
                   "steps": (np.array([1], np.int32), "INT32")}, "inputs method/steps: 1 steps are too few for unipc"),
    # Triton's own checks against config.pbtxt: an unknown input, a dtype, a shape
    (_history(1), {"observation.velocity": (np.zeros((1, 2, 3), np.float32), "FP32")}, "observation.velocity"),
    ({STATE: _history(1)[STATE].astype(np.float64), ENV: _history(1)[ENV]}, {}, "FP64"),
    ({STATE: np.zeros((1, 3, 3), np.float32), ENV: _history(1)[ENV]}, {}, STATE),
]
STATUS = {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}


def test_client_mistakes_are_invalid_arg_naming_the_input(server, policy):
    clients = _clients(server)
    try:
        for hist, extra, message in BAD:
            for proto, (c, mod) in clients.items():
                ins = _inputs(mod, {}, extra=list(extra.items()))
                for name, a in hist.items():
                    i = mod.InferInput(name, list(a.shape), "FP64" if a.dtype == np.float64 else "FP32")
                    i.set_data_from_numpy(a)
                    ins.append(i)
                with pytest.raises(InferenceServerException) as info:
                    c.infer(MODEL, ins)
                msg = info.value.message()
                assert message in msg and "\n" not in msg.strip(), (proto, message, msg)
                assert info.value.status() == STATUS[proto], (proto, message, info.value.status(), msg)
        h = clients["http"][0]  # still serving
        got = h.infer(MODEL, _inputs(http, _history(1), 0, "ddim", 2)).as_numpy("actions")
        p = runtime.load_policy(policy, method="ddim", steps=2)
        np.testing.assert_array_equal(got, p.predict_chunk(_history(1), seed=0))
        p.close()
    finally:
        for c, _ in clients.values():
            c.close()
