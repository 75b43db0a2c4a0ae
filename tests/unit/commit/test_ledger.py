"""Unit tests for tracker_daemon.commit.ledger (pure per-client sequence bookkeeping)."""

from __future__ import annotations

from tracker_client.protocol import Failure, Metric, Param
from tracker_daemon.commit.ledger import ClientBook, Ledger, Progress

C = "client-a"


def failure(key: str, run: str = "r1") -> Failure:
    return Failure(Param(run, key, "v"), "INVALID_PARAMETER_VALUE", f"bad {key}")


def marks(ledger: Ledger, client_id: str = C) -> tuple[int, int]:
    return ledger.received_upto(client_id), ledger.committed_upto(client_id)


# --------------------------------------------------------------------------------------------
# accept


def test_unknown_client_reports_zero_and_is_not_created_by_queries() -> None:
    ledger = Ledger()
    assert marks(ledger, "nobody") == (0, 0)
    assert ledger.take_failures("nobody") == []
    assert ledger.settle("nobody", 1).moved is False
    assert "nobody" not in ledger
    assert ledger.clients() == []


def test_accept_in_order_and_duplicates() -> None:
    ledger = Ledger()
    assert ledger.accept(C, 1, 3) is True
    assert C in ledger
    assert marks(ledger) == (1, 0)
    assert ledger.accept(C, 1, 3) is False  # same seq again
    assert ledger.accept(C, 2, 1) is True
    assert ledger.accept(C, 2, 1) is False
    assert ledger.accept(C, 1, 5) is False  # below received_upto
    assert marks(ledger) == (2, 0)
    book = ledger.book(C)
    assert book.remaining == {1: 3, 2: 1}
    assert book.in_flight == 2


def test_seq_zero_and_negative_are_duplicates() -> None:
    ledger = Ledger()
    assert ledger.accept(C, 0, 1) is False
    assert ledger.accept(C, -4, 1) is False
    assert marks(ledger) == (0, 0)
    assert ledger.book(C).remaining == {}


def test_out_of_order_seqs_fill_the_gap() -> None:
    ledger = Ledger()
    assert ledger.accept(C, 3, 1) is True
    assert ledger.accept(C, 5, 1) is True
    assert marks(ledger) == (0, 0)
    assert ledger.book(C).received_above == {3, 5}
    assert ledger.accept(C, 3, 1) is False  # held above the gap: still a duplicate
    assert ledger.accept(C, 1, 1) is True
    assert marks(ledger) == (1, 0)
    assert ledger.accept(C, 2, 1) is True
    assert marks(ledger) == (3, 0)  # 1, 2 and the held 3
    assert ledger.book(C).received_above == {5}
    assert ledger.accept(C, 4, 1) is True
    assert marks(ledger) == (5, 0)
    assert ledger.book(C).received_above == set()


def test_clients_are_independent() -> None:
    ledger = Ledger()
    ledger.accept("a", 1, 1)
    ledger.accept("b", 1, 1)
    ledger.accept("b", 2, 1)
    assert ledger.settle("b", 1).moved is True
    assert marks(ledger, "a") == (1, 0)
    assert marks(ledger, "b") == (2, 1)
    assert sorted(ledger.clients()) == ["a", "b"]


# --------------------------------------------------------------------------------------------
# settle / committed_upto


def test_partial_settles_advance_only_when_message_is_done() -> None:
    ledger = Ledger()
    ledger.accept(C, 1, 3)
    assert ledger.settle(C, 1).moved is False
    assert ledger.book(C).remaining == {1: 2}
    assert ledger.settle(C, 1, 1).moved is False
    assert ledger.book(C).remaining == {1: 1}
    assert marks(ledger) == (1, 0)
    assert ledger.settle(C, 1).moved is True
    assert marks(ledger) == (1, 1)
    assert ledger.book(C).remaining == {}
    assert ledger.settle(C, 1).moved is False  # already done: no-op


def test_settle_n_at_once_and_over_settle() -> None:
    ledger = Ledger()
    ledger.accept(C, 1, 4)
    assert ledger.settle(C, 1, 4).moved is True
    assert marks(ledger) == (1, 1)
    ledger.accept(C, 2, 2)
    assert ledger.settle(C, 2, 5).moved is True  # more than remaining still completes the message
    assert marks(ledger) == (2, 2)


def test_settle_of_unknown_seq_is_ignored() -> None:
    ledger = Ledger()
    ledger.accept(C, 1, 1)
    assert ledger.settle(C, 7).moved is False
    assert marks(ledger) == (1, 0)
    assert ledger.book(C).remaining == {1: 1}


