"""Every decoded client message, on the event loop, without waiting (:meth:`Intake.handle` returns
the reply to send now, or None): the limits (limits.py), ``hello``, sequenced frames (``data``,
``log_artifact``: journal append, then delivery; the ack now or after the next group fsync),
``status``; the requests that wait go to control.py (a refusal of its request caps is counted
and logged here, as the other limits).

A sequenced frame is appended to the journal once (a resend of one already accepted is counted
as a duplicate and acked again). When the journal has no room (``JournalFull``: its size limit or
a full disk) the frame is refused with ``journal_full`` and not acked — the client keeps it and
offers it again — and the daemon is asked to reclaim committed space; the refusal is logged once
per episode (episodes closer than ``LIMIT_LOG_INTERVAL_S`` count as one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tracker_client import protocol as p

from ..commit.ledger import Ledger
from ..errors import JournalFull
from ..journal.journal import Journal, Position
from ..ops.status import Counters
from .clients import ClientInfo, ClientTable, Peer, Refusal
from .limits import LIMIT_LOG_INTERVAL_S, Limits, RunView

__all__ = ["KIND_SEQUENCED", "Intake", "Welcome"]

log = logging.getLogger("tracker_daemon")

KIND_SEQUENCED = b"D"  # journal entry: a sequenced client frame (data or artifact), verbatim

Sequenced = p.Data | p.LogArtifact


@dataclass(frozen=True, slots=True)
class Welcome:
    """What a ``welcome`` tells every client about this daemon."""

    version: str
    staging_dir: str
    max_frame: int
    spool_dir: str
    hostname: str  # a hello from this host may name the pid to watch


class Watcher(Protocol):
    """orphans.Orphans, as intake uses it."""

    def watch(self, info: ClientInfo) -> None: ...
    def watch_bound(self) -> None: ...


class Requests(Protocol):
    """control.Control, as intake uses it."""

    def submit(
        self, identity: bytes, msg: p.StartRun | p.EndRun | p.Flush | p.Call
    ) -> p.ErrorReply | Refusal | None: ...


@dataclass(frozen=True, slots=True)
class DataPath:
    """What intake hands on to the data path (callables of the daemon)."""

    journaled: Callable[[str, int, int, Position], None]  # (client, seq, records, where): accept it
    deliver: Callable[[Sequenced], None]  # to the batcher now, or left in the journal
    release: Callable[[str], None]  # barriers of a client whose floor moved (hello)
    ack_now: Callable[[], bool]  # no group fsync to wait for (durability "os", or stopping)
    ack_later: Callable[[bytes, str], None]  # ack this peer after the next group fsync
    reclaim: Callable[[], None]  # the journal is full: roll, mark and delete what is committed


class Intake:
    def __init__(
        self,
        journal: Journal,
        ledger: Ledger,
        clients: ClientTable,
        limits: Limits,
        runs: RunView,
        counters: Counters,
        welcome: Welcome,
        *,
        data: DataPath,
        control: Requests,
        watcher: Watcher,
        status: Callable[[], dict[str, Any]],
    ) -> None:
        self.journal = journal
        self.ledger = ledger
        self.clients = clients
        self.limits = limits
        self.runs = runs
        self.counters = counters
        self.welcome = welcome
        self.data = data
        self.control = control
        self.watcher = watcher
        self._status = status
        self._full_logged = False
        self._full_logged_at = -1e9

    def handle(
        self, peer: Peer, msg: p.ClientMessage, raw: bytes, now: float
    ) -> p.DaemonMessage | None:
        """The reply to send to ``peer`` now, if any (``now``: monotonic seconds)."""
        identity = peer.routing_id
        refusal = self.limits.check(peer, msg, self.clients, self.runs, now)
        if self.clients.to_watch:
            self.watcher.watch_bound()
        if refusal is not None:
            return self.limits.refuse(identity, msg, refusal, now)
        if type(msg) is p.Data or type(msg) is p.LogArtifact:
            return self._on_sequenced(identity, msg, raw, now)
        if isinstance(msg, p.Hello):
            return self._on_hello(msg, now)
        if isinstance(msg, p.StartRun | p.EndRun | p.Flush | p.Call):
            answer = self.control.submit(identity, msg)
            if isinstance(answer, Refusal):  # requests in progress over a cap
                return self.limits.refuse(identity, msg, answer, now)
            return answer
        if isinstance(msg, p.StatusRequest):
            return p.StatusReply(msg.req, self._status())
        return None

    def _on_hello(self, msg: p.Hello, now: float) -> p.Welcome:
        # the limits admitted it: this peer is the one the id is bound to (or the daemon itself)
        info = self.clients.touch(msg.client_id, now)
        info.claimed_pid, info.version = msg.pid, msg.version
        info.features = frozenset(msg.features)  # what may be sent to it (control.py: accepted)
        if info.owner is not None and info.owner[0] in ("key", "conn"):  # no kernel pid: the claim
            info.host = msg.host
            if msg.host == self.welcome.hostname and info.pid != msg.pid:
                info.pid = msg.pid
                self.watcher.watch(info)
        self.ledger.floor(msg.client_id, msg.acked_floor)
        self.data.release(msg.client_id)
        log.debug("event=hello client=%s pid=%d host=%s", msg.client_id, msg.pid, msg.host)
        w = self.welcome
        return p.Welcome(
            msg.req,
            w.version,
            self.ledger.received_upto(msg.client_id),
            w.staging_dir,
            w.max_frame,
            w.spool_dir,
            # only a client that announced features reads them (an older one refuses the field)
            p.FEATURES if msg.features else (),
        )

    def _on_sequenced(
        self, identity: bytes, msg: Sequenced, raw: bytes, now: float
    ) -> p.DaemonMessage | None:
        cid, seq = msg.client_id, msg.seq
        self.clients.touch(cid, now)
        self.counters.frames += 1
        if self.ledger.is_new(cid, seq):
            try:
                pos = self.journal.append(KIND_SEQUENCED + raw)
            except JournalFull as exc:
                return self._journal_full(exc, now)
            if self._full_logged:
                log.info("event=journal_accepting_again")
                self._full_logged = False
            count = len(msg.records) if type(msg) is p.Data else 1
            self.counters.received += count
            self.data.journaled(cid, seq, count, pos)  # the data path records and accepts it
            self.data.deliver(msg)
        else:
            self.counters.duplicate_frames += 1
        if self.data.ack_now():
            return p.Ack(self.ledger.received_upto(cid))
        self.data.ack_later(identity, cid)
        return None

    def _journal_full(self, exc: JournalFull, now: float) -> p.ErrorReply:
        self.counters.journal_full_rejections += 1
        if not self._full_logged and now - self._full_logged_at >= LIMIT_LOG_INTERVAL_S:
            # once per episode (episodes closer than the interval count as one)
            log.error(
                "event=journal_full reason=%r rejections=%d note=not_acked_clients_keep_it",
                str(exc),
                self.counters.journal_full_rejections,
            )
            self._full_logged, self._full_logged_at = True, now
        self.data.reclaim()  # reclaim committed space (roll, mark, delete)
        return p.ErrorReply(None, "journal_full", str(exc))
