"""``resume: "by_name"`` when the run is found (PROTOCOL.md section 5.4), against a real daemon
and the real SQLite store: the request's new ``offline_id`` names the found run (records and the
end_run sent under it land there, before the ``run`` reply too), its ``experiment_tags`` are set
on the experiment, its run ``tags`` are not applied."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.support.daemon import running_daemon
from tests.support.net import raw_dealer, recv_reply
from tracker_client import protocol as p

pytestmark = pytest.mark.integration

TS = 1_700_000_000_000


def start(req: int, cid: str, offline_id: str, **kw: object) -> p.StartRun:
    return p.StartRun(
        req,
        cid,
        None,
        "by-name",
        None,
        "nightly",
        None,
        dict(kw.get("tags", {})),  # type: ignore[arg-type]
        TS,
        offline_id,
        dict(kw.get("experiment_tags", {})),
        None,
        "by_name",  # type: ignore[arg-type]
    )


@pytest.mark.timeout(90)
def test_a_found_run_takes_the_new_offline_id_and_the_experiment_tags(tmp_path: Path) -> None:
    cid = os.urandom(16).hex()
    first, second = f"offline-{uuid.uuid4().hex}", f"offline-{uuid.uuid4().hex}"
    with running_daemon(tmp_path) as d, raw_dealer(d.address) as sock:
        sock.send(p.encode(p.Hello(1, cid, os.getpid(), "h", "t")))
        assert isinstance(recv_reply(sock, "hello"), p.Welcome)
        sock.send(p.encode(start(2, cid, first, tags={"phase": "one"})))
        created = recv_reply(sock, "first start_run")
        assert isinstance(created, p.RunStarted), created
        # found by name: sent with records and its end under the new offline id at once
        sock.send(
            p.encode(start(3, cid, second, tags={"phase": "two"}, experiment_tags={"team": "a"}))
        )
        sock.send(p.encode(p.Data(cid, 1, (p.Metric(second, "loss", 0.5, TS, 7),))))
        sock.send(p.encode(p.EndRun(4, cid, 1, second, "FINISHED", TS + 5)))
        replies: dict[int, p.Message] = {}
        while 3 not in replies or 4 not in replies:
            reply = recv_reply(sock, "start_run and end_run")
            if isinstance(reply, p.RunStarted | p.Done | p.ErrorReply):
                assert reply.req is not None
                replies[reply.req] = reply
        client = MlflowClient(d.backend_uri)
        run = client.get_run(created.run_id)
        exp = client.get_experiment(created.experiment_id)
    found = replies[3]
    assert isinstance(found, p.RunStarted) and found.run_id == created.run_id
    assert replies[4] == p.Done(4, ())
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"loss": 0.5}  # the record sent under the second offline id
    assert run.data.tags.get("phase") == "one"  # the found run's tags stay as they were
    assert exp.tags.get("team") == "a"  # experiment_tags apply on a found run
