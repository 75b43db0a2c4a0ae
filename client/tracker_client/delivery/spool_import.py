"""Import of a dead client's spool (:func:`import_spool`).

The importer replays the spool's frames over an ordinary connection, in order, and waits for
the acks and replies. Two things it does beyond replaying (PROTOCOL.md section 12):

* **Re-framing.** A ``data`` frame over the limits (more than 1,000 records, or more bytes than
  the daemon's ``max_frame``: older clients wrote such frames at exit) would be refused every
  time. Its records are sent instead as frames of at most 1,000 records and ``max_frame`` bytes
  under a *derived* client id — ``sha256("reframe:<client id>:<seq>")``, 32 hex characters — with
  seqs 1, 2, …, on a connection of their own (acks carry no client id), and a barrier on the
  derived id waits until they are committed. The original seq is then closed with a ``hello``
  whose ``acked_floor`` is that seq (sent only once every lower seq is acked, so the floor
  covers nothing else). The derived id and the split are deterministic, so an import that is
  interrupted and run again writes nothing twice (the daemon drops seqs it already holds); a
  frame the daemon already holds (``acked_seq`` ≥ its seq) is not sent at all.
* **Gaps.** Frames that cannot be sent at all (undecodable, or another kind over ``max_frame``)
  are skipped and reported; seqs missing from the spool (a client killed with frames in flight)
  are closed the same way with a floor, so the final barrier does not wait for them forever.

Progress: ``progress(done, total)`` after each ack: ``total`` is the records of the spool's
sequenced frames (counted before sending), ``done`` those in frames up to the acked seq.

Bounds: the file is read one record at a time (:meth:`~tracker_client.delivery.spool.Spool.records`,
twice when progress is shown: once to count); a record over ``max_record`` bytes is not read,
reported, and makes the import refused once the rest is imported (the file is kept); each record
is decoded within :func:`.spool.record_value_budget` values. Frames naming another
client id than the spool's are skipped and reported.

Authority: ``connection_id(owner_uid)`` gives each connection its routing id (the daemon's own
imports: the daemon then lets the spool use only client ids of that uid, PROTOCOL.md section 12);
a ``client_id_in_use`` refusal ends the import.

A refusal that retrying cannot cure raises :class:`~tracker_client.delivery.spool.ImportRefused`;
``journal_full`` and ``max_clients`` raise ``TimeoutError`` (try again later).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import msgpack
import zmq

from .. import protocol as p
from ..run import OFFLINE_TAG
from ..wire.curve import CurveKeys, apply_curve, curve_from_env
from .outbox import RECORDS_PER_FRAME
from .spool import ImportRefused, ImportResult, Oversized, Spool, record_value_budget

__all__ = ["count_records", "derived_client_id", "import_spool", "run_import", "split_records"]

TRANSIENT = ("journal_full",)
SHOWN = 5  # frames not imported named in the error of a refused import


def import_spool(
    path: Path,
    address: str,
    *,
    timeout: float = 120.0,
    log: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
    curve: CurveKeys | None | Literal["env"] = "env",
    progress: Callable[[int, int], None] | None = None,
    max_record: int = p.DEFAULT_MAX_FRAME_BYTES,
    connection_id: Callable[[int], bytes] | None = None,
) -> ImportResult:
    """Send a dead client's spool to the daemon at ``address``; empty it once committed.

    Runs started offline and never ended in the spool (the process died) are ended FAILED. A data
    frame over the protocol's limits (written by an older client) is sent as several frames
    (see this module's docstring). ``stop`` (set from another thread) abandons the import; nothing
    is removed then. ``curve``: the CURVE keys to connect with (default: ``TRACKER_CURVE_*`` from
    the environment). Raises :class:`SpoolBusy` while the writer lives, ``TimeoutError`` when
    the daemon does not take the data now (try again later), :class:`ImportRefused` when it
    refuses a frame for good. ``progress(done, total)`` is called as the daemon acks: records
    it holds (journaled) of the records in the spool.

    The file is read one record at a time: a record over ``max_record`` bytes is skipped unread
    and reported, and each record is decoded within :func:`record_value_budget`.
    ``connection_id(owner_uid)``, when given, is called with the file's owner (fstat of the open
    file) for each connection the import opens and returns its ZeroMQ routing id (the daemon's
    own imports: it binds the spool's client ids to that owner)."""
    return run_import(
        path,
        address,
        timeout=timeout,
        log=log,
        stop=stop,
        curve=curve,
        progress=progress,
        max_record=max_record,
        connection_id=connection_id,
    )


def run_import(
    path: Path,
    address: str,
    *,
    timeout: float,
    log: Callable[[str], None] | None,
    stop: threading.Event | None,
    curve: CurveKeys | None | Literal["env"],
    progress: Callable[[int, int], None] | None = None,
    max_record: int = p.DEFAULT_MAX_FRAME_BYTES,
    connection_id: Callable[[int], bytes] | None = None,
) -> ImportResult:
    if curve == "env":  # a configuration error is raised before the file is touched
        curve = curve_from_env()
    spool = Spool(path)
    spool.open()  # raises SpoolBusy while the writer lives
    ctx = zmq.Context()
    ids = None
    if connection_id is not None:
        owner, make_id = spool.owner_uid, connection_id
        ids = lambda: make_id(owner)  # noqa: E731 - one routing id per connection
    bounds = (max_record, record_value_budget(max_record))
    try:
        importer = _Importer(ctx, address, curve, ImportResult(path), timeout, stop, ids, bounds)
    except BaseException:
        spool.close(remove_if_empty=False)  # the import never started: leave the file as it was
        ctx.term()
        raise
    try:
        if progress is not None:
            importer.progress = progress
            importer.total = count_records(spool.records(max_record), bounds[1])
            progress(0, importer.total)
        importer.send(spool.records(max_record))
        importer.collect()
        importer.end_unended_runs()
        importer.barrier()
        if importer.oversized:  # kept: what it could not read is not to be thrown away
            skipped = importer.result.skipped
            shown = "; ".join(skipped[:SHOWN]) + (
                f"; and {len(skipped) - SHOWN} more" if len(skipped) > SHOWN else ""
            )
            raise ImportRefused(
                f"import of {path}: not imported: {shown}. The other records were imported; "
                "the file is kept"
            )
        spool.rewrite([])
        if log:
            r = importer.result
            log(f"imported {path}: {r.records} records, runs {r.runs}")
        return importer.result
    finally:
        spool.close()
        importer.close()
        ctx.term()


def count_records(frames: Iterable[bytes | Oversized], max_values: int | None = None) -> int:
    """Records in the data frames (an artifact counts 1); frames that do not decode within
    ``max_values`` msgpack values, or were not read (:class:`Oversized`), count 0."""
    total = 0
    for frame in frames:
        if isinstance(frame, Oversized):
            continue
        try:
            msg = p.decode(frame, len(frame), max_values)
        except p.ProtocolError:
            continue
        if isinstance(msg, p.Data):
            total += len(msg.records)
        elif isinstance(msg, p.LogArtifact):
            total += 1
    return total


def derived_client_id(client_id: str, seq: int) -> str:
    return hashlib.sha256(f"reframe:{client_id}:{seq}".encode()).hexdigest()[:32]


def split_records(
    client_id: str, records: list[Any], max_records: int, max_bytes: int
) -> list[bytes]:
    """``records`` (wire form) as data frames with seqs 1, 2, …, each within the limits."""
    frames: list[bytes] = []
    i = 0
    while i < len(records):
        n = min(max_records, len(records) - i)
        frame = p.encode_data(client_id, len(frames) + 1, records[i : i + n])
        while len(frame) > max_bytes and n > 1:
            n = max(1, min(n // 2 + n % 2, n * max_bytes * 9 // (10 * len(frame))))
            frame = p.encode_data(client_id, len(frames) + 1, records[i : i + n])
        frames.append(frame)
        i += n
    return frames


class _Importer:
    """One import: replays a spool's frames over a connection and tracks the replies."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        address: str,
        curve: CurveKeys | None | Literal["env"],
        result: ImportResult,
        timeout: float,
        stop: threading.Event | None,
        connection_id: Callable[[], bytes] | None = None,
        bounds: tuple[int, int] = (p.DEFAULT_MAX_FRAME_BYTES, 0),
    ) -> None:
        self.ctx, self.address, self.curve = ctx, address, curve
        self.result, self.timeout, self.stop = result, timeout, stop
        self.connection_id = connection_id
        self.max_record, self.max_values = bounds  # how a spool record is read and decoded
        self.oversized: list[Oversized] = []  # records not read (longer than max_record)
        self.deadline = time.monotonic() + timeout
        self.sock = self._connect()
        self.client_id = ""
        self.last_seq = 0  # the highest seq sent or closed with a floor
        self.acked = 0
        self.max_frame = p.DEFAULT_MAX_FRAME_BYTES
        self.waiting: dict[int, p.ClientMessage] = {}
        self.started: dict[str, str] = {}  # run id the client used -> real run id
        self.ended: set[str] = set()
        self._req = 1 << 40  # request ids of our own, far above the client's
        self._main = True  # replies come from the main connection (not a derived client's)
        self.progress: Callable[[int, int], None] | None = None
        self.total = 0
        self._seqs: list[int] = []  # sequenced frames' seqs in order, and the records up to each
        self._upto: list[int] = []

    def _connect(self) -> zmq.Socket[bytes]:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            if self.connection_id is not None:
                sock.setsockopt(zmq.ROUTING_ID, self.connection_id())
            apply_curve(sock, self.curve)
            sock.connect(self.address)
        except BaseException:
            sock.close(0)
            raise
        return sock

    def close(self) -> None:
        self.sock.close(0)

    # ---------------------------------------------------------------- sending

    def send(self, frames: Iterable[bytes | Oversized]) -> None:
        for index, frame in enumerate(frames):
            self.result.frames += 1
            if isinstance(frame, Oversized):
                self.oversized.append(frame)
                self._skip(f"frame {index}: {frame}")
                continue
            try:
                msg = p.decode(frame, self.max_record, self.max_values or None)
            except p.ProtocolError as exc:
                self._skip(f"frame {index}: {exc.code}: {exc.message}")
                continue
            named = getattr(msg, "client_id", None)
            if named is not None and self.client_id and named != self.client_id:
                self._skip(f"frame {index} names client {named}; the spool is {self.client_id}'s")
                continue
            if isinstance(msg, p.Data | p.LogArtifact):
                self._send_sequenced(index, msg, frame)
                continue
            if isinstance(msg, p.StartRun) and msg.offline_id and OFFLINE_TAG not in msg.tags:
                # a start_run no daemon took before: its run really was offline
                tags = {**msg.tags, OFFLINE_TAG: msg.offline_id}
                msg = dataclasses.replace(msg, tags=tags)
                frame = p.encode(msg)
            if len(frame) > self.max_frame:
                self._skip(f"frame {index} ({type(msg).__name__}): {len(frame)} bytes > max_frame")
                continue
            if isinstance(msg, p.Hello):
                self.client_id = msg.client_id
                self.last_seq = max(self.last_seq, msg.acked_floor)
                self.sock.send(frame)
                self.waiting[msg.req] = msg
                self._wait_answer(msg.req)  # its welcome: acked_seq and max_frame
                continue
            if isinstance(msg, p.StartRun | p.EndRun | p.Flush | p.StatusRequest | p.Call):
                self.waiting[msg.req] = msg
            if isinstance(msg, p.EndRun):
                self.ended.add(msg.run_id)
            self.sock.send(frame)

    def _send_sequenced(self, index: int, msg: p.Data | p.LogArtifact, frame: bytes) -> None:
        self.client_id = msg.client_id
        records = len(msg.records) if isinstance(msg, p.Data) else 1
        self._seqs.append(msg.seq)
        self._upto.append((self._upto[-1] if self._upto else 0) + records)
        if msg.seq <= self.acked:
            self.result.records += records
            self._report()
            return  # the daemon holds it already
        if msg.seq > self.last_seq + 1:  # seqs missing from the spool: close them
            missing = f"seqs {self.last_seq + 1}..{msg.seq - 1}"
            self._skip(f"{missing} of client {self.client_id} are not in the spool")
            self._close_upto(msg.seq - 1)
        if isinstance(msg, p.Data) and (
            len(msg.records) > RECORDS_PER_FRAME or len(frame) > self.max_frame
        ):
            self._reframe(msg.seq, frame)
        elif len(frame) > self.max_frame:
            self._skip(f"frame {index} (artifact seq {msg.seq}): {len(frame)} bytes > max_frame")
            return  # the next sequenced frame (or the end) closes its seq
        else:
            self.sock.send(frame)
        self.last_seq = max(self.last_seq, msg.seq)
        self.result.records += records

    def _reframe(self, seq: int, frame: bytes) -> None:
        """Send an oversized data frame's records as smaller frames under a derived client id,
        then close its seq with a floor (module docstring)."""
        # every earlier frame is held and every earlier request answered (an offline run's
        # start_run must have created the run before records for it arrive on another socket)
        self._wait(lambda: self.acked >= seq - 1 and not self.waiting)
        if self.acked >= seq:
            return
        _, _, body = msgpack.unpackb(frame, raw=False, use_list=True)
        derived = derived_client_id(self.client_id, seq)
        frames = split_records(derived, body["records"], RECORDS_PER_FRAME, self.max_frame)
        sock, main = self._connect(), self.sock
        try:
            self.sock, self._main = sock, False  # the derived client's replies: own connection
            for f in frames:
                sock.send(f)
            self._request(p.Flush(self._next(), derived, len(frames), None))
            self._wait(lambda: not self.waiting)
        finally:
            self.sock, self._main = main, True
            sock.close(0)
        self._close_upto(seq)
        self.result.reframed += 1

    def _close_upto(self, seq: int) -> None:
        """Make the daemon count every seq <= ``seq`` it never received as done: a hello with
        that floor, once every lower seq we sent is held (so the floor covers only the gap)."""
        self._wait(lambda: self.acked >= self.last_seq)
        host = os.uname().nodename
        hello = p.Hello(self._next(), self.client_id, os.getpid(), host, "import", seq)
        self._request(hello)
        self._wait_answer(hello.req)
        self.last_seq = max(self.last_seq, seq)

    def _skip(self, what: str) -> None:
        self.result.skipped.append(what)
        self.result.failures.append(p.Failure(None, "spool_frame_skipped", what))

    def collect(self) -> None:
        """Until every sequenced frame is acked and every request answered."""
        self._wait(lambda: not self.waiting and self.acked >= self.last_seq)

    def end_unended_runs(self) -> None:
        for used, run_id in self.started.items():
            if used in self.ended or run_id in self.ended:
                continue
            self._request(
                p.EndRun(self._next(), self.client_id, self.last_seq, used, "FAILED", _now_ms())
            )
            self.result.ended_failed.append(run_id)

    def barrier(self) -> None:
        self._request(p.Flush(self._next(), self.client_id, self.last_seq, None))
        self.collect()

    def _next(self) -> int:
        self._req += 1
        return self._req

    def _request(self, msg: p.EndRun | p.Flush | p.Hello) -> None:
        self.sock.send(p.encode(msg))
        self.waiting[msg.req] = msg

    # ---------------------------------------------------------------- replies

    def _wait_answer(self, req: int) -> None:
        self._wait(lambda: req not in self.waiting)

    def _wait(self, done: Callable[[], bool]) -> None:
        while not done():
            self._on_reply(p.decode(self._wait_reply(), max_frame=2**31))

    def _on_reply(self, reply: p.Message) -> None:
        if isinstance(reply, p.Ack):
            if self._main:  # acks carry no client id: those of the derived client are not ours
                self.acked = max(self.acked, reply.seq)
                self._report()
        elif isinstance(reply, p.Welcome):
            hello = self.waiting.pop(reply.req, None)
            if self._main and isinstance(hello, p.Hello):
                self.acked = max(self.acked, reply.acked_seq)
                self._report()
            self.max_frame = reply.max_frame
        elif isinstance(reply, p.RunStarted):
            req_msg = self.waiting.pop(reply.req, None)
            if isinstance(req_msg, p.StartRun):
                used = req_msg.offline_id or req_msg.run_id or f"req-{req_msg.req}"
                self.started[used] = reply.run_id
                self.result.runs[used] = reply.run_id
        elif isinstance(reply, p.Done | p.Result):
            self.waiting.pop(reply.req, None)
            self.result.failures.extend(reply.failures)
        elif isinstance(reply, p.StatusReply):
            self.waiting.pop(reply.req, None)
        elif isinstance(reply, p.ErrorReply):
            refused = reply.code == "client_id_in_use"  # not ours to use: for good
            if refused or reply.req is None or reply.req not in self.waiting:
                self._refused(reply)
                return
            self.waiting.pop(reply.req, None)
            self.result.failures.append(p.Failure(None, reply.code, reply.message))

    def _report(self) -> None:
        if self.progress is not None:
            i = bisect.bisect_right(self._seqs, self.acked)
            self.progress(min(self._upto[i - 1] if i else 0, self.total), self.total)

    def _refused(self, reply: p.ErrorReply) -> None:
        """An error about a frame without a req (data, artifact, undecodable): no ack follows."""
        where = f"import of {self.result.path}: {reply.code}: {reply.message}"
        if reply.code in TRANSIENT or "max_clients" in reply.message:
            raise TimeoutError(where)  # the daemon may take it later
        raise ImportRefused(where)

    def _wait_reply(self) -> bytes:
        while True:
            if self.stop is not None and self.stop.is_set():
                raise TimeoutError(f"import of {self.result.path} stopped")
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"import of {self.result.path}: the daemon did not answer within "
                    f"{self.timeout} s"
                )
            if self.sock.poll(int(min(left, 0.2) * 1000) + 1):
                return self.sock.recv()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
