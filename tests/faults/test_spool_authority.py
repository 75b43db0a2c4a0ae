"""A spool file carries no authority its writer lacked, and costs the daemon bounded memory
(issue 17, items 2 and 7). The daemon runs as its own user; the attacker and the victim are two
other users of the daemon's group (tests/support/users.py), so an owner check can fail.

The attacker's spool is imported at once: the attacker's own client (a raw DEALER) says hello
and exits, and the daemon imports ``<spool_dir>/<its client id>.spool`` before judging its runs
(orphans.py) — the same import the 30 s spool scan makes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import store
from tests.support import users as accounts
from tests.support.daemon import Daemon, running_daemon
from tests.support.users import TestUser, TestUsers, as_user, run_python_as, shared_tmpdir
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

MB = 1024 * 1024

# A live client of the victim: 100 points, flush, report its ids, wait for a line on stdin,
# 100 more points, flush, end.
VICTIM = """
import json, sys, tracker_client
t = tracker_client.connect(sys.argv[1], offline=False)
run = t.start_run("victim")
for i in range(100):
    run.log_metric("k", float(i), step=i)
run.flush(timeout=60)
print(json.dumps({"client_id": t.client_id, "run_id": run.run_id}), flush=True)
sys.stdin.readline()
for i in range(100, 200):
    run.log_metric("k", float(i), step=i)
out = {}
try:
    run.flush(timeout=60)
    out["flush"] = "ok"
except Exception as exc:
    out["flush"] = repr(exc)
try:
    out["end"] = "ok" if run.end(timeout=60) else "not committed"
except Exception as exc:
    out["end"] = repr(exc)
print(json.dumps(out), flush=True)
t.close()
"""

# The attacker: a raw client says hello (the welcome names the daemon's spool dir), writes its
# own spool there holding ATTACK's records, and exits. argv: address, attack, victim client id.
ATTACKER = """
import json, os, sys, zmq
from pathlib import Path
from tracker_client import protocol as p
from tracker_client.wire.framing import HEADER, encode_frame
address, attack, victim = sys.argv[1:4]
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
s.setsockopt(zmq.LINGER, 0)
s.connect(address)
me = os.urandom(16).hex()
host = os.uname().nodename
s.send(p.encode(p.Hello(1, me, os.getpid(), host, "x", 0)))
assert s.poll(20000), "no welcome"
welcome = p.decode(s.recv())
path = Path(welcome.spool_dir) / f"{me}.spool"
with open(path, "wb") as f:
    if attack == "floor":  # one valid record: the victim's hello with a floor far ahead
        f.write(encode_frame(p.encode(p.Hello(0, victim, 1, host, "x", 10**12))))
    else:  # memory: nested arrays within 4 MiB, 16 M empty arrays (17 MB), a 200 MiB claim
        n = 16 * 1024 * 1024
        nested = b"\\xdc" + (4000).to_bytes(2, "big")
        nested += (b"\\xdc" + (1000).to_bytes(2, "big") + b"\\x90" * 1000) * 4000
        f.write(encode_frame(p.encode(p.Hello(0, me, os.getpid(), host, "x", 0))))
        f.write(encode_frame(nested))
        f.write(encode_frame(b"\\xdd" + n.to_bytes(4, "big") + b"\\x90" * n))
        f.write(HEADER.pack(200 * 1024 * 1024, 0))
        f.truncate(f.tell() + 200 * 1024 * 1024)  # sparse: the record is all there
os.chmod(path, 0o660)
print(json.dumps({"client_id": me, "path": str(path)}), flush=True)
"""

# The victim's own client with no daemon up: an offline run of 50 points, spooled at exit.
OFFLINE = """
import json, sys, tracker_client
t = tracker_client.connect(sys.argv[1])
run = t.start_run("own-offline", timeout=1.0)
for i in range(50):
    run.log_metric("k", float(i), step=i)
run.end()
print(json.dumps({"offline_id": run.run_id}), flush=True)
"""


def as_other(user: TestUser, code: str, *args: str) -> list[str]:
    return as_user(user, [sys.executable, "-c", code, *args])


def home_of(user: TestUser) -> Path:
    home = shared_tmpdir()
    os.chown(home, user.uid, user.gid)
    return home


def daemon_root(users: TestUsers) -> Path:
    """The daemon's root dir and state dir, its spool dir made as the daemon makes it (setgid,
    2770, the daemon's group) so that a client of the group can spool there before it runs."""
    root = shared_tmpdir()
    os.chown(root, users.daemon.uid, users.daemon.gid)
    spool = root / "state" / "spool"
    spool.mkdir(parents=True)
    for path, mode in ((spool.parent, 0o2750), (spool, 0o2770)):
        os.chown(path, users.daemon.uid, users.group_gid)
        path.chmod(mode)
    return root


def import_outcome(d: Daemon, path: str) -> str:
    """The log line of the daemon's import of ``path``, once there is one."""

    def line() -> str:
        for text in d.log().splitlines():
            if path in text and "event=spool_import" in text:  # _imported / _import_failed
                return text
        return ""

    return wait_for(line, 60, f"the daemon's import of {path}")


