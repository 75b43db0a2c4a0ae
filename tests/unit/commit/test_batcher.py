"""Unit tests for tracker_daemon.commit.batcher (synchronous; time is passed explicitly)."""

from __future__ import annotations

import pytest

from tracker_client.protocol import Failure, Metric, Param, Record, Tag
from tracker_daemon.commit.batcher import Batch, Batcher, Origin, Settled

T0 = 1000.0
O1 = Origin("client-1", 1)
O2 = Origin("client-2", 7)


def m(step: int, run: str = "r1", key: str = "loss") -> Metric:
    return Metric(run, key, float(step), 1_700_000_000_000 + step, step)


def p(key: str, value: str, run: str = "r1") -> Param:
    return Param(run, key, value)


def t(key: str, value: str, run: str = "r1") -> Tag:
    return Tag(run, key, value)


def drain(b: Batcher, now: float) -> list[Batch]:
    out = []
    while (batch := b.pop_ready(now)) is not None:
        out.append(batch)
    return out


def records(batch: Batch) -> list[Record]:
    return [r for r, _ in batch.items]


# --------------------------------------------------------------------------------------------
# Batch shape and limits


def test_2500_metrics_and_250_params_make_three_batches() -> None:
    b = Batcher()
    metrics = [m(i) for i in range(2500)]
    params = [p(f"k{i}", str(i)) for i in range(250)]
    # interleave the two kinds on arrival: 10 metrics, 1 param, ...
    recs: list[Record] = []
    for i in range(250):
        recs += metrics[10 * i : 10 * i + 10]
        recs.append(params[i])
    assert b.add(O1, recs, T0) == []
    assert b.pending == 2750

    batches = drain(b, T0)  # due by size: the two full batches
    assert b.pending == 750  # 50 p + 700 m: not full, not old yet
    batches += drain(b, T0 + 0.05)

    assert [(len(x.params), len(x.metrics), len(x.tags)) for x in batches] == [
        (100, 900, 0),
        (100, 900, 0),
        (50, 700, 0),
    ]
    assert [len(x) for x in batches] == [1000, 1000, 750]
    assert all(x.run_id == "r1" for x in batches)
    assert [r for x in batches for r in x.metrics] == metrics  # each once, in order
    assert [r for x in batches for r in x.params] == params
    assert all(o == O1 for x in batches for _, o in x.items)
    assert b.pending == 0
    assert b.runs == 0
    assert b.pop_ready(T0 + 10) is None


def test_metric_limit() -> None:
    b = Batcher()
    b.add(O1, [m(i) for i in range(999)], T0)
    assert b.pop_ready(T0) is None  # 999 < 1000 and not old yet
    assert b.next_deadline() == T0 + 0.05
    b.add(O2, [m(999), m(1000)], T0 + 0.01)
    assert b.next_deadline() == T0  # due by size: a time <= now

    batch = b.pop_ready(T0 + 0.01)

    assert batch is not None
    assert batch.metrics == [m(i) for i in range(1000)]
    assert batch.items[-1] == (m(999), O2)
    assert b.pending == 1
    assert b.pop_ready(T0 + 0.01) is None  # the one left is neither full nor old
    assert b.next_deadline() == T0 + 0.01 + 0.05  # deadline of the remaining record


def test_param_limit() -> None:
    b = Batcher()
    b.add(O1, [p(f"k{i}", "v") for i in range(99)], T0)
    assert b.pop_ready(T0) is None
    b.add(O1, [p(f"k{i}", "v") for i in range(99, 130)], T0)

    batch = b.pop_ready(T0)

    assert batch is not None
    assert [x.key for x in batch.params] == [f"k{i}" for i in range(100)]
    assert batch.metrics == []
    assert b.pending == 30
    assert b.pop_ready(T0) is None
    rest = b.pop_ready(T0 + 0.05)
    assert rest is not None
    assert [x.key for x in rest.params] == [f"k{i}" for i in range(100, 130)]


