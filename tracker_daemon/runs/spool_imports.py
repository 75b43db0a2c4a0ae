"""Import the spools that clients which died while no daemon answered left in the spool dir (a
live client holds its spool's lock and sends it itself). The daemon imports them through its
own socket (with CURVE, with its own key pair, which it always accepts), each connection acting
for the spool file's owner: its routing id names the owner's uid (fstat of the opened file,
:func:`connection_id`), and the client table lets it use only client ids that uid may use
(clients.py). Records are read one at a time and decoded within the wire's bounds (``max_frame``
bytes each). A spool that fails is tried again with a growing delay; one the daemon refuses for
good (a client id of another uid, a live client's) is not retried until it changes
(spool_backoff.py; both logged, with the file's owner).

Orphan detection imports the spool of a client that just exited before it judges its runs
(:meth:`SpoolImports.import_client`), and ``run --until-idle`` imports every spool it finds
(:meth:`SpoolImports.scan`) through a private socket of its own. One import of a file at a time:
a second caller waits for the import in flight.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from pathlib import Path

import anyio

from tracker_client import protocol as p
from tracker_client.delivery.spool import SUFFIX as SPOOL_SUFFIX
from tracker_client.delivery.spool import ImportRefused, SpoolBusy
from tracker_client.delivery.spool_import import import_spool
from tracker_client.wire.curve import CurveKeys

from ..intake.curve_auth import CurveSetup
from ..ops.status import Counters
from .spool_backoff import SpoolBackoff

__all__ = ["SPOOL_SCAN_S", "SpoolImports", "acting_uid", "connection_id"]

log = logging.getLogger("tracker_daemon")

SPOOL_SCAN_S = 30.0  # how often the spool dir is checked for spools of dead clients
ROUTING_PREFIX = b"spool-import:"  # + "<uid>:" + random hex: a connection of an import


def connection_id(uid: int) -> bytes:
    """The routing id of an import connection acting for the spool owner ``uid``."""
    return ROUTING_PREFIX + f"{uid}:{os.urandom(8).hex()}".encode()


def acting_uid(routing_id: bytes) -> int | None:
    """The uid an import connection acts for (only believed of the daemon's own peers)."""
    if not routing_id.startswith(ROUTING_PREFIX):
        return None
    uid, _, _ = routing_id[len(ROUTING_PREFIX) :].partition(b":")
    return int(uid) if uid.isdigit() and len(uid) <= 10 else None


class SpoolImports:
    def __init__(
        self,
        spool_dir: Path,
        address: str,
        curve: CurveSetup | None,
        counters: Counters,
        max_record: int = p.DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        self.spool_dir = spool_dir
        self.address = address
        self.max_record = max_record  # the longest spool record read (the wire's max_frame)
        self.curve = curve
        self.counters = counters  # spools_imported
        self.stop = threading.Event()  # set when the daemon stops: an import in flight ends
        self._backoff = SpoolBackoff()
        self._active: dict[Path, anyio.Event] = {}  # imports in flight

    def own_curve_keys(self) -> CurveKeys | None:
        if self.curve is None:
            return None
        return CurveKeys(self.curve.public, self.curve.public, self.curve.secret)

    @property
    def active(self) -> int:
        return len(self._active)

    async def run(self) -> None:
        while True:
            await self.scan()
            await anyio.sleep(SPOOL_SCAN_S)

    async def scan(self) -> None:
        """Import every spool in the spool dir that is due (one pass)."""
        for path in sorted(self.spool_dir.glob(f"*{SPOOL_SUFFIX}")):
            if self._backoff.due(path, time.monotonic()):
                await self.import_path(path)

    async def import_client(self, client_id: str) -> None:
        """Import the spool ``client_id`` left, if any (its process has exited)."""
        path = self.spool_dir / f"{client_id}{SPOOL_SUFFIX}"
        if path.is_file():
            await self.import_path(path)

    async def import_path(self, path: Path) -> None:
        """Import one spool (logged either way; a second caller waits for the first)."""
        active = self._active.get(path)
        if active is not None:
            await active.wait()
            return
        done = self._active[path] = anyio.Event()
        try:
            await self._import(path)
        finally:
            del self._active[path]
            done.set()

    async def _import(self, path: Path) -> None:
        backoff = self._backoff
        owner: list[int] = []  # the file's owner, once the import opened it

        def for_owner(uid: int) -> bytes:
            owner[:] = [uid]
            return connection_id(uid)

        try:
            result = await anyio.to_thread.run_sync(
                functools.partial(
                    import_spool,
                    path,
                    self.address,
                    timeout=600,
                    stop=self.stop,
                    curve=self.own_curve_keys(),
                    max_record=self.max_record,
                    connection_id=for_owner,
                ),
                abandon_on_cancel=True,
            )
        except SpoolBusy:
            return
        except (OSError, TimeoutError, p.ProtocolError, ImportRefused) as exc:
            permanent = isinstance(exc, ImportRefused)
            delay = backoff.failed(path, time.monotonic(), permanent=permanent)
            log.error(
                "event=spool_import_failed path=%s owner_uid=%s reason=%r attempts=%d retry=%s",
                path,
                owner[0] if owner else "-",
                str(exc),
                backoff.attempts(path),
                "when the file changes" if permanent else f"in {delay:g} s",
            )
            return
        for what in result.skipped:
            log.warning(
                "event=spool_frame_skipped path=%s owner_uid=%s reason=%r",
                path,
                owner[0] if owner else "-",
                what,
            )
        backoff.forget(path)
        await anyio.to_thread.run_sync(functools.partial(path.unlink, missing_ok=True))
        self.counters.spools_imported += 1
        log.info(
            "event=spool_imported path=%s records=%d runs=%s failures=%d reframed=%d",
            path,
            result.records,
            json.dumps(result.runs),
            len(result.failures),
            result.reframed,
        )
