"""``tracker-daemon`` command line: ``run``, ``status``, ``check-config``, ``import``, ``keygen``.

The only module that exits the process. Exit codes: 0 ok, 1 unhealthy/failed (``status``: the
daemon is unreachable or unhealthy), 2 bad usage or configuration, 3 another daemon already owns
the state dir or socket (or the metrics port).

Logs go to stderr, one line per event, as key=value pairs (see :class:`KeyValueFormatter`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tracker_client.curve import CurveConfigError

from . import __version__
from .config import Config, load_config
from .errors import AlreadyRunning, ConfigError, SinkError

__all__ = ["main"]

DEFAULT_CONFIG_FILE = "/etc/tracker-daemon/config.toml"


class KeyValueFormatter(logging.Formatter):
    """One line per event: ``ts=… level=… logger=… event=… key=value …``.

    The daemon's own messages are ``event=NAME key=value ...`` already. Anything else (MLflow,
    SQLAlchemy, Python warnings) becomes ``event=log msg="…"``; a traceback is appended as
    ``exc="…"``; both JSON-quoted so that a record never spans lines."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if not msg.startswith("event="):
            msg = f"event=log msg={json.dumps(msg)}"
        elif "\n" in msg:
            msg = msg.replace("\n", "\\n")
        t = time.localtime(record.created)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}"
        ts += time.strftime("%z", t)
        line = f"ts={ts} level={record.levelname} logger={record.name} {msg}"
        if record.exc_info:
            line += f" exc={json.dumps(self.formatException(record.exc_info))}"
        if record.stack_info:
            line += f" stack={json.dumps(self.formatStack(record.stack_info))}"
        return line


def _setup_logging(level: str) -> None:
    # MLflow installs its own plain-text handler on import unless told not to; its records then
    # reach ours through the root logger (set before anything imports mlflow)
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # warnings become one log line, not two lines of text
    for noisy in ("alembic", "mlflow", "sqlalchemy", "urllib3", "tracker_daemon.zap", "zmq"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _add_config_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--config", help=f"TOML config file (default {DEFAULT_CONFIG_FILE} if present)")
    ap.add_argument("--state-dir", help="journal, staging, default SQLite store and artifacts")
    ap.add_argument(
        "--backend-store-uri", help="MLflow tracking backend (default: SQLite in state dir)"
    )
    ap.add_argument("--default-artifact-root", help="artifact root for new runs")
    ap.add_argument("--address", help="ipc://PATH or tcp://127.0.0.1:PORT")
    ap.add_argument("--max-frame-bytes", type=int)
    ap.add_argument("--batch-max-age-ms", type=int)
    ap.add_argument("--sink-concurrency", type=int)
    ap.add_argument(
        "--sink",
        choices=("auto", "sql", "mlflow"),
        help="how records are written: 'sql' = the daemon's SQL writer (many runs per "
        "transaction), 'mlflow' = MLflow's log_batch per run, 'auto' (default) = sql when the "
        "database schema is one the writer was tested with, else mlflow (TRACKER_DAEMON_SINK)",
    )
    ap.add_argument("--log-level")
    ap.add_argument(
        "--durability",
        choices=("fsync", "os"),
        help="fsync: ack after the journal is fsynced (default); os: after the write",
    )
    ap.add_argument("--fsync-interval-ms", type=int, help="group fsync period (default 50)")
    ap.add_argument("--max-buffered-records", type=int, help="records held in memory (50000)")
    ap.add_argument("--journal-max-bytes", type=int, help="journal size limit (8 GiB)")
    ap.add_argument("--drain-timeout-s", type=float, help="commit window at SIGTERM (30)")
    ap.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)",
    )
    ap.add_argument(
        "--curve-secret-key-file",
        metavar="PATH",
        help="the daemon's CURVE secret certificate (from `tracker-daemon keygen`)",
    )
    ap.add_argument(
        "--curve-allowed-clients-dir",
        metavar="DIR",
        help="public certificates (*.key) of the clients allowed to connect (CURVE)",
    )


def _config(args: argparse.Namespace) -> Config:
    import os

    path = args.config
    if path is None and os.path.exists(DEFAULT_CONFIG_FILE):
        path = DEFAULT_CONFIG_FILE
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if f.name in args}
    return load_config(flags, config_file=path)


