"""'ddpm-export triton' with a conditional engine: the configs list every condition input
and guidance, and a real Triton server (the nvidia-pytriton wheel's tritonserver, CPU, bls
with the Python-backend U-Net and inprocess) samples what the runtime samples with the same
labels and guidance, and answers a wrong shape, dtype, an out-of-range label or a missing
condition with INVALID_ARG naming the input. The engine: tests/cond_engines.py (T = 50)."""
import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] (Triton's config schema) is not installed")

import runtime  # noqa: E402
from cond_engines import K, array_cond_engine, class_cond_engine  # noqa: E402
from ddpm_export.serving.triton_repo import RepositoryConfig, parse_config, write_repository  # noqa: E402
from triton_helpers import merge_repos  # noqa: E402

BLS, INPROCESS = "cond_sampler", "condip_sampler"
TIMEOUT = 60.0


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    d = tmp_path_factory.mktemp("cond_engines")
    return class_cond_engine(d), array_cond_engine(d)


def _config(repo, model):
    return parse_config((repo / model / "config.pbtxt").read_text())


def test_configs_list_every_condition_input_and_guidance(engines, tmp_path):
    cond, arr = engines
    s = write_repository(RepositoryConfig(engine=str(cond), out=str(tmp_path / "r"), mode="bls"))
    assert s["conditions"] == ["class_labels"] and s["max_batch"] == 16
    unet = _config(tmp_path / "r", "cond")
    assert [(i.name, i.data_type, list(i.dims)) for i in unet.input] == [
        ("x_t", 11, [1, 8, 8]), ("t", 8, [1]), ("class_labels", 9, [1])]  # FP32, INT32, INT64
    assert list(unet.input[2].reshape.shape) == [] and unet.input[2].HasField("reshape")
    sampler = _config(tmp_path / "r", BLS)
    ins = {i.name: (i.data_type, list(i.dims), i.optional) for i in sampler.input}
    assert ins["class_labels"] == (9, [-1], True) and ins["guidance"] == (11, [1], True)
    assert [o.name for o in sampler.output] == ["images"]
    write_repository(RepositoryConfig(engine=str(arr), out=str(tmp_path / "a"), mode="inprocess"))
    sampler = _config(tmp_path / "a", "arr_sampler")
    assert {i.name: list(i.dims) for i in sampler.input}["global_cond"] == [-1, 5]
    assert [(o.name, o.data_type, list(o.dims)) for o in sampler.output] == [("samples", 11, [-1, 6, 2])]


# --- a real server -------------------------------------------------------------------------

http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

from ddpm_export.serving.local_server import LocalTritonServer, ServerUnavailable  # noqa: E402


@pytest.fixture(scope="module")
def server(engines, tmp_path_factory):
    cond, arr = engines
    tmp = tmp_path_factory.mktemp("triton_cond")
    write_repository(RepositoryConfig(engine=str(cond), out=str(tmp / "a"), mode="bls", unet_backend="python"))
    write_repository(RepositoryConfig(engine=str(cond), out=str(tmp / "b"), mode="inprocess", name="condip"))
    write_repository(RepositoryConfig(engine=str(arr), out=str(tmp / "c"), mode="inprocess"))
    try:
        s = LocalTritonServer(merge_repos(tmp / "repo", tmp / "a", tmp / "b", tmp / "c"), startup_timeout=180,
                              exit_timeout=5, log_path=tmp / "server.log").start()
    except ServerUnavailable as e:
        pytest.skip(f"the tritonserver binary cannot start on this platform: {e}")
    yield s
    s.stop()


def _inputs(mod, num, seed, values):
    """values: name -> (array, Triton dtype) besides num, seed, method ddim, steps 3."""
    base = {"num": (np.array([num], np.int32), "INT32"), "seed": (np.array([seed], np.int64), "INT64"),
            "method": (np.array([b"ddim"], dtype=object), "BYTES"), "steps": (np.array([3], np.int32), "INT32")}
    out = []
    for name, (a, dt) in {**base, **values}.items():
        i = mod.InferInput(name, list(a.shape), dt)
        i.set_data_from_numpy(a)
        out.append(i)
    return out


def _labels(*v):
    return np.array(v, np.int64), "INT64"


@pytest.mark.parametrize("model", [BLS, INPROCESS])
def test_labels_and_guidance_give_the_runtimes_images(server, engines, model):
    h = http.InferenceServerClient(server.http_url, network_timeout=TIMEOUT)
    g = grpc.InferenceServerClient(server.grpc_url)
    try:
        with runtime.load(engines[0]) as e:
            for labels, w in (([0, 3, 1], None), ([2, 2, 2], 3.0), ([1, 0, 3], 1.0)):
                want = e.sample(3, seed=5, method="ddim", steps=3, cond={"class_labels": np.array(labels)},
                                guidance=w)
                values = {"class_labels": _labels(*labels)}
                if w is not None:
                    values["guidance"] = (np.array([w], np.float32), "FP32")
                for client, mod in ((h, http), (g, grpc)):
                    got = client.infer(model, _inputs(mod, 3, 5, values)).as_numpy("images")
                    np.testing.assert_array_equal(got, want, err_msg=f"{model} {mod.__name__} {labels} {w}")
            # one label for all: [1] broadcast
            got = h.infer(model, _inputs(http, 2, 1, {"class_labels": _labels(2)})).as_numpy("images")
            np.testing.assert_array_equal(got, e.sample(2, seed=1, method="ddim", steps=3, cond={"class_labels": 2}))
    finally:
        h.close()
        g.close()


def test_array_engine_answers_float32_samples(server, engines):
    h = http.InferenceServerClient(server.http_url, network_timeout=TIMEOUT)
    gc = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    try:
        got = h.infer("arr_sampler", _inputs(http, 2, 4, {"global_cond": (gc, "FP32")})).as_numpy("samples")
    finally:
        h.close()
    with runtime.load(engines[1]) as e:
        want = e.sample(2, seed=4, method="ddim", steps=3, cond={"global_cond": gc})
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


BAD = [  # (values, the message's text); every one INVALID_ARG naming the input
    ({"class_labels": _labels(0, 9, 1)}, "input 'class_labels': condition 'class_labels': received label 9, "
                                         f"expected labels in [0, {K - 1}] or the null label {K}"),
    ({"class_labels": _labels(-1, 0, 1)}, "input 'class_labels': condition 'class_labels': received label -1"),
    ({"class_labels": _labels(0, 1)}, "input 'class_labels': received shape [2], expected [3]"),
    ({}, "input 'class_labels' is missing; this model is conditional"),
    ({"class_labels": (np.array([0.0, 1.0, 2.0], np.float32), "FP32")}, "class_labels"),  # Triton's dtype check
    ({"class_labels": (np.zeros((3, 1), np.int64), "INT64")}, "class_labels"),  # Triton's shape check (rank)
    ({"class_labels": _labels(0, 1, 2), "guidance": (np.array([np.nan], np.float32), "FP32")},
     "input 'guidance': guidance: received nan, expected a finite number"),
]
STATUS = {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}


@pytest.mark.parametrize("model", [BLS, INPROCESS])
def test_bad_conditions_are_invalid_arg_naming_the_input(server, engines, model):
    clients = {"http": (http.InferenceServerClient(server.http_url, network_timeout=TIMEOUT), http),
               "grpc": (grpc.InferenceServerClient(server.grpc_url), grpc)}
    try:
        for values, message in BAD:
            for proto, (c, mod) in clients.items():
                with pytest.raises(InferenceServerException) as info:
                    c.infer(model, _inputs(mod, 3, 1, values))
                msg = info.value.message()
                assert message in msg and "\n" not in msg.strip(), (proto, message, msg)
                assert info.value.status() == STATUS[proto], (proto, values, info.value.status(), msg)
        h = clients["http"][0]  # still serving
        got = h.infer(model, _inputs(http, 1, 2, {"class_labels": _labels(1)})).as_numpy("images")
        with runtime.load(engines[0]) as e:
            np.testing.assert_array_equal(got, e.sample(1, seed=2, method="ddim", steps=3, cond={"class_labels": 1}))
    finally:
        for c, _ in clients.values():
            c.close()
