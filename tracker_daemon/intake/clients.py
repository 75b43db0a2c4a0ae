"""The client table (pure: the caller passes ``now``): who each client id is, which peer it is
bound to, when it was last seen, and whether a new client id may join.

Identity. A client id is bound to the peer that first used it: on ipc the process the kernel
reports for the connection (uid and pid, from SO_PEERCRED); with CURVE the client's public key;
otherwise the connection (ZeroMQ routing identity). A message naming a client id bound to another
peer is refused (``client_id_in_use``) while that peer is alive: its process has not exited (ipc,
and a local claimed pid) and, for a connection binding, the connection is still open. So another
process can neither ack a client's frames away (hello with a large ``acked_floor``), nor replace
its frames, nor take its failures. Once the process bound to an id has exited, the id is released
only to a peer of the same uid (its next process, its spool): a live client of another uid is
refused, so it cannot move the floor of the frames the exited process's spool still holds. Ids
restored from the mark are unbound until first use (the mark keeps no uid: docs/limits.md).

Spool imports. The daemon imports a spool through its own socket, each connection acting for the
spool file's owner (``acting(peer)``: that uid). A spool carries no authority its writer lacked:
it may use a client id that is unbound, or bound (live or remembered) to a peer of the same uid
whose process is gone; an id bound to another uid, or to any peer that is still alive, is refused
(``client_id_in_use``: a spool never moves a live client's floor nor settles its seqs). An id a
spool used stays bound to its owner's uid (``("spool", uid)``): a later peer of another uid is
refused, one of the same uid takes it over. Other connections of the daemon itself (an
administrator holding its CURVE key pair) are privileged: never refused, never bound.

Room. A client counts toward ``max_clients`` while its process runs and it has sent something in
the last ``idle_s`` seconds, has an open run or unsettled frames. At most
``per_process`` client ids of one process (or one connection) count at a time, so one peer cannot
fill the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "CLIENT_IDLE_S",
    "MAX_CLIENTS_PER_PROCESS",
    "ClientInfo",
    "ClientTable",
    "Peer",
    "Refusal",
    "id_prefix",
    "owner_uid",
    "peer_from",
]

CLIENT_IDLE_S = 30.0  # an idle client (no open run, nothing unsettled) stops counting after this
MAX_CLIENTS_PER_PROCESS = 16  # client ids one process (or one connection) may have counted
COUNT_CACHE_S = 1.0  # the full count of live clients is recomputed at most this often
ID_PREFIX_CHARS = 8

# ("pid", uid, pid) | ("key", z85) | ("conn", routing id) | ("spool", uid)
Owner = tuple[str, int | str | bytes] | tuple[str, int, int]


def owner_uid(owner: Owner | None) -> int | None:
    """The uid an owner stands for, when it is a local user's (a process, a spool file)."""
    if owner is not None and owner[0] in ("pid", "spool"):
        uid = owner[1]
        return uid if isinstance(uid, int) else None
    return None


@dataclass(frozen=True, slots=True)
class Peer:
    """Who sent a message: the connection's routing identity and, when the transport says so,
    the peer process's uid and pid (kernel, ipc) or its CURVE public key (Z85). ``address`` is
    ZeroMQ's ``Peer-Address`` it was read from."""

    routing_id: bytes
    uid: int | None = None
    pid: int | None = None
    key: str = ""
    address: str = ""
    owner: Owner = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        owner: Owner
        if self.pid is not None and self.uid is not None:
            owner = ("pid", self.uid, self.pid)
        elif self.key:
            owner = ("key", self.key)
        else:
            owner = ("conn", self.routing_id)
        object.__setattr__(self, "owner", owner)


def peer_from(routing_id: bytes, address: str | None, user_id: str | None) -> Peer:
    """A :class:`Peer` from ZeroMQ's message properties: ``Peer-Address`` is
    ``localhost:<uid>:<gid>:<pid>`` on ipc (SO_PEERCRED at connect time), an IP on tcp;
    ``User-Id`` is the ZAP user id, which pyzmq's authenticator sets to the CURVE key."""
    uid = pid = None
    if address and address.startswith("localhost:"):
        parts = address.split(":")
        if len(parts) == 4 and all(x.isdigit() for x in parts[1:]) and int(parts[3]) > 0:
            uid, pid = int(parts[1]), int(parts[3])
    key = user_id if user_id and len(user_id) == 40 else ""
    return Peer(routing_id, uid, pid, key, address or "")


