"""Every ``--help`` of ``tracker-daemon`` reads as user documentation: no reST markup, no
developer wording, and every configuration flag of ``run`` names its default and its
``TRACKER_DAEMON_<KEY>`` variable."""

from __future__ import annotations

import argparse
import dataclasses
import re

import pytest

from tracker_daemon.cli.cli import build_parser
from tracker_daemon.config import Config

# reST roles and literals, and sentences of the developer docstrings of cli.py and bench/
FORBIDDEN = (
    re.compile(r":(class|func|meth|mod|attr):"),
    re.compile(r"``"),
    re.compile(r"The only module"),
    re.compile(r"exits the process"),
    re.compile(r"KeyValueFormatter"),
)


def _subparsers(ap: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in ap._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


SUBCOMMANDS = sorted(_subparsers(build_parser()))


def _help(*argv: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_the_subcommands_are_all_there() -> None:
    assert SUBCOMMANDS == ["bench", "check-config", "import", "keygen", "run", "status"]


@pytest.mark.parametrize("argv", [[], *([c] for c in SUBCOMMANDS)], ids=lambda a: a or "top")
def test_help_has_no_developer_docstring(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    text = _help(*argv, capsys=capsys)
    for pattern in FORBIDDEN:
        assert not pattern.search(text), f"{pattern.pattern!r} in --help of {argv}:\n{text}"
    # a description under the usage line, not just the list of options
    assert text.split("\n\n")[1].strip(), text


def test_top_level_help_lists_commands_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys=capsys)
    for command in SUBCOMMANDS:
        assert re.search(rf"^\s+{command}\s", text, re.M), command
    assert "TRACKER_DAEMON_<KEY>" in text
    assert "Exit status: 0 ok" in text


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_option_has_help(command: str) -> None:
    sub = _subparsers(build_parser())[command]
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and len(action.help) > 10, (command, action.dest)


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_config_flags_name_default_and_environment_variable(command: str) -> None:
    sub = _subparsers(build_parser())[command]
    fields = {f.name for f in dataclasses.fields(Config)}
    defaults = Config()
    flags = [a for a in sub._actions if a.option_strings and a.dest != "help"]
    config_flags = [a for a in flags if a.dest in fields]
    assert len(config_flags) == 21  # each --flag of a Config key; a new one needs its help
    for action in flags:
        assert action.help is not None
        assert "(default: " in action.help, action.dest
        if action.dest in fields:
            assert f"env TRACKER_DAEMON_{action.dest.upper()})" in action.help, action.dest
            value = getattr(defaults, action.dest)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert f"(default: {value}" in action.help, action.dest


def test_flags_still_reach_the_configuration() -> None:
    args = build_parser().parse_args(
        ["check-config", "--batch-max-age-ms", "75", "--log-level", "debug", "--sink", "mlflow"]
    )
    assert (args.batch_max_age_ms, args.log_level, args.sink) == (75, "debug", "mlflow")