def _cmd_run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    _setup_logging(cfg.log_level)
    from .daemon import run_daemon

    run_daemon(cfg, until_idle=args.until_idle)
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _config(args)
    for key, value in cfg.as_dict().items():
        print(f"{key} = {json.dumps(value)}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    """Exit 0 when the daemon answers and is healthy, 1 when unreachable or unhealthy."""
    import tracker_client

    from .status import format_status

    try:
        status: dict[str, Any] = tracker_client.query_status(args.address, timeout=args.timeout)
    except tracker_client.TrackerError as exc:
        print(f"tracker-daemon status: {exc}", file=sys.stderr)
        if args.json:
            reasons = [f"unreachable: {exc}"]
            doc = {"reachable": False, "healthy": False, "unhealthy_reasons": reasons}
            print(json.dumps(doc, indent=2))
        return 1
    status.setdefault("healthy", True)  # an older daemon without the health rule
    status["reachable"] = True
    print(json.dumps(status, indent=2, sort_keys=True) if args.json else format_status(status))
    return 0 if status["healthy"] else 1


def _cmd_keygen(args: argparse.Namespace) -> int:
    """Write a CURVE key pair (zmq.auth certificate format): NAME.key and NAME.key_secret."""
    from zmq.auth.certs import create_certificates

    name = args.name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(f"--name {name!r}: use letters, digits, '.', '_' and '-'")
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            print(f"tracker-daemon keygen: {path} exists; not overwriting it", file=sys.stderr)
            return 1
    old = os.umask(0o077)  # the secret file is never readable by others, not even briefly
    try:
        create_certificates(directory, name)
    finally:
        os.umask(old)
    os.chmod(public, 0o644)
    os.chmod(secret, 0o600)
    print(f"public key: {public}")
    print(f"secret key: {secret}  (mode 0600: keep it private)")
    print(
        "For the daemon: curve_secret_key_file = the secret key of its pair; put the public keys "
        "of allowed clients into curve_allowed_clients_dir.\n"
        "For a client: copy its public key into the daemon's curve_allowed_clients_dir, and set "
        "TRACKER_CURVE_CLIENT_KEY=<its .key_secret> and TRACKER_CURVE_SERVER_KEY=<the daemon's "
        ".key>."
    )
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tracker_client.address import client_default_address
    from tracker_client.spool import ImportRefused, SpoolBusy, import_spool

    from .progress import Progress

    address = args.address or client_default_address()
    paths = [Path(x) for x in args.paths]
    code = 0
    for path in paths:
        if not path.is_file():
            print(f"tracker-daemon import: {path}: no such file", file=sys.stderr)
            code = 1
            continue
        shown = Progress.to_stream("import", "records", 0, extra=f"path={json.dumps(str(path))}")
        try:
            result = import_spool(path, address, timeout=args.timeout, progress=shown.update)
            shown.finish()
        except SpoolBusy:
            shown.end()  # a line left on the terminal ends before the message
            print(
                f"tracker-daemon import: {path} is locked by its (live) writer, which sends it "
                "itself once a daemon answers",
                file=sys.stderr,
            )
            code = 1
            continue
        except (OSError, TimeoutError, ImportRefused) as exc:
            shown.end()
            print(f"tracker-daemon import: {path}: {exc}", file=sys.stderr)
            code = 1
            continue
        path.unlink(missing_ok=True)
        print(f"{path}: {result.records} record(s) in {result.frames} frame(s) imported")
        if result.reframed:
            print(f"  {result.reframed} oversized frame(s) sent as frames within the limits")
        for used, run_id in result.runs.items():
            print(f"  run {used} -> MLflow run {run_id}")
        for run_id in result.ended_failed:
            print(f"  run {run_id} was never ended by its process: marked FAILED")
        for f in result.failures:
            print(f"  failed: {f.code}: {f.message}")
            code = 1
    return code


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tracker-daemon", description=__doc__)
    ap.add_argument("--version", action="version", version=f"tracker-daemon {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon in the foreground")
    _add_config_args(run)
    run.add_argument(
        "--until-idle",
        action="store_true",
        help="do not listen: commit what the journal holds (e.g. after an outage), then exit 0",
    )
    run.set_defaults(func=_cmd_run)
    check = sub.add_parser("check-config", help="print the effective configuration")
    _add_config_args(check)
    check.set_defaults(func=_cmd_check_config)
    st = sub.add_parser("status", help="ask a running daemon for its counters")
    st.add_argument("--address", help="daemon address (default: as clients resolve it)")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.add_argument("--timeout", type=float, default=5.0)
    st.set_defaults(func=_cmd_status)
    imp = sub.add_parser("import", help="send spool files of clients that ran without a daemon")
    imp.add_argument("paths", nargs="+", help="spool files (*.spool)")
    imp.add_argument("--address", help="daemon address (default: as clients resolve it)")
    imp.add_argument("--timeout", type=float, default=600.0)
    imp.set_defaults(func=_cmd_import)
    kg = sub.add_parser(
        "keygen", help="write a CURVE key pair (DIR/NAME.key, DIR/NAME.key_secret) for tcp access"
    )
    kg.add_argument("dir", help="directory for the two files (created if missing)")
    kg.add_argument("--name", default="server", help="file name stem (default: server)")
    kg.set_defaults(func=_cmd_keygen)
    from .bench import add_parser as _add_bench_parser

    _add_bench_parser(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except (ConfigError, CurveConfigError) as exc:
        print(f"tracker-daemon: configuration error: {exc}", file=sys.stderr)
        code = 2
    except AlreadyRunning as exc:
        print(f"tracker-daemon: {exc}", file=sys.stderr)
        code = 3
    except SinkError as exc:
        print(f"tracker-daemon: cannot open the MLflow backend: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
