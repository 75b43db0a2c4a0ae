"""Sink lanes: per-run stickiness (order within a run) and balance across lanes."""

from __future__ import annotations

from tracker_client.protocol import Metric
from tracker_daemon.commit.batcher import Origin
from tracker_daemon.commit.lanes import Lanes


def _metric(run: str, step: int) -> Metric:
    return Metric(run, "loss", float(step), 1_700_000_000_000 + step, step)


def test_runs_are_balanced_and_sticky() -> None:
    lanes = Lanes(4, max_age=0.05)
    runs = [f"run{i:02d}" for i in range(8)]
    assigned = [lanes.lane_of(r) for r in runs]
    assert sorted(assigned) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [lanes.lane_of(r) for r in runs] == assigned  # sticky


def test_a_run_batches_in_one_lane_in_order() -> None:
    lanes = Lanes(3, max_age=0.05)
    origin = Origin("c", 1)
    lanes.add(origin, [_metric("a", s) for s in range(2500)] + [_metric("b", 0)], now=0.0)
    lane_a = lanes.lane_of("a")
    steps = []
    while (batch := lanes.pop_ready(lane_a, now=1.0)) is not None:
        assert batch.run_id == "a"
        steps += [m.step for m in batch.metrics]
    assert steps == list(range(2500))
    assert lanes.pending == 1  # run b waits in its own lane
    lane_b = lanes.lane_of("b")
    assert lane_b != lane_a
    batch = lanes.pop_ready(lane_b, now=1.0)
    assert batch is not None and [m.step for m in batch.metrics] == [0]


def test_released_runs_free_their_lane() -> None:
    lanes = Lanes(2, max_age=0.05)
    assert lanes.lane_of("x") == 0
    assert lanes.lane_of("y") == 1
    lanes.add(Origin("c", 1), [_metric("x", 0)], now=0.0)
    assert lanes.release_run("x") is False  # still buffered
    assert lanes.pop_ready(0, now=1.0) is not None
    assert lanes.release_run("x") is True
    assert lanes.lane_of("z") == 0  # lane 0 is free again
