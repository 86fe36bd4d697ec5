"""runtime.progress: a bar on a terminal, a bounded number of whole lines in a log or a pipe."""
import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from runtime.progress import LogProgress, progress_bar

ROOT = Path(__file__).resolve().parents[2]


def _lines(text: str):
    return [line for line in text.split("\n") if line]


def test_a_log_gets_a_line_per_tenth_and_one_when_done():
    out = io.StringIO()  # not a terminal
    bar = progress_bar(total=1000, desc="sampling", unit="step", file=out)
    assert isinstance(bar, LogProgress)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    lines = _lines(out.getvalue())
    assert "\r" not in out.getvalue()
    assert len(lines) == 10, lines  # 10 %, 20 %, ... 100 %; close adds nothing new
    assert lines[0].startswith("sampling:  10% 100/1000 step")
    assert lines[-1].startswith("sampling: 100% 1000/1000 step")


def test_lines_are_bounded_whatever_the_update_size_and_resume_point():
    out = io.StringIO()
    with progress_bar(total=7919, initial=1234, desc="train", unit="step", file=out) as bar:
        while bar.n < 7919:
            bar.update(min(3, 7919 - bar.n))
            bar.set_postfix(loss="0.1234")
    lines = _lines(out.getvalue())
    assert 1 <= len(lines) <= 11, lines
    assert lines[-1].startswith("train: 100% 7919/7919 step") and lines[-1].endswith("loss=0.1234")


def test_a_slow_run_still_writes_every_interval():
    now = [0.0]
    out = io.StringIO()
    bar = LogProgress(total=10**6, desc="x", file=out, interval=5.0, clock=lambda: now[0])
    for _ in range(4):  # 4 updates 6 s apart, far below 10 % of the total
        now[0] += 6.0
        bar.update(1)
    assert len(_lines(out.getvalue())) == 4
    assert "~" in _lines(out.getvalue())[-1]  # an estimate of the time left


def test_iterating_closes_and_a_total_is_taken_from_len():
    out = io.StringIO()
    seen = list(progress_bar(range(50), desc="steps", file=out))
    assert seen == list(range(50))
    lines = _lines(out.getvalue())
    assert len(lines) == 10 and lines[-1].startswith("steps: 100% 50/50")


def test_unknown_total_writes_on_the_interval_and_at_close():
    out = io.StringIO()
    bar = progress_bar(desc="imgs", unit="img", file=out)
    for _ in range(100):
        bar.update(1)
    bar.close()
    assert _lines(out.getvalue()) == [_lines(out.getvalue())[0]] and "100 img" in out.getvalue()


def test_a_bad_interval_is_refused():
    with pytest.raises(ValueError, match="interval=0"):
        LogProgress(total=1, interval=0)


# The real case: a command whose stderr goes to a pipe (a log file, CI) or to a terminal.
SCRIPT = (
    "import sys\n"
    "from runtime.progress import progress_bar\n"
    "bar = progress_bar(total=5000, desc='sampling', unit='step')\n"
    "for _ in range(5000):\n"
    "    bar.update(1)\n"
    "bar.close()\n"
)


def test_a_pipe_gets_at_most_eleven_lines():
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr
    lines = _lines(r.stderr)
    assert 1 <= len(lines) <= 11 and lines[-1].startswith("sampling: 100% 5000/5000"), r.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pty: Linux only here")
def test_a_terminal_gets_the_tqdm_bar():
    pytest.importorskip("tqdm")
    pid, fd = pty.fork()
    if pid == 0:  # child: stderr is the pty
        os.chdir(ROOT)
        # a new pty is 0 columns wide, which tqdm's dynamic width would honour: make it 80
        fcntl.ioctl(2, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        os.execve(sys.executable, [sys.executable, "-c", SCRIPT],
                  {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"})
    chunks = []
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the pty
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    text = b"".join(chunks).decode(errors="replace")
    assert os.WEXITSTATUS(status) == 0, text
    assert "\r" in text and "5000/5000" in text  # tqdm redraws one line in place
