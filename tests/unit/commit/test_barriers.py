"""Barrier bookkeeping: a client's waiters by seq (``WaiterQueue``, pure) and ``Barriers`` on an
event loop. Waking pops only the waiters that are done, in seq order; a waiter that gives up is
removed without scanning the others, and the gone entries never outgrow the live ones; a storm
of barriers that all expire costs time linear in their number."""

from __future__ import annotations

import time

import anyio
import pytest

from tracker_daemon.commit.barriers import COMPACT_MIN, Barriers, WaiterQueue


def test_pop_done_wakes_only_the_done_waiters_in_seq_order() -> None:
    q: WaiterQueue[str] = WaiterQueue()
    for seq, name in [(5, "e"), (1, "a"), (3, "c"), (3, "c2"), (9, "i")]:
        q.add(seq, name)
    assert len(q) == 5
    assert q.pop_done(0) == []
    assert q.pop_done(3) == ["a", "c", "c2"]  # same seq: in the order they came
    assert len(q) == 2
    assert q.pop_done(8) == ["e"]
    assert q.pop_done(10**12) == ["i"]
    assert len(q) == 0 and q.entries == 0


def test_a_removed_waiter_is_never_woken_and_removal_is_idempotent() -> None:
    q: WaiterQueue[str] = WaiterQueue()
    a, b = q.add(1, "a"), q.add(2, "b")
    q.remove(a)
    q.remove(a)
    assert len(q) == 1
    assert q.pop_done(5) == ["b"]
    q.remove(b)  # already woken: nothing to do
    assert len(q) == 0 and q.entries == 0


def test_gone_entries_never_outgrow_the_live_ones() -> None:
    q: WaiterQueue[int] = WaiterQueue()
    keep = [q.add(10**12, i) for i in range(10)]  # never done
    entries = [q.add(10**12, i) for i in range(10_000)]
    for e in entries:
        q.remove(e)
        assert q.entries <= 2 * len(q) + COMPACT_MIN + 1
    assert len(q) == 10
    for e in keep:
        q.remove(e)
    assert len(q) == 0 and q.entries <= COMPACT_MIN + 1


def test_removing_many_expired_waiters_is_linear() -> None:
    """100,000 waiters of one client for a seq never sent, all removed (as they expire): fast.
    (Rebuilding the client's list on each removal took minutes for this many.)"""
    q: WaiterQueue[int] = WaiterQueue()
    entries = [q.add(10**12, i) for i in range(100_000)]
    start = time.perf_counter()
    for e in entries:
        q.remove(e)
    assert time.perf_counter() - start < 2.0
    assert len(q) == 0


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_barriers_wake_expire_and_forget(anyio_backend: str) -> None:
    committed = {"c": 0}
    expedited: list[str] = []
    b = Barriers(committed.__getitem__, expedite=expedited.append, timeout=0.2)
    assert await b.wait("c", 0)  # done already: no waiter
    results: dict[str, bool] = {}

    async def wait(name: str, seq: int, within: float | None = None) -> None:
        results[name] = await b.wait("c", seq, within)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait, "two", 2, 5.0)
        tg.start_soon(wait, "never", 10**12)  # expires after the barrier timeout
        tg.start_soon(wait, "three", 3, 5.0)
        await anyio.wait_all_tasks_blocked()
        assert b.waiting == 3
        assert expedited == ["c", "c", "c"]
        committed["c"] = 2
        b.release("c")
        b.release("other")  # no waiters: nothing
        await anyio.wait_all_tasks_blocked()
        assert results == {"two": True}
        assert b.waiting == 2
        committed["c"] = 3
        b.release("c")
        # the group ends once "never" has expired (0.2 s)
    assert results == {"two": True, "never": False, "three": True}
    assert b.waiting == 0
    assert b._waiters == {}  # nothing kept for the client


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_cancelled_waiter_is_removed(anyio_backend: str) -> None:
    b = Barriers(lambda cid: 0, expedite=lambda cid: None, timeout=60)
    with anyio.move_on_after(0.05):
        await b.wait("c", 1)
    assert b.waiting == 0 and b._waiters == {}
