"""Where the Triton backend stub's numpy<2 environment lives: with the environment that built it."""
import sys
from pathlib import Path

import pytest

from ddpm_export.serving import local_server as ls


def _in_a_venv() -> bool:
    return Path(sys.prefix).resolve() != Path(sys.base_prefix).resolve()


@pytest.mark.skipif(not _in_a_venv(), reason="runs in a virtual environment (make setup makes one)")
def test_inside_a_virtual_environment_it_lives_in_it():
    d = ls.backend_env_dir()
    assert d == Path(sys.prefix).resolve() / ls.BACKEND_ENV_NAME


def test_outside_one_it_is_keyed_by_the_interpreter_prefix(monkeypatch, tmp_path):
    dirs = []
    for prefix in (tmp_path / "clone-a" / "py", tmp_path / "clone-b" / "py"):
        monkeypatch.setattr(sys, "prefix", str(prefix))
        monkeypatch.setattr(sys, "base_prefix", str(prefix))  # not a venv
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        dirs.append(ls.backend_env_dir())
    assert dirs[0] != dirs[1]  # two installations never share one
    assert all(d.parent == tmp_path / "cache" / "ddpm-export" for d in dirs)
    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert all(d.name.startswith(f"{ls.BACKEND_ENV_NAME}-py{ver}-") for d in dirs)


def test_an_environment_built_on_other_site_packages_is_not_reused(tmp_path):
    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    site = tmp_path / "env" / "lib" / f"python{ver}" / "site-packages"
    site.mkdir(parents=True)
    assert not ls.backend_env_is_current(tmp_path / "env")  # unfinished: no .pth
    (site / ls.PARENT_PTH).write_text("/elsewhere/clone/.venv/lib/site-packages\n")
    assert not ls.backend_env_is_current(tmp_path / "env")  # another clone's: rebuilt, not shared
    (site / ls.PARENT_PTH).write_text("\n".join(ls._parent_site_dirs()) + "\n")
    assert ls.backend_env_is_current(tmp_path / "env")


@pytest.mark.triton
def test_the_built_environment_belongs_to_this_one():
    numpy = pytest.importorskip("numpy")
    if int(numpy.__version__.split(".")[0]) < 2:
        pytest.skip("this environment has NumPy 1: the stub uses it directly")
    d = ls.numpy1_backend_env()  # built by make setup (or here, once, ~20 s)
    assert d == ls.backend_env_dir() and ls.backend_env_is_current(d)
    if _in_a_venv():
        assert Path(sys.prefix).resolve() in d.parents
