"""The client's side of one daemon conversation, sans I/O: seqs, reqs, acks, answers, resends.

:class:`Session` holds what a client must remember between frames: the last seq it used, the
frames not yet acked, the requests not yet answered (with the seq sent before each), the request
ids, the floor it announces in ``hello``. The I/O thread feeds it every reply the daemon sends
(:meth:`Session.receive`) and acts on the events it returns; it asks the session which frames to
send again after a reconnect (:meth:`Session.hello`, then the ``Welcomed`` event) or after a
``journal_full`` refusal (:meth:`Session.resend_due`). No sockets, no threads, no clock of its own
(``now`` is passed in): ``tests/unit/client/delivery/test_session.py`` drives it against a fake
daemon.

A sequenced frame the daemon refuses whole (it does not decode, or is over ``max_frame``: an
``error`` with ``req`` nil and one of :data:`FRAME_REFUSALS`) would never be acknowledged, and
every later barrier would wait for it. The session finds which unacked frames are refused by
checking them as the daemon does, and replaces each with a ``data`` frame under the same seq
holding the records the daemon can take (possibly none): the seq is filled, the barriers
complete, and the records left out are failures reported at the next barrier
(:meth:`Session.take_refused`).

A request's future is an opaque token here: the session hands it back in the event that answers
or refuses it, and the I/O thread resolves it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeAlias

import msgpack

from .. import protocol as p
from .outbox import RECORDS_PER_FRAME, Unit

__all__ = [
    "FRAME_REFUSALS",
    "JOURNAL_FULL_RETRY_S",
    "Accepted",
    "Acked",
    "Answered",
    "Event",
    "FrameReplaced",
    "JournalFull",
    "Refused",
    "Rehello",
    "Session",
    "Welcomed",
]

JOURNAL_FULL_RETRY_S = 1.0  # after a journal_full refusal, the unacked frames are resent this late
# Error codes with which a daemon refuses a frame for what it holds (section 10 of PROTOCOL.md):
# sent again unchanged, it would be refused again.
FRAME_REFUSALS = frozenset(
    {
        "bad_msgpack",
        "bad_envelope",
        "unsupported_version",
        "unknown_kind",
        "bad_field",
        "frame_too_large",
        "frame_too_complex",
    }
)
_VALUES = p.value_budget(RECORDS_PER_FRAME)  # what the least generous daemon decodes


@dataclass(frozen=True, slots=True)
class Acked:
    """Every sequenced frame up to ``upto`` is the daemon's (and forgotten here)."""

    upto: int


@dataclass(frozen=True, slots=True)
class Accepted:
    """The daemon holds an ``end_run`` durably; its final reply follows. The request is not
    spooled any more (it is still resent after a reconnect: a copy is harmless)."""

    future: Future[Any] | None


@dataclass(frozen=True, slots=True)
class Answered:
    """A request got its reply (``future`` is None for a request nobody waits for)."""

    future: Future[Any] | None
    reply: p.DaemonMessage


@dataclass(frozen=True, slots=True)
class Refused:
    """The daemon refused a request (``future`` set) or reported an error about no request."""

    future: Future[Any] | None
    code: str
    message: str
    req: int | None


@dataclass(frozen=True, slots=True)
class JournalFull:
    """The daemon is not accepting data; the unacked frames are resent at ``retry_at``."""

    message: str
    retry_at: float


@dataclass(frozen=True, slots=True)
class Welcomed:
    """The daemon answered a hello. ``resend``: the frames to send again now (after a reconnect:
    unacked frames and unanswered requests in their original order), else empty."""

    welcome: p.Welcome
    resend: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class FrameReplaced:
    """The daemon refused sequenced frame ``seq`` whole; ``frame`` (kept in its place, to send
    now) holds the records of it the daemon can take; ``later``: records (wire form) that did
    not fit with them, to queue again at the front; ``failures``: the records left out."""

    seq: int
    frame: bytes
    later: tuple[list[Any], ...]
    failures: tuple[p.Failure, ...]


@dataclass(frozen=True, slots=True)
class Rehello:
    """The daemon refused a hello that announced features (a daemon older than them refuses the
    field): send ``frame``, the same hello without them; the daemon then gets no feature."""

    frame: bytes


