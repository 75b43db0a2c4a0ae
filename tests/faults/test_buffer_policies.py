"""The client's bounded buffer while the daemon is down: spool (default), drop-oldest, block."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from mlflow import MlflowClient

import tracker_client
from tests.support.daemon import running_daemon
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

# Above what the client keeps in flight (64 unacked frames of up to 1,000 records) plus its
# 1,000-record buffer, so the policy has to act.
N = 100_000


@pytest.mark.timeout(180)
def test_spool_policy_keeps_everything_while_the_daemon_is_down(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        t = tracker_client.connect(d.address, max_buffer=1000, policy="spool")
        run = t.start_run("policies")
        d.kill()
        for i in range(N):  # never blocks: the overflow goes to the spool file
            run.log_metric("k", float(i), step=i)
        transport = t._transport
        wait_for(
            lambda: transport.spiller.spooled_frames > 0, 30, "the overflow to reach the spool"
        )
        assert len(transport.outbox.queue) <= 2 * 1000
        d.start()
        # the spool is sent first, then the queue; the barrier waits for the commit
        assert run.end(timeout=120) is True
        t.close()
    client = MlflowClient(tracking_uri=d.backend_uri)
    assert sorted(m.step for m in client.get_metric_history(run.run_id, "k")) == list(range(N))
    assert client.get_run(run.run_id).info.status == "FINISHED"


@pytest.mark.timeout(180)
def test_drop_oldest_policy_counts_what_it_drops(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        t = tracker_client.connect(d.address, max_buffer=1000, policy="drop-oldest", offline=False)
        run = t.start_run("policies")
        d.kill()
        for i in range(N):
            run.log_metric("k", float(i), step=i)
        dropped = t._transport.outbox.dropped
        assert dropped > 0
        d.start()
        run.end(timeout=120)
        t.close()
    client = MlflowClient(tracking_uri=d.backend_uri)
    steps = sorted(m.step for m in client.get_metric_history(run.run_id, "k"))
    assert len(steps) == N - dropped  # exactly the records not dropped landed
    assert steps[-1] == N - 1  # the newest are kept, the oldest dropped


@pytest.mark.timeout(180)
def test_block_policy_waits_for_room_then_delivers_all(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        t = tracker_client.connect(d.address, max_buffer=1000, policy="block", offline=False)
        run = t.start_run("policies")
        d.kill()
        done = threading.Event()

        def produce() -> None:
            for i in range(N):
                run.log_metric("k", float(i), step=i)
            done.set()

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        wait_for(lambda: len(t._transport.outbox.queue) >= 1000, 30, "the buffer to fill")
        assert not done.is_set()  # the producer is blocked, not dropping
        d.start()
        assert done.wait(60), "the producer was not released once the daemon came back"
        producer.join(10)
        assert run.end(timeout=120) is True
        t.close()
    client = MlflowClient(tracking_uri=d.backend_uri)
    assert sorted(m.step for m in client.get_metric_history(run.run_id, "k")) == list(range(N))
