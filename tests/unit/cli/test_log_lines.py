"""The daemon's log lines: one ``key=value`` line per event, whatever the message holds, and no
daemon module prints or logs anything but a literal ``event=...`` format."""

from __future__ import annotations

import ast
import logging
import re
import sys
from typing import Any

from tests.support.daemon import REPO
from tests.support.logs import LOG_LINE
from tracker_daemon.cli.cli import KeyValueFormatter


def test_formatter_makes_one_key_value_line_per_event() -> None:
    fmt = KeyValueFormatter()

    def line(msg: str, *args: Any, exc: bool = False) -> str:
        record = logging.LogRecord("mlflow.x", logging.WARNING, __file__, 1, msg, args, None)
        if exc:
            try:
                raise ValueError("bad\nthing")
            except ValueError:
                record.exc_info = sys.exc_info()
        return fmt.format(record)

    own = line("event=run_started run=%s", "abc")
    assert LOG_LINE.match(own) and own.endswith("logger=mlflow.x event=run_started run=abc")
    other = line("Creating initial MLflow database tables...\nsecond line")
    assert "\n" not in other and LOG_LINE.match(other)
    assert other.endswith(
        'event=log msg="Creating initial MLflow database tables...\\nsecond line"'
    )
    failed = line("event=boom path=%s", "a\nb", exc=True)
    assert "\n" not in failed and LOG_LINE.match(failed)
    assert "path=a\\nb" in failed and ' exc="Traceback' in failed and "ValueError: bad" in failed


# command-line tools print to their user; everything else runs inside the daemon
TOOLS = {
    "cli.py",
    "demo.py",
    "status_cli.py",
}  # and the bench/ package, which this glob does not reach
LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}


def test_daemon_modules_never_print_and_log_key_value_pairs() -> None:
    problems = []
    for path in sorted((REPO / "tracker_daemon").glob("*.py")):
        if path.name in TOOLS:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            where = f"{path.name}:{node.lineno}"
            if isinstance(node.func, ast.Name) and node.func.id == "print":
                problems.append(f"{where}: print()")
            if (
                isinstance(node.func, ast.Attribute)
                and node.func.attr in LOG_METHODS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in ("log", "_log", "logger")
            ):
                first = node.args[0] if node.args else None
                if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                    problems.append(f"{where}: log message is not a string literal")
                elif not re.match(r"event=[a-z_]+( [a-z_]+=\S+)*$", first.value):
                    problems.append(f"{where}: not key=value: {first.value!r}")
    assert problems == []
