"""How many requests that wait (``start_run``, ``end_run``, ``flush``, ``call``) the daemon holds
at once (pure): at most ``per_client`` for one client id and ``total`` over all clients, counted
from receipt until the request is answered, so that the barriers, tasks and timers they hold
are bounded however fast a client sends them. A request over a cap is refused at once with
``limit_exceeded`` naming the cap (``max_requests_per_client`` or ``max_requests``) and its value;
nothing of it is performed and the client may send it again once an earlier one is answered.
A client id is only the client's word, but one process may use at most 16 of them at a time
(clients.py), and the total holds whatever the ids.
"""

from __future__ import annotations

from .clients import Refusal

__all__ = ["MAX_REQUESTS", "MAX_REQUESTS_PER_CLIENT", "RequestSlots"]

MAX_REQUESTS_PER_CLIENT = 128  # default: requests one client id may have in progress
MAX_REQUESTS = 4096  # default: requests in progress over all clients


class RequestSlots:
    def __init__(
        self, per_client: int = MAX_REQUESTS_PER_CLIENT, total: int = MAX_REQUESTS
    ) -> None:
        self.per_client = per_client
        self.total = total
        self.held = 0
        self._by_client: dict[str, int] = {}

    def held_by(self, client_id: str) -> int:
        return self._by_client.get(client_id, 0)

    def take(self, client_id: str) -> Refusal | None:
        """Hold a slot for a request of ``client_id``, or say which cap refuses it."""
        mine = self._by_client.get(client_id, 0)
        if mine >= self.per_client:
            return Refusal(
                "limit_exceeded",
                "max_requests_per_client",
                self.per_client,
                f"max_requests_per_client = {self.per_client}: this client already has {mine} "
                "start_run/end_run/flush/call requests in progress (not answered yet); this one "
                "was not performed: wait for an answer before sending more",
            )
        if self.held >= self.total:
            return Refusal(
                "limit_exceeded",
                "max_requests",
                self.total,
                f"max_requests = {self.total}: the daemon already holds that many "
                "start_run/end_run/flush/call requests in progress over all clients; this one "
                "was not performed: try again shortly",
            )
        self._by_client[client_id] = mine + 1
        self.held += 1
        return None

    def give(self, client_id: str) -> None:
        """The request of ``client_id`` is answered (or dropped): free its slot."""
        mine = self._by_client.get(client_id, 0)
        if mine <= 0:
            return
        self.held -= 1
        if mine == 1:
            del self._by_client[client_id]
        else:
            self._by_client[client_id] = mine - 1

    def status(self) -> dict[str, int]:
        return {"requests_in_progress": self.held}
