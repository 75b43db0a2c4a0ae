"""The client id of an exited process goes only to a process of the same uid.

Before, once the process bound to a client id had exited, any live client — of any uid — could
claim the id, and its ``hello`` moved the id's acked floor: a group member who read a victim's id
(the staging and spool file names hold it) could say ``hello{client_id: victim, acked_floor:
10**12}`` after the victim exited, and the frames the victim's spool still held were then dropped
as duplicates when the spool was imported (100 of 200 points lost), with no spool planting at all.
Now the attacker (another uid) is refused ``client_id_in_use`` naming the reason, and the victim's
spool imports every point.

The daemon runs as its own user; victim and attacker are two other users of its group."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import store
from tests.support import users as accounts
from tests.support.daemon import running_daemon
from tests.support.users import run_python_as, shared_tmpdir
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

CLIENT = """
import json, os, sys, time, zmq
from tracker_client import protocol as p
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
s.setsockopt(zmq.LINGER, 0)
s.connect(sys.argv[1])
host = os.uname().nodename

def reply(kinds):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if s.poll(1000):
            msg = p.decode(s.recv())
            if isinstance(msg, kinds):
                return msg
    raise SystemExit(f"no {kinds} within 30 s")
"""

# The victim's first process: binds a client id, starts a run, logs points 0..99 (acked), and
# exits — as a process whose next 100 points are still in its spool.
VICTIM = (
    CLIENT
    + """
me = os.urandom(16).hex()
s.send(p.encode(p.Hello(1, me, os.getpid(), host, "x", 0)))
reply(p.Welcome)
s.send(p.encode(p.StartRun(2, me, experiment_name="takeover")))
run = reply(p.RunStarted)
now = int(time.time() * 1000)
s.send(p.encode_data(me, 1, [p.metric_wire(run.run_id, "k", float(i), now, i) for i in range(100)]))
assert reply(p.Ack).seq == 1
print(json.dumps({"client_id": me, "run_id": run.run_id}), flush=True)
"""
)

# The attacker (another uid): hello with the victim's id and a floor far ahead.
ATTACKER = (
    CLIENT
    + """
s.send(p.encode(p.Hello(1, sys.argv[2], os.getpid(), host, "x", 10**12)))
msg = reply((p.Welcome, p.ErrorReply))
out = {"kind": type(msg).__name__}
if isinstance(msg, p.ErrorReply):
    out.update(code=msg.code, message=msg.message)
print(json.dumps(out), flush=True)
"""
)

# The victim's spool of its first process's unacked frames (seq 2: points 100..199), handed to
# the daemon by a second process of the victim: its own spool file, imported when it exits.
SPOOL = (
    CLIENT
    + """
from pathlib import Path
from tracker_client.wire.framing import encode_frame
victim, run_id = sys.argv[2:4]
me = os.urandom(16).hex()
s.send(p.encode(p.Hello(1, me, os.getpid(), host, "x", 0)))
path = Path(reply(p.Welcome).spool_dir) / f"{me}.spool"
now = int(time.time() * 1000)
points = [p.metric_wire(run_id, "k", float(i), now, i) for i in range(100, 200)]
with open(path, "wb") as f:
    f.write(encode_frame(p.encode(p.Hello(0, victim, os.getpid(), host, "x", 1))))
    f.write(encode_frame(p.encode_data(victim, 2, points)))
os.chmod(path, 0o660)
print(json.dumps({"path": str(path)}), flush=True)
"""
)


@pytest.mark.timeout(180)
def test_an_exited_clients_id_is_refused_to_another_uid_and_its_spool_loses_nothing() -> None:
    users = accounts.test_users()
    root = shared_tmpdir()
    os.chown(root, users.daemon.uid, users.daemon.gid)
    homes: dict[int, Path] = {}
    for user in (users.victim, users.attacker):
        homes[user.uid] = shared_tmpdir()
        os.chown(homes[user.uid], user.uid, user.gid)
    with running_daemon(root, user=users.daemon) as d:
        victim = run_python_as(users.victim, homes[users.victim.uid], VICTIM, d.address)
        cid, run_id = victim["client_id"], victim["run_id"]
        wait_for(  # the daemon saw the victim's process exit: the id is released
            lambda: all(not str(c["client_id"]).startswith(cid[:8]) for c in d.status()["clients"]),
            30,
            "the victim's exit",
        )
        attack = run_python_as(users.attacker, homes[users.attacker.uid], ATTACKER, d.address, cid)
        # the victim's own uid may still take its id over: its spool imports
        spool = run_python_as(users.victim, homes[users.victim.uid], SPOOL, d.address, cid, run_id)

        def imported() -> str:
            lines = [x for x in d.log().splitlines() if spool["path"] in x and "event=spool_" in x]
            return lines[0] if lines else ""

        line = wait_for(imported, 90, "the victim's spool import")
        steps = wait_for(
            lambda: s if len(s := store.steps(d.backend_uri, run_id, "k")) >= 200 else None,
            30,
            "the spooled points in the store",
        )
        status = d.status()
    assert attack["kind"] == "ErrorReply", attack
    assert attack["code"] == "client_id_in_use", attack
    assert f"process of uid {users.victim.uid} that has exited" in attack["message"], attack
    assert f"this connection is uid {users.attacker.uid}" in attack["message"], attack
    assert "event=spool_imported" in line, line
    assert steps == list(range(200))  # 0 lost
    assert status["client_id_in_use"] >= 1
