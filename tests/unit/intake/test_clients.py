"""The client table (pure): binding of client ids to peers, room for new clients, status ids."""

from __future__ import annotations

from tracker_daemon.intake.clients import ClientTable, Peer, id_prefix, peer_from

A = Peer(b"conn-a", uid=1000, pid=111)
A2 = Peer(b"conn-a2", uid=1000, pid=111)  # the same process on a new connection
B = Peer(b"conn-b", uid=1000, pid=222)
CID = "c" * 32


def test_peer_from_reads_kernel_credentials_and_curve_key() -> None:
    assert peer_from(b"r", "localhost:1000:1000:4242", None).owner == ("pid", 1000, 4242)
    key = "k" * 40
    assert peer_from(b"r", "10.0.0.1", key).owner == ("key", key)
    assert peer_from(b"r", "127.0.0.1", None).owner == ("conn", b"r")
    assert peer_from(b"r", "localhost:1:1:0", None).pid is None  # pid 0: the kernel did not say


def test_an_id_is_bound_to_its_first_process_and_refused_to_another() -> None:
    t = ClientTable(100)
    assert t.claim(CID, A, 0.0) is None
    assert t.to_watch == [t.clients[CID]] and t.clients[CID].pid == 111
    refusal = t.claim(CID, B, 1.0)
    assert refusal is not None and refusal.code == "client_id_in_use"
    assert CID in refusal.message and t.in_use_refusals == 1
    assert t.claim(CID, A2, 2.0) is None  # a reconnect of the same process keeps working
    assert t.clients[CID].routing_id == b"conn-a2"
    assert t.claim(CID, B, 3.0) is not None and t.in_use_refusals == 2


def test_a_dead_process_releases_its_ids() -> None:
    t = ClientTable(100)
    assert t.claim(CID, A, 0.0) is None
    assert [i.client_id for i in t.exited(111)] == [CID]
    assert t.exited(111) == []  # once
    assert t.claim(CID, B, 1.0) is None
    info = t.clients[CID]
    assert info.owner == B.owner and info.pid == 222 and not info.gone


def test_a_dead_process_releases_its_ids_to_its_own_uid_only() -> None:
    """Before, any live peer took an exited process's id (and its hello moved the id's floor,
    acking away what the exited process's spool still held)."""
    t = ClientTable(100)
    assert t.claim(CID, A, 0.0) is None
    t.exited(111)
    for other in (
        Peer(b"conn-c", uid=2000, pid=333),  # another uid
        Peer(b"conn-d", uid=0, pid=444),  # root is not the daemon (privileged) either
        Peer(b"conn-e"),  # a peer of no known uid (loopback tcp)
        Peer(b"conn-f", key="k" * 40),  # a CURVE key
    ):
        refusal = t.claim(CID, other, 1.0)
        assert refusal is not None and refusal.code == "client_id_in_use", other
        assert "was used by a process of uid 1000 that has exited" in refusal.message
        assert (
            f"only a process of uid 1000 may take it over (this connection is uid {other.uid})"
            in (refusal.message)
        )
    assert t.in_use_refusals == 4
    assert t.clients[CID].owner == A.owner and t.clients[CID].gone  # unchanged
    assert t.claim(CID, B, 2.0) is None  # the same uid: its next process


def test_a_connection_binding_is_released_when_the_connection_closed() -> None:
    open_conns = {b"x1"}
    t = ClientTable(100, connected=lambda rid: rid in open_conns)
    x1, x2 = Peer(b"x1"), Peer(b"x2")
    assert t.claim(CID, x1, 0.0) is None
    assert t.claim(CID, x2, 1.0) is not None  # x1 still connected
    open_conns.clear()
    assert t.claim(CID, x2, 2.0) is None


def test_ids_restored_from_the_mark_bind_on_first_use() -> None:
    t = ClientTable(100)
    t.touch(CID, 0.0)
    assert t.clients[CID].owner is None
    assert t.claim(CID, B, 1.0) is None and t.clients[CID].owner == B.owner


def test_the_daemon_itself_is_never_refused_and_never_binds() -> None:
    me = Peer(b"me", uid=0, pid=999)
    t = ClientTable(100, privileged=lambda peer: peer.pid == 999)
    assert t.claim(CID, A, 0.0) is None
    assert t.claim(CID, me, 1.0) is None
    assert t.clients[CID].owner == A.owner


def spool_table() -> tuple[ClientTable, dict[bytes, int]]:
    """A table whose daemon (pid 999) has import connections acting for spool owners."""
    grants: dict[bytes, int] = {}
    t = ClientTable(
        100,
        privileged=lambda peer: peer.pid == 999,
        acting=lambda peer: grants.get(peer.routing_id) if peer.pid == 999 else None,
    )
    return t, grants


