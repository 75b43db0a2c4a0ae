"""The client's spool side: what the daemon has not taken goes to ``<spool dir>/<client id>.spool``.

Three moments, all on the I/O thread: at start, :meth:`Spiller.reopen` picks up what an earlier
close of this transport spooled (the I/O thread sends it first, :meth:`Spiller.replay`: it is
older than the queue);
when the queue is over its bound (policy ``spool``), :meth:`Spiller.spill` moves its oldest part
to the file; at close, :meth:`Spiller.spool_everything` writes unacked frames, unanswered
requests, the unsent part of the spool and the queue, in that order.

Nothing leaves the queue before it is in the file: units are framed by the outbox's one
:class:`~.outbox.FrameMaker`, written all or nothing, and only then placed in the session (their
seqs used); on a write error they go back to the queue and the write is retried
``SPOOL_RETRY_S`` later, and ``outbox.spool_error`` says why meanwhile.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from .. import protocol as p
from .outbox import Outbox, Unit, records_in
from .session import Session
from .spool import SUFFIX, Spool, SpoolBusy, default_spool_dir

__all__ = ["SPOOL_RETRY_S", "Spiller"]

_log = logging.getLogger("tracker_client")

SPOOL_RETRY_S = 1.0  # after a failed spool write (a full disk), try again this much later


class Spiller:
    """Owns the client's spool file; writes units of ``outbox`` placed in ``session``."""

    def __init__(self, session: Session, outbox: Outbox) -> None:
        self.session = session
        self.outbox = outbox
        self.spool: Spool | None = None
        self.spool_dir: Path | None = None  # None: default_spool_dir()
        self.spooled_frames = 0
        self.unspooled = 0  # records not written to the spool at close (lost if the process exits)
        self._retry_at = 0.0
        self._warned: set[str] = set()

    def path(self) -> Path:
        base = self.spool_dir or default_spool_dir()
        return base / f"{self.session.client_id}{SUFFIX}"

    def use_dir(self, spool_dir: str) -> None:
        """The daemon's spool dir (from its welcome), unless TRACKER_SPOOL_DIR says otherwise or
        a spool is open already."""
        if spool_dir and not os.environ.get("TRACKER_SPOOL_DIR") and self.spool is None:
            self.spool_dir = Path(spool_dir)

    def reopen(self) -> None:
        """After a restart of this transport, pick up what an earlier close spooled."""
        if self.spool is None and self.path().exists():
            self._open()

    def has_unsent(self) -> bool:
        """Does the spool hold frames not sent yet? (They are older: they go before the queue.)"""
        return self.spool is not None and self.spool.unread > 0

    def replay(self, room: int) -> list[bytes] | None:
        """Up to ``room`` frames of the spool not sent yet, for the I/O thread to send now, each
        kept in the session like a fresh one (the spool's hello and a frame that does not decode
        are skipped); the file is emptied once all of it was read. None when it cannot be read
        now (warned once; tried again at the next turn)."""
        spool = self.spool
        if spool is None:
            return []
        try:
            frames = spool.read(room)
            if spool.unread == 0:
                spool.reset_if_done()
        except OSError as exc:
            self._warn_once("spool-read", "tracker-client: reading %s: %s", spool.path, exc)
            return None
        out: list[bytes] = []
        for frame in frames:
            try:
                msg = p.decode(frame, max_frame=2**31)
            except p.ProtocolError as exc:  # cannot happen with our own files; never stop on one
                self._warn_once("spool-frame", "tracker-client: skipping a spool frame: %s", exc)
                continue
            if self.session.replayed(frame, msg):
                out.append(frame)
        return out

    def _warn_once(self, key: str, msg: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _log.warning(msg, *args)

    def retry_at(self) -> float:
        """When a failed spill should be tried again (0: no retry pending)."""
        if self.outbox.spool_error is None or len(self.outbox) < self.outbox.max_buffer:
            return 0.0
        return self._retry_at

    def _open(self) -> Spool | None:
        if self.spool is None:
            spool = Spool(self.path())
            try:
                spool.open()
            except (SpoolBusy, OSError) as exc:
                _log.error("tracker-client: cannot open the spool %s: %s", spool.path, exc)
                return None
            self.spool = spool
        return self.spool

    def spill(self) -> None:
        """Queue over its bound: move its oldest part to the spool, in order. If the spool cannot
        be written, everything stays queued and the write is tried again SPOOL_RETRY_S later."""
        outbox = self.outbox
        if outbox.spool_error is not None and time.monotonic() < self._retry_at:
            return
        s = self.session
        units = outbox.take_all(s.seq + 1, s.new_req, down_to=outbox.max_buffer * 3 // 4)
        if units and self._write(units) and self.spooled_frames == len(units):
            _log.warning(
                "tracker-client: the daemon is not keeping up or not reachable; spooling to %s",
                self.path(),
            )
        outbox.space_freed()

    def _write(self, units: list[Unit]) -> bool:
        """Append ``units`` to the spool (all or nothing) and place them; on failure give them
        back to the queue, in order, and remember the error."""
        spool = self._open()
        try:
            if spool is None:
                raise OSError(f"cannot open the spool {self.path()}")
            frames = [u.frame for u in units]
            if spool.size == 0:
                frames.insert(0, self.session.spool_hello())
            spool.append(frames)
        except OSError as exc:
            self.outbox.give_back(units)
            self._failed(exc)
            return False
        for unit in units:
            self.session.placed(unit, in_flight=False)
        self.spooled_frames += len(units)
        if self.outbox.spool_error is not None:
            _log.warning("tracker-client: the spool %s can be written again", spool.path)
            self.outbox.spool_error = None
        return True

    def _failed(self, exc: OSError) -> None:
        self._retry_at = time.monotonic() + SPOOL_RETRY_S
        if self.outbox.spool_error is None:
            _log.warning(
                "tracker-client: cannot write the spool %s: %s; the records stay in memory and "
                "the write is tried again every %g s",
                self.path(),
                exc,
                SPOOL_RETRY_S,
            )
        self.outbox.spool_error = str(exc) or type(exc).__name__

    def spool_everything(self) -> None:
        """At close: unacked frames, unanswered requests, the unsent spool and the queue go to
        the spool file, in that order, so nothing the daemon has not taken is lost. What the
        disk cannot take stays in memory (sent if this transport is used again), is counted in
        ``unspooled`` and logged as an error."""
        unsent_spool: list[bytes] = []
        if self.spool is not None and self.spool.unread > 0:
            try:
                unsent_spool = self.spool.read_all()
            except OSError as exc:
                _log.error("tracker-client: cannot read the spool %s: %s", self.spool.path, exc)
                self.spool.close(remove_if_empty=False)  # leave its content as it is
                self.spool = None
                return
        s, outbox = self.session, self.outbox
        if not (s.unsettled() or len(outbox) or unsent_spool):
            if self.spool is not None:
                try:
                    self.spool.rewrite([])
                except OSError:
                    pass
                self.spool.close()
                self.spool = None
            return
        head = [s.spool_hello(), *s.in_send_order(held=False)]  # not what the daemon holds
        units = outbox.take_all(s.seq + 1, s.new_req)
        written, saved = self._write_exit_spool(head, unsent_spool, units)
        for unit in units[:written]:
            s.placed(unit, in_flight=False)
        outbox.give_back(units[written:])
        self.unspooled = sum(len(u.records) for u in units[written:])
        if saved != "all":  # the unacked frames are only in memory
            self.unspooled += sum(records_in(f) for f in s.unacked.values())
        if saved == "none":
            self.unspooled += sum(records_in(f) for f in unsent_spool)
        spool, self.spool = self.spool, None
        size = spool.size if spool is not None else 0
        if spool is not None:
            spool.close(remove_if_empty=False)
        path = self.path()
        if self.unspooled:
            _log.error(
                "tracker-client: %d record(s) not taken by the daemon could not be written to "
                "the spool %s (%s); they are lost if this process exits now",
                self.unspooled,
                path,
                outbox.spool_error,
            )
        if size > 0:
            _log.warning(
                "tracker-client: frames not taken by the daemon were saved to %s; they are "
                "sent when this process reconnects, or by `tracker-daemon import %s`",
                path,
                path,
            )

    def _write_exit_spool(
        self, head: list[bytes], unsent_spool: list[bytes], units: list[Unit]
    ) -> tuple[int, str]:
        """Write ``head + unsent_spool + units`` as the spool's content, or as much of it as
        the disk takes, in order. Returns (units written, what of head + unsent_spool is in the
        file: "all", "unsent" (not the unacked frames) or "none")."""
        spool = self._open()
        written = 0
        saved = "none"
        try:
            if spool is None:
                raise OSError(f"cannot open the spool {self.path()}")
            try:
                spool.rewrite(head + unsent_spool + [u.frame for u in units])
                return len(units), "all"
            except OSError:  # not all of it fits: keep the order, write what fits
                spool.rewrite(head + unsent_spool)
                saved = "all"
                while written < len(units):
                    batch = units[written : written + 16]
                    spool.append([u.frame for u in batch])
                    written += len(batch)
        except OSError as exc:
            self.outbox.spool_error = str(exc) or type(exc).__name__
            if spool is not None and saved == "none":  # at least what the file held before
                try:
                    spool.rewrite([head[0], *unsent_spool])
                    saved = "unsent"
                except OSError:
                    pass
        return written, saved