@pytest.mark.timeout(180)
def test_a_planted_spool_cannot_ack_away_a_live_clients_data() -> None:
    users = accounts.test_users()  # (imported by module: pytest would collect test_users)
    root = daemon_root(users)
    victim_home, attacker_home = home_of(users.victim), home_of(users.attacker)
    # the victim's own offline run, spooled into the daemon's spool dir while no daemon ran
    nowhere = f"ipc://{shared_tmpdir()}/none.sock"
    spool_dir = root / "state" / "spool"
    offline = run_python_as(
        users.victim,
        victim_home,
        OFFLINE,
        nowhere,
        extra={
            "TRACKER_SPOOL_DIR": str(spool_dir),
            "TRACKER_CONNECT_TIMEOUT": "1",
            "TRACKER_EXIT_TIMEOUT": "5",
        },
    )
    assert offline["offline_id"].startswith("offline-")
    (own_spool,) = spool_dir.glob("*.spool")
    assert own_spool.stat().st_uid == users.victim.uid

    with running_daemon(root, user=users.daemon) as d:
        # its own spool (owner: the victim, a client id never seen) still imports
        wait_for(lambda: d.status()["spools_imported"] == 1, 60, "the victim's own spool")
        assert not own_spool.exists()
        with subprocess.Popen(
            as_other(users.victim, VICTIM, d.address),
            env=users.victim.env(victim_home),
            cwd="/",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as victim:
            try:
                assert victim.stdout is not None and victim.stdin is not None
                ids = json.loads(victim.stdout.readline() or "{}")
                assert ids, victim.stderr.read() if victim.stderr else ""
                attack = run_python_as(
                    users.attacker, attacker_home, ATTACKER, d.address, "floor", ids["client_id"]
                )
                line = import_outcome(d, attack["path"])
                victim.stdin.write("go\n")
                victim.stdin.flush()
                result = json.loads(victim.stdout.readline() or "{}")
                victim.wait(60)
            finally:
                if victim.poll() is None:
                    victim.kill()
        status = d.status()
    assert result == {"flush": "ok", "end": "ok"}, result
    assert store.steps(d.backend_uri, ids["run_id"], "k") == list(range(200))  # 0 lost
    # the planted file is refused (left in place) and logged with its owner and the id
    assert "event=spool_import_failed" in line, line
    assert f"owner_uid={users.attacker.uid}" in line and ids["client_id"] in line, line
    assert f"belongs to uid {users.victim.uid}" in line, line
    assert Path(attack["path"]).exists()
    assert status["spools_imported"] == 1
    offline_run = store_run_by_offline_id(d, offline["offline_id"])
    assert store.steps(d.backend_uri, offline_run, "k") == list(range(50))


def store_run_by_offline_id(d: Daemon, offline_id: str) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(d.backend_uri)
    exp = client.get_experiment_by_name("own-offline")
    assert exp is not None
    (run,) = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`tracker.offline_id` = '{offline_id}'"
    )
    assert run.info.status == "FINISHED"
    return str(run.info.run_id)


def vm(pid: int, key: str) -> int:
    """``VmRSS`` / ``VmHWM`` of ``pid`` in bytes."""
    for text in Path(f"/proc/{pid}/status").read_text().splitlines():
        if text.startswith(key + ":"):
            return int(text.split()[1]) * 1024
    raise AssertionError(f"no {key} for pid {pid}")


@pytest.mark.timeout(180)
def test_a_spool_memory_bomb_is_refused_naming_the_limit() -> None:
    users = accounts.test_users()
    root = daemon_root(users)
    attacker_home = home_of(users.attacker)
    with running_daemon(root, user=users.daemon) as d:
        assert d.proc is not None
        pid = d.proc.pid  # setpriv execs the daemon
        warm = run_python_as(
            users.attacker, attacker_home, OFFLINE, d.address
        )  # the daemon at work
        assert not warm["offline_id"].startswith("offline-")
        time.sleep(0.5)
        before = vm(pid, "VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS from here on
        attack = run_python_as(users.attacker, attacker_home, ATTACKER, d.address, "memory", "-")
        line = import_outcome(d, attack["path"])
        peak = vm(pid, "VmHWM")
        # the daemon keeps serving: a good client's run lands
        again = run_python_as(users.attacker, attacker_home, OFFLINE, d.address)
        assert not again["offline_id"].startswith("offline-")
        log = d.log()
    print(f"daemon RSS before {before / MB:.0f} MB, peak during the import {peak / MB:.0f} MB")
    assert peak - before < 100 * MB, (before, peak)
    assert "event=spool_import_failed" in line, line
    assert "frame_too_complex" in log and "more than 1048576 msgpack values" in log, line
    assert f"is {16 * MB + 5} bytes; the limit is {4 * MB} bytes" in log, log[-3000:]
    assert f"is {200 * MB} bytes; the limit is {4 * MB} bytes" in log, log[-3000:]
    failed = [x for x in log.splitlines() if "event=spool_import_failed" in x]
    assert len(failed) == 1 and f"owner_uid={users.attacker.uid}" in failed[0], failed
    assert Path(attack["path"]).exists()  # refused, kept for whoever looks into it
