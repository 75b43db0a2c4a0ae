"""What the daemon knows of the offline ids its clients use (pure: time comes in as an argument).

An offline id (``offline-<hex>``) names a run whose ``start_run`` no daemon had answered when its
client went on logging (client/PROTOCOL.md §5.4). A client sends that ``start_run`` before any
record that uses the id, and the daemon reserves the id on receipt; so a record whose offline id
the daemon does not know was never started by anyone — unless the record was received by the
daemon before a restart (replayed from the journal): its client may resend a start_run that the
previous daemon had taken but not handled. What a record's id is, when it is committed
(:meth:`OfflineIds.verdict`):

    created (runs.log)                        ─► the MLflow run id
    its creation failed                       ─► Gone (remembered)
    its start_run is being handled            ─► Waiting until ``wait_s`` after it was received;
                                                 then Gone (not remembered: it may still land)
    unknown, a record replayed from the       ─► Waiting until ``wait_s`` after the daemon
    journal                                      started serving (its client reconnects and
                                                 resends the start_run); then Gone (remembered)
    unknown                                   ─► Gone at once (remembered as never started)

Nobody waits on a Waiting id in a commit lane (committer.py parks its batches), and every wait
has a deadline that does not move, so unknown ids cost other clients nothing. Remembered
failures are bounded (``remember``, the oldest forgotten first): a forgotten id that comes back
is unknown again and fails at once again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import RunGone

__all__ = ["OFFLINE_PREFIX", "REMEMBER_FAILED", "OfflineIds", "Waiting", "is_offline"]

OFFLINE_PREFIX = "offline-"
REMEMBER_FAILED = 65_536  # offline ids whose failure is remembered (about 10 MB at most)


def is_offline(run_id: str) -> bool:
    """Is ``run_id`` an offline id (MLflow run ids never start with ``offline-``)?"""
    return run_id.startswith(OFFLINE_PREFIX)


@dataclass(frozen=True, slots=True)
class Waiting:
    """Not decided yet: ask again when its start_run is handled, or at ``until`` (monotonic)
    at the latest, when the verdict is final."""

    until: float


class OfflineIds:
    def __init__(
        self,
        created: Callable[[str], str | None],
        *,
        wait_s: float,
        since: float,
        remember: int = REMEMBER_FAILED,
    ) -> None:
        self._created = created  # the MLflow run an offline id became (runs.log), or None
        self.wait_s = wait_s
        self.since = since  # when the daemon started serving (monotonic)
        self.remember = remember
        self._in_flight: dict[str, float] = {}  # offline id -> when its start_run arrived
        self._failed: OrderedDict[str, str] = OrderedDict()  # offline id -> why

    def serving(self, now: float) -> None:
        """The daemon serves from ``now``: clients reconnect and resend their start_runs."""
        self.since = now

    def in_flight(self, offline_id: str) -> bool:
        return offline_id in self._in_flight

    @property
    def remembered(self) -> int:
        return len(self._failed)

    # ------------------------------------------------------------------ a start_run

    def reserve(self, offline_id: str, now: float) -> None:
        """Its start_run was received (handled later)."""
        if self._created(offline_id) is None:
            self._in_flight.setdefault(offline_id, now)
            self._failed.pop(offline_id, None)  # a start after all: decided by it

    def created(self, offline_id: str) -> None:
        self._in_flight.pop(offline_id, None)
        self._failed.pop(offline_id, None)

    def failed(self, offline_id: str, reason: str) -> None:
        """Creating the run failed (``reason``)."""
        self._in_flight.pop(offline_id, None)
        self._remember(offline_id, f"offline run {offline_id} was never created: {reason}")

    # ------------------------------------------------------------------ a record

    def verdict(
        self, offline_id: str, now: float, *, replayed: bool = False
    ) -> str | Waiting | RunGone:
        """The MLflow run id, Waiting, or why the id's records fail (see the module doc);
        ``replayed``: records a previous daemon received (replayed from the journal)."""
        run_id = self._created(offline_id)
        if run_id is not None:
            return run_id
        reason = self._failed.get(offline_id)
        if reason is not None:
            return RunGone("RESOURCE_DOES_NOT_EXIST", reason)
        received = self._in_flight.get(offline_id)
        if received is not None:
            if now < received + self.wait_s:
                return Waiting(received + self.wait_s)
            return RunGone(
                "RESOURCE_DOES_NOT_EXIST",
                f"offline run {offline_id} was not created within {self.wait_s:g} s of its "
                "start_run (still being handled)",
            )
        if replayed and now < self.since + self.wait_s:
            return Waiting(self.since + self.wait_s)
        reason = (
            f"offline run {offline_id} was never created (its start_run did not reach the daemon)"
        )
        return RunGone("RESOURCE_DOES_NOT_EXIST", self._remember(offline_id, reason))

    def _remember(self, offline_id: str, reason: str) -> str:
        self._failed[offline_id] = reason
        self._failed.move_to_end(offline_id)
        while len(self._failed) > self.remember:
            self._failed.popitem(last=False)
        return reason
