"""Progress of long commands: a rich bar in a terminal, periodic plain lines elsewhere.

`govllm weights push|pull|verify` and `govllm audit verify|export` run for minutes. An operator
at a terminal wants a bar with speed and ETA; an init container or CI log wants a line every few
seconds instead (a bar's carriage returns make an unreadable log). The core functions in
cluster/ and serving/ only call `start(total)` and `advance(n)` (from any thread), so they stay
free of terminal code and the tests can pass a recorder.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Literal, TextIO

Unit = Literal["bytes", "segments", "files"]



def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class LogProgress:
    """One plain line every `interval_s` seconds (and one at the end): done/total, rate, ETA."""

    def __init__(self, description: str, unit: Unit, *, stream: TextIO | None = None,
                 interval_s: float = 5.0, clock=time.monotonic):
        self.description, self.unit, self.interval_s = description, unit, interval_s
        self.stream = stream or sys.stderr
        self._clock = clock
        self._lock = threading.Lock()
        self.total: int | None = None
        self.done = 0
        self._t0 = self._last = clock()

    def start(self, total: int) -> None:
        with self._lock:
            self.total = total
            self._t0 = self._last = self._clock()

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            now = self._clock()
            if now - self._last < self.interval_s:
                return
            self._last = now
            line = self.line(now)
        self._write(line)

    def line(self, now: float | None = None) -> str:
        elapsed = max((now if now is not None else self._clock()) - self._t0, 1e-9)
        rate = self.done / elapsed
        fmt = _size if self.unit == "bytes" else (lambda v: f"{v:.0f}")
        text = f"{self.description}: {fmt(self.done)}"
        if self.total:
            text += f" of {fmt(self.total)} ({100 * self.done / self.total:.0f}%)"
        text += f", {_size(rate)}/s" if self.unit == "bytes" else f", {rate:.1f} {self.unit}/s"
        if self.total and rate > 0 and self.done < self.total:
            text += f", ETA {(self.total - self.done) / rate:.0f} s"
        return text + f", {elapsed:.0f} s elapsed"

    def close(self) -> None:
        self._write(self.line())

    def _write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class BarProgress:
    """rich.progress in a terminal: bar, count or size, speed and ETA (on stderr)."""

    def __init__(self, description: str, unit: Unit, *, stream: TextIO | None = None):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        amount = [DownloadColumn(), TransferSpeedColumn()] if unit == "bytes" else [MofNCompleteColumn()]
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), *amount,
                                  TimeRemainingColumn(),
                                  console=Console(file=stream or sys.stderr), transient=False)
        self._task = self._progress.add_task(description, total=None)

    def start(self, total: int) -> None:
        self._progress.update(self._task, total=total)

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)  # rich's Progress is thread-safe

    def __enter__(self) -> BarProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()


def progress(description: str, unit: Unit, *, stream: TextIO | None = None,
             interval_s: float = 5.0) -> LogProgress | BarProgress:
    """A bar when `stream` (default stderr) is a terminal, plain periodic lines otherwise."""
    stream = stream or sys.stderr
    if stream.isatty():
        return BarProgress(description, unit, stream=stream)
    return LogProgress(description, unit, stream=stream, interval_s=interval_s)
