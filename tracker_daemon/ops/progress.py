"""Progress of a long operation (``import``, ``run --until-idle``, ``bench``) for the operator.

A :class:`Progress` is told ``done`` (and, when it grows, ``total``) as often as the caller likes
and decides what to print. On a terminal it redraws one line in place (``\\r``, then the line
padded over the previous one) at most every ``tty_every_s`` and ends it with a newline; anywhere
else (a log file, journald, a pipe) it writes plain ``key=value`` lines like the daemon's log:
one at the start, one every ``every_s`` (default 5 s, ``TRACKER_PROGRESS_INTERVAL_S``)
and one at the end::

    drain: 120,000/200,000 records (60%)  48,000/s  2 s left
    event=progress op=drain done=120000 total=200000 percent=60.0 rate_per_s=48000 eta_s=2 ...

The rate is the average since the start (steady, where a recent-window rate jumps about with
batch sizes), the time left is ``(total - done) / rate``. Formatting is pure (:func:`snapshot`,
:func:`tty_line`, :func:`plain_line`); the clock and the writer are injected, so the unit tests
drive both.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

__all__ = ["Progress", "Snapshot", "plain_line", "snapshot", "to_log", "tty_line"]

ENV_INTERVAL = "TRACKER_PROGRESS_INTERVAL_S"
DEFAULT_EVERY_S = 5.0
TTY_EVERY_S = 0.2


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Where an operation stands: counts, seconds since its start, and what follows from them."""

    done: int
    total: int
    elapsed_s: float
    rate_per_s: float | None  # None until something is done
    eta_s: float | None  # None while the rate is unknown

    @property
    def percent(self) -> float:
        return 100.0 if self.total <= 0 else min(100.0, 100.0 * self.done / self.total)


def snapshot(done: int, total: int, elapsed_s: float) -> Snapshot:
    total = max(total, done)  # work found on the way (e.g. a spool) never shows > 100 %
    rate = done / elapsed_s if done > 0 and elapsed_s > 0 else None
    eta = (total - done) / rate if rate else (0.0 if done >= total else None)
    return Snapshot(done, total, elapsed_s, rate, eta)


def _duration(seconds: float) -> str:
    s = int(seconds + 0.5)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def tty_line(op: str, unit: str, snap: Snapshot, detail: str = "") -> str:
    """``drain: 120,000/200,000 records (60%)  48,000/s  2 s left`` (no line end)."""
    line = f"{op}: {snap.done:,}/{snap.total:,} {unit} ({snap.percent:.0f}%)"
    rate = snap.rate_per_s
    if rate is not None:
        line += f"  {rate:,.{0 if rate >= 10 else 1}f}/s" if rate >= 1 else f"  {rate * 60:.1f}/min"
    if snap.done >= snap.total:
        line += f"  done in {_duration(snap.elapsed_s)}"
    elif snap.eta_s is not None:
        line += f"  {_duration(snap.eta_s)} left"
    return f"{line}  [{detail}]" if detail else line


def plain_line(op: str, unit: str, snap: Snapshot, extra: str = "") -> str:
    """``event=progress op=drain done=… total=… unit=… percent=… rate_per_s=… eta_s=…
    elapsed_s=…`` (``-`` for a figure not known yet)."""
    rate = (
        "-"
        if snap.rate_per_s is None
        else f"{snap.rate_per_s:.{0 if snap.rate_per_s >= 10 else 3}f}"
    )
    eta = "-" if snap.eta_s is None else f"{snap.eta_s:.0f}"
    line = (
        f"event=progress op={op} done={snap.done} total={snap.total} unit={unit} "
        f"percent={snap.percent:.1f} rate_per_s={rate} eta_s={eta} elapsed_s={snap.elapsed_s:.1f}"
    )
    return f"{line} {extra}" if extra else line