def test_later_message_done_first_waits_for_the_earlier_one() -> None:
    ledger = Ledger()
    ledger.accept(C, 1, 2)
    ledger.accept(C, 2, 1)
    ledger.accept(C, 3, 1)
    assert ledger.settle(C, 3).moved is False  # done, but 1 and 2 are not
    assert ledger.settle(C, 2).moved is False
    assert ledger.book(C).done_above == {2, 3}
    assert marks(ledger) == (3, 0)
    assert ledger.settle(C, 1).moved is False  # 1 of 2 records
    assert ledger.settle(C, 1).moved is True
    assert marks(ledger) == (3, 3)
    assert ledger.book(C).done_above == set()
    assert ledger.book(C).in_flight == 0


def test_committed_never_passes_a_gap_in_received() -> None:
    ledger = Ledger()
    ledger.accept(C, 1, 1)
    ledger.accept(C, 3, 1)  # seq 2 not received yet
    assert ledger.settle(C, 3).moved is False
    assert ledger.settle(C, 1).moved is True
    assert marks(ledger) == (1, 1)
    ledger.accept(C, 2, 1)
    assert marks(ledger) == (3, 1)
    assert ledger.settle(C, 2).moved is True
    assert marks(ledger) == (3, 3)


def test_zero_record_messages_are_done_on_accept() -> None:
    ledger = Ledger()
    assert ledger.accept(C, 1, 0) is True
    assert marks(ledger) == (1, 1)
    assert ledger.book(C).remaining == {}
    ledger.accept(C, 2, 2)
    assert ledger.accept(C, 3, 0) is True  # done, but waits for seq 2
    assert marks(ledger) == (3, 1)
    assert ledger.book(C).done_above == {3}
    assert ledger.settle(C, 2, 2).moved is True
    assert marks(ledger) == (3, 3)


def test_zero_record_message_out_of_order() -> None:
    ledger = Ledger()
    assert ledger.accept(C, 2, 0) is True
    assert marks(ledger) == (0, 0)
    assert ledger.accept(C, 1, 0) is True
    assert marks(ledger) == (2, 2)


# --------------------------------------------------------------------------------------------
# failures


def test_failures_are_kept_per_run_and_taken_once() -> None:
    ledger = Ledger()
    f1, f2, f3 = failure("a", "r1"), failure("b", "r2"), failure("c", "r1")
    fn = Failure(None, "RESOURCE_DOES_NOT_EXIST", "artifact gone")
    ledger.fail(C, "r1", f1)
    ledger.fail(C, "r2", f2)
    ledger.fail(C, "r1", f3)
    ledger.fail(C, None, fn)
    assert ledger.take_failures(C, "r1") == [f1, f3]
    assert ledger.take_failures(C, "r1") == []  # reported once
    assert ledger.take_failures(C, "r3") == []
    assert ledger.book(C).failures == [("r2", f2), (None, fn)]
    assert ledger.take_failures(C) == [f2, fn]  # run_id None: everything left
    assert ledger.take_failures(C) == []
    assert ledger.book(C).failures == []


def test_take_all_failures_clears_every_run() -> None:
    ledger = Ledger()
    f1, f2 = failure("a", "r1"), failure("b", "r2")
    ledger.fail(C, "r1", f1)
    ledger.fail(C, "r2", f2)
    assert ledger.take_failures(C) == [f1, f2]
    assert ledger.take_failures(C, "r1") == []
    assert ledger.take_failures(C, "r2") == []


def test_failures_are_per_client() -> None:
    ledger = Ledger()
    fa = Failure(Metric("r1", "k", 1.0, 0, 0), "INVALID_PARAMETER_VALUE", "x")
    ledger.fail("a", "r1", fa)
    assert ledger.take_failures("b", "r1") == []
    assert ledger.take_failures("a", "r1") == [fa]


def test_failing_does_not_settle() -> None:
    ledger = Ledger()
    ledger.accept(C, 1, 1)
    ledger.fail(C, "r1", failure("a"))
    assert marks(ledger) == (1, 0)
    assert ledger.settle(C, 1).moved is True
    assert marks(ledger) == (1, 1)
    assert len(ledger.take_failures(C)) == 1


# --------------------------------------------------------------------------------------------
# floor (hello after a reconnection)


def test_floor_on_fresh_client_marks_everything_done() -> None:
    ledger = Ledger()
    ledger.floor(C, 5)
    assert marks(ledger) == (5, 5)
    book = ledger.book(C)
    assert book.received_above == set()
    assert book.done_above == set()
    assert book.remaining == {}
    assert ledger.accept(C, 5, 1) is False  # resent after reconnect: duplicate
    assert ledger.accept(C, 6, 1) is True
    assert marks(ledger) == (6, 5)


def test_floor_zero_creates_book_and_changes_nothing() -> None:
    ledger = Ledger()
    ledger.floor(C, 0)
    assert C in ledger
    assert marks(ledger) == (0, 0)


