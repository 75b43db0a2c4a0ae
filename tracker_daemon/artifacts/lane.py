"""The artifact lane: staged artifacts ─► a private verified copy ─► the run's artifact repository.

    submit ─► ready queue ─► attempt: check artifact_path, snapshot the slot (staging.py),
                             upload the copy (worker thread), delete the copy
              ▲                 │ done / any failure but a retry ─► delete the slot, then settle
              └── later heap ◄──┘ retryable failure: back off, out of line (others go first),
                                  until RETRY_FOR_S after the first attempt, then a failure

Every failure message starts ``artifact '<artifact_path or name>': ``. A failure that can never
succeed (a refused staged path or artifact_path, a link or device in the slot, a permanent sink
error) settles at once; one artifact never holds the lane for more than its own attempt.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import os
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio

from tracker_client import protocol as p
from tracker_client.wire.validation import artifact_path_problem

from ..commit.batcher import Origin
from ..errors import PermanentSinkError, RetryableSinkError, SinkError
from .staging import SlotMissing, SlotRef, StagingArea, StagingRefused, clean_partial_uploads

__all__ = ["FIRST_BACKOFF_S", "RETRY_FOR_S", "ArtifactLane", "label"]

log = logging.getLogger("tracker_daemon")

RETRY_FOR_S = 300.0  # a retryable failure is retried this long after the first attempt
FIRST_BACKOFF_S = 0.5
_RETRYABLE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.EBUSY})

_Done = Callable[[Origin, str, "p.Failure | None"], None]


def label(msg: p.LogArtifact) -> str:
    """``artifact '<artifact_path or name>'``, the prefix of every artifact failure: the name
    as it is (no quoting or escaping), cut to 200 characters (client/PROTOCOL.md, section 8)."""
    name = msg.artifact_path or os.path.basename(str(msg.staged_path)) or str(msg.staged_path)
    return f"artifact '{name[:200]}'"


@dataclass(slots=True)
class _Job:
    origin: Origin
    msg: p.LogArtifact
    replayed: bool
    first: float = 0.0  # monotonic time of the first attempt
    attempts: int = 0
    backoff: float = FIRST_BACKOFF_S
    finished: bool = False
    ref: SlotRef | None = None  # the sender's own slot, once the staged path is accepted


class ArtifactLane:
    """One worker; retries wait in a heap by due time so that other artifacts go first."""

    def __init__(
        self,
        staging: StagingArea,
        *,
        artifact_root: str,
        extra_roots: Sequence[str] = (),
        uri_of: Callable[[str], Awaitable[str]],
        upload: Callable[[str, str, str | None], None],
        done: _Done,
        on_retry: Callable[[SinkError], None],
        on_ok: Callable[[], None] = lambda: None,
        retry_for: float = RETRY_FOR_S,
        max_backoff: float = 30.0,
    ) -> None:
        self.staging = staging
        self.artifact_root = artifact_root
        self.extra_roots = tuple(r for r in extra_roots if r != artifact_root)
        self._uri_of = uri_of
        self._upload = upload
        self._done = done
        self._on_retry = on_retry  # health: the backend failed (backend.note_error)
        self._on_ok = on_ok  # health: an upload succeeded (backend.note_ok)
        self.retry_for = retry_for
        self.max_backoff = max_backoff
        self._ready: deque[_Job] = deque()
        self._later: list[tuple[float, int, _Job]] = []
        self._tie = itertools.count()
        self._wake = anyio.Event()
        self.retries = 0
        self.partials_removed = 0

    @property
    def waiting(self) -> int:
        return len(self._ready) + len(self._later)

    @property
    def retrying(self) -> int:
        """Artifacts waiting for their next attempt after a retryable failure."""
        return len(self._later)

    def status(self) -> dict[str, int]:
        return {"artifacts_retrying": self.retrying}

    def submit(self, origin: Origin, msg: p.LogArtifact, *, replayed: bool = False) -> None:
        """Queue an artifact message (journaled already). ``replayed``: delivered from the
        journal, so a slot that no longer exists was uploaded before a restart."""
        self._ready.append(_Job(origin, msg, replayed))
        self._wake.set()

    async def run(self) -> None:
        removed = 0
        for root in (self.artifact_root, *self.extra_roots):
            removed += await anyio.to_thread.run_sync(clean_partial_uploads, root)
        self.partials_removed = removed
        if removed:
            log.info("event=partial_uploads_removed count=%d", removed)
        while True:
            job = await self._next()
            try:
                await self._attempt(job)
            except Exception as exc:  # contained: the lane must outlive any one artifact
                log.exception("event=artifact_lane_error")
                if not job.finished:  # the slot goes too, before the failure is reported
                    failure = self._failure(job.msg, "INTERNAL_ERROR", repr(exc))
                    await self._finish(job, failure, job.ref)

    async def _next(self) -> _Job:
        while True:
            now = time.monotonic()
            while self._later and self._later[0][0] <= now:
                self._ready.append(heapq.heappop(self._later)[2])
            if self._ready:
                return self._ready.popleft()
            limit = self._later[0][0] - now if self._later else None
            with anyio.move_on_after(limit):
                await self._wake.wait()
            self._wake = anyio.Event()

    async def _attempt(self, job: _Job) -> None:
        msg = job.msg
        job.attempts += 1
        job.first = job.first or time.monotonic()
        try:
            ref = self.staging.parse(msg.client_id, msg.staged_path)
        except StagingRefused as exc:  # not this client's slot: touch nothing
            await self._finish(job, self._failure(msg, "INVALID_PARAMETER_VALUE", str(exc)))
            return
        job.ref = ref
        problem = artifact_path_problem(msg.artifact_path) if msg.artifact_path else None
        if problem is not None:  # MLflow's rule, exactly
            reason = f"refused artifact_path: {problem}"
            await self._finish(job, self._failure(msg, "INVALID_PARAMETER_VALUE", reason), ref)
            return
        try:
            uri = await self._uri_of(msg.run_id)
            copy = await anyio.to_thread.run_sync(self.staging.snapshot, ref)
            try:
                await anyio.to_thread.run_sync(self._upload, uri, str(copy), msg.artifact_path)
            finally:
                await anyio.to_thread.run_sync(self.staging.release, copy)
        except SlotMissing as exc:
            if job.replayed:  # uploaded before the restart, then deleted
                await self._finish(job, None, ref)
            else:
                await self._finish(
                    job, self._failure(msg, "INVALID_PARAMETER_VALUE", str(exc)), ref
                )
        except StagingRefused as exc:
            await self._finish(job, self._failure(msg, "INVALID_PARAMETER_VALUE", str(exc)), ref)
        except RetryableSinkError as exc:
            await self._retry_or_fail(job, ref, exc)
        except PermanentSinkError as exc:
            await self._finish(job, self._failure(msg, exc.code, exc.message), ref)
        except OSError as exc:
            reason = f"copying the staged files: {exc.strerror or exc}"
            if exc.errno in _RETRYABLE_ERRNOS:
                retry = RetryableSinkError("TEMPORARILY_UNAVAILABLE", reason)
                await self._retry_or_fail(job, ref, retry)
            else:
                await self._finish(job, self._failure(msg, "INVALID_PARAMETER_VALUE", reason), ref)
        else:
            self._on_ok()
            await self._finish(job, None, ref)

    async def _retry_or_fail(self, job: _Job, ref: SlotRef, exc: SinkError) -> None:
        self._on_retry(exc)
        elapsed = time.monotonic() - job.first
        if elapsed >= self.retry_for:
            reason = (
                f"gave up after {job.attempts} attempts in {elapsed:.0f} s "
                f"(limit {self.retry_for:.0f} s); last error: {exc.message}"
            )
            await self._finish(job, self._failure(job.msg, exc.code, reason), ref)
            return
        delay = min(job.backoff, self.max_backoff, self.retry_for - elapsed)
        job.backoff = min(job.backoff * 2, self.max_backoff)
        due = time.monotonic() + delay * random.uniform(0.75, 1.25)
        heapq.heappush(self._later, (due, next(self._tie), job))
        self.retries += 1

    @staticmethod
    def _failure(msg: p.LogArtifact, code: str, reason: str) -> p.Failure:
        return p.Failure(None, code, f"{label(msg)}: {reason}")

    async def _finish(
        self, job: _Job, failure: p.Failure | None, ref: SlotRef | None = None
    ) -> None:
        """Settle the artifact: first delete its slot (when it is the sender's own), then report,
        so that a ``done`` or ``result`` carrying the outcome finds the slot gone."""
        job.finished = True
        if ref is not None:
            await anyio.to_thread.run_sync(self.staging.discard, ref)
        self._done(job.origin, job.msg.run_id, failure)
