"""One progress display for every long loop: a tqdm bar on a terminal, a few plain lines in a log.

``progress_bar(total=..., desc=..., unit=...)`` returns an object with tqdm's small API
(``update``, ``set_postfix``, ``close``, iteration, ``with``):

- when the stream (stderr by default) is a terminal and tqdm is installed: a tqdm bar;
- otherwise (a log file, a pipe, CI, or no tqdm): ``LogProgress``, which writes one
  ``\\n``-terminated line at every 10 % of the total (and at most every ``interval`` seconds
  in between, so a long run still shows it is alive), and a last line when it closes.
  A run of any length writes at most 11 lines plus one per ``interval`` seconds.

NumPy-free, torch-free, Python 3.8; tqdm is optional.
"""
import math
import sys
import time
from typing import Any, Iterable, Iterator, Optional, TextIO

#: Seconds after which a log line is written even if the next 10 % is not reached.
DEFAULT_INTERVAL = 60.0


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable: Optional[Iterable] = None, total: Optional[int] = None, desc: str = "",
                 unit: str = "it", initial: int = 0, file: Optional[TextIO] = None,
                 interval: float = DEFAULT_INTERVAL, **tqdm_kwargs: Any):
    """A tqdm bar when ``file`` (default stderr) is a terminal, else a ``LogProgress``.

    ``tqdm_kwargs`` (``dynamic_ncols`` and the like) only reach tqdm; the log form ignores them.
    """
    stream = sys.stderr if file is None else file
    if _is_terminal(stream):
        try:
            from tqdm.auto import tqdm  # optional: the runtime needs only NumPy
        except ImportError:
            pass
        else:
            tqdm_kwargs.setdefault("dynamic_ncols", True)
            return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=stream,
                        **tqdm_kwargs)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, file=stream,
                       interval=interval)


class LogProgress:
    """Progress as a few whole lines: one per 10 % of ``total``, or per ``interval`` seconds."""

    def __init__(self, iterable: Optional[Iterable] = None, total: Optional[int] = None,
                 desc: str = "", unit: str = "it", initial: int = 0, file: Optional[TextIO] = None,
                 interval: float = DEFAULT_INTERVAL, clock=time.monotonic):
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        if interval <= 0:
            raise ValueError(f"interval={interval!r}: expected seconds > 0 between log lines")
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self.initial = int(initial)
        self.file = sys.stderr if file is None else file
        self.interval, self._clock = float(interval), clock
        self._start = self._last_time = clock()
        self._last_tenth = self._tenth(self.n)
        self._last_n: Optional[int] = None  # n at the last line written
        self._postfix = ""
        self.closed = False

    def _tenth(self, n: int) -> int:
        if not self.total:
            return 0
        return min(10, int(math.floor(10 * n / self.total)))

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self._clock()
        tenth = self._tenth(self.n)
        if tenth > self._last_tenth or now - self._last_time >= self.interval:
            self._last_tenth = tenth
            self._write(now)

    def set_postfix(self, **kwargs: Any) -> None:
        """Shown at the end of the next line (as tqdm shows it beside the bar)."""
        self._postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._last_n != self.n:
            self._write(self._clock())

    def _write(self, now: float) -> None:
        self._last_time, self._last_n = now, self.n
        elapsed = now - self._start
        done = self.n - self.initial
        parts = []
        if self.total:
            parts.append(f"{100 * self.n / self.total:3.0f}% {self.n}/{self.total} {self.unit}")
        else:
            parts.append(f"{self.n} {self.unit}")
        parts.append(f"{elapsed:.1f} s")
        if done > 0 and elapsed > 0:
            parts.append(f"{done / elapsed:.3g} {self.unit}/s")
            if self.total and self.n < self.total:
                parts.append(f"~{(self.total - self.n) * elapsed / done:.0f} s left")
        if self._postfix:
            parts.append(self._postfix)
        prefix = f"{self.desc}: " if self.desc else ""
        try:
            self.file.write(prefix + ", ".join(parts) + "\n")
            self.file.flush()
        except ValueError:  # the stream was closed under us: progress is not worth an error
            pass

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this progress was made without an iterable; call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
