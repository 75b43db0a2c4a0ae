"""Requests in progress (pure): at most ``per_client`` per client id and ``total`` in all; a
request over a cap is refused naming the cap and its value; answering frees the slot."""

from __future__ import annotations

from tracker_daemon.intake.request_slots import RequestSlots


def test_per_client_cap_names_the_limit() -> None:
    s = RequestSlots(per_client=2, total=10)
    assert s.take("a") is None and s.take("a") is None
    r = s.take("a")
    assert r is not None
    assert (r.code, r.limit, r.value) == ("limit_exceeded", "max_requests_per_client", 2)
    assert r.message.startswith("max_requests_per_client = 2: this client already has 2 ")
    assert s.take("b") is None  # another client is not affected
    assert (s.held, s.held_by("a"), s.held_by("b")) == (3, 2, 1)
    s.give("a")
    assert s.take("a") is None


def test_total_cap_names_the_limit() -> None:
    s = RequestSlots(per_client=2, total=3)
    for cid in ("a", "a", "b"):
        assert s.take(cid) is None
    r = s.take("c")
    assert r is not None and (r.limit, r.value) == ("max_requests", 3)
    assert r.message.startswith("max_requests = 3: ")
    s.give("b")
    assert s.take("c") is None
    assert s.status() == {"requests_in_progress": 3}


def test_give_forgets_idle_clients_and_ignores_unknown_ones() -> None:
    s = RequestSlots(per_client=2, total=3)
    assert s.take("a") is None
    s.give("a")
    s.give("a")  # more than it took: nothing
    s.give("zzz")
    assert s.held == 0 and s._by_client == {}