def test_tag_limit() -> None:
    b = Batcher()
    b.add(O1, [t(f"k{i}", "v") for i in range(99)], T0)
    assert b.pop_ready(T0) is None
    b.add(O1, [t(f"k{i}", "v") for i in range(99, 101)], T0)

    batch = b.pop_ready(T0)

    assert batch is not None
    assert [x.key for x in batch.tags] == [f"k{i}" for i in range(100)]
    assert b.pending == 1
    assert b.pop_ready(T0) is None


def test_entity_limit_with_mixed_kinds() -> None:
    b = Batcher()
    params = [p(f"p{i}", "v") for i in range(60)]
    tags = [t(f"t{i}", "v") for i in range(40)]
    metrics = [m(i) for i in range(899)]
    b.add(O1, [*params, *tags, *metrics], T0)
    assert b.pending == 999
    assert b.pop_ready(T0) is None  # 999 entities: not full yet
    b.add(O1, [m(899), m(900), m(901)], T0)  # 1002 entities

    batch = b.pop_ready(T0)

    assert batch is not None
    assert (len(batch.params), len(batch.tags), len(batch.metrics)) == (60, 40, 900)
    assert batch.metrics == [m(i) for i in range(900)]
    assert b.pending == 2
    assert b.pop_ready(T0) is None