def test_a_spool_may_not_use_a_live_or_another_uids_client_id() -> None:
    t, grants = spool_table()
    spool_of_1000, spool_of_2000 = Peer(b"imp1", uid=0, pid=999), Peer(b"imp2", uid=0, pid=999)
    grants.update({b"imp1": 1000, b"imp2": 2000})
    assert t.claim(CID, A, 0.0) is None  # a live process of uid 1000
    refusal = t.claim(CID, spool_of_2000, 1.0)
    assert refusal is not None and refusal.code == "client_id_in_use"
    assert "belongs to uid 1000" in refusal.message and "owned by uid 2000" in refusal.message
    refusal = t.claim(CID, spool_of_1000, 1.0)  # its own uid, but the process lives
    assert refusal is not None and "pid peer is alive" in refusal.message
    assert t.in_use_refusals == 2 and t.clients[CID].owner == A.owner
    t.exited(111)
    refusal = t.claim(CID, spool_of_2000, 2.0)  # gone, but remembered as uid 1000's
    assert refusal is not None and "belongs to uid 1000" in refusal.message
    assert t.claim(CID, spool_of_1000, 3.0) is None  # its owner's spool, the process gone
    assert t.clients[CID].owner == ("spool", 1000)


def test_an_id_a_spool_used_stays_its_owners() -> None:
    t, grants = spool_table()
    grants[b"imp"] = 1000
    imp = Peer(b"imp", uid=0, pid=999)
    assert t.claim(CID, imp, 0.0) is None  # an unknown id: bound to the spool's owner
    info = t.clients[CID]
    assert info.owner == ("spool", 1000) and info.gone  # no process: holds no room
    assert t.claim(CID, imp, 1.0) is None
    other_uid = Peer(b"conn-c", uid=2000, pid=333)
    refusal = t.claim(CID, other_uid, 2.0)
    assert refusal is not None and refusal.code == "client_id_in_use"
    assert t.claim(CID, B, 3.0) is None  # a process of the owner's uid takes it over
    assert info.owner == B.owner and info.pid == 222 and not info.gone
    t.touch("restored", 4.0)  # from the mark: unbound
    grants[b"imp2"] = 2000
    assert t.claim("restored", Peer(b"imp2", uid=0, pid=999), 5.0) is None
    assert t.clients["restored"].owner == ("spool", 2000)


def test_a_daemon_peer_acts_for_a_spool_owner_only_by_its_routing_id() -> None:
    from tracker_daemon.runs.spool_imports import acting_uid, connection_id

    rid = connection_id(1234)
    assert acting_uid(rid) == 1234 and connection_id(1234) != rid
    assert acting_uid(b"spool-import:x:1") is None and acting_uid(b"other") is None
    assert acting_uid(b"spool-import:" + b"9" * 11 + b":1") is None


def test_one_process_cannot_fill_the_table() -> None:
    t = ClientTable(100, per_process=16, idle_s=30.0)
    for i in range(16):
        assert t.claim(f"id{i}", A, 0.0) is None
    refusal = t.claim("id16", A, 1.0)
    assert refusal is not None and refusal.limit == "max_clients_per_process"
    assert "max_clients_per_process = 16" in refusal.message
    assert t.claim("other", B, 1.0) is None  # another process still gets in
    assert t.claim("id16", A, 31.0) is None  # its idle ids stopped counting


def test_idle_and_dead_clients_stop_counting_toward_max_clients() -> None:
    busy = {"busy"}
    t = ClientTable(3, activity=lambda: busy.__contains__, idle_s=30.0)
    assert t.claim("busy", A, 0.0) is None
    assert t.claim("idle", B, 0.0) is None
    assert t.claim("third", Peer(b"c", uid=1, pid=333), 0.0) is None
    refusal = t.claim("fourth", Peer(b"d", uid=1, pid=444), 1.0)
    assert refusal is not None and refusal.limit == "max_clients"
    assert "max_clients = 3" in refusal.message
    t.exited(333)  # a dead process stops counting at once (after the count cache expires)
    assert t.claim("fourth", Peer(b"d", uid=1, pid=444), 2.5) is None
    assert t.claim("fifth", Peer(b"e", uid=1, pid=555), 3.0) is not None
    # 30 s later only the busy client counts
    for i in range(2):
        assert t.claim(f"late{i}", Peer(b"f%d" % i, uid=1, pid=600 + i), 40.0) is None
    assert t.claim("late2", Peer(b"g", uid=1, pid=700), 40.0) is not None


def test_status_shows_only_a_prefix_of_each_id() -> None:
    t = ClientTable(100)
    t.claim(CID, A, 0.0)
    rows = t.status_rows(1.0)
    assert rows == [
        {"client_id": "cccccccc…", "pid": 111, "host": "", "runs": 0, "last_seen_s": 1.0}
    ]
    assert id_prefix("short") == "short"


def test_only_dead_clients_with_nothing_to_remember_are_forgotten() -> None:
    floors = {"kept": 5}
    t = ClientTable(2, remembered=lambda cid: floors.get(cid, 0) > 0, idle_s=30.0)
    assert t.claim("kept", A, 0.0) is None
    assert t.claim("dropped", Peer(b"z", uid=1, pid=999), 0.0) is None
    t.exited(111)
    t.exited(999)
    assert t.claim("new", B, 40.0) is None  # the table was full: the sweep ran
    assert set(t.clients) == {"kept", "new"}


def test_a_taken_over_routing_identity_does_not_carry_the_binding() -> None:
    t = ClientTable(100)
    assert t.claim(CID, A, 0.0) is None
    thief = Peer(A.routing_id, uid=1000, pid=333)  # same routing id, another process
    refusal = t.claim(CID, thief, 1.0)
    assert refusal is not None and refusal.code == "client_id_in_use"
