"""``tracker-daemon bench`` reports its progress: repeats done of all, on a terminal one redrawn
line, elsewhere an ``event=progress`` line after each repeat. The scenarios are replaced by instant
fakes (a real one runs for tens of seconds; the loop around them is what is tested here)."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import pytest

from tracker_daemon.bench import command
from tracker_daemon.bench.harness import Ctx, Skipped
from tracker_daemon.cli.cli import build_parser

values = itertools.count(1000)


def fake_client(ctx: Ctx, rep: int, rep_dir: Path) -> dict[str, float]:
    return {"log_metric_p50_ns": float(next(values))}


def fake_skipped(ctx: Ctx, rep: int, rep_dir: Path) -> dict[str, float]:
    raise Skipped("no PostgreSQL here")


@pytest.fixture
def fake_runners(monkeypatch: pytest.MonkeyPatch) -> None:
    runners = {**command.RUNNERS, "client": fake_client, "postgres": fake_skipped}
    monkeypatch.setattr(command, "RUNNERS", runners)


def bench(*argv: str) -> int:
    args = build_parser().parse_args(["bench", *argv])
    return command.run_bench(args)


def test_plain_lines_after_each_repeat(
    fake_runners: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench("client", "postgres", "--repeat", "3", "--quick") == 0
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("event=progress")]
    fields = [dict(f.split("=", 1) for f in line.split()) for line in lines]
    assert [(f["done"], f["total"], f.get("scenario"), f.get("repeat")) for f in fields] == [
        ("1", "6", "client", "1/3"),
        ("2", "6", "client", "2/3"),
        ("3", "6", "client", "3/3"),
        ("6", "6", None, None),  # the skipped scenario's repeats count as done
    ]
    assert all(f["op"] == "bench" and f["unit"] == "repeats" for f in fields)
    assert "bench: postgres: skipped: no PostgreSQL here" in err
    assert "\r" not in err


def test_one_redrawn_line_on_a_terminal(
    fake_runners: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Tty()
    monkeypatch.setattr("sys.stderr", term)
    assert bench("client", "--repeat", "1", "--quick") == 0
    out = term.getvalue()
    assert out.startswith("\rbench: 0/1 repeats (0%)  [client 1/1]")
    assert "\rbench: 1/1 repeats (100%)" in out
    assert "event=progress" not in out
    drawn = out.split("\n")[0]
    assert drawn.count("\r") == 2 and drawn.endswith(" s")  # "done in N s", then the line ends
