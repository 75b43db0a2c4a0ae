"""Unit tests for tracker_daemon.config: defaults, precedence and validation."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from tracker_client.address import daemon_default_address
from tracker_client.protocol import DEFAULT_MAX_FRAME_BYTES
from tracker_daemon.config import Config, default_state_dir, load_config
from tracker_daemon.errors import ConfigError

DERIVED = {"state_dir", "backend_store_uri", "default_artifact_root", "address"}


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


# --------------------------------------------------------------------------------------------
# defaults


def test_defaults_with_nothing_configured() -> None:
    cfg = load_config(environ={})
    assert cfg == Config()
    assert cfg.state_dir == ""
    assert cfg.max_frame_bytes == DEFAULT_MAX_FRAME_BYTES == 4 * 1024 * 1024
    assert cfg.batch_max_age_ms == 50
    assert cfg.sink_concurrency == 0
    assert cfg.barrier_timeout_s == 600.0
    assert cfg.retry_max_backoff_s == 30.0
    assert cfg.log_level == "INFO"
    state = default_state_dir()
    assert cfg.state_path == state
    assert cfg.backend_uri == f"sqlite:///{state / 'mlflow.db'}"
    assert cfg.artifact_root == str(state / "artifacts")
    assert cfg.bind_address == daemon_default_address()
    assert cfg.is_sqlite is True
    assert cfg.writers == 1


def test_derived_paths_follow_state_dir(tmp_path: Path) -> None:
    cfg = load_config({"state_dir": str(tmp_path)}, environ={})
    assert cfg.state_path == tmp_path
    assert cfg.backend_uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert cfg.artifact_root == f"{tmp_path}/artifacts"
    assert cfg.bind_address == daemon_default_address()


def test_default_state_dir_for_root_and_users(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(os, "getuid", lambda: 0)
    assert default_state_dir() == Path("/var/lib/tracker-daemon")
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == tmp_path / "xdg" / "tracker-daemon"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "tracker-daemon"


def test_default_address_for_a_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    cfg = load_config(environ={})
    assert cfg.bind_address == f"ipc://{tmp_path}/tracker-daemon/tracker.sock"
    assert cfg.bind_address == daemon_default_address()


def test_explicit_backend_and_artifact_root_win_over_state_dir(tmp_path: Path) -> None:
    cfg = load_config(
        {
            "state_dir": str(tmp_path),
            "backend_store_uri": "postgresql://db/mlflow",
            "default_artifact_root": "s3://bucket/artifacts",
        },
        environ={},
    )
    assert cfg.backend_uri == "postgresql://db/mlflow"
    assert cfg.artifact_root == "s3://bucket/artifacts"
    assert cfg.is_sqlite is False
    assert cfg.writers == 4


def test_environment_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKER_DAEMON_BATCH_MAX_AGE_MS", "77")
    assert load_config().batch_max_age_ms == 77
    assert load_config(environ={}).batch_max_age_ms == 50


# --------------------------------------------------------------------------------------------
# precedence: file < environment < overrides


def test_precedence_file_env_overrides(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        'batch_max_age_ms = 10\nlog_level = "DEBUG"\nmax_frame_bytes = 2048\n'
        "sink_concurrency = 1\n",
    )
    env = {
        "TRACKER_DAEMON_BATCH_MAX_AGE_MS": "20",
        "TRACKER_DAEMON_LOG_LEVEL": "WARNING",
        "TRACKER_DAEMON_STATE_DIR": str(tmp_path / "env-state"),
        "PATH": "/usr/bin",  # no prefix: ignored
        "TRACKER_CLIENT_FOO": "x",  # other prefix: ignored
    }
    overrides = {"batch_max_age_ms": 30, "log_level": None, "max_frame_bytes": None}
    cfg = load_config(overrides, config_file=path, environ=env)
    assert cfg.batch_max_age_ms == 30  # overrides beat env and file
    assert cfg.log_level == "WARNING"  # env beats file; None override ignored
    assert cfg.max_frame_bytes == 2048  # only in file
    assert cfg.sink_concurrency == 1
    assert cfg.state_dir == str(tmp_path / "env-state")
    assert cfg.backend_uri == f"sqlite:///{tmp_path}/env-state/mlflow.db"

    assert load_config(config_file=path, environ={}).batch_max_age_ms == 10
    assert load_config(config_file=path, environ=env).batch_max_age_ms == 20


def test_environment_values_are_coerced() -> None:
    env = {
        "TRACKER_DAEMON_MAX_FRAME_BYTES": "65536",
        "TRACKER_DAEMON_BARRIER_TIMEOUT_S": "2.5",
        "TRACKER_DAEMON_ADDRESS": "tcp://127.0.0.1:5555",
    }
    cfg = load_config(environ=env)
    assert cfg.max_frame_bytes == 65536
    assert cfg.barrier_timeout_s == 2.5
    assert cfg.bind_address == "tcp://127.0.0.1:5555"


def test_overrides_strings_are_coerced() -> None:
    cfg = load_config({"sink_concurrency": "1", "retry_max_backoff_s": "4"}, environ={})
    assert cfg.sink_concurrency == 1
    assert cfg.retry_max_backoff_s == 4.0


@pytest.mark.parametrize(
    "address",
    ["tcp://127.0.0.1:5555", "tcp://localhost:1", "tcp://[::1]:5555", "ipc:///tmp/x.sock"],
)
def test_allowed_addresses(address: str) -> None:
    assert load_config({"address": address}, environ={}).bind_address == address


def test_sink_concurrency_above_one_with_other_backend() -> None:
    cfg = load_config(
        {"backend_store_uri": "postgresql://db/mlflow", "sink_concurrency": 8}, environ={}
    )
    assert cfg.writers == 8


# --------------------------------------------------------------------------------------------
# unknown keys


def test_unknown_key_in_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "batch_max_age_ms = 10\nbogus_key = 1\n")
    with pytest.raises(ConfigError, match="unknown key 'bogus_key'") as err:
        load_config(config_file=path, environ={})
    assert path in str(err.value)


def test_unknown_key_in_env() -> None:
    with pytest.raises(ConfigError, match="unknown setting TRACKER_DAEMON_BOGUS_KEY"):
        load_config(environ={"TRACKER_DAEMON_BOGUS_KEY": "1"})


def test_unknown_key_in_overrides() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'bogus_key'"):
        load_config({"bogus_key": 1}, environ={})


def test_unknown_override_with_none_value_is_ignored() -> None:
    assert load_config({"bogus_key": None}, environ={}) == Config()


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file .*nope.toml"):
        load_config(config_file=str(tmp_path / "nope.toml"), environ={})
    bad = write_toml(tmp_path, "batch_max_age_ms = = 3\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(config_file=bad, environ={})


# --------------------------------------------------------------------------------------------
# bad values


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        ("TRACKER_DAEMON_MAX_FRAME_BYTES", "lots", "max_frame_bytes"),
        ("TRACKER_DAEMON_MAX_FRAME_BYTES", "1.5", "max_frame_bytes"),
        ("TRACKER_DAEMON_BATCH_MAX_AGE_MS", "", "batch_max_age_ms"),
        ("TRACKER_DAEMON_BARRIER_TIMEOUT_S", "soon", "barrier_timeout_s"),
    ],
)
def test_non_numeric_env_values(name: str, value: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"environment {name}: {key} = ") as err:
        load_config(environ={name: value})
    assert "is not a valid" in str(err.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('max_frame_bytes = "big"\n', "max_frame_bytes"),
        ("max_frame_bytes = true\n", "max_frame_bytes"),
        ("log_level = 3\n", "log_level"),
        ("address = [1, 2]\n", "address"),
    ],
)
def test_mistyped_file_values(tmp_path: Path, text: str, key: str) -> None:
    path = write_toml(tmp_path, text)
    with pytest.raises(ConfigError, match=f"{key} = .* is not a valid"):
        load_config(config_file=path, environ={})


def test_non_int_override_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="--batch-max-age-ms: batch_max_age_ms = 'x'"):
        load_config({"batch_max_age_ms": "x"}, environ={})


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"max_frame_bytes": 1023}, "max_frame_bytes"),
        ({"max_frame_bytes": 256 * 1024 * 1024 + 1}, "max_frame_bytes"),
        ({"max_frame_bytes": 0}, "max_frame_bytes"),
        ({"batch_max_age_ms": 0}, "batch_max_age_ms"),
        ({"batch_max_age_ms": 60_001}, "batch_max_age_ms"),
        ({"sink_concurrency": -1}, "sink_concurrency"),
        ({"sink_concurrency": 2}, "sink_concurrency"),  # SQLite: one writer
        ({"sink_concurrency": 65, "backend_store_uri": "postgresql://db/x"}, "sink_concurrency"),
        ({"barrier_timeout_s": 0}, "barrier_timeout_s"),
        ({"address": "tcp://0.0.0.0:5555"}, "address"),
        ({"address": "tcp://192.168.1.10:5555"}, "address"),
        ({"address": "inproc://x"}, "address"),
        ({"log_level": "VERBOSE"}, "log_level"),
    ],
)
def test_out_of_range_values(overrides: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(overrides, environ={})


def test_boundaries_are_accepted() -> None:
    lo = load_config({"max_frame_bytes": 1024, "batch_max_age_ms": 1}, environ={})
    assert (lo.max_frame_bytes, lo.batch_max_age_ms) == (1024, 1)
    hi = load_config({"max_frame_bytes": 256 * 1024 * 1024, "batch_max_age_ms": 60_000}, environ={})
    assert (hi.max_frame_bytes, hi.batch_max_age_ms) == (256 * 1024 * 1024, 60_000)
    assert load_config({"log_level": "debug"}, environ={}).log_level == "debug"


def test_sqlite_with_one_writer_is_allowed() -> None:
    cfg = load_config({"sink_concurrency": 1}, environ={})
    assert cfg.writers == 1


def test_non_loopback_error_explains_why() -> None:
    with pytest.raises(ConfigError, match="only allowed on loopback") as err:
        load_config({"address": "tcp://0.0.0.0:5555"}, environ={})
    assert "'tcp://0.0.0.0:5555'" in str(err.value)


# --------------------------------------------------------------------------------------------
# as_dict


def test_as_dict_reports_effective_values(tmp_path: Path) -> None:
    cfg = load_config(
        {"state_dir": str(tmp_path), "address": "ipc:///tmp/td-test.sock", "log_level": "DEBUG"},
        environ={"TRACKER_DAEMON_BATCH_MAX_AGE_MS": "25"},
    )
    d = cfg.as_dict()
    assert set(d) == {f.name for f in dataclasses.fields(Config)}
    assert {k: d[k] for k in DERIVED} == {
        "state_dir": str(tmp_path),
        "backend_store_uri": f"sqlite:///{tmp_path}/mlflow.db",
        "default_artifact_root": f"{tmp_path}/artifacts",
        "address": "ipc:///tmp/td-test.sock",
    }
    assert d["max_frame_bytes"] == DEFAULT_MAX_FRAME_BYTES
    assert d["batch_max_age_ms"] == 25
    assert d["sink_concurrency"] == 0
    assert d["barrier_timeout_s"] == 600.0
    assert d["log_level"] == "DEBUG"
    for key in set(d) - DERIVED:  # every other value is the field itself
        assert d[key] == getattr(cfg, key), key


def test_as_dict_fills_defaults() -> None:
    d = Config().as_dict()
    assert d["state_dir"] == str(default_state_dir())
    assert d["backend_store_uri"] == f"sqlite:///{default_state_dir() / 'mlflow.db'}"
    assert d["default_artifact_root"] == str(default_state_dir() / "artifacts")
    assert d["address"] == daemon_default_address()


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.log_level = "DEBUG"  # type: ignore[misc]
