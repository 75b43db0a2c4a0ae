"""The user-facing texts of the ``tracker-daemon`` command line: the description and epilog of
``tracker-daemon --help``, each subcommand's description, and the configuration flags shared by
``run`` and ``check-config`` (``add_config_args``), whose help names what the setting does, its
default and its ``TRACKER_DAEMON_<KEY>`` variable. Kept apart from cli.py, whose module docstring
is for developers and is not shown by ``--help``."""

from __future__ import annotations

import argparse
import dataclasses
import json

from ..config import ENV_PREFIX, SINKS, Config

__all__ = [
    "ADDRESS_HELP",
    "CHECK_TEXT",
    "DEFAULT_CONFIG_FILE",
    "DESCRIPTION",
    "EPILOG",
    "IMPORT_TEXT",
    "KEYGEN_TEXT",
    "RUN_TEXT",
    "STATUS_TEXT",
    "add_config_args",
    "flagless_settings",
    "settings_epilog",
]

DEFAULT_CONFIG_FILE = "/etc/tracker-daemon/config.toml"

DESCRIPTION = """\
A per-host logging daemon for MLflow: training processes on this host send their params,
metrics, tags and artifacts to it (package tracker_client); it journals them on disk, batches
them and writes them to the MLflow tracking backend, so that training never waits for the
database.

Start it with 'tracker-daemon run', watch it with 'tracker-daemon status --watch'."""

EPILOG = """\
Settings (for run and check-config) come from, in increasing precedence: the built-in defaults,
a TOML file (--config), environment variables TRACKER_DAEMON_<KEY> and the flags.

Exit status: 0 ok; 1 failed, or (status) the daemon is unreachable or unhealthy; 2 bad usage or
configuration; 3 another daemon already owns the state dir or the socket, or the tcp port
(--address tcp://...) or the metrics port is in use.

'tracker-daemon COMMAND --help' describes each command."""

RUN_TEXT = """\
Run the daemon in the foreground until SIGTERM or SIGINT (then it commits for up to
--drain-timeout-s and exits; what is left stays in the journal for the next start). It logs one
key=value line per event to stderr; 'event=ready' means clients can connect."""

CHECK_TEXT = """\
Print every effective setting (key = value, defaults filled in) after the config file, the
environment and the flags are applied, and exit: 0 when valid, 2 with the offending key when
not."""

STATUS_TEXT = """\
Ask a running daemon for its status: records received and committed, backlog, commit rate,
sink latency, errors and health. Exit status 0 when it answers and is healthy, 1 when it is
unreachable or unhealthy. With --watch the view is refreshed in place, like top; Ctrl-C quits."""

IMPORT_TEXT = """\
Send the spool files that clients wrote while no daemon was running (they print their path) to
the daemon, which writes them to MLflow like live records. Each file is deleted once imported;
a file still held by its live writer is left alone. Exit status 1 if any file failed."""

KEYGEN_TEXT = """\
Write a CURVE key pair (DIR/NAME.key public, DIR/NAME.key_secret private, mode 0600) for
authenticated, encrypted tcp access. Give the daemon the secret key of its pair
(--curve-secret-key-file) and a directory of the public keys of allowed clients
(--curve-allowed-clients-dir); never overwrites an existing file."""

ADDRESS_HELP = (
    "the daemon's address (default: $TRACKER_DAEMON_ADDRESS, else the daemon's default socket, "
    "as clients find it)"
)


