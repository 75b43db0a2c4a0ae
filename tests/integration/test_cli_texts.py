"""What ``tracker-daemon --help`` and ``run --help`` tell a new user, from the real command:
the state dir's default names ``$XDG_STATE_HOME`` first (it wins over ``~/.local/state``), and
the exit status list has code 3 for a tcp port in use (issue 21, item 10 c, d)."""

from __future__ import annotations

import pytest

from tests.support.daemon import daemon_cli

pytestmark = pytest.mark.integration


def flat(text: str) -> str:
    return " ".join(text.split())


def test_state_dir_help_names_xdg_state_home_first() -> None:
    r = daemon_cli("run", "--help", env={"COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert (
        "$XDG_STATE_HOME/tracker-daemon (else ~/.local/state/tracker-daemon), "
        "/var/lib/tracker-daemon as root" in flat(r.stdout)
    ), r.stdout


def test_help_lists_exit_code_3_for_a_tcp_port_in_use() -> None:
    r = daemon_cli("--help", env={"COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert (
        "3 another daemon already owns the state dir or the socket, or the tcp port "
        "(--address tcp://...) or the metrics port is in use." in flat(r.stdout)
    ), r.stdout