Event: TypeAlias = (
    Accepted | Acked | Answered | Refused | JournalFull | Welcomed | FrameReplaced | Rehello
)


class Session:
    """Sequencing state of one client: ``client_id`` plus what ``hello`` says about the process."""

    def __init__(self, client_id: str, *, pid: int, host: str, version: str) -> None:
        self.client_id = client_id
        self.pid, self.host, self.version = pid, host, version
        self.seq = 0  # the last seq used (sent or spooled)
        self.acked_upto = 0  # every seq <= this was acknowledged by a daemon
        self.next_req = 0
        # req -> (future or None, frame, seq sent before it): kept until answered, resent after
        # a reconnect; a barrier's reply also acks everything up to its seq.
        self.pending: dict[int, tuple[Future[Any] | None, bytes, int]] = {}
        self.unacked: OrderedDict[int, bytes] = OrderedDict()
        self.accepted: set[int] = set()  # pending requests the daemon holds durably (end_run)
        self.resend_req = -1  # the hello whose welcome triggers a resend
        self.resend_at = 0.0  # journal_full: when to resend the unacked frames (0: not armed)
        self.connected = False  # welcomed on the current connection
        self.max_frame = p.DEFAULT_MAX_FRAME_BYTES  # the daemon's, once a welcome said it
        # records left out of refused frames, (run_id, failure), until a barrier reports them;
        # appended by the I/O thread, taken by the thread that waits for a barrier
        self._refused: list[tuple[str | None, p.Failure]] = []
        self._refused_lock = threading.Lock()
        # Features (PROTOCOL.md 11.1): a hello announces p.FEATURES unless this connection's
        # daemon refused that (then plain hellos until the next connection); ``features`` is
        # what the last welcome announced (empty: an older daemon, send no feature's field).
        self.plain_hello = False
        self.hellos_with_features: dict[int, bool] = {}  # req -> resend, until answered
        self.features: frozenset[str] = frozenset()

    # ------------------------------------------------------------------------- what to send

    def new_req(self) -> int:
        self.next_req += 1
        return self.next_req

    def hello(self, *, resend: bool) -> bytes:
        """A hello for a new connection; with ``resend`` its welcome resends what is unsettled."""
        req = self.new_req()
        if resend:
            self.resend_req = req
        if self.plain_hello:
            return p.encode(self._hello(req))
        if len(self.hellos_with_features) >= 64:  # unanswered ones of old connections
            self.hellos_with_features.pop(next(iter(self.hellos_with_features)))
        self.hellos_with_features[req] = resend
        return p.encode(self._hello(req, features=p.FEATURES))

    def spool_hello(self) -> bytes:
        """The hello that opens a spool file (req 0: no reply is awaited)."""
        return p.encode(self._hello(0))

    def _hello(self, req: int, *, features: tuple[str, ...] = ()) -> p.Hello:
        # the floor is what was acked, not our last seq: spooled frames may not be sent yet
        return p.Hello(
            req, self.client_id, self.pid, self.host, self.version, self.acked_upto, features
        )

    def placed(self, unit: Unit, *, in_flight: bool) -> None:
        """A unit was sent (``in_flight``) or written to the spool: its seq is used; a sent
        sequenced frame is kept until acked; a request waits for its reply (and is resent after
        a reconnect) wherever it went."""
        if unit.sequenced:
            self.seq = unit.seq
            if in_flight:
                self.unacked[unit.seq] = unit.frame
        else:
            assert unit.call is not None
            self.pending[unit.req] = (unit.call.future, unit.frame, unit.seq)

    def replayed(self, frame: bytes, msg: p.Message) -> bool:
        """A frame read back from the spool is about to be sent: keep it like a fresh one.
        Returns False for a frame not to send (the spool's hello: this connection said one)."""
        if isinstance(msg, p.Data | p.LogArtifact):
            self.unacked[msg.seq] = frame
        elif isinstance(msg, p.Hello):
            return False
        elif isinstance(msg, p.StartRun | p.EndRun | p.Flush | p.Call | p.StatusRequest):
            if msg.req not in self.pending:  # from an earlier life of this transport
                seq = msg.seq if isinstance(msg, p.Flush | p.EndRun | p.Call) else 0
                self.pending[msg.req] = (None, frame, seq)
        return True

    def window_open(self, max_inflight: int) -> bool:
        return len(self.unacked) < max_inflight

    def in_send_order(self, requests: bool = True, *, held: bool = True) -> list[bytes]:
        """Unacked sequenced frames and (optionally) unanswered requests — without those the
        daemon holds unless ``held`` — in the order they were first sent: a request framed
        after seq S went between frames S and S+1. (An offline run's start_run must reach the
        daemon before the records that use its id.)"""
        keyed = [((seq, 0, 0), frame) for seq, frame in self.unacked.items()]
        if requests:
            keyed += [
                ((seq, 1, req), f)
                for req, (_, f, seq) in list(self.pending.items())
                if held or req not in self.accepted
            ]
        return [frame for _, frame in sorted(keyed, key=lambda kv: kv[0])]

    def resend_due(self, now: float) -> list[bytes]:
        """After a journal_full refusal, once its delay is over: the unacked frames (the daemon
        has the requests), in order; else nothing."""
        if not self.resend_at or now < self.resend_at:
            return []
        self.resend_at = 0.0
        return self.in_send_order(requests=False)

    def unsettled(self) -> bool:
        """Is there anything a daemon has not taken (unacked frames, or requests other than
        status and flush, which mean nothing to a later daemon)?"""
        return bool(self.unacked) or not all(
            req in self.accepted
            or isinstance(p.decode(f, max_frame=2**31), p.StatusRequest | p.Flush)
            for req, (_, f, _) in list(self.pending.items())
        )

    # ------------------------------------------------------------------------- what came back

    def receive(self, msg: p.Message, now: float = 0.0) -> list[Event]:
        """Take one message from the daemon; returns what the I/O thread has to act on."""
        if isinstance(msg, p.Ack):
            return [self._acked(msg.seq)]
        if isinstance(msg, p.Welcome):
            return self._welcome(msg)
        if isinstance(msg, p.ErrorReply):
            return self._error(msg, now)
        if isinstance(msg, p.Accepted):
            held = self.pending.get(msg.req)
            if held is None:
                return []
            self.accepted.add(msg.req)
            # PROTOCOL.md 6.8: an ack of every sequenced message (of all runs) up to its seq
            return [self._acked(held[2]), Accepted(held[0])]
        if isinstance(msg, p.RunStarted | p.Done | p.StatusReply | p.Result):
            self.accepted.discard(msg.req)
            entry = self.pending.pop(msg.req, None)
            if entry is None:
                return []
            events: list[Event] = []
            if isinstance(msg, p.Done | p.Result):  # committed up to its seq implies accepted
                events.append(self._acked(entry[2]))
            events.append(Answered(entry[0], msg))
            return events
        return []  # a client message from a daemon: nothing to do with it

    def disconnected(self) -> None:
        self.connected = False
        self.plain_hello = False  # the next connection may reach another daemon
        self.features = frozenset()

    def take_refused(self, run_id: str | None = None) -> list[p.Failure]:
        """Records left out of refused frames, not reported yet: all, or those of ``run_id``
        (as the daemon's failures at a barrier, PROTOCOL.md section 8)."""
        with self._refused_lock:
            if run_id is None:
                out = [f for _, f in self._refused]
                self._refused.clear()
                return out
            out = [f for r, f in self._refused if r == run_id]
            self._refused = [(r, f) for r, f in self._refused if r != run_id]
            return out

    def _replace_refused(self, code: str) -> list[Event]:
        """The daemon refused a sequenced frame (``code``), without saying which: each unacked
        frame the daemon refuses (checked as it checks them) is replaced, under its seq, by the
        records of it that it can take."""
        events: list[Event] = []
        for seq, frame in list(self.unacked.items()):
            why = _refusal(frame, self.max_frame)
            if why is None:
                continue
            replacement, later, failures = _salvage(self.client_id, seq, frame, why, self.max_frame)
            self.unacked[seq] = replacement
            with self._refused_lock:
                self._refused += failures
            events.append(
                FrameReplaced(seq, replacement, tuple(later), tuple(f for _, f in failures))
            )
        return events

    def abandon(self, future: Future[Any]) -> None:
        """Forget a request the caller gave up on (not resent, not spooled)."""
        for req, entry in list(self.pending.items()):
            if entry[0] is future:
                self.pending.pop(req, None)
                self.accepted.discard(req)

    def waiting(self) -> list[Future[Any]]:
        """The futures of unanswered requests (to fail when the connection closes)."""
        return [fut for fut, _, _ in list(self.pending.values()) if fut is not None]

    def _acked(self, upto: int) -> Acked:
        self.acked_upto = max(self.acked_upto, min(upto, self.seq))
        unacked = self.unacked
        while unacked:
            seq = next(iter(unacked))
            if seq > upto:
                break
            del unacked[seq]
        return Acked(upto)

    def _welcome(self, msg: p.Welcome) -> list[Event]:
        self.hellos_with_features.pop(msg.req, None)
        self.features = frozenset(msg.features)
        self._acked(msg.acked_seq)
        resend = tuple(self.in_send_order()) if msg.req == self.resend_req else ()
        self.connected = True
        return [Welcomed(msg, resend)]

    def _error(self, msg: p.ErrorReply, now: float) -> list[Event]:
        refused_hello = self.hellos_with_features.pop(msg.req, None) if msg.req else None
        if refused_hello is not None and msg.code == "bad_field":
            self.plain_hello = True  # a daemon without features: say hello as before them
            return [Rehello(self.hello(resend=refused_hello))]
        if msg.req is not None:
            self.accepted.discard(msg.req)
        entry = self.pending.pop(msg.req, None) if msg.req is not None else None
        if entry is not None and entry[0] is not None:
            return [Refused(entry[0], msg.code, msg.message, msg.req)]
        if msg.code == "journal_full":
            if self.resend_at:
                return []
            self.resend_at = now + JOURNAL_FULL_RETRY_S
            return [JournalFull(msg.message, self.resend_at)]
        if entry is None:
            replaced = self._replace_refused(msg.code) if msg.code in FRAME_REFUSALS else []
            return replaced or [Refused(None, msg.code, msg.message, msg.req)]
        return []  # an answered request nobody waits for


