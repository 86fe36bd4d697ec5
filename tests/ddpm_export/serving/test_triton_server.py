"""A real Triton Inference Server (the nvidia-pytriton wheel's tritonserver, CPU) on the
repositories 'ddpm-export triton' writes: images, concurrency, errors, disconnects, shutdown.

The wheel's server has only the Python backend, so the U-Net of the bls repository is the
Python-backend stand-in (--unet-backend python: the project's ONNX runner), which makes the
sampler's per-step BLS calls real; native ONNX Runtime / TensorRT U-Nets are checked for
how the server parses their configs. Every port is on 127.0.0.1; requests and times are bounded.
"""
import socket
import threading
import time

import numpy as np
import pytest

pytestmark = pytest.mark.triton

http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
grpc = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
from tritonclient.utils import InferenceServerException  # noqa: E402

import runtime  # noqa: E402
from ddpm_export.serving.local_server import LocalTritonServer, ServerUnavailable  # noqa: E402
from ddpm_export.serving.triton_repo import RepositoryConfig, write_repository  # noqa: E402
from triton_helpers import DIGITS, fake_plan, merge_repos, sampler_inputs  # noqa: E402

BLS, INPROCESS = "digits_sampler", "digitsip_sampler"
TIMEOUT = 60.0  # seconds any one request may take on a shared 2-core machine


def _start(repo, exit_timeout=5, **kw):
    try:
        return LocalTritonServer(repo, startup_timeout=180, exit_timeout=exit_timeout, **kw).start()
    except ServerUnavailable as e:
        pytest.skip(f"the tritonserver binary cannot start on this platform: {e}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("triton")
    a = tmp / "bls"
    b = tmp / "inprocess"
    write_repository(RepositoryConfig(engine=str(DIGITS), out=str(a), mode="bls", unet_backend="python",
                                      instances=2, max_memory_mb=1))
    write_repository(RepositoryConfig(engine=str(DIGITS), out=str(b), mode="inprocess", name="digitsip",
                                      instances=2, max_memory_mb=1))
    # exit_timeout 2: the raw-HTTP hang-ups below leave connections Triton waits for at exit
    s = _start(merge_repos(tmp / "repo", a, b), exit_timeout=2, log_path=tmp / "server.log")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def engine():
    with runtime.load(DIGITS) as e:
        yield e


def _http(server):
    return http.InferenceServerClient(server.http_url, connection_timeout=TIMEOUT, network_timeout=TIMEOUT)


def _images(client, model, *args, **kw):
    mod = http if isinstance(client, http.InferenceServerClient) else grpc
    extra = {} if mod is http else {"client_timeout": TIMEOUT}
    return client.infer(model, sampler_inputs(mod, *args, **kw), **extra).as_numpy("images")


@pytest.mark.parametrize("model", [BLS, INPROCESS])
def test_images_equal_the_runtime_http_and_grpc(server, engine, model):
    h, g = _http(server), grpc.InferenceServerClient(server.grpc_url)
    try:
        for num, seed, method, steps, eta in [(3, 11, "ddim", 4, None), (2, 5, "ddim", 3, 1.0),
                                              (2, 7, "ddpm", 4, None), (2, 9, "unipc", 5, None)]:
            want = engine.sample(num, seed=seed, method=method, steps=steps, eta=eta)
            for client in (h, g):
                got = _images(client, model, num, seed, method, steps, eta)
                assert got.dtype == np.uint8 and got.shape == want.shape == (num, 16, 16, 1)
                np.testing.assert_array_equal(got, want, err_msg=f"{model} {type(client).__module__} "
                                              f"num={num} seed={seed} {method} {steps}")
        # and the seed matters: another seed gives other images
        assert not np.array_equal(_images(h, model, 3, 12, "ddim", 4), engine.sample(
            3, seed=11, method="ddim", steps=4))
    finally:
        h.close()
        g.close()


def test_eight_concurrent_clients_get_their_own_images(server, engine):
    jobs = [(BLS if i % 2 else INPROCESS, 1 + i % 4, 100 + i) for i in range(8)]
    results, errors = {}, []
    barrier = threading.Barrier(len(jobs))

    def client(i, model, num, seed):
        c = http.InferenceServerClient(server.http_url, network_timeout=3 * TIMEOUT) if i % 4 else \
            grpc.InferenceServerClient(server.grpc_url)
        try:
            barrier.wait(TIMEOUT)
            results[i] = _images(c, model, num, seed, "ddim", 3)
        except Exception as e:  # reported below with the job
            errors.append((i, repr(e)))
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(i,) + job) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(4 * TIMEOUT)
    assert not errors and len(results) == len(jobs), errors
    for i, (model, num, seed) in enumerate(jobs):
        np.testing.assert_array_equal(results[i], engine.sample(num, seed=seed, method="ddim", steps=3),
                                      err_msg=f"client {i}: {model} num={num} seed={seed}")


