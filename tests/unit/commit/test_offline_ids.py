"""What a record's offline id is when it is committed (offline_ids.py, pure: times are
arguments): created, failed (remembered, bounded), waiting for a start_run in flight or — for
replayed records only — for a resend after the restart, or never started (at once)."""

from __future__ import annotations

from tracker_daemon.commit.offline_ids import OfflineIds, Waiting, is_offline
from tracker_daemon.errors import RunGone

WAIT = 30.0


def ids(created: dict[str, str] | None = None, remember: int = 100) -> OfflineIds:
    table = created if created is not None else {}
    return OfflineIds(table.get, wait_s=WAIT, since=1000.0, remember=remember)


def gone(verdict: object) -> str:
    assert isinstance(verdict, RunGone), verdict
    assert verdict.code == "RESOURCE_DOES_NOT_EXIST"
    return verdict.message


def test_only_the_offline_prefix_is_offline() -> None:
    assert is_offline("offline-ab12") and not is_offline("0123abcd") and not is_offline("off")


def test_a_created_run_resolves_to_its_mlflow_id() -> None:
    o = ids({"offline-a": "r1"})
    assert o.verdict("offline-a", 1000.0) == "r1"
    assert o.verdict("offline-a", 1000.0, replayed=True) == "r1"


def test_an_unknown_id_fails_at_once_even_just_after_the_start_and_is_remembered() -> None:
    o = ids()
    message = gone(o.verdict("offline-x", 1000.1))  # within the restart's wait: live record
    assert message == (
        "offline run offline-x was never created (its start_run did not reach the daemon)"
    )
    assert o.remembered == 1
    # remembered: a replayed record of it does not wait either
    assert gone(o.verdict("offline-x", 1000.2, replayed=True)) == message


def test_a_replayed_record_of_an_unknown_id_waits_until_the_restart_wait_ends() -> None:
    o = ids()
    o.serving(2000.0)
    assert o.verdict("offline-r", 2001.0, replayed=True) == Waiting(2000.0 + WAIT)
    assert o.verdict("offline-r", 2029.9, replayed=True) == Waiting(2000.0 + WAIT)
    assert "was never created" in gone(o.verdict("offline-r", 2030.0, replayed=True))
    assert o.remembered == 1


def test_a_replayed_record_whose_start_is_resent_gets_the_run() -> None:
    created: dict[str, str] = {}
    o = ids(created)
    assert isinstance(o.verdict("offline-l", 1001.0, replayed=True), Waiting)
    o.reserve("offline-l", 1002.0)  # the client resends its start_run after reconnecting
    assert o.verdict("offline-l", 1003.0, replayed=True) == Waiting(1002.0 + WAIT)
    created["offline-l"] = "r7"
    o.created("offline-l")
    assert o.verdict("offline-l", 1004.0, replayed=True) == "r7"
    assert not o.in_flight("offline-l")


def test_a_start_in_flight_is_waited_for_a_bounded_time_and_not_remembered() -> None:
    created: dict[str, str] = {}
    o = ids(created)
    o.reserve("offline-f", 5000.0)
    assert o.in_flight("offline-f")
    assert o.verdict("offline-f", 5001.0) == Waiting(5000.0 + WAIT)
    late = gone(o.verdict("offline-f", 5030.0))
    assert "offline-f was not created within 30 s of its start_run" in late
    assert o.remembered == 0  # it may still land: later records get the run
    created["offline-f"] = "r2"
    o.created("offline-f")
    assert o.verdict("offline-f", 5031.0) == "r2"


def test_a_failed_creation_is_remembered_with_its_cause() -> None:
    o = ids()
    o.reserve("offline-c", 10.0)
    o.failed("offline-c", "INVALID_PARAMETER_VALUE: bad name")
    assert not o.in_flight("offline-c")
    assert gone(o.verdict("offline-c", 11.0)) == (
        "offline run offline-c was never created: INVALID_PARAMETER_VALUE: bad name"
    )
    o.reserve("offline-c", 12.0)  # a start_run after all: it decides
    assert o.verdict("offline-c", 13.0) == Waiting(12.0 + WAIT)


def test_reserving_a_created_run_changes_nothing() -> None:
    o = ids({"offline-d": "r3"})
    o.reserve("offline-d", 1.0)
    assert not o.in_flight("offline-d") and o.verdict("offline-d", 2.0) == "r3"


def test_remembered_failures_are_bounded_the_oldest_forgotten_first() -> None:
    o = ids(remember=2)
    for i in range(5):
        gone(o.verdict(f"offline-{i}", 2000.0))
    assert o.remembered == 2
    o.serving(3000.0)
    # forgotten: unknown again — a live record still fails at once, a replayed one waits
    assert isinstance(o.verdict("offline-0", 3001.0), RunGone)
    assert isinstance(o.verdict("offline-1", 3001.0, replayed=True), Waiting)
    assert isinstance(o.verdict("offline-4", 3001.0, replayed=True), RunGone)  # remembered
