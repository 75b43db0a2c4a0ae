"""Commit pacing: the batcher's max age from the arrival rate, between the floor (high rates:
as before) and the ceiling (light load: commits at most that far apart)."""

from __future__ import annotations

import pytest

from tracker_daemon.commit.pacing import CommitPacer


def steady(pacer: CommitPacer, rate: float, seconds: float, start: float = 0.0) -> float:
    """Records at ``rate`` per second in frames every 10 ms; returns the time after the last."""
    per, now = rate / 100, start
    while now < start + seconds:
        pacer.note(int(per), now)
        now += 0.01
    return now


def test_no_records_yet_waits_the_ceiling() -> None:
    pacer = CommitPacer(floor=0.05, ceiling=0.5)
    assert pacer.max_age(0.0) == 0.5


@pytest.mark.parametrize(
    ("rate", "age"),
    [
        (500, 0.5),  # 1,000 records would take 2 s: the ceiling
        (1000, 0.5),
        (5000, 0.2),  # 1,000 records in 200 ms
        (10_000, 0.1),
        (20_000, 0.05),  # the floor: as without pacing
        (50_000, 0.05),
    ],
)
def test_one_commit_carries_about_the_target(rate: float, age: float) -> None:
    pacer = CommitPacer(floor=0.05, ceiling=0.5)
    now = steady(pacer, rate, 3.0)
    assert pacer.max_age(now) == pytest.approx(age, rel=0.05)


def test_log_batch_share_divides_the_rate_among_runs() -> None:
    pacer = CommitPacer(floor=0.05, ceiling=2.0)
    now = steady(pacer, 8000, 3.0)
    assert pacer.max_age(now, share=1) == pytest.approx(0.125, rel=0.05)
    assert pacer.max_age(now, share=8) == pytest.approx(1.0, rel=0.05)  # 1,000/s per run


def test_a_rising_load_is_followed_within_the_window() -> None:
    pacer = CommitPacer(floor=0.05, ceiling=0.5)
    now = steady(pacer, 1000, 2.0)
    assert pacer.max_age(now) == 0.5
    now = steady(pacer, 40_000, 0.2, start=now)  # a fifth of a window at 40k/s
    assert pacer.max_age(now) <= 0.15


def test_a_load_that_stops_falls_back_to_the_ceiling() -> None:
    pacer = CommitPacer(floor=0.05, ceiling=0.5)
    now = steady(pacer, 40_000, 2.0)
    assert pacer.max_age(now) == 0.05
    assert pacer.max_age(now + 5.0) > 0.1  # nothing for 5 s: the rate is averaged over them
    assert pacer.max_age(now + 30.0) == 0.5  # and after 30 s it is light load
    pacer.note(10, now + 30.0)  # one lone frame after the pause: still light load
    assert pacer.max_age(now + 30.0) == 0.5


def test_pacing_off_when_floor_equals_ceiling() -> None:
    pacer = CommitPacer(floor=0.05, ceiling=0.05)
    assert pacer.max_age(0.0) == 0.05
    now = steady(pacer, 1000, 2.0)
    assert pacer.max_age(now) == 0.05


@pytest.mark.parametrize(
    "kwargs",
    [
        {"floor": 0.5, "ceiling": 0.1},
        {"floor": -1.0, "ceiling": 0.1},
        {"floor": 0.0, "ceiling": 0.1, "target": 0},
        {"floor": 0.0, "ceiling": 0.1, "window": 0.0},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CommitPacer(**kwargs)  # type: ignore[arg-type]