# (request, text of the one-line message); every one is the client's mistake: INVALID_ARG
BAD_REQUESTS = [
    (dict(num=0, seed=1), "input 'num': 0 is out of range; expected 1 <= num <= "),
    (dict(num=-3, seed=1), "input 'num': -3 is out of range"),
    (dict(num=10 ** 6, seed=1), "the repository's memory limit"),
    (dict(num=1, seed=1, method="euler"), "input 'method': 'euler' is unknown; expected one of ['ddpm', 'ddim', "),
    (dict(num=1, seed=1, steps=0), "input 'steps': 0 is out of range; expected 1 <= steps <= 1000"),
    (dict(num=1, seed=1, steps=1001), "input 'steps': 1001 is out of range; expected 1 <= steps <= 1000"),
    (dict(num=1, seed=1, method="unipc", steps=1), "inputs method/steps/eta: 1 steps are too few for unipc"),
    (dict(num=1, seed=1, method="dpmsolver++", eta=0.5), "inputs method/steps/eta: eta=0.5: method dpmsolver++"),
    (dict(num=1, seed=1, skip=("seed",)), "input 'seed' is missing"),
    (dict(num=1, seed=1, skip=("num",)), "input 'num' is missing"),
    (dict(num=1, seed=-5), "input 'seed': -5 is negative"),
    (dict(num=1, seed=1, eta=-1.0), "input 'eta': -1.0 is invalid"),
    # Triton itself checks dtypes against config.pbtxt before the model runs
    (dict(num=1, seed=1, dtypes={"num": (np.array([1.0], np.float32), "FP32")}), "FP32"),
]
STATUS = {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}  # what INVALID_ARG becomes on each


def _grpc(server):
    return grpc.InferenceServerClient(server.grpc_url)


@pytest.mark.parametrize("model", [BLS, INPROCESS])
def test_bad_requests_are_invalid_arg_with_one_line_naming_the_input(server, engine, model):
    clients = {"http": _http(server), "grpc": _grpc(server)}
    try:
        for kw, message in BAD_REQUESTS:
            for proto, c in clients.items():
                mod = http if proto == "http" else grpc
                args = dict(kw, method=kw.get("method", "ddim"))
                extra = {} if proto == "http" else {"client_timeout": TIMEOUT}
                with pytest.raises(InferenceServerException) as info:
                    c.infer(model, sampler_inputs(mod, **args), **extra)
                got = info.value
                assert message in got.message(), (proto, kw, got.message())
                assert "\n" not in got.message().strip(), got.message()
                assert got.status() == STATUS[proto], (proto, kw, got.status(), got.message())
        # the server keeps serving after all of them
        np.testing.assert_array_equal(_images(clients["http"], model, 1, 3, "ddim", 2),
                                      engine.sample(1, seed=3, method="ddim", steps=2))
        assert clients["http"].is_server_live() and clients["http"].is_model_ready(model)
    finally:
        for c in clients.values():
            c.close()


