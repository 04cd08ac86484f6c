"""The one place that decides how progress looks: a tqdm bar on a terminal, plain lines otherwise.

Under CI, nohup, SLURM or `| tee`, stderr is not a terminal and a bar's carriage-return redraws would pile up in
the log. There `progress_bar` returns a `LineBar`: the same facts (position, percentage, rate, ETA, and whatever
the caller shows as postfix: current/best dev score, failures) as one plain line every 10 % of the total or every
30 s, whichever comes first, plus a last line at the end. MER_PIPE_PROGRESS=bar|lines forces either.
"""
from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

LINE_FRACTION = 0.10  # a line each time another 10 % of the total is done
LINE_SECONDS = 30.0  # ... or when this long has passed since the last line
ENV = "MER_PIPE_PROGRESS"


def interactive(stream: IO[str] | None = None) -> bool:
    """True when progress should be drawn as a bar: `MER_PIPE_PROGRESS` (bar|lines), else stream is a TTY."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in ("bar", "lines"):
        return forced == "bar"
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or file-less stream
        return False


def hms(seconds: float) -> str:
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


class LineBar:
    """The part of tqdm's interface the pipeline uses, printing plain lines (no '\\r') at a bounded rate."""

    def __init__(self, total: int, desc: str = "", unit: str = "it", file: IO[str] | None = None,
                 every_fraction: float = LINE_FRACTION, every_seconds: float = LINE_SECONDS) -> None:
        self.total, self.desc, self.unit, self.n = max(0, int(total)), desc, unit, 0
        self.file = file
        self.postfix = ""
        self._step = max(1, int(self.total * every_fraction)) if self.total else 0
        self._every_s = every_seconds
        self._t0 = self._last_t = time.monotonic()
        self._next_n = self._step
        self._last_n = 0
        self._closed = False

    def _out(self) -> IO[str]:
        return self.file if self.file is not None else sys.stderr

    def line(self) -> str:
        elapsed = time.monotonic() - self._t0
        rate = self.n / elapsed if elapsed > 0 else 0.0
        pos = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        eta = f", ETA {hms((self.total - self.n) / rate)}" if self.total and rate > 0 and self.n < self.total else ""
        head = f"{self.desc}: " if self.desc else ""
        tail = f", {self.postfix}" if self.postfix else ""
        return f"{head}{pos}{pct}, {rate:.2f} {self.unit}/s, elapsed {hms(elapsed)}{eta}{tail}"

    def _emit(self) -> None:
        print(self.line(), file=self._out(), flush=True)
        self._last_t, self._last_n = time.monotonic(), self.n
        while self._step and self._next_n <= self.n:
            self._next_n += self._step

    def update(self, n: int = 1) -> None:
        self.n += n
        if (self._step and self.n >= self._next_n) or time.monotonic() - self._last_t >= self._every_s:
            self._emit()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_postfix(self, refresh: bool = True, **kw: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def set_description_str(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def write(self, s: str, file: IO[str] | None = None) -> None:
        print(s, file=file if file is not None else self._out(), flush=True)

    def close(self) -> None:
        if not self._closed and self.n != self._last_n:
            self._emit()  # the final position, unless the last line already showed it
        self._closed = True


def progress_bar(total: int, *, desc: str = "", unit: str = "it", file: IO[str] | None = None, **tqdm_kw: Any) -> Any:
    """A tqdm bar on a terminal (tqdm_kw passed on), else a LineBar with the same calls (update, set_postfix_str,
    set_description_str, write, close)."""
    stream = file if file is not None else sys.stderr
    if interactive(stream):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=stream, **tqdm_kw)
    return LineBar(total, desc=desc, unit=unit, file=file)