def id_prefix(client_id: str) -> str:
    """What the unauthenticated status document shows of a client id."""
    return client_id[:ID_PREFIX_CHARS] + "…" if len(client_id) > ID_PREFIX_CHARS else client_id


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a message naming a client id is refused: an error ``code``, the ``limit`` counted in
    ``limit_rejections`` (with its ``value``) and the message for the client."""

    code: str
    limit: str
    value: int
    message: str


@dataclass(slots=True)
class ClientInfo:
    client_id: str
    pid: int = 0  # the process watched for liveness: the kernel's pid, else a local claim
    host: str = ""
    version: str = ""
    last_seen: float = 0.0
    runs: set[str] = field(default_factory=set)
    owner: Owner | None = None  # the peer it is bound to; None until first use
    routing_id: bytes = b""  # the connection it last used
    claimed_pid: int = 0
    gone: bool = False  # its process exited: does not count, holds no binding
    features: frozenset[str] = frozenset()  # what its last hello announced (PROTOCOL.md 11.1)


class ClientTable:
    """``active(client_id)``, made fresh by ``activity()`` for each check, says whether a client
    has an open run or unsettled frames; ``remembered(client_id)`` whether its entry must be
    kept (its seq floor goes into the mark); ``connected(routing_id)`` whether a connection is
    still open; ``privileged(peer)`` whether a peer is the daemon itself; ``acting(peer)`` the
    uid a connection of the daemon's spool imports acts for (None for any other peer)."""

    def __init__(
        self,
        max_clients: int,
        *,
        activity: Callable[[], Callable[[str], bool]] = lambda: lambda cid: False,
        remembered: Callable[[str], bool] = lambda cid: False,
        connected: Callable[[bytes], bool] = lambda rid: True,
        privileged: Callable[[Peer], bool] = lambda peer: False,
        acting: Callable[[Peer], int | None] = lambda peer: None,
        per_process: int = MAX_CLIENTS_PER_PROCESS,
        idle_s: float = CLIENT_IDLE_S,
    ) -> None:
        self.max_clients = max_clients
        self.per_process = per_process
        self.idle_s = idle_s
        self.clients: dict[str, ClientInfo] = {}
        self.in_use_refusals = 0
        self.to_watch: list[ClientInfo] = []  # bound to a kernel pid since the caller looked
        self._activity = activity
        self._remembered = remembered
        self._connected = connected
        self._privileged = privileged
        self._acting = acting
        self._by_owner: dict[Owner, set[str]] = {}
        self._count: tuple[float, int] | None = None  # (when, live clients) cache

    # ---------------------------------------------------------------- lookups

    def __contains__(self, client_id: str) -> bool:
        return client_id in self.clients

    def __len__(self) -> int:
        return len(self.clients)

    def announced(self, client_id: str) -> frozenset[str]:
        """The features the last hello of ``client_id`` announced (none for a client the daemon
        has not heard a hello from): only those may reach it (PROTOCOL.md section 11.1)."""
        info = self.clients.get(client_id)
        return info.features if info is not None else frozenset()

    def touch(self, client_id: str, now: float) -> ClientInfo:
        """The entry of ``client_id`` (created unbound if new), seen at ``now``. For messages
        that did not come from a peer (journal replay) and ids restored from the mark."""
        info = self.clients.get(client_id)
        if info is None:
            info = self.clients[client_id] = ClientInfo(client_id, last_seen=now)
        else:
            info.last_seen = now
        return info

    def counts(self, info: ClientInfo, now: float, active: Callable[[str], bool]) -> bool:
        """Does ``info`` count toward ``max_clients``?"""
        return not info.gone and (now - info.last_seen < self.idle_s or active(info.client_id))

    # ---------------------------------------------------------------- claims

    def claim(self, client_id: str, peer: Peer, now: float) -> Refusal | None:
        """``peer`` sends a message naming ``client_id``: admit it (binding the id to the peer
        on first use) or say why not."""
        info = self.clients.get(client_id)
        if info is not None and info.owner == peer.owner:
            info.routing_id = peer.routing_id  # the hot path: the peer it is bound to
            info.last_seen = now
            return None
        uid = self._acting(peer)
        if uid is not None:
            return self._claim_for_spool(client_id, uid, now)
        if self._privileged(peer):
            self.touch(client_id, now)
            return None
        if info is None:
            refusal = self._room(peer, now)
            if refusal is not None:
                return refusal
            info = self.clients[client_id] = ClientInfo(client_id, last_seen=now)
            self._count = None
        elif info.owner is not None and info.owner != peer.owner:
            if not self._released(info, peer):
                self.in_use_refusals += 1
                bound = owner_uid(info.owner)
                if info.gone and bound is not None:
                    why = (
                        f"was used by a process of uid {bound} that has exited; only a process "
                        f"of uid {bound} may take it over (this connection is uid {peer.uid})"
                    )
                else:
                    why = f"is in use by another live {info.owner[0]} peer"
                return Refusal(
                    "client_id_in_use",
                    "client_id_in_use",
                    0,
                    f"client_id {client_id} {why}; this connection may not use it (not "
                    "acknowledged). A client id belongs to the process that first used it: make "
                    "a new one (uuid4) per process",
                )
        if info.owner != peer.owner:
            self._bind(info, peer.owner)
            if peer.pid is not None:
                info.pid = peer.pid
                self.to_watch.append(info)
        info.routing_id = peer.routing_id
        info.last_seen = now
        return None

    def _claim_for_spool(self, client_id: str, uid: int, now: float) -> Refusal | None:
        """A spool owned by ``uid`` names ``client_id`` (module docstring: Spool imports)."""
        info = self.clients.get(client_id)
        if info is not None and info.owner is not None and info.owner != ("spool", uid):
            bound = owner_uid(info.owner)
            why = ""
            if bound is not None and bound != uid:
                why = f"it belongs to uid {bound}"
            elif info.owner[0] != "spool" and not self._released(info):
                why = f"its {info.owner[0]} peer is alive"
            if why:
                self.in_use_refusals += 1
                return Refusal(
                    "client_id_in_use",
                    "client_id_in_use",
                    0,
                    f"client_id {client_id}: {why}; a spool owned by uid {uid} may not use it "
                    "(a spool may use only its owner's client ids of processes that are gone)",
                )
        if info is None:
            info = self.clients[client_id] = ClientInfo(client_id, last_seen=now)
            self._count = None
        if info.owner != ("spool", uid):
            self._bind(info, ("spool", uid))
            info.gone = True  # no process of its own: holds no room, released to its uid
        info.last_seen = now
        return None

    def _released(self, info: ClientInfo, peer: Peer | None = None) -> bool:
        """Has the peer bound to ``info`` gone, so that ``peer`` may take the id (``None``: a
        spool, whose owner's uid the caller checks)? An id bound to a uid (a process that
        exited, a spool) is released only to a peer of that uid."""
        assert info.owner is not None
        if info.owner[0] == "spool":
            return peer is not None and peer.uid == info.owner[1]
        if info.gone:
            bound = owner_uid(info.owner)
            return peer is None or bound is None or peer.uid == bound
        return info.owner[0] == "conn" and not self._connected(info.routing_id)

    def _bind(self, info: ClientInfo, owner: Owner) -> None:
        if info.owner is not None:
            ids = self._by_owner.get(info.owner)
            if ids is not None:
                ids.discard(info.client_id)
                if not ids:
                    del self._by_owner[info.owner]
            info.gone = False  # a new process: its own liveness
            info.pid = 0
        info.owner = owner
        self._by_owner.setdefault(owner, set()).add(info.client_id)

    def _room(self, peer: Peer, now: float) -> Refusal | None:
        active = self._activity()
        if peer.owner[0] != "key":  # one key may serve many processes (a cluster's user)
            mine = self._by_owner.get(peer.owner, set())
            if len(mine) >= self.per_process:
                n = sum(1 for cid in mine if self.counts(self.clients[cid], now, active))
                if n >= self.per_process:
                    return Refusal(
                        "limit_exceeded",
                        "max_clients_per_process",
                        self.per_process,
                        f"max_clients_per_process = {self.per_process}: this process already "
                        f"has {n} client ids in use (an idle one stops counting after "
                        f"{self.idle_s:g} s); reuse one client per process",
                    )
        if len(self.clients) < self.max_clients:
            return None
        if self._count is None or now - self._count[0] >= COUNT_CACHE_S:
            self._sweep(now, active)
            live = sum(1 for i in self.clients.values() if self.counts(i, now, active))
            self._count = (now, live)
        if self._count[1] < self.max_clients:
            self._count = (self._count[0], self._count[1] + 1)
            return None
        return Refusal(
            "limit_exceeded",
            "max_clients",
            self.max_clients,
            f"max_clients = {self.max_clients}: the daemon already serves that many clients and "
            "takes no new one (a client counts until its process exits, or after "
            f"{self.idle_s:g} s without messages, open runs or unsettled frames); try again "
            "later, or raise max_clients",
        )

    def _sweep(self, now: float, active: Callable[[str], bool]) -> None:
        """Forget clients whose process exited and who hold nothing (no floor to remember)."""
        for cid in [
            c
            for c, i in self.clients.items()
            if i.gone
            and now - i.last_seen >= self.idle_s
            and not active(c)
            and not self._remembered(c)
        ]:
            self.forget(cid)

    def forget(self, client_id: str) -> None:
        info = self.clients.pop(client_id, None)
        if info is not None and info.owner is not None:
            ids = self._by_owner.get(info.owner)
            if ids is not None:
                ids.discard(client_id)
                if not ids:
                    del self._by_owner[info.owner]

    # ---------------------------------------------------------------- liveness facts

    def exited(self, pid: int) -> list[ClientInfo]:
        """Process ``pid`` exited: its clients stop counting and release their ids."""
        out = []
        for info in self.clients.values():
            if info.pid == pid and not info.gone:
                info.gone = True
                out.append(info)
        if out:
            self._count = None
        return out

    def status(self, now: float) -> dict[str, object]:
        """The client table's part of the status document."""
        return {"clients": self.status_rows(now), "client_id_in_use": self.in_use_refusals}

    def status_rows(self, now: float) -> list[dict[str, object]]:
        """The clients of the status document, with only a prefix of each id: the status is
        served to anyone who can connect, and an id is what binds a client's data."""
        return [
            {
                "client_id": id_prefix(i.client_id),
                "pid": i.pid or i.claimed_pid,
                "host": i.host,
                "runs": len(i.runs),
                "last_seen_s": round(now - i.last_seen, 3),
            }
            for i in self.clients.values()
            if not i.gone
        ]