def test_an_error_quotes_only_a_short_prefix_of_a_huge_input(server):
    """A 48 MiB method string: the answer is INVALID_ARG with a short message, not the input again."""
    huge = "x" * (48 << 20)
    for proto, c in (("http", _http(server)), ("grpc", _grpc(server))):
        mod = http if proto == "http" else grpc
        extra = {} if proto == "http" else {"client_timeout": TIMEOUT}
        try:
            with pytest.raises(InferenceServerException) as info:
                c.infer(INPROCESS, sampler_inputs(mod, 1, 1, method=huge), **extra)
        finally:
            c.close()
        msg = info.value.message()
        assert info.value.status() == STATUS[proto], (proto, info.value.status(), msg[:200])
        assert len(msg) < 1000, (proto, len(msg))
        assert "input 'method': 'xxxx" in msg and f"({48 << 20} characters)" in msg, msg


def test_a_client_disconnecting_mid_request_leaves_the_server_healthy(server, engine):
    # raw HTTP: send a long request (ddpm, 150 steps), close the socket before the answer
    body = (b'{"inputs":[{"name":"num","shape":[1],"datatype":"INT32","data":[4]},'
            b'{"name":"seed","shape":[1],"datatype":"INT64","data":[1]},'
            b'{"name":"method","shape":[1],"datatype":"BYTES","data":["ddpm"]},'
            b'{"name":"steps","shape":[1],"datatype":"INT32","data":[150]}]}')
    for model in (BLS, INPROCESS):
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as s:
            s.sendall(f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: localhost\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            time.sleep(0.5)
    # gRPC: the client gives up (deadline) while the server is still sampling
    g = grpc.InferenceServerClient(server.grpc_url)
    try:
        with pytest.raises(InferenceServerException, match="(?i)deadline"):
            g.infer(BLS, sampler_inputs(grpc, 4, 2, "ddpm", 150), client_timeout=0.5)
    finally:
        g.close()
    # Triton cancels the gRPC request; the sampler notices at its next step and stops
    deadline = time.monotonic() + TIMEOUT
    while "request cancelled at step" not in server.log_tail(1 << 20) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "request cancelled at step" in server.log_tail(1 << 20)
    c = _http(server)
    try:
        assert c.is_server_ready()
        for model in (BLS, INPROCESS):
            np.testing.assert_array_equal(_images(c, model, 2, 9, "ddim", 3),
                                          engine.sample(2, seed=9, method="ddim", steps=3))
    finally:
        c.close()
    assert server.proc.poll() is None


def test_native_backend_configs_parse_and_shutdown_is_clean(tmp_path, engine):
    """The onnxruntime_onnx and tensorrt_plan U-Nets as the server parses them: their load fails
    only because this server build has no such backend; then a clean shutdown (exit code 0)."""
    plan = fake_plan(tmp_path)
    r1, r2, r3 = tmp_path / "r1", tmp_path / "r2", tmp_path / "r3"
    write_repository(RepositoryConfig(engine=str(plan), out=str(r1), mode="bls", name="unet_plan"))
    write_repository(RepositoryConfig(engine=str(DIGITS), out=str(r2), mode="bls", name="unet_onnx"))
    write_repository(RepositoryConfig(engine=str(DIGITS), out=str(r3), mode="inprocess", name="ip"))
    repo = merge_repos(tmp_path / "repo", r1, r2, r3)
    s = _start(repo, explicit_models=["ip_sampler"], log_path=tmp_path / "server.log")
    try:
        c = _http(s)
        for model, backend in (("unet_plan", "tensorrt"), ("unet_onnx", "onnxruntime")):
            with pytest.raises(InferenceServerException) as info:
                c.load_model(model)
            msg = info.value.message()
            assert f"unable to find backend library for backend '{backend}'" in msg, msg
        for model in ("unet_plan_sampler", "unet_onnx_sampler"):  # the bls samplers load on their own
            c.load_model(model)
            assert c.is_model_ready(model)
        np.testing.assert_array_equal(_images(c, "ip_sampler", 1, 4, "ddim", 2),
                                      engine.sample(1, seed=4, method="ddim", steps=2))
        c.close()
    finally:
        rc = s.stop()
    log = (tmp_path / "server.log").read_text()
    assert rc == 0, log[-3000:]
    assert "Non-graceful termination" not in log and "failed to stop server" not in log, log[-3000:]
