"""``start_run(experiment=name)`` follows the store, not a memory of it: after the experiment
is renamed (by another process on the store directly, as the MLflow UI does, or through the
daemon's ``tracker://`` plugin) and a new one takes the name, runs go into the new one, as with
MLflow itself; a deleted one is refused and a restored one is used again. Real daemon, real
SQLite store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

import tracker_client
from tests.support.daemon import running_daemon
from tracker_client import CommitError, DaemonError

pytestmark = pytest.mark.integration


def start_in(t: tracker_client.Tracker, name: str) -> str:
    run = t.start_run(name, run_name="r", timeout=30)
    run.end()
    return run.experiment_id


@pytest.mark.timeout(120)
def test_a_renamed_experiment_receives_no_more_runs(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        t = tracker_client.connect(d.address, offline=False)
        store = MlflowClient(tracking_uri=d.backend_uri)  # another process's view of the store
        via_daemon = MlflowClient(tracking_uri="tracker://" + d.address[len("ipc://") :])

        first = start_in(t, "x")
        assert start_in(t, "x") == first
        # renamed on the store directly (the MLflow UI), and a new "x"
        store.rename_experiment(first, "x-old")
        second = store.create_experiment("x")
        assert start_in(t, "x") == second != first
        # renamed through the daemon, and a new "x" through the daemon
        via_daemon.rename_experiment(second, "x-older")
        third = via_daemon.create_experiment("x")
        assert start_in(t, "x") == third not in (first, second)
        # deleted (through the daemon): refused as MLflow does; restored (on the store): used
        via_daemon.delete_experiment(third)
        with pytest.raises((CommitError, DaemonError), match="is deleted"):
            t.start_run("x", run_name="r", timeout=30)
        store.restore_experiment(third)
        assert start_in(t, "x") == third
        # a name freed by a rename and not taken again: the daemon creates the experiment
        store.rename_experiment(third, "x-3")
        fourth = start_in(t, "x")
        assert fourth not in (first, second, third)
        assert store.get_experiment_by_name("x").experiment_id == fourth  # type: ignore[union-attr]
        runs = {e: len(store.search_runs([e])) for e in (first, second, third, fourth)}
        assert runs == {first: 2, second: 1, third: 2, fourth: 1}
        t.close()
        assert d.proc is not None and d.proc.poll() is None


@pytest.mark.timeout(120)
def test_start_run_by_experiment_name_stays_cheap(tmp_path: Path) -> None:
    """The store is asked for the name at each start_run: one indexed read. Reported, and
    bounded loosely (a start_run creates a run: several writes and fsyncs of runs.log)."""
    with running_daemon(tmp_path) as d:
        t = tracker_client.connect(d.address, offline=False)
        start_in(t, "cheap")
        n, took = 100, []
        for _ in range(n):
            began = time.perf_counter()
            run = t.start_run("cheap", run_name="r", timeout=30)
            took.append(time.perf_counter() - began)
            run.end()
        t.close()
    took.sort()
    median, mean = took[n // 2], sum(took) / n
    print(f"start_run by experiment name: median {median * 1000:.1f} ms, mean {mean * 1000:.1f} ms")
    assert median < 0.5
