"""tracker_daemon.throttle: one log line per key per interval with counts, and per-key budgets."""

from __future__ import annotations

import pytest

from tracker_daemon.ops.throttle import LogThrottle, RateBudget


def test_one_line_per_key_per_interval_with_the_count_held_back() -> None:
    t = LogThrottle(10.0)
    assert t.check(("peer-a", "bad_msgpack"), 0.0) == 0
    assert [t.check(("peer-a", "bad_msgpack"), 0.1 * i) for i in range(1, 100)] == [None] * 99
    assert t.check(("peer-a", "bad_msgpack"), 9.99) is None
    assert t.check(("peer-a", "bad_msgpack"), 10.0) == 100  # the next line reports them
    assert t.check(("peer-a", "bad_msgpack"), 10.5) is None
    assert t.check(("peer-a", "bad_msgpack"), 25.0) == 1
    assert t.check(("peer-a", "bad_msgpack"), 40.0) == 0
    assert t.suppressed_total == 101


def test_keys_are_independent() -> None:
    t = LogThrottle(10.0)
    assert t.check(("a", "bad_msgpack"), 0.0) == 0
    assert t.check(("a", "bad_field"), 0.0) == 0  # another reason
    assert t.check(("b", "bad_msgpack"), 0.0) == 0  # another peer
    assert t.check(("a", "bad_msgpack"), 1.0) is None
    assert t.check(("b", "bad_msgpack"), 1.0) is None
    assert t.check(("a", "bad_field"), 12.0) == 0
    assert t.check(("a", "bad_msgpack"), 12.0) == 1


def test_lines_per_interval_are_capped_over_all_keys() -> None:
    t = LogThrottle(10.0, max_lines=3)
    got = [t.check(f"peer-{i}", 1.0) for i in range(10)]
    assert got == [0, 0, 0] + [None] * 7
    # a new window: held-back keys log with their counts, again at most 3 lines
    got = [t.check(f"peer-{i}", 11.0) for i in range(3, 10)]
    assert got == [1, 1, 1, None, None, None, None]
    assert t.suppressed_total == 7 + 4
    assert t.check("peer-9", 21.0) == 2


def test_remembered_keys_are_bounded() -> None:
    t = LogThrottle(10.0, max_lines=10_000, max_keys=4)
    assert [t.check(i, 0.0) for i in range(4)] == [0, 0, 0, 0]
    # the table is full of keys still in their interval: new keys share one overflow line
    assert t.check(100, 1.0) == 0
    assert t.check(101, 1.0) is None
    assert t.check(102, 2.0) is None
    assert len(t._lines) == 5  # the 4 keys and the overflow entry
    # once keys are idle for an interval, they are forgotten and new keys get their own line
    assert t.check(103, 30.0) == 0
    assert t.check(103, 31.0) is None
    assert len(t._lines) <= 4


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        LogThrottle(0)
    with pytest.raises(ValueError):
        RateBudget(0, 1)


def test_rate_budget_burst_then_rate_then_debt() -> None:
    b = RateBudget(rate=100.0, burst=200.0)
    assert b.ready("a", 0.0)  # never seen: a full bucket
    for _ in range(200):
        assert b.ready("a", 0.0)
        b.spend("a", 0.0)
    assert not b.ready("a", 0.0)
    assert b.ready("a", 0.01)  # one token back after 1/rate
    b.spend("a", 0.01)
    assert not b.ready("a", 0.01)
    assert b.ready("b", 0.01)  # other keys are unaffected
    # a costly item puts the key in debt: it is not ready until the debt is paid back
    b.spend("c", 0.0, cost=262.0)  # e.g. a 4 MB frame at 1 + 4 MB / 64 KiB
    assert not b.ready("c", 0.6)
    assert b.ready("c", 0.63)
    # refilling never exceeds the burst
    assert b.ready("a", 1000.0)
    for _ in range(200):
        b.spend("a", 1000.0)
    assert not b.ready("a", 1000.0)


def test_rate_budget_keys_are_bounded() -> None:
    b = RateBudget(rate=1.0, burst=2.0, max_keys=3)
    for key in ("a", "b", "c"):
        b.spend(key, 0.0, 2.0)
    assert not b.ready("a", 0.0)
    # the table is full of keys in debt: a new key is not tracked, and never held back for
    # what others spent (a new client is served however many peers flood)
    b.spend("d", 0.0, 2.0)
    assert b.ready("d", 0.0) and b.ready("e", 0.0)
    assert len(b._buckets) == 3 and b.untracked == 1
    # keys whose bucket refilled are forgotten to make room
    b.spend("f", 10.0)
    assert "f" in b._buckets and "a" not in b._buckets
