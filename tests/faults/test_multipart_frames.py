"""Messages of several ZeroMQ frames (the protocol is one frame per message; server.py reads the
socket without waiting, a message's frames at a time): each one gets one ``bad_envelope`` error
reply, whatever the number of frames, the next message is read whole and on its own, and a real
client's points all land meanwhile."""

from __future__ import annotations

from pathlib import Path

import pytest

import tracker_client
from tests.support.daemon import running_daemon
from tests.support.net import raw_dealer, recv_reply
from tests.support.waiting import wait_for
from tracker_client import protocol as p

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_multipart_messages_are_refused_one_reply_each_and_the_next_message_is_whole(
    tmp_path: Path,
) -> None:
    with running_daemon(tmp_path) as d:
        tracker = tracker_client.connect(d.address, policy="block", offline=False)
        try:
            run = tracker.start_run("beside-multipart")
            with raw_dealer(d.address) as sock:
                for parts in (2, 3, 50):
                    sock.send_multipart([b"x"] * parts)
                    reply = recv_reply(sock, f"a message of {parts} frames")
                    assert isinstance(reply, p.ErrorReply), reply
                    assert reply.code == "bad_envelope" and "one frame" in reply.message
                # a message of one frame right after: read on its own, answered
                sock.send(p.encode(p.StatusRequest(7)))
                status = recv_reply(sock, "status after the multipart messages")
                assert isinstance(status, p.StatusReply) and status.req == 7
            for i in range(500):
                run.log_metric("loss", i * 0.5, i)
            run.flush()
            wait_for(lambda: d.status()["committed"] >= 500, timeout=30, what="committed")
            assert d.status()["rejected_frames"] == 3
            run.end()
        finally:
            tracker.close(5)
        assert d.proc is not None and d.proc.poll() is None
