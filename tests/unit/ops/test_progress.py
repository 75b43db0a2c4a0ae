"""The progress reporter (tracker_daemon/ops/progress.py): formatting, and what it writes on a
terminal
and elsewhere. Pure: a fake clock and a list as the writer (no real time or terminal needed)."""

from __future__ import annotations

import io
import logging

import pytest

from tracker_daemon.ops.progress import (
    ENV_INTERVAL,
    Progress,
    plain_line,
    snapshot,
    to_log,
    tty_line,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(tty: bool, total: int = 200_000, **kw: float) -> tuple[Progress, list[str], Clock]:
    out: list[str] = []
    clock = Clock()
    shown = Progress("drain", "records", total, write=out.append, tty=tty, clock=clock, **kw)
    return shown, out, clock


def test_snapshot_rate_and_time_left() -> None:
    s = snapshot(50_000, 200_000, 2.0)
    assert (s.done, s.total, s.rate_per_s, s.eta_s, s.percent) == (
        50_000,
        200_000,
        25_000.0,
        6.0,
        25.0,
    )
    start = snapshot(0, 10, 0.0)
    assert (start.rate_per_s, start.eta_s, start.percent) == (None, None, 0.0)
    grown = snapshot(12, 10, 3.0)  # more found on the way: never past 100 %
    assert (grown.total, grown.percent, grown.eta_s) == (12, 100.0, 0.0)
    empty = snapshot(0, 0, 1.0)
    assert (empty.percent, empty.eta_s) == (100.0, 0.0)


def test_tty_line() -> None:
    assert tty_line("drain", "records", snapshot(120_000, 200_000, 2.5)) == (
        "drain: 120,000/200,000 records (60%)  48,000/s  2 s left"
    )
    assert tty_line("bench", "repeats", snapshot(3, 12, 90.0), "latency 1/3") == (
        "bench: 3/12 repeats (25%)  2.0/min  4 min 30 s left  [latency 1/3]"
    )
    assert tty_line("drain", "records", snapshot(10, 10, 7400.0)) == (
        "drain: 10/10 records (100%)  0.1/min  done in 2 h 03 min"
    )
    assert tty_line("import", "records", snapshot(0, 5, 0.0)) == "import: 0/5 records (0%)"


def test_plain_line() -> None:
    assert plain_line("drain", "records", snapshot(120_000, 200_000, 2.5), "x=1") == (
        "event=progress op=drain done=120000 total=200000 unit=records percent=60.0 "
        "rate_per_s=48000 eta_s=2 elapsed_s=2.5 x=1"
    )
    assert plain_line("bench", "repeats", snapshot(0, 3, 0.0)) == (
        "event=progress op=bench done=0 total=3 unit=repeats percent=0.0 "
        "rate_per_s=- eta_s=- elapsed_s=0.0"
    )


def test_plain_mode_writes_at_start_every_interval_and_at_the_end() -> None:
    shown, out, clock = make(tty=False, every_s=5.0)
    shown.update(0)
    for t, done in ((1.0, 1000), (4.9, 2000), (5.0, 3000), (9.0, 4000), (10.5, 5000)):
        clock.now = 100.0 + t
        shown.update(done)
    clock.now = 112.0
    shown.finish(200_000)
    assert [line.split(" elapsed_s=")[0].split(" done=")[1] for line in out] == [
        "0 total=200000 unit=records percent=0.0 rate_per_s=- eta_s=-",
        "3000 total=200000 unit=records percent=1.5 rate_per_s=600 eta_s=328",
        "5000 total=200000 unit=records percent=2.5 rate_per_s=476 eta_s=410",
        "200000 total=200000 unit=records percent=100.0 rate_per_s=16667 eta_s=0",
    ]
    assert all(line.endswith("\n") and "\r" not in line for line in out)
    shown.finish(200_000)  # once only
    assert len(out) == 4


def test_plain_finish_does_not_repeat_the_last_line() -> None:
    shown, out, clock = make(tty=False, total=3, every_s=0.0)
    for done in (1, 2, 3):
        clock.now += 1
        shown.update(done)
    shown.finish()
    assert [line.split()[2] for line in out] == ["done=1", "done=2", "done=3"]


def test_tty_mode_redraws_one_line_and_ends_it() -> None:
    shown, out, clock = make(tty=True, total=1000)
    shown.update(0)
    clock.now += 0.1
    shown.update(10)  # within 0.2 s of the last draw: not drawn
    clock.now += 0.15
    shown.update(500, total=2000)
    clock.now += 1.0
    shown.finish(2000)
    assert out == [
        "\rdrain: 0/1,000 records (0%)",
        "\rdrain: 500/2,000 records (25%)  2,000/s  1 s left",
        "\rdrain: 2,000/2,000 records (100%)  1,600/s  done in 1 s",
        "\n",
    ]


def test_tty_shorter_line_blanks_the_rest_and_end_starts_a_new_line() -> None:
    shown, out, clock = make(tty=True, total=100)
    shown.extra = "a long detail"
    shown.update(1)
    shown.end()
    shown.end()  # no line drawn now: nothing to end
    shown.extra = ""
    clock.now += 1
    shown.update(2)
    clock.now += 1
    shown.extra = "x"
    shown.update(3)
    first = "\rdrain: 1/100 records (1%)  [a long detail]"
    second = "\rdrain: 2/100 records (2%)  2.0/s  49 s left"
    assert out[:3] == [first, "\n", second]
    third = "drain: 3/100 records (3%)  1.5/s  1 min 05 s left  [x]"
    assert out[3] == "\r" + third + " " * max(0, len(second) - 1 - len(third))


def test_to_stream_picks_the_mode_from_isatty() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    term, pipe = Tty(), io.StringIO()
    for stream in (term, pipe):
        shown = Progress.to_stream("import", "records", 4, stream, every_s=60.0)
        shown.update(0)
        shown.finish(4)
    assert term.getvalue().startswith("\rimport: 0/4 records (0%)")
    assert term.getvalue().endswith("done in 0 s\n")
    lines = pipe.getvalue().splitlines()
    assert [line.split()[2:4] for line in lines] == [
        ["done=0", "total=4"],
        ["done=4", "total=4"],
    ]


def test_interval_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_INTERVAL, "0.5")
    assert make(tty=False)[0].every_s == 0.5
    monkeypatch.setenv(ENV_INTERVAL, "nonsense")
    assert make(tty=False)[0].every_s == 5.0
    assert make(tty=True)[0].every_s == 0.2


def test_to_log_writes_log_records_when_stderr_is_no_terminal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("tracker_daemon.test_progress")
    with caplog.at_level(logging.INFO, logger=logger.name):
        shown = to_log("drain", "records", 7, logger)  # pytest captures stderr: no terminal
        shown.update(0)
        shown.finish(7)
    assert [r.getMessage().split()[:4] for r in caplog.records] == [
        ["event=progress", "op=drain", "done=0", "total=7"],
        ["event=progress", "op=drain", "done=7", "total=7"],
    ]
