"""``tracker-daemon`` command line: ``run``, ``status``, ``check-config``, ``import``, ``keygen``.

The only module that exits the process. Exit codes: 0 ok, 1 unhealthy/failed (``status``: the
daemon is unreachable or unhealthy), 2 bad usage or configuration (also a SQLite store that can
never open), 3 another daemon already owns the state dir or socket (or the tcp or metrics port).

Logs go to stderr, one line per event, as key=value pairs (see :class:`KeyValueFormatter`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tracker_client.wire.curve import CurveConfigError

from .. import __version__
from ..config import Config, load_config
from ..errors import AlreadyRunning, ConfigError, SinkError
from .cli_help import (
    ADDRESS_HELP,
    CHECK_TEXT,
    DEFAULT_CONFIG_FILE,
    DESCRIPTION,
    EPILOG,
    IMPORT_TEXT,
    KEYGEN_TEXT,
    RUN_TEXT,
    STATUS_TEXT,
    add_config_args,
    settings_epilog,
)
from .status_cli import cmd_status as _cmd_status

__all__ = ["main"]


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
    from ..daemon import run_daemon

    run_daemon(cfg, until_idle=args.until_idle)
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _config(args)
    for key, value in cfg.as_dict().items():
        print(f"{key} = {json.dumps(value)}")
    return 0


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

    from tracker_client.delivery.spool import ImportRefused, SpoolBusy
    from tracker_client.delivery.spool_import import import_spool
    from tracker_client.wire.address import client_default_address
    from tracker_client.wire.curve import curve_from_env

    from ..ops.progress import Progress

    curve = curve_from_env()  # a configuration error leaves every spool file untouched
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
            result = import_spool(
                path, address, timeout=args.timeout, progress=shown.update, curve=curve
            )
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


def _sub(
    sub: Any, name: str, summary: str, description: str, epilog: str | None = None
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def _unrecognized(parser: argparse.ArgumentParser, extras: Sequence[str]) -> str:
    """``unrecognized argument --x; did you mean --y?``: the first unknown option (else the
    first extra argument) and the closest option of ``parser``, if one is close."""
    options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    flags = [x for x in extras if x.startswith("-")]
    first = (flags or list(extras))[0]
    text = f"unrecognized argument {first}"
    if first.startswith("-"):
        close = difflib.get_close_matches(first.split("=", 1)[0], options, n=1)
        if close:
            text += f"; did you mean {close[0]}?"
    return text


def build_parser() -> argparse.ArgumentParser:
    # the module docstring is for developers; --help gets DESCRIPTION and EPILOG
    ap = argparse.ArgumentParser(
        prog="tracker-daemon",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--version", action="version", version=f"tracker-daemon {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = _sub(sub, "run", "run the daemon in the foreground", RUN_TEXT, settings_epilog())
    add_config_args(run)
    run.add_argument(
        "--until-idle",
        action="store_true",
        help="do not listen for clients: commit what the journal holds (e.g. after an outage), "
        "then exit 0 (default: off)",
    )
    run.set_defaults(func=_cmd_run)
    check = _sub(
        sub,
        "check-config",
        "print the effective configuration and exit",
        CHECK_TEXT,
        settings_epilog(),
    )
    add_config_args(check)
    check.set_defaults(func=_cmd_check_config)
    st = _sub(sub, "status", "show a running daemon's counters and health", STATUS_TEXT)
    st.add_argument("--address", help=ADDRESS_HELP)
    st.add_argument(
        "--json", action="store_true", help="print the status document as JSON (default: a table)"
    )
    st.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for the answer (default: 5)",
    )
    st.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=2.0,
        metavar="SECONDS",
        help="refresh every SECONDS (default without a value: 2) until Ctrl-C; on a terminal "
        "the view is redrawn in place, otherwise each refresh follows a timestamp line (with "
        "--json: one JSON document per line); an unreachable daemon is shown and retried",
    )
    st.add_argument(
        "--count",
        type=int,
        metavar="N",
        help="with --watch: stop after N refreshes, with the exit status of the last one "
        "(default: until Ctrl-C, exit status 0)",
    )
    st.set_defaults(func=_cmd_status)
    imp = _sub(sub, "import", "send spool files of clients that ran without a daemon", IMPORT_TEXT)
    imp.add_argument("paths", nargs="+", metavar="SPOOL", help="spool files (*.spool)")
    imp.add_argument("--address", help=ADDRESS_HELP)
    imp.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long to wait for the daemon to accept each file (default: 600)",
    )
    imp.set_defaults(func=_cmd_import)
    kg = _sub(sub, "keygen", "write a CURVE key pair for authenticated tcp access", KEYGEN_TEXT)
    kg.add_argument("dir", metavar="DIR", help="directory for the two files (created if missing)")
    kg.add_argument("--name", default="server", help="file name stem (default: server)")
    kg.set_defaults(func=_cmd_keygen)
    from ..bench import add_parser as _add_bench_parser

    _add_bench_parser(sub)
    for parser in sub.choices.values():  # an unknown option is reported with its command's usage
        parser.set_defaults(command_parser=parser)
    return ap


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = build_parser()
    args, extras = ap.parse_known_args(argv)
    if extras:
        parser = getattr(args, "command_parser", ap)
        parser.error(_unrecognized(parser, extras))  # usage of that command, then exit 2
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
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
