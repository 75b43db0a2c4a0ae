"""``end_run`` as durable intent: the daemon takes an END on receipt and applies it later.

    receive(msg) (intake, synchronous) ─► a pending Ending for its run (or the one already held:
                                          a resent or replayed copy joins it; one already applied
                                          is answered at once — nothing ends twice)
    run(): per Ending ─► runs.log "ending" entry (fsync) and the journal's group fsync ─► durable
                         (control.py answers ``accepted``: the process may exit now)
                     ─► wait until every message of its client up to its seq is done
                     ─► set the run's status ─► runs.log "ended" ─► done (control.py: ``done``)

A restarted daemon restores the ENDs runs.log holds and applies them once the replayed journal is
committed. While an END is held its run is never treated as an orphan (orphans.py asks
:meth:`Endings.holds`). When the END's client is gone and the messages it announced never came
(:meth:`client_gone`, or :meth:`nothing_more` at the end of ``run --until-idle``), the END waits
only for what was received. Ending the run is retried by the backend (retryable errors); an END
that fails for good is logged and reported in its ``done``. On a full disk runs.log keeps the END
in memory (saved later, runs.py): it is applied, but not acknowledged, so the client keeps it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from tracker_client import protocol as p

from ..errors import SinkError
from ..ops.supervise import Supervisor, each_contained
from .run_service import RunService
from .runs import EndIntent

__all__ = ["END_WAIT_LOG_S", "Ending", "Endings"]

log = logging.getLogger("tracker_daemon")

END_WAIT_LOG_S = 600.0  # a held END still waiting for its records is logged this often


@dataclass(slots=True, eq=False)
class Ending:
    """One END the daemon holds (mutable: its progress)."""

    intent: EndIntent
    durable: anyio.Event = field(default_factory=anyio.Event)  # journaling was attempted
    saved: bool = False  # in runs.log (False on a full disk: then it is not acknowledged)
    done: anyio.Event = field(default_factory=anyio.Event)  # the status is set (or failed)
    failure: p.Failure | None = None  # setting the status failed for good
    upto: int | None = None  # wait only for messages up to here (its client is gone)
    scope: anyio.CancelScope | None = None  # the current wait (cancelled when upto changes)
    restored: bool = False  # held by runs.log across a restart (its run's start may be resent)


class Endings:
    def __init__(
        self,
        runs: RunService,
        supervisor: Supervisor,
        *,
        barrier: Callable[[str, int, float | None], Awaitable[bool]],
        received_upto: Callable[[str], int],
        synced: Callable[[], Awaitable[None]],
        note_error: Callable[[SinkError], None],
        wait_log_s: float = END_WAIT_LOG_S,
    ) -> None:
        self.runs = runs
        self.runbook = runs.runbook
        self.supervisor = supervisor
        self._barrier = barrier
        self._received_upto = received_upto
        self._synced = synced  # the journal's group fsync
        self._note_error = note_error
        self.wait_log_s = wait_log_s
        self._by_run: dict[str, Ending] = {}  # run id as the client named it -> held END
        self.applied = 0  # ENDs applied since the start
        self._in: MemoryObjectSendStream[Ending]
        self._out: MemoryObjectReceiveStream[Ending]
        self._in, self._out = anyio.create_memory_object_stream[Ending](math.inf)

    # ------------------------------------------------------------------ queries

    @property
    def pending(self) -> int:
        return len(self._by_run)

    def holds(self, run_id: str) -> bool:
        """Is an END held for ``run_id`` (an MLflow id; also when the END named its offline id)?"""
        if run_id in self._by_run:
            return True
        for named in self._by_run:
            handle = self.runs.offline_run(named)
            if handle is not None and handle.run_id == run_id:
                return True
        return False

    def status(self) -> dict[str, Any]:
        return {"ends_pending": self.pending, "ends_applied": self.applied}

    # ------------------------------------------------------------------ intake

    def receive(self, msg: p.EndRun) -> Ending | None:
        """Take an END (synchronous, on receipt): the Ending that answers it, or None when this
        very request (same client and req) was applied already."""
        key = f"{msg.client_id}:{msg.req}"
        if key in self.runbook.ended:
            return None
        held = self._by_run.get(msg.run_id)
        if held is not None:
            return held  # a copy (resent, replayed, imported) or a second END: the first wins
        intent = EndIntent(key, msg.client_id, msg.seq, msg.run_id, msg.status, msg.end_time)
        return self._hold(intent, durable=False)

    def restore(self) -> None:
        """After a restart: the ENDs runs.log holds are applied once their records commit."""
        for intent in list(self.runbook.ending.values()):
            if intent.run_id not in self._by_run:
                self._hold(intent, durable=True)

    def _hold(self, intent: EndIntent, *, durable: bool) -> Ending:
        ending = Ending(intent, restored=durable)
        if durable:
            ending.saved = True
            ending.durable.set()
        self._by_run[intent.run_id] = ending
        self._in.send_nowait(ending)
        return ending

    # ------------------------------------------------------------------ the client is gone

    def client_gone(self, client_id: str) -> None:
        """``client_id`` is gone and its spool (if any) imported: what it did not send will not
        come; its held ENDs wait only for what was received."""
        upto = self._received_upto(client_id)
        for ending in self._by_run.values():
            if ending.intent.client_id == client_id and ending.intent.seq > upto:
                self._limit(ending, upto)

    def nothing_more(self) -> None:
        """``run --until-idle``, everything imported and committed: no message will come."""
        for ending in self._by_run.values():
            upto = self._received_upto(ending.intent.client_id)
            if ending.intent.seq > upto:
                self._limit(ending, upto)

    def _limit(self, ending: Ending, upto: int) -> None:
        if ending.upto is not None and ending.upto <= upto:
            return
        log.warning(
            "event=end_without_records run=%s client=%s seq=%d received=%d "
            "note=its_client_is_gone_and_never_sent_the_rest",
            ending.intent.run_id,
            ending.intent.client_id,
            ending.intent.seq,
            upto,
        )
        ending.upto = upto
        if ending.scope is not None:
            ending.scope.cancel()

    # ------------------------------------------------------------------ applying

    def close(self) -> None:
        self._in.close()
        self._out.close()

    async def run(self) -> None:
        await each_contained(self._out.receive, self._apply, self.supervisor)

    async def _apply(self, ending: Ending) -> None:
        intent = ending.intent
        if not ending.durable.is_set():
            await anyio.to_thread.run_sync(self.runbook.record_ending, intent)
            ending.saved = not self.runbook.unsaved  # a full disk: kept in memory only
            await self._synced()  # the records it waits for are as durable as the END
            ending.durable.set()
        await self._wait_for_records(ending)
        run_id = intent.run_id
        try:
            run_id = await self.runs.resolve(intent.run_id, replayed=ending.restored)
            await self.runs.end(run_id, intent.status, intent.end_time)
        except SinkError as exc:
            self._note_error(exc)
            log.error(
                "event=end_failed run=%s status=%s code=%s reason=%r",
                intent.run_id,
                intent.status,
                exc.code,
                exc.message,
            )
            ending.failure = p.Failure(None, exc.code, f"ending run {intent.run_id}: {exc.message}")
        await anyio.to_thread.run_sync(self.runbook.record_ended, intent.key, run_id)
        self.applied += 1
        if self._by_run.get(intent.run_id) is ending:
            del self._by_run[intent.run_id]
        ending.done.set()

    async def _wait_for_records(self, ending: Ending) -> None:
        intent = ending.intent
        while True:
            upto = intent.seq if ending.upto is None else min(intent.seq, ending.upto)
            with anyio.CancelScope() as ending.scope:
                if await self._barrier(intent.client_id, upto, self.wait_log_s):
                    return
                log.warning(
                    "event=end_waiting run=%s client=%s seq=%d status=%s "
                    "note=status_set_once_its_records_are_committed",
                    intent.run_id,
                    intent.client_id,
                    intent.seq,
                    intent.status,
                )
            ending.scope = None
