"""``tracker-daemon`` command line: ``run``, ``status``, ``check-config``.

The only module that exits the process. Exit codes: 0 ok, 1 unhealthy/failed, 2 bad usage or
configuration, 3 another daemon already owns the state dir or socket.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .config import Config, load_config
from .errors import AlreadyRunning, ConfigError, SinkError

__all__ = ["main"]

DEFAULT_CONFIG_FILE = "/etc/tracker-daemon/config.toml"


class _KeyValueFormatter(logging.Formatter):
    """One line per event: ``ts level logger message`` where messages are key=value pairs."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("alembic", "mlflow", "sqlalchemy", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _add_config_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--config", help=f"TOML config file (default {DEFAULT_CONFIG_FILE} if present)")
    ap.add_argument("--state-dir", help="journal, staging, default SQLite store and artifacts")
    ap.add_argument("--backend-store-uri", help="MLflow tracking backend (default: SQLite in state dir)")
    ap.add_argument("--default-artifact-root", help="artifact root for new runs")
    ap.add_argument("--address", help="ipc://PATH or tcp://127.0.0.1:PORT")
    ap.add_argument("--max-frame-bytes", type=int)
    ap.add_argument("--batch-max-age-ms", type=int)
    ap.add_argument("--sink-concurrency", type=int)
    ap.add_argument("--log-level")


def _config(args: argparse.Namespace) -> Config:
    import os

    path = args.config
    if path is None and os.path.exists(DEFAULT_CONFIG_FILE):
        path = DEFAULT_CONFIG_FILE
    keys = (
        "state_dir", "backend_store_uri", "default_artifact_root", "address", "max_frame_bytes",
        "batch_max_age_ms", "sink_concurrency", "log_level",
    )
    return load_config({k: getattr(args, k) for k in keys}, config_file=path)


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
    import tracker_client

    from .status import format_status

    try:
        status: dict[str, Any] = tracker_client.query_status(args.address, timeout=args.timeout)
    except tracker_client.TrackerError as exc:
        print(f"tracker-daemon status: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2, sort_keys=True) if args.json else format_status(status))
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tracker_client.address import client_default_address
    from tracker_client.spool import SpoolBusy, import_spool

    address = args.address or client_default_address()
    paths = [Path(x) for x in args.paths]
    code = 0
    for path in paths:
        if not path.is_file():
            print(f"tracker-daemon import: {path}: no such file", file=sys.stderr)
            code = 1
            continue
        try:
            result = import_spool(path, address, timeout=args.timeout)
        except SpoolBusy:
            print(
                f"tracker-daemon import: {path} is locked by its (live) writer, which sends it "
                "itself once a daemon answers",
                file=sys.stderr,
            )
            code = 1
            continue
        except (OSError, TimeoutError) as exc:
            print(f"tracker-daemon import: {path}: {exc}", file=sys.stderr)
            code = 1
            continue
        path.unlink(missing_ok=True)
        print(f"{path}: {result.records} record(s) in {result.frames} frame(s) imported")
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
        "--until-idle", action="store_true",
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
    return ap


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except ConfigError as exc:
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
