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


def test_an_unknown_option_of_run_names_the_closest_one() -> None:
    """Item 10 e: ``run --statedir`` prints run's usage (not the top-level one) and a
    suggestion, exit 2."""
    r = daemon_cli("run", "--statedir", "/tmp/x", env={"COLUMNS": "200"})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("usage: tracker-daemon run [-h]"), r.stderr
    assert lines[-1] == (
        "tracker-daemon run: error: unrecognized argument --statedir; did you mean --state-dir?"
    )
    assert r.stdout == ""


def test_an_unknown_option_with_a_value_and_of_other_commands() -> None:
    r = daemon_cli("status", "--jsn", env={"COLUMNS": "200"})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[0].startswith("usage: tracker-daemon status [-h]")
    assert r.stderr.strip().splitlines()[-1] == (
        "tracker-daemon status: error: unrecognized argument --jsn; did you mean --json?"
    )
    r = daemon_cli("check-config", "--log-levle=DEBUG", env={"COLUMNS": "200"})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "tracker-daemon check-config: error: unrecognized argument --log-levle=DEBUG; "
        "did you mean --log-level?"
    )


def test_an_unknown_option_nothing_is_close_to_gets_no_suggestion() -> None:
    r = daemon_cli("run", "--zzzzqqq", env={"COLUMNS": "200"})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[0].startswith("usage: tracker-daemon run [-h]")
    assert r.stderr.strip().splitlines()[-1] == (
        "tracker-daemon run: error: unrecognized argument --zzzzqqq"
    )


def test_every_setting_without_a_flag_is_in_run_help() -> None:
    """Item 10 f: each Config key that ``run`` has no flag for appears in ``run --help`` with its
    TOML key (and default) and its TRACKER_DAEMON_<KEY> variable."""
    import dataclasses

    from tracker_daemon.config import Config

    r = daemon_cli("run", "--help", env={"COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    flagless = [
        f.name for f in dataclasses.fields(Config) if f"--{f.name.replace('_', '-')} " not in out
    ]
    assert {"sqlite_wal", "barrier_timeout_s", "orphan_status"} <= set(flagless)
    lines = out.split("Settings without a flag", 1)[1].splitlines()
    for key in flagless:
        env = f"TRACKER_DAEMON_{key.upper()}"
        row = [line for line in lines if line.strip().startswith(f"{key} = ")]
        assert len(row) == 1, f"{key} is not listed in run --help:\n{out}"
        assert row[0].split()[-2:] == ["env", env], row[0]
    assert '  orphan_status = "FAILED"' in out
    assert "  sqlite_wal = true" in out