def interval_from_env(default: float = DEFAULT_EVERY_S) -> float:
    raw = os.environ.get(ENV_INTERVAL, "")
    try:
        value = float(raw)
    except ValueError:
        return default
    return value if value > 0 else default


class Progress:
    """Reports one operation; not thread-safe (one caller at a time)."""

    def __init__(
        self,
        op: str,
        unit: str,
        total: int,
        *,
        write: Callable[[str], None],
        tty: bool,
        clock: Callable[[], float] = time.monotonic,
        every_s: float | None = None,
        tty_every_s: float = TTY_EVERY_S,
        extra: str = "",
    ) -> None:
        self.op, self.unit, self.total, self.extra = op, unit, total, extra
        self._write, self.tty, self._clock = write, tty, clock
        self.every_s = tty_every_s if tty else (interval_from_env() if every_s is None else every_s)
        self.start = clock()
        self.done = 0
        self._last: float | None = None  # when a line was last written
        self._finished = False
        self._width = 0  # of the line on screen (0: none), to blank what a shorter one leaves
        self._shown: tuple[int, int] | None = None  # (done, total) of the last line

    @classmethod
    def to_stream(
        cls,
        op: str,
        unit: str,
        total: int,
        stream: TextIO | None = None,
        *,
        every_s: float | None = None,
        extra: str = "",
    ) -> Progress:
        """Writing to ``stream`` (default stderr), in TTY mode when it is a terminal."""
        out = sys.stderr if stream is None else stream

        def write(text: str) -> None:
            out.write(text)
            out.flush()

        isatty = getattr(out, "isatty", None)
        tty = bool(isatty and isatty())
        return cls(op, unit, total, write=write, tty=tty, every_s=every_s, extra=extra)

    def snapshot(self) -> Snapshot:
        return snapshot(self.done, self.total, self._clock() - self.start)

    def update(self, done: int, total: int | None = None) -> None:
        """The operation has done ``done`` of ``total`` (unchanged when None); prints when due."""
        self.done = done
        if total is not None:
            self.total = total
        now = self._clock()
        if self._last is None or now - self._last >= self.every_s:
            self._emit(now)

    def finish(self, done: int | None = None, total: int | None = None) -> None:
        """The last line, written once (a plain line only if it differs from the last one)."""
        if self._finished:
            return
        if done is not None:
            self.done = done
        if total is not None:
            self.total = total
        if self.tty or self._shown != (self.done, self.total):
            self._emit(self._clock())
        self.end()
        self._finished = True

    def end(self) -> None:
        """End the terminal line drawn so far, before other output (the next update starts a
        new one); nothing to do for plain lines."""
        if self.tty and self._width:
            self._write("\n")
            self._width = 0

    def _emit(self, now: float) -> None:
        self._last, self._shown = now, (self.done, self.total)
        snap = snapshot(self.done, self.total, now - self.start)
        if self.tty:
            line = tty_line(self.op, self.unit, snap, self.extra)
            self._write("\r" + line + " " * max(0, self._width - len(line)))
            self._width = len(line)
        else:
            self._write(plain_line(self.op, self.unit, snap, self.extra) + "\n")


_LOG_KEYS = ("op", "done", "total", "unit", "percent", "rate_per_s", "eta_s", "elapsed_s")


def to_log(op: str, unit: str, total: int, logger: logging.Logger) -> Progress:
    """For the daemon: in place on stderr when stderr is a terminal, else as log lines (INFO)."""
    if sys.stderr.isatty():
        return Progress.to_stream(op, unit, total)

    def write(text: str) -> None:
        f = dict(kv.split("=", 1) for kv in text.split()[1:])  # the plain line's key=value pairs
        logger.info(
            "event=progress op=%s done=%s total=%s unit=%s percent=%s rate_per_s=%s eta_s=%s "
            "elapsed_s=%s",
            *(f.get(k, "-") for k in _LOG_KEYS),
        )

    return Progress(op, unit, total, write=write, tty=False)
