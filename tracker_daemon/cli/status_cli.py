"""``tracker-daemon status``: ask a running daemon for its status document, once or, with
``--watch``, again and again like ``top``.

One refresh queries the daemon (``tracker_client.query_status``) and prints either the table of
``status.format_status`` or the JSON document. An unreachable daemon is a refresh too: its error
line (or a JSON document with ``reachable: false``) is printed and, under ``--watch``, the next
refresh tries again. Under ``--watch`` on a terminal each refresh clears the screen and redraws;
otherwise (a pipe, a file) refreshes are plain blocks, each after a timestamp line, and with
``--json`` one compact JSON document per line. Ctrl-C ends a watch with exit status 0; ``--count``
ends it after that many refreshes with the status of the last one."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

__all__ = ["Refresh", "cmd_status", "query"]

CLEAR = "\x1b[H\x1b[2J"  # cursor home, erase the screen


@dataclass(frozen=True, slots=True)
class Refresh:
    """One answer (or non-answer) of the daemon."""

    doc: dict[str, Any]
    error: str  # "" when the daemon answered

    @property
    def code(self) -> int:
        """The exit status this refresh stands for: 0 healthy, 1 unreachable or unhealthy."""
        return 0 if self.doc.get("healthy") else 1


def query(address: str | None, timeout: float) -> Refresh:
    import tracker_client
    from tracker_client.wire.address import client_default_address

    address = address or client_default_address()
    missing = _no_socket(address)
    if missing:  # nothing can answer: say so now instead of after the timeout
        doc = {
            "reachable": False,
            "healthy": False,
            "unhealthy_reasons": [f"unreachable: {missing}"],
        }
        return Refresh(doc, missing)
    try:
        status: dict[str, Any] = tracker_client.query_status(address, timeout=timeout)
    except tracker_client.TrackerError as exc:
        reasons = [f"unreachable: {exc}"]
        doc = {"reachable": False, "healthy": False, "unhealthy_reasons": reasons}
        return Refresh(doc, str(exc))
    status.setdefault("healthy", True)  # an older daemon without the health rule
    status["reachable"] = True
    return Refresh(status, "")


def _no_socket(address: str) -> str:
    """Why no daemon can answer on an ipc ``address`` (its socket is missing or closed to this
    user), or "" when one may."""
    from tracker_client.wire.address import access_problem, ipc_path

    path = ipc_path(address)
    if path is None:
        return ""
    problem = access_problem(path)
    if problem is not None:
        return f"cannot reach tracker-daemon at {address}: {problem}"
    try:
        if path.exists():
            return ""
    except OSError:
        return ""
    return (
        f"no tracker-daemon at {address}: the socket {path} does not exist. Is the daemon "
        "running? Start it with `tracker-daemon run`, or pass --address (or set "
        "TRACKER_DAEMON_ADDRESS) if it listens elsewhere"
    )


def cmd_status(args: argparse.Namespace) -> int:
    """Exit 0 when the daemon answers and is healthy, 1 when unreachable or unhealthy."""
    if args.watch is None:
        if args.count is not None:
            print("tracker-daemon status: --count goes with --watch", file=sys.stderr)
            return 2
        return _once(query(args.address, args.timeout), args.json)
    if args.watch <= 0 or (args.count is not None and args.count < 1):
        print("tracker-daemon status: --watch SECONDS > 0 and --count N >= 1", file=sys.stderr)
        return 2
    out = sys.stdout
    return watch(
        lambda: query(args.address, args.timeout),
        interval=args.watch,
        count=args.count,
        as_json=args.json,
        out=out,
        tty=out.isatty(),
    )


def _once(r: Refresh, as_json: bool) -> int:
    from ..ops.status import format_status

    if r.error:
        print(f"tracker-daemon status: {r.error}", file=sys.stderr)
        if as_json:
            print(json.dumps(r.doc, indent=2))
        return r.code
    print(json.dumps(r.doc, indent=2, sort_keys=True) if as_json else format_status(r.doc))
    return r.code


def watch(
    refresh: Callable[[], Refresh],
    *,
    interval: float,
    count: int | None,
    as_json: bool,
    out: TextIO,
    tty: bool,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Refresh every ``interval`` seconds (from the start of one query to the next) until
    ``count`` refreshes are done or Ctrl-C; returns the exit status."""
    done, code = 0, 0
    next_at = time.monotonic()
    try:
        while count is None or done < count:
            r = refresh()
            code = r.code
            out.write(_render(r, interval, as_json, tty))
            out.flush()
            done += 1
            if count is not None and done >= count:
                break
            next_at += interval
            sleep(max(0.0, next_at - time.monotonic()))
            next_at = max(next_at, time.monotonic() - interval)  # after a slow query: no burst
    except KeyboardInterrupt:
        if tty and not as_json:
            out.write("\n")
        return 0
    return code


def _render(r: Refresh, interval: float, as_json: bool, tty: bool) -> str:
    from ..ops.status import format_status

    if as_json:
        return json.dumps(r.doc, sort_keys=True) + "\n"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %z")
    body = f"tracker-daemon status: {r.error}" if r.error else format_status(r.doc)
    if tty:
        head = f"tracker-daemon status  every {interval:g} s  {stamp}  (Ctrl-C to quit)"
        return f"{CLEAR}{head}\n\n{body}\n"
    return f"--- {stamp} ---\n{body}\n"
