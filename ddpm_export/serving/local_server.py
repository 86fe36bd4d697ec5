"""Start the ``tritonserver`` binary that the ``nvidia-pytriton`` wheel ships, on localhost.

That wheel carries a real Triton Inference Server (CPU build, Python backend
only: no TensorRT or ONNX Runtime backend) plus one Python-backend stub per
Python version. As pytriton's own launcher does, the stub that matches this
interpreter goes into a private copy of the backends directory, the wheel's
bundled libraries go on LD_LIBRARY_PATH, and this interpreter's bin directory
first on PATH so the stub's embedded Python picks up the same environment
(NumPy, ONNX Runtime) as this one. Used by the
tests and scripts/bench_triton.py; a production server is NVIDIA's container.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import List, Optional, Sequence

from ddpm_export.serving.triton_repo import built_dir


class ServerUnavailable(RuntimeError):
    """The tritonserver binary is not installed or cannot start on this platform."""


class ServerFailed(RuntimeError):
    """The server started but failed (exited, or never became ready)."""


def pytriton_dist() -> Path:
    """The wheel's tritonserver directory (bin/, backends/, python_backend_stubs/)."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("pytriton")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ServerUnavailable("nvidia-pytriton is not installed (it ships the tritonserver binary); "
                                "pip install --no-deps nvidia-pytriton")
    dist = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    if not (dist / "bin" / "tritonserver").is_file():
        raise ServerUnavailable(f"{dist}/bin/tritonserver is missing: this nvidia-pytriton wheel has "
                                f"no server binary for {sys.platform}")
    return dist


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _libpython_dirs() -> List[str]:
    """The directory of this interpreter's libpython, so the stub embeds the same Python."""
    libdir = sysconfig.get_config_var("LIBDIR")
    name = sysconfig.get_config_var("INSTSONAME") or ""
    return [libdir] if libdir and name and (Path(libdir) / name).exists() else []


BACKEND_ENV_NAME = "triton-backend-numpy1"
PARENT_PTH = "ddpm_parent_env.pth"


def _parent_site_dirs() -> List[str]:
    return list(dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]))


def backend_env_dir(cache_dir=None) -> Path:
    """Where numpy1_backend_env() keeps the stub's environment for this interpreter's environment.

    Inside this virtual environment (``sys.prefix/triton-backend-numpy1``) when it is one: it
    belongs to the environment whose packages it reuses, goes away with it, and two clones
    (two virtual environments) never share one. Outside a virtual environment (``sys.prefix``
    is a system Python's, often not writable): under the user cache, keyed by the Python
    version and a hash of the resolved ``sys.prefix``. ``cache_dir`` overrides the cache root.
    """
    prefix = Path(sys.prefix).resolve()
    if cache_dir is None and prefix != Path(sys.base_prefix).resolve():
        return prefix / BACKEND_ENV_NAME
    import hashlib

    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    key = hashlib.sha256(str(prefix).encode()).hexdigest()[:12]
    root = Path(cache_dir or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ddpm-export"
    return root / f"{BACKEND_ENV_NAME}-py{ver}-{key}"


def backend_env_is_current(env_dir: Path) -> bool:
    """Whether env_dir is a finished stub environment on top of this interpreter's site-packages."""
    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    pth = Path(env_dir) / "lib" / f"python{ver}" / "site-packages" / PARENT_PTH
    return pth.is_file() and pth.read_text().split() == _parent_site_dirs()


def numpy1_backend_env(cache_dir=None) -> Optional[Path]:
    """A Python environment for the backend stub when this one has NumPy 2, else None.

    The wheel's stub (Triton 2.51) needs numpy<2 (nvidia-pytriton pins it). Where this
    interpreter has NumPy 2, a small virtual environment holds numpy<2 only and sees
    this interpreter's site-packages after it (a .pth file), so the stub gets NumPy 1.x
    and everything else (ONNX Runtime) from here. Built once with pip (~20 s, ~80 MB)
    at backend_env_dir(): inside this virtual environment. One whose .pth names other
    site-packages than this interpreter's (a copied or moved environment) is built again.
    """
    import numpy

    if int(numpy.__version__.split(".")[0]) < 2:
        return None
    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    env_dir = backend_env_dir(cache_dir)
    if backend_env_is_current(env_dir):
        return env_dir
    with built_dir(env_dir, prefix=".triton-backend-") as tmp:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp)], check=True,
                       capture_output=True, timeout=120)
        tsite = tmp / "lib" / f"python{ver}" / "site-packages"
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                            str(tsite), "numpy<2"], capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise ServerUnavailable(f"could not install numpy<2 for Triton's Python backend into "
                                    f"{tmp}: {r.stderr.strip()[-800:]}")
        paths = _parent_site_dirs()
        # a venv records its own path; it is built under a temporary name
        cfg = tmp / "pyvenv.cfg"
        cfg.write_text(cfg.read_text().replace(str(tmp), str(env_dir)))
        (tsite / PARENT_PTH).write_text("\n".join(paths) + "\n")  # written last: "done"
    return env_dir


