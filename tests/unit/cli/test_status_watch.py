"""``status --watch`` rendering and loop: a pure unit with a scripted sequence of refreshes
(answers, an unreachable daemon, Ctrl-C) and a no-op sleep; the real daemon is exercised in
tests/integration/test_status_watch.py."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest

from tracker_daemon.cli.status_cli import CLEAR, Refresh, watch

UP = Refresh({"healthy": True, "reachable": True, "version": "x", "received": 7}, "")
DOWN = Refresh({"reachable": False, "healthy": False, "unhealthy_reasons": ["unreachable: t"]}, "t")


def _script(*items: Refresh | type[BaseException]) -> Iterator[Refresh]:
    for item in items:
        if isinstance(item, Refresh):
            yield item
        else:
            raise item()


def _run(items: list[Refresh | type[BaseException]], **kw: object) -> tuple[int, str]:
    it = _script(*items)
    out = io.StringIO()
    opts: dict[str, object] = {"interval": 0.5, "count": None, "as_json": False, "tty": False}
    opts.update(kw)
    code = watch(lambda: next(it), out=out, sleep=lambda s: None, **opts)  # type: ignore[arg-type]
    return code, out.getvalue()


def test_plain_blocks_with_timestamps_and_retry_after_unreachable() -> None:
    code, text = _run([UP, DOWN, UP, KeyboardInterrupt])
    assert code == 0  # Ctrl-C
    blocks = text.split("--- ")[1:]
    assert len(blocks) == 3
    assert "received" in blocks[0] and "received" in blocks[2]
    assert "tracker-daemon status: t" in blocks[1]
    assert CLEAR not in text


def test_tty_redraws_in_place() -> None:
    code, text = _run([UP, UP], count=2, tty=True)
    assert code == 0
    assert text.count(CLEAR) == 2 and text.startswith(CLEAR)
    assert "every 0.5 s" in text and "Ctrl-C to quit" in text


def test_json_one_document_per_line_and_count_exit_status() -> None:
    code, text = _run([UP, DOWN, UP, DOWN], count=4, as_json=True, tty=True)
    assert code == 1  # the last refresh: unreachable
    docs = [json.loads(line) for line in text.splitlines()]
    assert [d["reachable"] for d in docs] == [True, False, True, False]
    assert CLEAR not in text


@pytest.mark.parametrize("last,code", [(UP, 0), (DOWN, 1)])
def test_count_stops_with_the_last_status(last: Refresh, code: int) -> None:
    got, text = _run([DOWN, last, UP], count=2)
    assert got == code
    assert text.count("--- ") == 2