def test_custom_limits_are_honoured() -> None:
    b = Batcher(max_metrics=3, max_params=2, max_tags=1, max_entities=4)
    b.add(O1, [p("a", "1"), p("b", "2"), p("c", "3"), t("x", "1"), t("y", "2"), m(0), m(1)], T0)

    batches = drain(b, T0 + 1)

    assert [(len(x.params), len(x.tags), len(x.metrics)) for x in batches] == [
        (2, 1, 1),
        (1, 1, 1),
    ]
    assert b.pending == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_age": -0.1}, "max_age"),
        ({"max_age": float("nan")}, "max_age"),
        ({"max_metrics": 0}, "max_metrics"),
        ({"max_params": 0}, "max_params"),
        ({"max_tags": -1}, "max_tags"),
        ({"max_entities": 1.5}, "max_entities"),
    ],
)
def test_invalid_limits_are_rejected(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Batcher(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Age, deadlines, expedite


def test_empty_batcher() -> None:
    b = Batcher()
    assert b.pop_ready(T0) is None
    assert b.next_deadline() is None
    assert b.pending == 0
    assert b.runs == 0
    b.expedite()
    b.expedite("nope")
    assert b.pop_ready(T0) is None


def test_max_age() -> None:
    b = Batcher(max_age=0.05)
    b.add(O1, [m(0)], T0)
    assert b.next_deadline() == T0 + 0.05
    b.add(O2, [m(1)], T0 + 0.02)
    assert b.next_deadline() == T0 + 0.05  # still the oldest record's deadline

    assert b.pop_ready(T0 + 0.049) is None

    batch = b.pop_ready(T0 + 0.05)
    assert batch is not None
    assert batch.items == [(m(0), O1), (m(1), O2)]  # the whole buffer goes at once
    assert b.next_deadline() is None
    assert b.pending == 0


def test_next_deadline_is_earliest_over_runs() -> None:
    b = Batcher(max_age=0.5)
    b.add(O1, [m(0, run="a")], T0 + 0.2)
    b.add(O1, [m(0, run="b")], T0 + 0.1)  # a clock that went backwards still works
    b.add(O1, [m(0, run="c")], T0 + 0.3)

    assert b.next_deadline() == T0 + 0.1 + 0.5
    assert b.pop_ready(T0 + 0.59) is None
    first = b.pop_ready(T0 + 0.6)
    assert first is not None
    assert first.run_id == "b"
    assert b.next_deadline() == T0 + 0.2 + 0.5
    assert b.pop_ready(T0 + 0.6) is None


def test_partial_batch_moves_the_deadline_to_the_next_oldest_record() -> None:
    b = Batcher(max_age=1.0, max_metrics=2)
    b.add(O1, [m(0), m(1)], T0)
    b.add(O2, [m(2)], T0 + 0.5)

    batch = b.pop_ready(T0)  # full (2 metrics)

    assert batch is not None
    assert batch.metrics == [m(0), m(1)]
    assert b.next_deadline() == T0 + 0.5 + 1.0
    assert b.pop_ready(T0 + 1.49) is None
    rest = b.pop_ready(T0 + 1.5)
    assert rest is not None
    assert rest.items == [(m(2), O2)]


def test_expedite_one_run() -> None:
    b = Batcher()
    b.add(O1, [m(0, run="a")], T0)
    b.add(O1, [m(0, run="b")], T0)

    b.expedite("a")

    assert b.next_deadline() == T0  # something is due now
    batch = b.pop_ready(T0)
    assert batch is not None
    assert batch.run_id == "a"
    assert b.pop_ready(T0) is None  # "b" is not expedited
    assert b.next_deadline() == T0 + 0.05


def test_expedite_all_runs() -> None:
    b = Batcher()
    b.add(O1, [m(0, run="a")], T0)
    b.add(O1, [m(0, run="b")], T0 + 0.001)
    b.add(O1, [m(0, run="c")], T0 + 0.002)

    b.expedite()

    assert [x.run_id for x in drain(b, T0 + 0.002)] == ["a", "b", "c"]
    assert b.runs == 0


def test_expedite_is_sticky_until_the_buffer_empties() -> None:
    b = Batcher(max_metrics=2)
    b.add(O1, [m(0), m(1), m(2)], T0)
    b.expedite("r1")
    b.add(O2, [m(3)], T0 + 0.01)  # arrives after expedite: still due at once

    batches = drain(b, T0 + 0.01)

    assert [x.metrics for x in batches] == [[m(0), m(1)], [m(2), m(3)]]
    # the buffer was emptied: the next record waits for its age again
    b.add(O2, [m(4)], T0 + 0.02)
    assert b.pop_ready(T0 + 0.02) is None
    assert b.next_deadline() == T0 + 0.02 + 0.05


def test_expedite_of_a_run_with_nothing_buffered_does_nothing() -> None:
    b = Batcher()
    b.seed_params("r1", {"lr": "0.1"})
    b.expedite("r1")
    b.add(O1, [m(0)], T0)
    assert b.pop_ready(T0) is None
    assert b.next_deadline() == T0 + 0.05


# --------------------------------------------------------------------------------------------
# Fairness


def test_quiet_run_is_not_starved_by_a_busy_run() -> None:
    b = Batcher(max_age=0.05, max_metrics=10)
    b.add(O2, [m(0, run="quiet")], T0)
    order = []
    for i in range(8):  # "busy" fills a batch every 10 ms
        now = T0 + 0.01 * (i + 1)
        b.add(O1, [m(10 * i + j, run="busy") for j in range(10)], now)
        order += [(x.run_id, len(x)) for x in drain(b, now)]

    # quiet's record becomes due at T0 + 0.05 and is older than busy's records of that time
    assert order == [("busy", 10)] * 4 + [("quiet", 1)] + [("busy", 10)] * 4
    assert (b.pending, b.runs) == (0, 0)


def test_due_runs_go_oldest_record_first() -> None:
    b = Batcher(max_age=0.05, max_metrics=10)
    b.add(O1, [m(i, run="busy") for i in range(35)], T0)  # 3 full batches + 5
    b.add(O2, [m(0, run="quiet")], T0 + 0.001)
    b.add(O1, [m(i, run="busy") for i in range(35, 40)], T0 + 0.002)

    order = [(x.run_id, len(x)) for x in drain(b, T0 + 0.051)]

    # busy's head stays at T0 until its 35 records from T0 are out; the 5 from T0 + 0.002 then
    # share a batch with the last 5 from T0, and only then is quiet's record (T0 + 0.001) oldest
    assert order == [("busy", 10), ("busy", 10), ("busy", 10), ("busy", 10), ("quiet", 1)]
    assert (b.pending, b.runs) == (0, 0)


def test_size_due_runs_alternate_by_oldest_record() -> None:
    b = Batcher(max_metrics=2, max_age=10.0)
    b.add(O1, [m(i, run="a") for i in range(4)], T0)
    b.add(O1, [m(i, run="b") for i in range(4)], T0 + 0.001)
    b.add(O1, [m(i, run="a") for i in range(4, 6)], T0 + 0.002)

    order = [(x.run_id, x.metrics[0].step) for x in drain(b, T0 + 0.002)]

    # heads: a@T0 -> a@T0 -> b@T0.001 (a@T0.002) -> b@T0.001 -> a@T0.002
    assert order == [("a", 0), ("a", 2), ("b", 0), ("b", 2), ("a", 4)]
    assert b.pending == 0


def test_equal_oldest_time_goes_to_the_run_that_waited_longer() -> None:
    b = Batcher(max_metrics=3)
    b.add(O1, [m(i, run="a") for i in range(4)], T0)
    b.add(O1, [m(0, run="b")], T0)
    first = b.pop_ready(T0)
    assert first is not None and first.run_id == "a"  # the only full run

    # both heads arrived at T0; "b" has been waiting since then, "a" was just served
    assert [x.run_id for x in drain(b, T0 + 1)] == ["b", "a"]


# --------------------------------------------------------------------------------------------
# Params


def test_param_same_value_is_settled_as_noop() -> None:
    b = Batcher()
    assert b.add(O1, [p("lr", "0.1")], T0) == []

    settled = b.add(O2, [p("lr", "0.1"), m(0)], T0)

    assert settled == [Settled(O2, p("lr", "0.1"), None)]
    assert b.pending == 2
    batch = b.pop_ready(T0 + 1)
    assert batch is not None
    assert batch.items == [(p("lr", "0.1"), O1), (m(0), O2)]
    # still known after being handed out
    assert b.add(O1, [p("lr", "0.1")], T0 + 2) == [Settled(O1, p("lr", "0.1"), None)]
    assert b.pending == 0


def test_param_different_value_is_a_failure() -> None:
    b = Batcher()
    b.add(O1, [p("lr", "0.1", run="abc")], T0)

    settled = b.add(O2, [p("lr", "0.2", run="abc")], T0)

    assert settled == [
        Settled(
            O2,
            p("lr", "0.2", run="abc"),
            Failure(
                p("lr", "0.2", run="abc"),
                "INVALID_PARAMETER_VALUE",
                "param 'lr' was already logged with value '0.1' for run abc; "
                "MLflow does not allow changing it to '0.2'",
            ),
        )
    ]
    assert b.pending == 1


def test_param_conflict_message_truncates_long_values() -> None:
    b = Batcher()
    b.add(O1, [p("k", "a" * 300)], T0)

    [settled] = b.add(O1, [p("k", "b" * 150)], T0)

    assert settled.failure is not None
    assert settled.failure.message == (
        f"param 'k' was already logged with value '{'a' * 97}...' for run r1; "
        f"MLflow does not allow changing it to '{'b' * 97}...'"
    )


def test_same_param_twice_in_one_add_first_wins() -> None:
    b = Batcher()

    settled = b.add(O1, [p("a", "1"), p("a", "1"), p("a", "2")], T0)

    assert [(s.record, s.failure is None) for s in settled] == [
        (p("a", "1"), True),
        (p("a", "2"), False),
    ]
    assert settled[1].failure is not None
    assert settled[1].failure.code == "INVALID_PARAMETER_VALUE"
    assert b.pending == 1


def test_params_are_per_run() -> None:
    b = Batcher()
    assert b.add(O1, [p("lr", "0.1", run="a"), p("lr", "0.2", run="b")], T0) == []
    assert b.pending == 2
    assert b.runs == 2


def test_seed_params() -> None:
    b = Batcher()
    b.seed_params("r1", {"lr": "0.1", "bs": "32"})
    assert b.runs == 0  # seeding buffers nothing

    settled = b.add(O1, [p("lr", "0.1"), p("bs", "64"), p("new", "x")], T0)

    assert [(s.record.key, None if s.failure is None else s.failure.code) for s in settled] == [
        ("lr", None),
        ("bs", "INVALID_PARAMETER_VALUE"),
    ]
    assert settled[1].failure is not None
    assert "'32'" in settled[1].failure.message
    assert "'64'" in settled[1].failure.message
    assert b.pending == 1
    batch = b.pop_ready(T0 + 1)
    assert batch is not None
    assert batch.params == [p("new", "x")]


def test_param_failed_allows_logging_the_key_again() -> None:
    b = Batcher()
    b.add(O1, [p("lr", "0.1")], T0)
    batch = b.pop_ready(T0 + 1)
    assert batch is not None

    b.param_failed("r1", "lr")  # the commit of that batch failed

    assert b.add(O2, [p("lr", "0.2")], T0 + 2) == []
    assert b.pending == 1
    b.param_failed("unknown-run", "lr")  # no effect, no error
    b.param_failed("r1", "unknown-key")
    assert b.add(O2, [p("lr", "0.3")], T0 + 2)[0].failure is not None


# --------------------------------------------------------------------------------------------
# Tags and Batch


def test_duplicate_tags_in_one_batch_pass_every_value_in_order() -> None:
    b = Batcher()
    b.add(O1, [t("state", "a"), t("other", "x"), t("state", "b")], T0)
    b.add(O2, [t("state", "c")], T0)

    batch = b.pop_ready(T0 + 1)

    assert batch is not None
    # MLflow's log_batch applies duplicate tag keys in order (the last wins; an empty
    # mlflow.runName after a rename is a no-op there, and would erase the rename if collapsed)
    assert batch.tags == [t("state", "a"), t("other", "x"), t("state", "b"), t("state", "c")]
    assert batch.items == [
        (t("state", "a"), O1),
        (t("other", "x"), O1),
        (t("state", "b"), O1),
        (t("state", "c"), O2),
    ]


def test_items_keep_arrival_order_across_kinds() -> None:
    b = Batcher()
    b.add(O1, [m(0), p("a", "1"), t("x", "1"), m(1), m(2), p("b", "2")], T0)
    b.add(O2, [t("y", "2"), m(3)], T0 + 0.01)

    batch = b.pop_ready(T0 + 1)

    assert batch is not None
    assert records(batch) == [
        m(0),
        p("a", "1"),
        t("x", "1"),
        m(1),
        m(2),
        p("b", "2"),
        t("y", "2"),
        m(3),
    ]
    assert [o for _, o in batch.items] == [O1] * 6 + [O2] * 2
    assert batch.metrics == [m(0), m(1), m(2), m(3)]
    assert batch.params == [p("a", "1"), p("b", "2")]
    assert batch.tags == [t("x", "1"), t("y", "2")]


def test_records_left_behind_keep_their_order() -> None:
    b = Batcher(max_params=2, max_age=0.0)
    b.add(O1, [p("a", "1"), m(0), p("b", "2"), p("c", "3"), m(1), p("d", "4")], T0)

    first = b.pop_ready(T0)
    second = b.pop_ready(T0)

    assert first is not None and second is not None
    assert records(first) == [p("a", "1"), m(0), p("b", "2"), m(1)]
    assert records(second) == [p("c", "3"), p("d", "4")]
    assert b.pop_ready(T0) is None


def test_records_of_several_runs_in_one_add() -> None:
    b = Batcher()
    b.add(O1, [m(0, run="a"), m(0, run="b"), m(1, run="a"), p("k", "v", run="b")], T0)
    assert b.runs == 2
    assert b.pending == 4

    batches = drain(b, T0 + 1)

    assert {x.run_id: records(x) for x in batches} == {
        "a": [m(0, run="a"), m(1, run="a")],
        "b": [m(0, run="b"), p("k", "v", run="b")],
    }
    assert b.runs == 0


def test_batch_split_halves() -> None:
    items: list[tuple[Record, Origin]] = [(m(i), O1) for i in range(5)]
    batch = Batch("r1", list(items))

    left, right = batch.split()

    assert left == Batch("r1", items[:2])
    assert right == Batch("r1", items[2:])
    assert (len(left), len(right), len(batch)) == (2, 3, 5)
    a, b = Batch("r1", items[:2]).split()
    assert (a.items, b.items) == ([items[0]], [items[1]])
    with pytest.raises(ValueError, match="1 record"):
        a.split()


def test_split_halves_have_their_own_kinds() -> None:
    batch = Batch("r1", [(p("a", "1"), O1), (t("x", "1"), O1), (m(0), O2), (t("x", "2"), O2)])

    left, right = batch.split()

    assert (left.params, left.tags, left.metrics) == ([p("a", "1")], [t("x", "1")], [])
    assert (right.params, right.tags, right.metrics) == ([], [t("x", "2")], [m(0)])


# --------------------------------------------------------------------------------------------
# Counters and forgetting


def test_pending_and_runs_counters() -> None:
    b = Batcher(max_metrics=3)
    assert (b.pending, b.runs) == (0, 0)
    b.add(O1, [m(i, run="a") for i in range(4)], T0)
    b.add(O1, [m(0, run="b"), t("k", "v", run="b")], T0)
    assert (b.pending, b.runs) == (6, 2)

    b.pop_ready(T0)  # 3 of "a" (full)
    assert (b.pending, b.runs) == (3, 2)
    b.pop_ready(T0 + 1)  # "b"
    assert (b.pending, b.runs) == (1, 1)
    b.pop_ready(T0 + 1)  # the last of "a"
    assert (b.pending, b.runs) == (0, 0)
    b.add(O1, [m(9, run="c")], T0 + 2)
    assert (b.pending, b.runs) == (1, 1)


def test_forget_run_drops_buffer_and_params() -> None:
    b = Batcher()
    b.add(O1, [p("lr", "0.1", run="a"), m(0, run="a")], T0)
    b.add(O1, [m(0, run="b")], T0 + 0.01)
    b.expedite("a")

    b.forget_run("a")

    assert (b.pending, b.runs) == (1, 1)
    assert b.next_deadline() == T0 + 0.01 + 0.05  # "a" no longer counts, nor its expedite
    assert b.pop_ready(T0 + 0.05) is None
    # its params are forgotten: a new value is accepted
    assert b.add(O2, [p("lr", "0.2", run="a")], T0 + 0.1) == []
    batches = drain(b, T0 + 1)
    assert [(x.run_id, records(x)) for x in batches] == [
        ("b", [m(0, run="b")]),
        ("a", [p("lr", "0.2", run="a")]),
    ]
    b.forget_run("never-seen")  # no error


def test_add_rejects_non_records_and_keeps_those_before() -> None:
    b = Batcher()

    class NotARecord:
        run_id = "r1"

    with pytest.raises(TypeError, match="not a record"):
        b.add(O1, [m(0), NotARecord()], T0)  # type: ignore[list-item]

    assert (b.pending, b.runs) == (1, 1)  # m(0) was buffered and is accounted for
    batch = b.pop_ready(T0 + 1)
    assert batch is not None
    assert batch.items == [(m(0), O1)]


def test_many_small_frames_stay_ordered_and_complete() -> None:
    b = Batcher(max_metrics=7, max_params=3, max_tags=2, max_entities=9)
    expected: list[Record] = []
    for i in range(200):
        frame: list[Record] = [m(i)]
        if i % 3 == 0:
            frame.append(p(f"p{i}", "v"))
        if i % 5 == 0:
            frame.append(t(f"t{i % 4}", str(i)))
        expected += frame
        b.add(Origin("c", i), frame, T0 + i * 0.001)
        while (batch := b.pop_ready(T0 + i * 0.001)) is not None:
            assert len(batch.params) <= 3 and len(batch.tags) <= 2 and len(batch.metrics) <= 7
            assert len(batch) <= 9
            got = records(batch)
            for kind in (Metric, Param, Tag):
                in_batch = [r for r in got if type(r) is kind]
                remaining = [r for r in expected if type(r) is kind]
                assert in_batch == remaining[: len(in_batch)]  # FIFO within a kind
            for r in got:
                expected.remove(r)
    b.expedite()
    for batch in drain(b, T0 + 1):
        for r in records(batch):
            expected.remove(r)
    assert expected == []
    assert (b.pending, b.runs) == (0, 0)