class LocalTritonServer:
    """``with LocalTritonServer(repo) as server: server.http_url ...``; all ports on 127.0.0.1."""

    def __init__(self, repository, startup_timeout: float = 120.0, exit_timeout: int = 20,
                 explicit_models: Optional[Sequence[str]] = None, log_path=None,
                 python_env="auto"):
        self.repository = Path(repository).resolve()
        self.startup_timeout = startup_timeout
        self.exit_timeout = exit_timeout
        self.explicit_models = explicit_models
        self.http_port, self.grpc_port = free_port(), free_port()
        self.proc: Optional[subprocess.Popen] = None
        self._work = None
        self.log_path = Path(log_path) if log_path else None
        self.returncode: Optional[int] = None
        # "auto": this interpreter's environment, or numpy1_backend_env() where it has NumPy 2
        self.python_env = python_env

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def _prepare(self) -> List[str]:
        dist = pytriton_dist()
        ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
        stub = dist / "python_backend_stubs" / ver / "triton_python_backend_stub"
        if not stub.is_file():
            raise ServerUnavailable(f"nvidia-pytriton has no Python-backend stub for Python {ver} "
                                    f"({stub} missing); use a Python it ships a stub for")
        self._work = tempfile.mkdtemp(prefix="ddpm-triton-")
        backends = Path(self._work) / "backends"
        shutil.copytree(dist / "backends", backends)
        shutil.copy(stub, backends / "python" / "triton_python_backend_stub")
        cmd = [str(dist / "bin" / "tritonserver"),
               f"--model-repository={self.repository}",
               f"--backend-directory={backends}",
               f"--cache-directory={dist / 'caches'}",
               "--http-address=127.0.0.1", f"--http-port={self.http_port}",
               "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
               "--allow-metrics=false", f"--exit-timeout-secs={self.exit_timeout}",
               "--pinned-memory-pool-byte-size=0"]
        if self.explicit_models is not None:
            cmd.append("--model-control-mode=explicit")
            cmd += [f"--load-model={m}" for m in self.explicit_models]
        else:
            cmd.append("--exit-on-error=true")
        return cmd

    def _env(self) -> dict:
        dist = pytriton_dist()
        if self.python_env == "auto":
            self.python_env = numpy1_backend_env()
        self.python_env = Path(self.python_env) if self.python_env else None
        env = dict(os.environ)
        libs = _libpython_dirs() + [str(dist.parent.parent / "nvidia_pytriton.libs")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
        # the stub embeds Python and finds its prefix through the "python" on PATH; this
        # interpreter's directory first makes a virtual environment's site-packages visible
        bindir = self.python_env / "bin" if self.python_env else Path(sys.executable).parent
        env["PATH"] = os.pathsep.join([str(bindir), env.get("PATH", "")])
        return env

    def start(self) -> "LocalTritonServer":
        cmd = self._prepare()
        log = open(self.log_path, "w+b") if self.log_path else tempfile.TemporaryFile()
        self._log = log
        try:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self._env(),
                                         start_new_session=True)
        except OSError as e:
            raise ServerUnavailable(f"cannot execute {cmd[0]}: {e}") from None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerFailed(f"tritonserver exited with code {self.proc.returncode} while "
                                   f"starting:\n{self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.25)
        self.stop()
        raise ServerFailed(f"tritonserver not ready after {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def ready(self, path: str = "/v2/health/ready") -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, chars: int = 4000) -> str:
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")[-chars:]

    def stop(self) -> int:
        """SIGTERM, wait for Triton's own graceful exit, SIGKILL only after the timeout."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.exit_timeout + 15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self.proc is not None:
            self.returncode = self.proc.returncode
        if self._work:
            shutil.rmtree(self._work, ignore_errors=True)
            self._work = None
        return self.returncode

    def __enter__(self) -> "LocalTritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
