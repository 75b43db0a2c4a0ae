"""A unit (``data.units``: one ``tracker://`` ``log_batch`` call, all-or-nothing) survives a
kill -9 of the daemon: the journal keeps the frame as it was sent, so the replay after the
restart still decides each unit as one — a unit whose param changes a stored one stores nothing
and is reported once, a valid unit next to it stores everything, on both write paths."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

import tracker_client
from tests.support.daemon import running_daemon
from tests.support.net import raw_dealer, recv_reply
from tests.support.store import sqlite_locked
from tests.support.waiting import wait_for
from tracker_client import protocol as p

pytestmark = pytest.mark.integration

TS = 1_700_000_000_000
CID = "5" * 32


@pytest.mark.timeout(120)
@pytest.mark.parametrize("args", [(), ("--sink", "mlflow")], ids=["sql-writer", "log_batch"])
def test_units_are_replayed_as_units_after_kill9(tmp_path: Path, args: tuple[str, ...]) -> None:
    with running_daemon(tmp_path, *args) as d:
        t = tracker_client.connect(d.address, offline=False)
        run = t.start_run("units", run_name="orig")
        run.log_param("a", "1")
        run.flush(timeout=60)  # stored: the replayed daemon knows it only from the database
        rid = run.run_id
        bad = [
            p.Param(rid, "a", "2"),
            p.Param(rid, "newp", "x"),
            p.Metric(rid, "m", 1.0, TS, 0),
            p.Tag(rid, "t", "v"),
        ]
        good = [p.Param(rid, "good", "1"), p.Metric(rid, "g", 2.0, TS, 1)]
        frame = p.encode(p.Data(CID, 1, (*bad, *good), units=((0, 4), (4, 2))))
        before = d.status()
        with sqlite_locked(d.state_dir / "mlflow.db"), raw_dealer(d.address) as sock:
            sock.send(frame)
            ack = recv_reply(sock, "the data frame")
            assert isinstance(ack, p.Ack) and ack.seq == 1
            wait_for(
                lambda: (
                    (s := d.status())["received"] == before["received"] + 6
                    and s["queue_depth"] == 0
                ),
                30,
                "the frame to be journaled and handed to the (blocked) sink",
            )
            assert d.status()["committed"] == before["committed"]
            d.kill()
        d.start()
        with raw_dealer(d.address) as sock:
            sock.send(p.encode(p.Flush(1, CID, 1, None)))
            done = recv_reply(sock, "the flush", timeout=60)
        status = d.status()
        r = MlflowClient(tracking_uri=d.backend_uri).get_run(rid)
        t.close()
    assert status["replayed"] >= 6, status  # (and the committed param, if before the mark)
    assert isinstance(done, p.Done)
    assert [(f.record, f.code) for f in done.failures] == [(bad[0], "INVALID_PARAMETER_VALUE")]
    assert "Changing param values is not allowed" in done.failures[0].message
    assert r.data.params == {"a": "1", "good": "1"}
    assert r.data.metrics == {"g": 2.0}
    assert "t" not in r.data.tags
