"""The user-facing client: ``connect()`` → :class:`Tracker` → :class:`Run`.

Log calls validate their arguments with MLflow's rules (bad input raises at the call site), then
append to the transport's bounded buffer and return; they never wait on the daemon. ``start_run``
is a round trip (it returns MLflow's run id); ``flush`` and ``end`` are barriers that return once
the daemon has committed everything this process logged before them, or raise
:class:`~tracker_client.errors.CommitError` listing the records that failed and why. ``end`` is
durable intent: once the daemon acknowledges it (``accepted``) the run ends as asked even if this
process exits at once; its timeout only bounds the wait for the commit (it then returns False).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from . import protocol as p
from .delivery.spool import default_spool_dir
from .delivery.staging import stage
from .delivery.transport import Transport
from .errors import CommitError, DaemonError, DaemonUnavailable, RecordsDropped, TrackerError
from .run import BARRIER_TIMEOUT, CONNECT_TIMEOUT, OFFLINE_TAG, Run, RunLink
from .source import default_tags
from .wire import validation as v
from .wire.address import client_default_address
from .wire.curve import apply_curve, curve_hint

__all__ = ["Run", "RunLink", "Tracker", "connect", "default_tags", "query_status"]

EXIT_TIMEOUT = float(os.environ.get("TRACKER_EXIT_TIMEOUT", "10"))
# After EXIT_TIMEOUT, how long the exit handler still lets the I/O thread finish writing the
# spool (local disk only): the interpreter would otherwise freeze it mid-write (a torn spool).
EXIT_SPOOL_GRACE_S = 5.0

# Strong references: a Tracker whose variables are gone must still end its runs and flush (or
# spool) at exit. close() removes it.
_TRACKERS: set[Tracker] = set()
_log = logging.getLogger("tracker_client")


def connect(
    address: str | None = None,
    *,
    max_buffer: int = 1_000_000,
    policy: str = "spool",
    offline: bool | None = None,
) -> Tracker:
    """A :class:`Tracker` for the daemon at ``address`` (default: ``$TRACKER_DAEMON_ADDRESS``,
    else the daemon's default socket). Connecting is lazy: nothing waits until ``start_run``.

    ``max_buffer`` records are held in memory; beyond that ``policy`` applies: ``"spool"``
    (default: the overflow goes to the on-disk spool), ``"block"`` or ``"drop-oldest"``.
    ``offline`` (default: True with the spool policy): when no daemon answers ``start_run``, the
    run starts offline with an ``offline-…`` id and everything is spooled; otherwise
    :class:`~tracker_client.errors.DaemonUnavailable` is raised."""
    return Tracker(
        address or client_default_address(), max_buffer=max_buffer, policy=policy, offline=offline
    )


def query_status(address: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
    """Ask a daemon for its status over a throw-away socket (no hello: not counted as a client).
    Raises DaemonUnavailable when no answer comes within ``timeout``."""
    import zmq

    address = address or client_default_address()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        keys = apply_curve(sock)  # TRACKER_CURVE_SERVER_KEY / TRACKER_CURVE_CLIENT_KEY
        sock.connect(address)
        sock.send(p.encode(p.StatusRequest(1)))
        if sock.poll(int(timeout * 1000)):
            reply = p.decode(sock.recv(), max_frame=64 * 1024 * 1024)
            if isinstance(reply, p.StatusReply):
                return reply.status
            if isinstance(reply, p.ErrorReply):
                raise DaemonError(reply.code, reply.message)
        raise DaemonUnavailable(
            f"no status from tracker-daemon at {address} within {timeout:g} s{curve_hint(keys)}"
        )
    finally:
        sock.close(0)
        ctx.term()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Link:
    """The :class:`RunLink` a Tracker gives its runs."""

    __slots__ = ("_tracker", "put")

    def __init__(self, tracker: Tracker) -> None:
        self._tracker = tracker
        self.put = tracker._transport.put

    def stage(self, run_id: str, src: Path, artifact_path: str | None, *, is_dir: bool) -> None:
        tracker = self._tracker
        cid = tracker.client_id
        staged = str(stage(tracker._staging_dir(), cid, src, is_dir=is_dir))

        def make(req: int, seq: int) -> p.ClientMessage:
            return p.LogArtifact(cid, seq, run_id, staged, artifact_path)

        tracker._transport.send_sequenced(make)

    def barrier(self, run_id: str | None, timeout: float) -> None:
        self._tracker._barrier(run_id, timeout)

    def end(self, run_id: str, status: str, timeout: float) -> bool:
        return self._tracker._end(run_id, status, timeout)

    def is_open(self, run_id: str) -> bool:
        return run_id in self._tracker._open_runs

    def renamed(self, old_id: str, new_id: str) -> None:
        runs = self._tracker._open_runs
        run = runs.pop(old_id, None)
        if run is not None:
            runs[new_id] = run


class Tracker:
    """One process's connection to the daemon. Thread-safe; fork-safe (a child gets its own)."""

    def __init__(
        self,
        address: str,
        *,
        max_buffer: int = 1_000_000,
        policy: str = "spool",
        offline: bool | None = None,
    ) -> None:
        self.address = address
        self._transport = Transport(address, max_buffer=max_buffer, policy=policy)
        self.offline = policy == "spool" if offline is None else offline
        if self.offline and policy != "spool":
            raise ValueError("offline runs need policy='spool' (their data goes to the spool)")
        self._open_runs: dict[str, Run] = {}
        self._link = _Link(self)
        _TRACKERS.add(self)

    @property
    def client_id(self) -> str:
        return self._transport.client_id

    def start_run(
        self,
        experiment: str | None = None,
        *,
        experiment_id: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        experiment_tags: Mapping[str, Any] | None = None,
        artifact_location: str | None = None,
        resume_by_name: bool = False,
        system_metrics: bool = False,
        timeout: float = CONNECT_TIMEOUT,
    ) -> Run:
        """Create a run (in experiment ``experiment`` by name, get-or-create, or ``experiment_id``),
        or resume ``run_id``. ``parent_run_id`` makes it a nested run. Waits for the daemon.

        ``experiment_tags`` are set on the experiment (replacing values); ``artifact_location``
        is used when the daemon creates the experiment ``experiment`` (an existing one keeps its
        own). ``resume_by_name``: resume the latest run named ``run_name`` in the experiment if
        there is one (its tags and parent are left as they are), else create it.

        ``system_metrics``: the daemon samples this run's processes (and their children) and the
        host every ``system_metrics_interval_s`` and logs them as ``system/...`` metrics (no
        thread in this process); asked only of a daemon that announces the feature (an older
        one: a warning, and the run has none)."""
        if experiment is not None:
            experiment = v.check_experiment_name(experiment)
        if artifact_location is not None:
            if not isinstance(artifact_location, str) or not artifact_location:
                raise TypeError("artifact_location must be a non-empty string")
            if experiment is None:
                raise ValueError("artifact_location needs an experiment name (experiment=...)")
        if resume_by_name and (not run_name or run_id is not None):
            raise ValueError("resume_by_name needs a run_name (and no run_id)")
        exp_tags = dict(v.check_experiment_tag(k, x) for k, x in (experiment_tags or {}).items())
        if experiment_id is not None and not isinstance(experiment_id, str):
            raise TypeError(f"experiment_id must be a string, got {type(experiment_id).__name__}")
        if run_id is not None:
            run_id = v.check_run_id(run_id)
        if parent_run_id is not None:
            parent_run_id = v.check_run_id(parent_run_id)
        all_tags = {} if run_id is not None else default_tags()
        for key, value in (tags or {}).items():
            k, val = v.check_tag(key, value)
            all_tags[k] = val
        start = _now_ms()

        cid = self._transport.client_id
        offline_id = f"offline-{uuid.uuid4().hex}" if run_id is None else None

        if system_metrics:  # the option goes only to a daemon that announced it: know first
            self._know_features(timeout)

        def make(req: int, seq: int) -> p.ClientMessage:
            sampled = system_metrics and self._announced(p.FEATURE_SYSTEM_METRICS)
            return p.StartRun(
                req,
                cid,
                experiment_id,
                experiment,
                run_id,
                run_name,
                parent_run_id,
                all_tags,
                start,
                offline_id,
                exp_tags,
                artifact_location,
                "by_name" if resume_by_name else None,
                int(sampled),
            )

        fut = self._transport.request_async(make)
        try:
            reply = fut.result(timeout)
        except FutureTimeout:
            if not self.offline or offline_id is None:
                self._transport.abandon(fut)
                raise DaemonUnavailable(self._transport.no_answer(timeout)) from None
            run = Run(self._link, offline_id, experiment_id or "", "", run_name or "")
            run.offline_id = offline_id
            run.set_tag(OFFLINE_TAG, offline_id)  # only a run that really went offline has it
            fut.add_done_callback(run._adopt)
            self._open_runs[offline_id] = run
            _log.warning(
                "tracker-client: %s; run %s continues offline: its data is spooled under %s and "
                "the run gets its MLflow id when a daemon takes it (`tracker-daemon import` prints "
                "the mapping; the run carries the tag tracker.offline_id)",
                self._transport.no_answer(timeout),
                offline_id,
                self._transport.spiller.spool_dir or default_spool_dir(),
            )
            return run
        assert isinstance(reply, p.RunStarted)
        run = Run(self._link, reply.run_id, reply.experiment_id, reply.artifact_uri, reply.run_name)
        self._open_runs[run.run_id] = run
        return run

    def _know_features(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for the daemon's welcome, which says what it announces."""
        try:
            self._transport.wait_welcome(timeout)
        except DaemonUnavailable:
            pass  # offline: a request goes to the spool, without any feature's field

    def _announced(self, feature: str) -> bool:
        """Does the daemon announce ``feature``? (Warned when not: what asked for it is off.)"""
        if feature in self._transport.session.features:
            return True
        _log.warning(
            "tracker-client: the daemon does not announce %r (an older daemon, or the request "
            "went to the spool): this run goes without it",
            feature,
        )
        return False

    def flush(self, timeout: float = BARRIER_TIMEOUT) -> None:
        """Barrier over all runs of this process."""
        self._barrier(None, timeout)

    def status(self, timeout: float = CONNECT_TIMEOUT) -> dict[str, Any]:
        reply = self._transport.request(lambda req, seq: p.StatusRequest(req), timeout)
        assert isinstance(reply, p.StatusReply)
        return reply.status

    def close(self, timeout: float = EXIT_TIMEOUT) -> None:
        """Flush (bounded by ``timeout``) and stop the I/O thread. Open runs stay open."""
        deadline = time.monotonic() + timeout
        try:
            if self._transport.outbox.queue or self._transport.session.unacked:
                self.flush(timeout)
        finally:
            self._transport.close(max(0.0, deadline - time.monotonic()))
            _TRACKERS.discard(self)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals used by Run

    def _barrier(self, run_id: str | None, timeout: float) -> None:
        cid = self._transport.client_id

        def make(req: int, seq: int) -> p.ClientMessage:
            return p.Flush(req, cid, seq, run_id)

        try:
            reply = self._transport.request(make, timeout)
        except DaemonUnavailable as exc:
            self._raise_problems(cause=exc)
            raise
        assert isinstance(reply, p.Done)
        failures = [*reply.failures, *self._transport.take_refused(run_id)]
        self._raise_problems(failures)
        if failures:
            raise CommitError(failures)

    def _raise_problems(
        self,
        failures: tuple[p.Failure, ...] | list[p.Failure] = (),
        cause: BaseException | None = None,
    ) -> None:
        """Raise what the transport has to report since the last barrier: records it had to
        drop (RecordsDropped, with the count) or an unexpected error of its I/O thread."""
        lost, failure = self._transport.take_problems()
        err: TrackerError | None = None
        if lost:
            more = f"; and: {cause}" if cause is not None else ""
            err = RecordsDropped(lost, self._transport.outbox.lost_reason, more)
        elif failure is not None:
            err = TrackerError(
                f"tracker-client: the I/O thread met an unexpected error: {failure!r}"
            )
            cause = failure
        if err is None:
            return
        if failures:
            err.add_note(str(CommitError(failures)))
        raise err from cause

    def _end(self, run_id: str, status: str, timeout: float) -> bool:
        """True: committed and ended. False: the daemon holds the END (it answered
        ``accepted``), or the request is kept for a daemon (offline); the status is set once
        the run's records are committed. Raises as the Run.end docstring says."""
        cid = self._transport.client_id
        end_time = _now_ms()

        def make(req: int, seq: int) -> p.ClientMessage:
            return p.EndRun(req, cid, seq, run_id, status, end_time)

        fut = self._transport.request_async(make)
        if self.offline and not self._transport.welcomed.is_set():
            # no daemon has ever answered: the run is offline, its end goes to the spool
            timeout = min(timeout, CONNECT_TIMEOUT)
        run = self._open_runs.pop(run_id, None)
        if run is None:
            run = next((r for r in self._open_runs.values() if r.offline_id == run_id), None)
            if run is not None:
                self._open_runs.pop(run.run_id, None)
        try:
            reply = fut.result(timeout)
        except (FutureTimeout, DaemonError) as exc:
            if fut.accepted.is_set() and (
                not isinstance(exc, DaemonError) or exc.code == "timeout"
            ):
                # the daemon holds the END durably: it sets the status after the commit
                _log.info(
                    "tracker-client: run %s: the daemon holds its end (%s) and sets the status "
                    "once the run's records are committed (not yet after %g s); this process "
                    "may exit",
                    run_id,
                    status,
                    timeout,
                )
                self._raise_problems()
                return False
            if isinstance(exc, DaemonUnavailable):
                self._raise_problems(cause=exc)
                raise
            if isinstance(exc, DaemonError):
                raise
            if self.offline:  # the end_run request stays queued and is spooled at exit
                _log.warning(
                    "tracker-client: ending run %s: %s; the request is kept and sent when a "
                    "daemon answers (or spooled at exit)",
                    run_id,
                    self._transport.no_answer(timeout),
                )
                self._raise_problems()
                return False
            unavailable = DaemonUnavailable(self._transport.no_answer(timeout))
            self._raise_problems(cause=unavailable)
            raise unavailable from None
        assert isinstance(reply, p.Done)
        failures = [*reply.failures, *self._transport.take_refused(run_id)]
        self._raise_problems(failures)
        if failures:
            raise CommitError(failures)
        return True

    def _staging_dir(self) -> Path:
        self._transport.wait_welcome(CONNECT_TIMEOUT)
        staging = self._transport.staging_dir
        if not staging:
            raise DaemonError("no_staging", "the daemon did not announce an artifact staging dir")
        return Path(staging)

    def _at_exit(self) -> None:
        """End open runs FINISHED and flush, within EXIT_TIMEOUT; whatever the daemon has not
        taken by then (or at once, when no daemon is connected) is written to the spool (given
        up to EXIT_SPOOL_GRACE_S more to finish).
        Never raises, never hangs."""
        deadline = time.monotonic() + EXIT_TIMEOUT
        connected = self._transport.session.connected
        for run in list(self._open_runs.values()):
            try:
                left = max(0.1, deadline - time.monotonic()) if connected else 0.0
                run.end("FINISHED", timeout=left)  # unanswered: the request is spooled below
            except Exception as exc:
                sys.stderr.write(f"tracker-client: at exit, ending run {run.run_id}: {exc}\n")
        try:
            if connected:
                self.close(max(0.1, deadline - time.monotonic()))
        except Exception as exc:
            sys.stderr.write(f"tracker-client: at exit: {exc}\n")
        finally:
            transport = self._transport
            # spools the rest; the wait ends as soon as the I/O thread has
            transport.close(max(EXIT_SPOOL_GRACE_S, deadline - time.monotonic()))
            _TRACKERS.discard(self)
            lost, failure = transport.take_problems()
            if lost:
                reason = transport.outbox.lost_reason
                sys.stderr.write(f"tracker-client: at exit: {RecordsDropped(lost, reason)}\n")
            if unspooled := transport.spiller.unspooled:
                sys.stderr.write(
                    f"tracker-client: at exit: {unspooled} record(s) not taken by a daemon could "
                    f"not be written to the spool ({transport.outbox.spool_error}); they are lost\n"
                )


@atexit.register
def _flush_all_at_exit() -> None:
    for tracker in list(_TRACKERS):
        tracker._at_exit()


def _forget_runs_in_child() -> None:
    # A forked child gets a fresh connection; the parent's open runs are the parent's to end.
    for tracker in list(_TRACKERS):
        tracker._open_runs.clear()


os.register_at_fork(after_in_child=_forget_runs_in_child)