_STATE_DIR_DEFAULT = (
    "$XDG_STATE_HOME/tracker-daemon (else ~/.local/state/tracker-daemon), "
    "/var/lib/tracker-daemon as root"
)
_ADDRESS_DEFAULT = (
    "ipc://$XDG_RUNTIME_DIR/tracker-daemon/tracker.sock (else /tmp/tracker-daemon-UID/...), "
    "ipc:///run/tracker-daemon/tracker.sock as root"
)
# (key, metavar, type, what it does, default when the Config field's own value is not telling)
_RUN_FLAGS: tuple[tuple[str, str, type, str, str], ...] = (
    (
        "state_dir",
        "DIR",
        str,
        "directory of the journal, staging, the default SQLite store and the default artifact root",
        _STATE_DIR_DEFAULT,
    ),
    (
        "backend_store_uri",
        "URI",
        str,
        "the MLflow tracking backend: sqlite:///PATH, "
        "postgresql://..., mysql://... or http(s)://HOST:PORT of an MLflow server",
        "sqlite:///STATE_DIR/mlflow.db",
    ),
    (
        "default_artifact_root",
        "URI",
        str,
        "artifact root of the experiments the daemon creates",
        "STATE_DIR/artifacts",
    ),
    (
        "artifact_roots",
        "DIRS",
        str,
        "comma-separated local directories (absolute paths or file:/// URIs) below which "
        "experiments may keep artifacts besides the default artifact root; the daemon refuses "
        "any other local artifact location",
        "none: only the default artifact root",
    ),
    (
        "address",
        "ADDRESS",
        str,
        "where clients connect: ipc://PATH or tcp://HOST:PORT (tcp on "
        "a non-loopback address requires CURVE)",
        _ADDRESS_DEFAULT,
    ),
    (
        "max_frame_bytes",
        "BYTES",
        int,
        "largest frame a client may send (1 KiB to 256 MiB, at "
        "most a quarter of --journal-max-bytes)",
        "",
    ),
    (
        "batch_max_age_ms",
        "MS",
        int,
        "longest a record waits for its batch to be written under load (1 to 60000)",
        "",
    ),
    (
        "commit_interval_ms",
        "MS",
        int,
        "longest a record waits when the load is light: commits are spaced to carry about "
        "1,000 records, between --batch-max-age-ms and this (1 to 60000)",
        "",
    ),
    (
        "sink_concurrency",
        "N",
        int,
        "parallel writers to the backend; 0 = 1 for SQLite, 4 otherwise",
        "",
    ),
    (
        "sink",
        "",
        str,
        "how records are written: sql = the daemon's SQL writer (many runs per "
        "transaction), mlflow = MLflow's log_batch per run, auto = sql when the database schema "
        "is one the writer was tested with, else mlflow",
        "",
    ),
    (
        "log_level",
        "LEVEL",
        str,
        "least severe log lines written to stderr: DEBUG, INFO, WARNING or ERROR",
        "",
    ),
    (
        "durability",
        "",
        str,
        "fsync = acknowledge records once the journal is fsynced; os = "
        "once written (survives a daemon crash, not a power loss)",
        "",
    ),
    (
        "fsync_interval_ms",
        "MS",
        int,
        "period of the group fsync of the journal (1 to 10000; up to 4 periods at low rates)",
        "",
    ),
    (
        "max_buffered_records",
        "N",
        int,
        "records held in memory; the rest of a backlog waits in the journal",
        "",
    ),
    (
        "journal_max_bytes",
        "BYTES",
        int,
        "journal size limit; beyond it clients get journal_full errors",
        "8589934592 (8 GiB)",
    ),
    (
        "drain_timeout_s",
        "SECONDS",
        float,
        "on SIGTERM, how long to keep committing before exiting (the journal keeps the rest)",
        "",
    ),
    (
        "system_metrics_interval_s",
        "SECONDS",
        float,
        "seconds between samples of the runs that ask for system metrics "
        "(start_run(system_metrics=True)); 0 turns the sampler off",
        "",
    ),
    (
        "system_metrics_gpu",
        "MODE",
        str,
        "system metrics of GPUs: auto (NVML, when nvidia-ml-py is installed) or off",
        "",
    ),
    (
        "metrics_address",
        "HOST:PORT",
        str,
        "serve Prometheus metrics at http://HOST:PORT/metrics (port 0: any free port)",
        "off",
    ),
    (
        "curve_secret_key_file",
        "PATH",
        str,
        "the daemon's CURVE secret certificate (from "
        "'tracker-daemon keygen'); enables CURVE authentication",
        "none",
    ),
    (
        "curve_allowed_clients_dir",
        "DIR",
        str,
        "directory of the public certificates (*.key) of the clients allowed to connect with CURVE",
        "none",
    ),
)
_CHOICES = {
    "sink": SINKS,
    "durability": ("fsync", "os"),
}


def add_config_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--config",
        metavar="PATH",
        help=f"TOML file of settings (keys as below, in lower case); the environment and flags "
        f"override it (default: {DEFAULT_CONFIG_FILE} if it exists)",
    )
    defaults = Config()
    for key, metavar, kind, text, default in _RUN_FLAGS:
        shown = default or str(getattr(defaults, key))
        env = f"{ENV_PREFIX}{key.upper()}"
        ap.add_argument(
            f"--{key.replace('_', '-')}",
            type=kind,
            metavar=metavar or None,
            choices=_CHOICES.get(key),
            help=f"{text} (default: {shown}; env {env})".replace("%", "%%"),
        )


def flagless_settings() -> list[str]:
    """The keys of :class:`Config` that have no command-line flag, in the dataclass's order."""
    flagged = {key for key, *_ in _RUN_FLAGS}
    return [f.name for f in dataclasses.fields(Config) if f.name not in flagged]


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return json.dumps(list(value))
    return json.dumps(value)


def settings_epilog() -> str:
    """The ``run``/``check-config`` epilog: every setting without a flag, with its TOML key (and
    default) and its environment variable, generated from :class:`Config` so that it cannot
    drift."""
    defaults = Config()
    rows = [(f"{key} = {_toml_value(getattr(defaults, key))}", key) for key in flagless_settings()]
    width = max(len(left) for left, _ in rows)
    lines = [
        "Settings without a flag: set them in the TOML file (--config; key = default shown) or",
        "in the environment (docs/configuration.md describes each):",
    ]
    lines += [f"  {left:<{width}}  env {ENV_PREFIX}{key.upper()}" for left, key in rows]
    return "\n".join(lines)