def _refusal(frame: bytes, max_frame: int) -> str | None:
    """Why a daemon refuses this frame whole (``code: message``), or None."""
    try:
        p.decode(frame, max_frame=max_frame, max_values=_VALUES)
    except p.ProtocolError as exc:
        return f"{exc.code}: {exc.message}"
    return None


def _salvage(
    client_id: str, seq: int, frame: bytes, why: str, max_frame: int
) -> tuple[bytes, list[Any], list[tuple[str | None, p.Failure]]]:
    """For refused ``frame`` (this client's own): a data frame for ``seq`` with its records
    that decode and fit in ``max_frame``, in order; the records after those that would fit a
    frame of their own (to queue again); a failure for each record left out."""
    try:
        _, kind, body = msgpack.unpackb(frame, raw=False)
        items = body["records"] if kind == "data" else []
        what = "its frame" if kind == "data" else f"its {kind} message"
    except Exception:  # not a frame this client made: nothing in it to salvage
        items, what = [], "its frame"
    kept: list[Any] = []
    later: list[Any] = []
    failures: list[tuple[str | None, p.Failure]] = []
    full = room = max_frame - len(p.encode_data(client_id, seq, [])) - 4  # (array header)
    for i, item in enumerate(items):
        record: p.Record | None = None
        try:
            record = p.decode_record(item, f"data.records[{i}]")
            size = len(msgpack.packb(item, use_bin_type=True))
        except (p.ProtocolError, ValueError, TypeError):
            size = full + 1
        if record is not None and size <= room and not later:
            kept.append(item)
            room -= size
            continue
        if record is not None and size <= full:
            later.append(item)  # fits a frame of its own: sent again in a later frame
            continue
        run_id = record.run_id if record is not None else None
        run = f"run {run_id}: " if run_id is not None else ""
        message = f"{run}not stored: the daemon refused {what} (seq {seq}): {why}"
        failures.append((run_id, p.Failure(record, "INVALID_PARAMETER_VALUE", message[:2000])))
    if not items:
        message = f"the daemon refused {what} (seq {seq}): {why}"
        failures.append((None, p.Failure(None, "INVALID_PARAMETER_VALUE", message[:2000])))
    return p.encode_data(client_id, seq, kept), later, failures
