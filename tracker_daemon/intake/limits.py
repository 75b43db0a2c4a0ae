"""What a client may send (pure: the caller passes ``now``): the client table's room and binding
(``max_clients``, ``max_clients_per_process``, ``client_id_in_use``, see clients.py), records per
frame and open runs per client. A refused message gets an ``ErrorReply`` naming the limit and its
value; a refused sequenced message is not acked (the client keeps it and may send it again).
Each refusal is counted in ``limit_rejections``; its log line is throttled per peer and limit
(``LIMIT_LOG_INTERVAL_S``).

``max_frame_bytes`` is enforced by the server before decoding (server.py).
"""

from __future__ import annotations

import logging
from typing import Protocol

from tracker_client import protocol as p

from ..ops.status import Counters
from ..ops.throttle import LogThrottle
from .clients import ClientTable, Peer, Refusal

__all__ = ["LIMIT_LOG_INTERVAL_S", "Limits", "RunView"]

log = logging.getLogger("tracker_daemon")

LIMIT_LOG_INTERVAL_S = 10.0  # each peer's rejections by one limit are logged at most this often


class RunView(Protocol):
    """What the limits need to know of the runs (run_service.RunService)."""

    def starts_new_run(self, msg: p.ClientMessage) -> bool: ...
    def open_runs_of(self, client_id: str) -> int: ...


class Limits:
    def __init__(
        self, max_records_per_frame: int, max_open_runs_per_client: int, counters: Counters
    ) -> None:
        self.max_records_per_frame = max_records_per_frame
        self.max_open_runs_per_client = max_open_runs_per_client
        self.counters = counters  # limit_rejections
        self._log = LogThrottle(LIMIT_LOG_INTERVAL_S)

    def check(
        self, peer: Peer, msg: p.ClientMessage, clients: ClientTable, runs: RunView, now: float
    ) -> Refusal | None:
        """Why ``msg`` must be refused, or None. A message naming a client id claims it in the
        table (binding it to ``peer`` on first use)."""
        cid = getattr(msg, "client_id", "")
        if cid:
            refusal = clients.claim(cid, peer, now)
            if refusal is not None:
                return refusal
        limit = self.max_records_per_frame
        if type(msg) is p.Data and len(msg.records) > limit:
            return _limit(
                "max_records_per_frame",
                limit,
                f"max_records_per_frame = {limit}: this data frame (seq "
                f"{msg.seq}) holds {len(msg.records)} records; it is not acknowledged, and sent "
                "again unchanged it is refused again: split it. (The reference client sends at "
                "most 1000 records per frame; a client that builds larger frames has a bug.)",
            )
        if cid and runs.starts_new_run(msg):
            n = runs.open_runs_of(cid)
            limit = self.max_open_runs_per_client
            if n >= limit:
                return _limit(
                    "max_open_runs_per_client",
                    limit,
                    f"max_open_runs_per_client = {limit}: this client "
                    f"already has {n} open runs; end some before starting more",
                )
        return None

    def refuse(
        self, identity: bytes, msg: p.ClientMessage, refusal: Refusal, now: float
    ) -> p.ErrorReply:
        """Count the refusal, log it (throttled), and return the reply for the client."""
        limit = refusal.limit
        self.counters.limit_rejections[limit] += 1
        held = self._log.check((identity, limit), now)
        if held is not None:
            log.warning(
                "event=limit_exceeded limit=%s value=%d kind=%s client=%s rejections=%d "
                "peer=%s suppressed=%d",
                limit,
                refusal.value,
                type(msg).__name__,
                getattr(msg, "client_id", ""),
                self.counters.limit_rejections[limit],
                identity[:16].hex() or "-",  # as server.peer_name
                held,
            )
        return p.ErrorReply(getattr(msg, "req", None), refusal.code, refusal.message)


def _limit(limit: str, value: int, message: str) -> Refusal:
    return Refusal("limit_exceeded", limit, value, message)
