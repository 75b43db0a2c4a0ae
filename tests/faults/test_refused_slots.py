"""A refused or failed staged artifact: by the time the reply reporting it is sent (the ``done`` of
the barrier that carries the failure), the daemon has deleted the staged slot, so the client may
reuse the slot's name and has its disk space back (client/PROTOCOL.md 5.3, point 3; issue 21,
item 18). A real daemon, a raw DEALER speaking the protocol, real slot directories: each slot is
looked at the moment the ``done`` arrives, without waiting."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

import tracker_client
from tests.support.daemon import running_daemon
from tests.support.net import raw_dealer, recv_reply
from tracker_client import protocol as p

pytestmark = pytest.mark.integration


def staged(staging: Path, cid: str, name: bytes, content: bytes = b"weights") -> Path:
    """A slot laid out as the client library makes it, holding one file ``name``."""
    slot = staging / cid / uuid.uuid4().hex
    slot.mkdir(parents=True)
    with open(os.fsencode(slot) + b"/" + name, "wb") as fh:
        fh.write(content)
    return slot


@pytest.mark.timeout(90)
def test_refused_and_failed_slots_are_gone_when_the_done_arrives(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        t = tracker_client.connect(d.address)
        run = t.start_run("slots", run_name="owner")
        staging = d.state_dir / "staging"
        cid = "raw-slots-" + uuid.uuid4().hex[:8]
        # (what is wrong, staged slot, staged name, run id, artifact_path)
        cases: list[tuple[str, Path, bytes, str, str | None]] = []
        slot = staged(staging, cid, b"a.txt")
        cases.append(("artifact_path", slot, b"a.txt", run.run_id, "a//b"))
        slot = staged(staging, cid, b"b.txt")
        cases.append(("no such run", slot, b"b.txt", "f" * 32, None))
        slot = staging / cid / uuid.uuid4().hex
        (slot / "ckpt").mkdir(parents=True)
        os.symlink("/etc/passwd", slot / "ckpt" / "link")
        cases.append(("a link in the staged dir", slot, b"ckpt", run.run_id, None))
        slot = staged(staging, cid, b"d.txt")
        cases.append(("a missing entry", slot, b"missing.txt", run.run_id, None))
        with raw_dealer(d.address) as sock:
            sock.send(p.encode(p.Hello(1, cid, os.getpid(), "elsewhere", "0")))
            assert isinstance(recv_reply(sock, "hello"), p.Welcome)
            for seq, (_, slot, name, run_id, artifact_path) in enumerate(cases, start=1):
                path = os.fsdecode(os.fsencode(slot) + b"/" + name)
                sock.send(p.encode(p.LogArtifact(cid, seq, run_id, path, artifact_path)))
            sock.send(p.encode(p.Flush(2, cid, len(cases), None)))
            done = recv_reply(sock, "flush")
            while isinstance(done, p.Ack):
                done = recv_reply(sock, "flush")
            left = {what: sorted(os.listdir(slot)) for what, slot, *_ in cases if slot.exists()}
        assert isinstance(done, p.Done), done
        assert len(done.failures) == len(cases), [f.message for f in done.failures]
        assert left == {}, f"slots still there when the done arrived: {left}"
        assert sorted(os.listdir(staging / cid)) == []
        status = d.status()
        assert status["artifacts_pending"] == 0 and status["failed"] == len(cases)
        run.end()
        t.close()
