"""Unit tests for tracker_daemon.config: defaults, precedence and validation."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from tracker_client.protocol import DEFAULT_MAX_FRAME_BYTES
from tracker_client.wire.address import daemon_default_address
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
    assert cfg.commit_interval_ms == 500
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
        ({"commit_interval_ms": 0}, "commit_interval_ms"),
        ({"commit_interval_ms": 60_001}, "commit_interval_ms"),
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


# --------------------------------------------------------------------------------------------
# numbers from TOML and the environment: integral ints, finite floats


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("max_frame_bytes = 65536.9\n", "max_frame_bytes"),
        ("batch_max_age_ms = 0.5\n", "batch_max_age_ms"),
        ("max_clients = nan\n", "max_clients"),
        ("max_clients = inf\n", "max_clients"),
        ("barrier_timeout_s = nan\n", "barrier_timeout_s"),
        ("barrier_timeout_s = inf\n", "barrier_timeout_s"),
        ("drain_timeout_s = -inf\n", "drain_timeout_s"),
        ("health_stall_s = true\n", "health_stall_s"),
        ("metrics_address = 9464\n", "metrics_address"),
    ],
)
def test_non_integral_and_non_finite_numbers_in_file(tmp_path: Path, text: str, key: str) -> None:
    path = write_toml(tmp_path, text)
    with pytest.raises(ConfigError, match=f"{path}: {key} = .* is not a valid"):
        load_config(config_file=path, environ={})


def test_integral_float_is_accepted_for_an_int_key(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "max_frame_bytes = 65536.0\n")
    cfg = load_config(config_file=path, environ={})
    assert cfg.max_frame_bytes == 65536 and type(cfg.max_frame_bytes) is int


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "1e400"])
def test_non_finite_float_in_env(value: str) -> None:
    with pytest.raises(ConfigError, match="TRACKER_DAEMON_BARRIER_TIMEOUT_S: barrier_timeout_s"):
        load_config(environ={"TRACKER_DAEMON_BARRIER_TIMEOUT_S": value})


def test_non_finite_float_override_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="--health-stall-s: health_stall_s = 'inf'"):
        load_config({"health_stall_s": "inf"}, environ={})


# --------------------------------------------------------------------------------------------
# operations keys: metrics, health, limits


def test_operations_defaults() -> None:
    cfg = Config()
    assert cfg.metrics_address == ""
    assert cfg.health_stall_s == 60.0
    assert cfg.curve_secret_key_file == "" and cfg.curve_allowed_clients_dir == ""
    assert cfg.curve_enabled is False
    assert cfg.max_records_per_frame == 10_000
    assert cfg.max_open_runs_per_client == 1_000
    assert cfg.max_clients == 10_000


def test_operations_keys_from_every_source(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path, 'metrics_address = "127.0.0.1:9464"\nmax_clients = 50\nhealth_stall_s = 5\n'
    )
    env = {"TRACKER_DAEMON_MAX_OPEN_RUNS_PER_CLIENT": "7", "TRACKER_DAEMON_MAX_CLIENTS": "60"}
    cfg = load_config({"max_records_per_frame": 2000}, config_file=path, environ=env)
    assert cfg.metrics_address == "127.0.0.1:9464"
    assert cfg.health_stall_s == 5.0
    assert cfg.max_clients == 60  # env beats file
    assert cfg.max_open_runs_per_client == 7
    assert cfg.max_records_per_frame == 2000


@pytest.mark.parametrize(
    "address", ["127.0.0.1:9464", "0.0.0.0:0", "[::1]:9464", "localhost:65535", "my-host:80"]
)
def test_good_metrics_addresses(address: str) -> None:
    assert load_config({"metrics_address": address}, environ={}).metrics_address == address


@pytest.mark.parametrize(
    "address", ["9464", ":9464", "127.0.0.1:", "127.0.0.1:port", "127.0.0.1:65536", "[::1]"]
)
def test_bad_metrics_addresses(address: str) -> None:
    with pytest.raises(ConfigError, match="metrics_address = .*must be HOST:PORT"):
        load_config({"metrics_address": address}, environ={})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_records_per_frame": 999}, "max_records_per_frame = 999: must be 1000"),
        ({"max_records_per_frame": 10_000_001}, "max_records_per_frame = 10000001"),
        ({"max_open_runs_per_client": 0}, "max_open_runs_per_client = 0: must be >= 1"),
        ({"max_clients": 0}, "max_clients = 0: must be >= 1"),
        ({"health_stall_s": 0}, "health_stall_s = 0.0: must be > 0"),
        ({"retry_max_backoff_s": 0}, "retry_max_backoff_s = 0.0: must be > 0"),
    ],
)
def test_operations_values_out_of_range(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(overrides, environ={})


def test_limit_floor_covers_the_reference_client() -> None:
    """A frame of the reference client must never be over max_records_per_frame: it would be
    refused and resent forever."""
    from tracker_client.delivery.transport import Transport
    from tracker_daemon.config import MIN_RECORDS_PER_FRAME

    assert Transport("ipc:///tmp/unused.sock").frame_records <= MIN_RECORDS_PER_FRAME
    assert load_config({"max_records_per_frame": MIN_RECORDS_PER_FRAME}, environ={})


# --------------------------------------------------------------------------------------------
# access control: tcp beyond loopback needs CURVE


@pytest.fixture
def curve_files(tmp_path: Path) -> dict[str, str]:
    from zmq.auth.certs import create_certificates

    keys = tmp_path / "keys"
    allowed = tmp_path / "allowed"
    keys.mkdir()
    allowed.mkdir()
    public, secret = create_certificates(keys, "server")
    client_public, _ = create_certificates(keys, "client")
    os.rename(client_public, allowed / "client.key")
    return {"secret": secret, "public": public, "allowed": str(allowed)}


@pytest.mark.parametrize(
    "address", ["tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://10.1.2.3:5555", "tcp://eth0:5555"]
)
def test_non_loopback_tcp_needs_curve(address: str, curve_files: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="only allowed on loopback .* unless CURVE"):
        load_config({"address": address}, environ={})
    cfg = load_config(
        {
            "address": address,
            "curve_secret_key_file": curve_files["secret"],
            "curve_allowed_clients_dir": curve_files["allowed"],
        },
        environ={},
    )
    assert cfg.curve_enabled and cfg.bind_address == address


@pytest.mark.parametrize("address", ["tcp://127.0.0.2:5555", "tcp://[::1]:1", "tcp://localhost:2"])
def test_loopback_tcp_needs_no_curve(address: str) -> None:
    assert load_config({"address": address}, environ={}).curve_enabled is False


def test_curve_keys_must_come_together(curve_files: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="must be set together"):
        load_config({"curve_secret_key_file": curve_files["secret"]}, environ={})
    with pytest.raises(ConfigError, match="must be set together"):
        load_config({"curve_allowed_clients_dir": curve_files["allowed"]}, environ={})


def test_curve_files_are_checked(curve_files: dict[str, str], tmp_path: Path) -> None:
    allowed = curve_files["allowed"]
    with pytest.raises(ConfigError, match="curve_secret_key_file = .*nope.*cannot load it"):
        load_config(
            {"curve_secret_key_file": str(tmp_path / "nope"), "curve_allowed_clients_dir": allowed},
            environ={},
        )
    with pytest.raises(ConfigError, match="holds no secret key"):
        load_config(
            {"curve_secret_key_file": curve_files["public"], "curve_allowed_clients_dir": allowed},
            environ={},
        )
    garbage = tmp_path / "garbage.key_secret"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="curve_secret_key_file = .*cannot load it"):
        load_config(
            {"curve_secret_key_file": str(garbage), "curve_allowed_clients_dir": allowed},
            environ={},
        )
    with pytest.raises(ConfigError, match="curve_allowed_clients_dir = .*not a directory"):
        load_config(
            {
                "curve_secret_key_file": curve_files["secret"],
                "curve_allowed_clients_dir": str(tmp_path / "missing"),
            },
            environ={},
        )


def test_server_curve_keys_load(curve_files: dict[str, str]) -> None:
    from zmq.auth.certs import load_certificate

    from tracker_daemon.config import load_server_curve

    cfg = load_config(
        {
            "curve_secret_key_file": curve_files["secret"],
            "curve_allowed_clients_dir": curve_files["allowed"],
        },
        environ={},
    )
    assert load_server_curve(cfg) == load_certificate(curve_files["secret"])


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("postgresql://mlflow:s3cret@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
        ("mysql+pymysql://u:p@h/db?x=1", "mysql+pymysql://u:***@h/db?x=1"),
        ("postgresql://mlflow@db/mlflow", "postgresql://mlflow@db/mlflow"),
        (
            "sqlite:////var/lib/tracker-daemon/mlflow.db",
            "sqlite:////var/lib/tracker-daemon/mlflow.db",
        ),
        ("http://mlflow:5000", "http://mlflow:5000"),
    ],
)
def test_redact_uri(uri: str, shown: str) -> None:
    from tracker_daemon.config import redact_uri

    assert redact_uri(uri) == shown


# --------------------------------------------------------------------------------------------
# tracker-daemon check-config


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TRACKER_DAEMON_"):
            monkeypatch.delenv(name)


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from tracker_daemon.cli.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    assert isinstance(exc.value.code, int)
    return exc.value.code, out, err


@pytest.mark.usefixtures("clean_env")
def test_check_config_prints_the_effective_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_toml(
        tmp_path, f'state_dir = "{tmp_path}"\nbatch_max_age_ms = 10\nmax_clients = 5\n'
    )
    monkeypatch.setenv("TRACKER_DAEMON_MAX_CLIENTS", "6")
    code, out, err = run_cli(
        [
            "check-config",
            "--config",
            path,
            "--batch-max-age-ms",
            "20",
            "--metrics-address",
            "127.0.0.1:9464",
        ],
        capsys,
    )
    assert (code, err) == (0, "")
    lines = dict(line.split(" = ", 1) for line in out.splitlines())
    assert set(lines) == {f.name for f in dataclasses.fields(Config)}
    assert lines["batch_max_age_ms"] == "20"  # flag beats file
    assert lines["max_clients"] == "6"  # env beats file
    assert lines["metrics_address"] == '"127.0.0.1:9464"'
    assert lines["state_dir"] == f'"{tmp_path}"'
    assert lines["backend_store_uri"] == f'"sqlite:///{tmp_path}/mlflow.db"'


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("toml", "flags", "env", "message"),
    [
        ("bogus = 1\n", [], {}, "unknown key 'bogus'"),
        ("max_frame_bytes = 65536.9\n", [], {}, "max_frame_bytes = 65536.9 is not a valid int"),
        ("barrier_timeout_s = nan\n", [], {}, "barrier_timeout_s = nan is not a valid finite"),
        ("", ["--address", "tcp://0.0.0.0:5555"], {}, "only allowed on loopback"),
        ("", ["--metrics-address", "9464"], {}, "metrics_address = '9464'"),
        ("", [], {"TRACKER_DAEMON_MAX_CLIENTS": "many"}, "TRACKER_DAEMON_MAX_CLIENTS"),
        ("", [], {"TRACKER_DAEMON_NOPE": "1"}, "unknown setting TRACKER_DAEMON_NOPE"),
    ],
)
def test_check_config_errors_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    toml: str,
    flags: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    path = write_toml(tmp_path, toml)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run_cli(["check-config", "--config", path, *flags], capsys)
    assert code == 2
    assert out == ""
    assert err.startswith("tracker-daemon: configuration error: ")
    assert message in err


def test_check_config_entry_point_exit_codes(tmp_path: Path) -> None:
    """The installed command (a real process): 0 for a good file, 2 for a bad one."""
    import subprocess
    import sys

    from tests.support.daemon import daemon_env

    good = write_toml(tmp_path, "max_clients = 5\n")
    res = subprocess.run(
        [sys.executable, "-m", "tracker_daemon.cli", "check-config", "--config", good],
        capture_output=True,
        text=True,
        env=daemon_env(),
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "max_clients = 5" in res.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("max_clients = 5.5\n")
    res = subprocess.run(
        [sys.executable, "-m", "tracker_daemon.cli", "check-config", "--config", str(bad)],
        capture_output=True,
        text=True,
        env=daemon_env(),
        timeout=60,
    )
    assert res.returncode == 2
    assert "max_clients = 5.5 is not a valid int" in res.stderr
    assert res.stdout == ""


def test_sink_setting() -> None:
    assert load_config({}, environ={}).sink == "auto"
    assert load_config({}, environ={"TRACKER_DAEMON_SINK": "mlflow"}).sink == "mlflow"
    for uri in ("sqlite:////tmp/x.db", "postgresql://u@h/db", "postgresql+psycopg2://h/db"):
        assert load_config({"sink": "sql", "backend_store_uri": uri}, environ={}).is_sql
    with pytest.raises(ConfigError, match=r"sink = 'fast': must be one of auto, sql, mlflow"):
        load_config({"sink": "fast"}, environ={})
    with pytest.raises(ConfigError, match=r"sink = 'sql' needs a SQL backend_store_uri"):
        load_config({"sink": "sql", "backend_store_uri": "http://127.0.0.1:5000"}, environ={})
    assert load_config({"backend_store_uri": "http://h:5000"}, environ={}).sink == "auto"


def test_sqlite_wal_setting() -> None:
    assert load_config({}, environ={}).sqlite_wal is True
    assert load_config({}, environ={"TRACKER_DAEMON_SQLITE_WAL": "0"}).sqlite_wal is False
    with pytest.raises(ConfigError, match="sqlite_wal"):
        load_config({}, environ={"TRACKER_DAEMON_SQLITE_WAL": "maybe"})


def test_artifact_roots_setting(tmp_path: Path) -> None:
    base = {"state_dir": str(tmp_path)}
    cfg = load_config(base, environ={})
    assert cfg.artifact_roots == ()
    assert cfg.local_artifact_roots == [str(tmp_path / "artifacts")]  # the default root alone
    listed = write_toml(tmp_path, 'artifact_roots = ["/srv/a", "file:///data/b"]\n')
    cfg = load_config(base, config_file=listed, environ={})
    assert cfg.artifact_roots == ("/srv/a", "file:///data/b")
    assert cfg.local_artifact_roots == [str(tmp_path / "artifacts"), "/srv/a", "file:///data/b"]
    env = {"TRACKER_DAEMON_ARTIFACT_ROOTS": " /srv/a, /srv/b ,"}
    assert load_config(base, environ=env).artifact_roots == ("/srv/a", "/srv/b")
    assert load_config({**base, "artifact_roots": "/x"}, environ={}).artifact_roots == ("/x",)
    remote = load_config({**base, "default_artifact_root": "s3://b/p"}, environ={})
    assert remote.local_artifact_roots == []  # a remote default root is no local root
    for bad, why in (("s3://bucket/p", "remote store"), ("rel/dir", "not an absolute path")):
        with pytest.raises(ConfigError, match=rf"artifact_roots: '{bad}' is not a local"):
            load_config({**base, "artifact_roots": bad}, environ={})
        with pytest.raises(ConfigError, match=why):
            load_config({**base, "artifact_roots": bad}, environ={})
    with pytest.raises(ConfigError, match="artifact_roots = 7 is not a valid list of strings"):
        load_config(base, config_file=write_toml(tmp_path, "artifact_roots = 7\n"), environ={})