def test_floor_below_received_is_a_no_op() -> None:
    ledger = Ledger()
    ledger.accept(C, 1, 1)
    ledger.accept(C, 2, 1)
    ledger.accept(C, 3, 1)
    ledger.floor(C, 2)
    assert marks(ledger) == (3, 0)
    assert ledger.book(C).remaining == {1: 1, 2: 1, 3: 1}


def test_floor_keeps_received_but_uncommitted_seqs_pending() -> None:
    ledger = Ledger()
    ledger.accept(C, 1, 2)  # acked, not committed
    ledger.accept(C, 3, 1)  # acked above a gap, not committed
    ledger.floor(C, 5)
    # 2, 4, 5 were never received here: done. 1 and 3 keep their real state.
    assert marks(ledger) == (5, 0)
    book = ledger.book(C)
    assert book.remaining == {1: 2, 3: 1}
    assert book.floor == 5  # 2, 4, 5 count as done without being materialised
    assert book.received_above == set()
    assert ledger.settle(C, 1, 2).moved is True
    assert marks(ledger) == (5, 2)  # stops at 3, which is still pending
    assert ledger.settle(C, 3).moved is True
    assert marks(ledger) == (5, 5)
    assert ledger.book(C).done_above == set()


def test_floor_keeps_seqs_held_above_the_floor() -> None:
    ledger = Ledger()
    ledger.accept(C, 7, 1)
    ledger.floor(C, 5)
    assert marks(ledger) == (5, 5)
    assert ledger.book(C).received_above == {7}
    assert ledger.accept(C, 6, 1) is True
    assert marks(ledger) == (7, 5)
    assert ledger.settle(C, 7).moved is False
    assert ledger.settle(C, 6).moved is True
    assert marks(ledger) == (7, 7)


def test_floor_with_done_but_uncommitted_prefix() -> None:
    ledger = Ledger()
    ledger.accept(C, 1, 1)
    ledger.accept(C, 2, 1)
    ledger.settle(C, 2)  # 2 done, 1 not
    ledger.floor(C, 4)
    assert marks(ledger) == (4, 0)
    assert ledger.settle(C, 1).moved is True
    assert marks(ledger) == (4, 4)


def test_book_creates_default_book_once() -> None:
    ledger = Ledger()
    book = ledger.book(C)
    assert book == ClientBook(C)
    assert ledger.book(C) is book


# --------------------------------------------------------------------------------------------
# is_new / progress


def test_is_new_matches_accept() -> None:
    ledger = Ledger()
    assert ledger.is_new(C, 1) is True
    assert C not in ledger  # a query does not create the book
    ledger.accept(C, 1, 1)
    ledger.accept(C, 4, 1)
    assert [ledger.is_new(C, s) for s in range(6)] == [False, False, True, True, False, True]


def test_seq_below_one_is_never_new() -> None:
    # PROTOCOL.md: seq >= 1. accept() treats 0 and negatives as duplicates; is_new must agree,
    # also for a client it has never seen, or the daemon journals a message it never settles.
    ledger = Ledger()
    assert ledger.is_new("fresh", 0) is False
    assert ledger.is_new("fresh", -3) is False
    assert ledger.accept("fresh", 0, 2) is False


def test_settle_returns_what_it_finished() -> None:
    # the ledger calls nothing back: settle says which message is done and whether the
    # client's committed_upto moved; the caller settles journal entries and barriers from it
    ledger = Ledger()
    ledger.accept(C, 1, 2)
    assert ledger.accept(C, 2, 0) is True  # zero records: done at once (the caller knows)
    assert ledger.book(C).done_above == {2}
    assert ledger.settle(C, 1) == Progress(done=False, moved=False)  # 1 of 2 records
    assert ledger.settle(C, 1) == Progress(done=True, moved=True)
    assert marks(ledger) == (2, 2)
    assert ledger.settle(C, 1) == Progress()  # already done
    assert ledger.accept(C, 1, 1) is False  # duplicate
    ledger.accept(C, 4, 1)
    ledger.accept(C, 6, 1)
    ledger.floor(C, 5)  # 3 and 5 were never received here: done; 4 is still pending
    assert marks(ledger) == (6, 3)
    assert ledger.settle(C, 6) == Progress(done=True, moved=False)  # 4 still holds it back
    assert ledger.settle(C, 4) == Progress(done=True, moved=True)
    assert marks(ledger) == (6, 6)


def test_huge_floor_is_constant_time() -> None:
    # A hostile or buggy hello must not make the daemon iterate over 2**62 seqs.
    ledger = Ledger()
    ledger.accept(C, 1, 1)
    ledger.floor(C, 2**62)
    assert marks(ledger) == (2**62, 0)
    assert ledger.settle(C, 1).moved is True
    assert marks(ledger) == (2**62, 2**62)
