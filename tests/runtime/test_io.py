"""runtime.io's crash-safe writes: named temporaries, the stale ones a kill -9 leaves, the folder lock.

The writers and lock holders are real child processes killed with SIGKILL
(no torch: each child starts in well under a second).
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from runtime import io as rio

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and flock are POSIX")


def spawn(code: str, *args) -> subprocess.Popen:
    """A child running ``code``; returns once it printed "ready" (it is then in its window)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)] + [str(a) for a in args],
                         stdout=subprocess.PIPE, text=True, env=env)
    line = p.stdout.readline()
    if line.strip() != "ready":
        kill(p)
        pytest.fail(f"child did not get ready: {line!r}")
    return p


def kill(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    p.stdout.close()


WRITER = """
    import sys, time
    from runtime.io import atomic_write

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(b"x" * 1000)
        print("ready", flush=True)  # the temporary is written, the rename has not happened
        time.sleep(120)

    atomic_write(sys.argv[1], write)
"""

LOCKER = """
    import sys, time
    from runtime.io import folder_lock

    with folder_lock(sys.argv[1], "a test holder"):
        print("ready", flush=True)
        time.sleep(120)
"""


def test_a_writer_killed_mid_write_leaves_a_temporary_that_is_found_stale_and_removed(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")
    (tmp_path / ".last.pt.123.tmp").write_bytes(b"not ours")  # other tools' temporaries stay
    p = spawn(WRITER, target)
    try:
        tmps = [q for q in tmp_path.iterdir() if rio.temporary_writer_pid(q) is not None]
        assert len(tmps) == 1 and rio.temporary_writer_pid(tmps[0]) == p.pid
        assert tmps[0].name.startswith(f".last.pt.{p.pid}.") and tmps[0].name.endswith(".ddpm-tmp")
        assert rio.stale_temporaries(tmp_path) == []  # its writer is alive: left alone
        assert rio.remove_stale_temporaries(tmp_path) == []
    finally:
        kill(p)
    assert target.read_bytes() == b"old"  # the target is the old file, whole
    assert rio.stale_temporaries(tmp_path) == tmps
    assert rio.remove_stale_temporaries(tmp_path) == [(tmps[0], 1000)]
    assert sorted(q.name for q in tmp_path.iterdir()) == [".last.pt.123.tmp", "last.pt"]


def test_a_reused_pid_does_not_keep_a_temporary_alive(tmp_path):
    """After a restart the pid in the name may belong to a new process: one that started
    after the file was last written cannot be its writer."""
    p = spawn('print("ready", flush=True)\nimport time; time.sleep(120)')
    try:
        old = tmp_path / f".model.pt.{p.pid}.abc.ddpm-tmp"
        old.write_bytes(b"x")
        assert rio.stale_temporaries(tmp_path) == []  # written while the process lives
        an_hour_ago = time.time() - 3600
        os.utime(old, (an_hour_ago, an_hour_ago))
        assert rio.stale_temporaries(tmp_path) == [old]
    finally:
        kill(p)
    mine = tmp_path / f".a.json.{os.getpid()}.x.ddpm-tmp"  # our own pid: we are not writing it
    mine.write_bytes(b"x")
    assert mine in rio.stale_temporaries(tmp_path)


def test_folder_lock_refuses_a_second_holder_and_dies_with_a_killed_one(tmp_path):
    run = tmp_path / "run"
    p = spawn(LOCKER, run)
    try:
        with pytest.raises(rio.FolderLocked, match=rf"in use by a test holder \(pid {p.pid}.*another folder"):
            with rio.folder_lock(run, "a test holder"):
                pass
    finally:
        kill(p)
    with rio.folder_lock(run, "a test holder") as lock:  # SIGKILL released it
        assert lock.read_text().strip() == str(os.getpid())


def test_atomic_write_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "out" / "r.json"
    rio.write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1} and target.stat().st_mode & 0o777 == 0o644

    def half(tmp):
        Path(tmp).write_text("{")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        rio.atomic_write(target, half)
    assert json.loads(target.read_text()) == {"a": 1}
    assert os.listdir(target.parent) == ["r.json"]
    with pytest.raises(ValueError):  # NaN is not JSON: refused before anything is written
        rio.write_json(target, {"a": float("nan")})
    assert json.loads(target.read_text()) == {"a": 1} and os.listdir(target.parent) == ["r.json"]
