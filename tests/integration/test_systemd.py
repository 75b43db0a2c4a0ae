"""The systemd integration: unit files (verify, security score), the sysusers file, the default
config, `make install-systemd`, and the sd_notify protocol spoken by a real daemon process to a
real datagram socket standing in for systemd's $NOTIFY_SOCKET."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import tracker_client
from tests.support.daemon import REPO, daemon_command, daemon_env, short_tmpdir
from tests.support.prereq import require
from tests.support.store import sqlite_locked
from tests.support.waiting import wait_for
from tracker_daemon.config import ENV_PREFIX, Config, load_config

pytestmark = pytest.mark.integration

SYSTEMD_DIR = REPO / "systemd"
SYSTEM_UNIT = SYSTEMD_DIR / "tracker-daemon.service"
USER_UNIT = SYSTEMD_DIR / "user" / "tracker-daemon.service"
SYSUSERS = SYSTEMD_DIR / "tracker-daemon.sysusers"
CONFIG = SYSTEMD_DIR / "config.toml"
PLACEHOLDER_EXE = "/usr/local/bin/tracker-daemon"
MAX_EXPOSURE = 2.0


def _tool(name: str) -> str:
    """A systemd tool: skipped with the install command when missing, failed in CI."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    require(name, path is not None, "apt-get install -y --no-install-recommends systemd")
    assert path is not None
    return path


def _venv_exe() -> Path:
    exe = Path(sys.executable).parent / "tracker-daemon"
    assert os.access(exe, os.X_OK), f"{exe} missing: run `make setup`"
    return exe


def _run(
    cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, check=False, cwd=cwd, env=env
    )


def _directives(unit: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order (keys may repeat)."""
    out, section = [], ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def _values(unit: Path, key: str) -> list[str]:
    return [v for s, k, v in _directives(unit) if s == "Service" and k == key]


def _with_exe(unit: Path, dest_dir: Path, exe: Path) -> Path:
    """A copy of ``unit`` whose ExecStart= runs ``exe``, as `make install-systemd` writes it."""
    text = unit.read_text()
    assert f"ExecStart={PLACEHOLDER_EXE} " in text
    dest_dir.mkdir(parents=True, exist_ok=True)
    copy = dest_dir / unit.name
    copy.write_text(text.replace(f"ExecStart={PLACEHOLDER_EXE} ", f"ExecStart={exe} "))
    return copy


def _verify(unit: Path, *, user: bool, runtime_dir: Path) -> subprocess.CompletedProcess[str]:
    cmd = [_tool("systemd-analyze"), "verify", "--man=no", *(["--user"] if user else []), str(unit)]
    env = daemon_env({"XDG_RUNTIME_DIR": str(runtime_dir), "SYSTEMD_LOG_COLOR": "0"})
    return _run(cmd, env=env)


@pytest.fixture
def runtime_dir(tmp_path: Path) -> Path:
    d = tmp_path / "xdg-runtime"
    d.mkdir(mode=0o700)
    return d


# ---------------------------------------------------------------- unit files


@pytest.mark.timeout(60)
@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_units_verify_cleanly(tmp_path: Path, runtime_dir: Path, user: bool) -> None:
    unit = USER_UNIT if user else SYSTEM_UNIT
    # As installed (ExecStart= rewritten to a real tracker-daemon): not a single complaint.
    installed = _with_exe(unit, tmp_path / "installed", _venv_exe())
    res = _verify(installed, user=user, runtime_dir=runtime_dir)
    assert res.returncode == 0 and res.stderr == "" and res.stdout == "", res
    # As shipped: the only possible complaint is the placeholder path of the executable.
    res = _verify(unit, user=user, runtime_dir=runtime_dir)
    if os.access(PLACEHOLDER_EXE, os.X_OK):
        assert res.returncode == 0 and res.stderr == "", res
    else:
        assert res.stderr.splitlines() == [
            f"{unit.name}: Command {PLACEHOLDER_EXE} is not executable: No such file or directory"
        ], res


@pytest.mark.timeout(60)
def test_verify_would_report_a_broken_unit(tmp_path: Path, runtime_dir: Path) -> None:
    """The empty-stderr assertion above means something: a typo does produce output."""
    broken = _with_exe(SYSTEM_UNIT, tmp_path, _venv_exe())
    broken.write_text(broken.read_text().replace("ProtectClock=yes", "ProtectClok=yes"))
    res = _verify(broken, user=False, runtime_dir=runtime_dir)
    assert "Unknown key 'ProtectClok'" in res.stderr, res


@pytest.mark.timeout(60)
@pytest.mark.parametrize("unit", [SYSTEM_UNIT, USER_UNIT], ids=["system", "user"])
def test_units_use_the_notify_protocol_and_the_daemons_settings(unit: Path) -> None:
    user = unit == USER_UNIT
    assert _values(unit, "Type") == ["notify"]
    assert _values(unit, "NotifyAccess") == ["main"]
    assert _values(unit, "WatchdogSec") == ["30s"]
    assert _values(unit, "TimeoutStopSec") == ["90s"]
    assert _values(unit, "Restart") == ["on-failure"]
    assert _values(unit, "RuntimeDirectory") == ["tracker-daemon"]
    assert _values(unit, "ExecStart")[0].split()[:2] == [PLACEHOLDER_EXE, "run"]
    # Every TRACKER_DAEMON_* variable the unit sets is a setting the daemon reads; with %S/%t
    # expanded as systemd does, they name the directories systemd creates for the unit.
    runtime = "/run/user/1000" if user else "/run"
    env = {}
    for assignment in _values(unit, "Environment"):
        name, _, value = assignment.partition("=")
        env[name] = value.replace("%t", runtime).replace("%S", "/var/lib")
    settings = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    cfg = load_config(environ=settings)
    assert cfg.bind_address == f"ipc://{runtime}/tracker-daemon/tracker.sock"
    # Found by running both units under a real systemd 252: the daemon chmods staging/ and
    # spool/ to 2770, which RestrictSUIDSGID= turns into EPERM (no start), and libzmq aborts
    # when ~@resources denies pthread_setschedparam().
    assert not _values(unit, "RestrictSUIDSGID"), "the daemon sets the setgid bit on its dirs"
    assert not any("@resources" in v for v in _values(unit, "SystemCallFilter")), "libzmq"
    if user:
        # systemd 252 maps StateDirectory=/%S to ~/.config in user units: the daemon's own
        # default ($XDG_STATE_HOME/tracker-daemon) is used instead.
        assert set(settings) == {"TRACKER_DAEMON_ADDRESS"}
        assert not _values(unit, "StateDirectory")
    else:
        assert set(settings) == {"TRACKER_DAEMON_STATE_DIR", "TRACKER_DAEMON_ADDRESS"}
        assert cfg.state_path == Path("/var/lib/tracker-daemon")
        assert _values(unit, "StateDirectory") == ["tracker-daemon"]
        assert _values(unit, "User") == ["tracker-daemon"]
        assert _values(unit, "Group") == ["tracker"]
        assert _values(unit, "RuntimeDirectoryMode") == ["0750"]
        assert _values(unit, "StateDirectoryMode") == ["2770"]
        assert _values(unit, "UMask") == ["0007"]
        assert "--config /etc/tracker-daemon/config.toml" in _values(unit, "ExecStart")[0]


@pytest.mark.timeout(60)
def test_system_unit_security_exposure(tmp_path: Path) -> None:
    installed = _with_exe(SYSTEM_UNIT, tmp_path, _venv_exe())
    for unit in (SYSTEM_UNIT, installed):
        res = _run([_tool("systemd-analyze"), "security", "--offline=yes", str(unit)])
        m = re.search(
            r"Overall exposure level for tracker-daemon\.service: (\d+(?:\.\d+)?)", res.stdout
        )
        assert m, res
        exposure = float(m.group(1))
        assert exposure <= MAX_EXPOSURE, res.stdout


# ---------------------------------------------------------------- sysusers and config


@pytest.mark.timeout(60)
def test_sysusers_creates_user_and_group_idempotently(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    cmd = [_tool("systemd-sysusers"), f"--root={root}", str(SYSUSERS)]
    first = _run(cmd)
    assert first.returncode == 0 and "Failed" not in first.stderr, first
    files = {name: (root / "etc" / name).read_text() for name in ("passwd", "group")}
    second = _run(cmd)
    assert second.returncode == 0 and second.stderr == "", second
    assert files == {name: (root / "etc" / name).read_text() for name in ("passwd", "group")}
    users = {line.split(":")[0]: line.split(":") for line in files["passwd"].splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in files["group"].splitlines()}
    user = users["tracker-daemon"]
    assert int(user[2]) < 1000, "not a system user"
    assert user[6] == "/usr/sbin/nologin"
    assert int(groups["tracker"][2]) < 1000
    assert groups["tracker"][3].split(",") == ["tracker-daemon"]


@pytest.mark.timeout(60)
def test_default_config_lists_every_key_at_its_default(tmp_path: Path) -> None:
    text = CONFIG.read_text()
    commented = dict(re.findall(r"^#([a-z_]+) = (.*)$", text, re.MULTILINE))
    fields = [f.name for f in dataclasses.fields(Config)]
    assert sorted(commented) == sorted(fields)
    # Uncommented, the file sets every key to exactly the built-in default.
    uncommented = tmp_path / "config.toml"
    uncommented.write_text(re.sub(r"^#([a-z_]+ = )", r"\1", text, flags=re.MULTILINE))
    assert len(tomllib.loads(uncommented.read_text())) == len(fields)
    assert load_config(config_file=str(uncommented), environ={}) == Config()
    for path in (CONFIG, uncommented):
        res = _run([str(_venv_exe()), "check-config", "--config", str(path)], env=daemon_env())
        assert res.returncode == 0, res
        assert 'durability = "fsync"' in res.stdout


# ---------------------------------------------------------------- make install-systemd


@pytest.mark.timeout(120)
def test_make_install_systemd_into_destdir_is_idempotent(tmp_path: Path, runtime_dir: Path) -> None:
    dest = tmp_path / "dest"
    make = [
        shutil.which("make") or "make",
        "-s",
        "--no-print-directory",
        "install-systemd",
        f"DESTDIR={dest}",
    ]
    env = {k: v for k, v in daemon_env().items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    first = _run(make, cwd=REPO, env=env)
    assert first.returncode == 0, first
    unit = dest / "etc/systemd/system/tracker-daemon.service"
    sysusers = dest / "etc/sysusers.d/tracker-daemon.conf"
    config = dest / "etc/tracker-daemon/config.toml"
    exe = (REPO / ".venv/bin/tracker-daemon").resolve()
    assert _values(unit, "ExecStart") == [f"{exe} run --config /etc/tracker-daemon/config.toml"]
    assert unit.read_text() == SYSTEM_UNIT.read_text().replace(
        f"ExecStart={PLACEHOLDER_EXE} ", f"ExecStart={exe} "
    )
    assert sysusers.read_text() == SYSUSERS.read_text()
    assert config.read_text() == CONFIG.read_text()
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert "systemctl enable --now tracker-daemon" in first.stdout
    assert "journalctl -u tracker-daemon" in first.stdout
    res = _verify(unit, user=False, runtime_dir=runtime_dir)
    assert res.returncode == 0 and res.stderr == "", res

    # Again, with a locally edited config: same files, the admin's config is kept.
    config.write_text('log_level = "DEBUG"\n')
    before = sorted(p.relative_to(dest) for p in dest.rglob("*"))
    second = _run(make, cwd=REPO, env=env)
    assert second.returncode == 0, second
    assert sorted(p.relative_to(dest) for p in dest.rglob("*")) == before
    assert unit.read_text() == SYSTEM_UNIT.read_text().replace(
        f"ExecStart={PLACEHOLDER_EXE} ", f"ExecStart={exe} "
    )
    assert config.read_text() == 'log_level = "DEBUG"\n'
    assert "kept existing" in second.stdout


# ---------------------------------------------------------------- sd_notify protocol


@dataclass
class Datagram:
    at: float  # time.monotonic() when received
    pid: int  # sender, from SCM_CREDENTIALS (what systemd checks for NotifyAccess=main)
    fields: list[str]

    def get(self, key: str) -> str | None:
        for f in self.fields:
            name, _, value = f.partition("=")
            if name == key:
                return value
        return None


@dataclass
class NotifyListener:
    """An AF_UNIX datagram socket standing in for systemd's notification socket."""

    sock: socket.socket
    env_value: str
    received: list[Datagram] = field(default_factory=list)

    def recv(self, deadline: float, proc: subprocess.Popen[bytes], log: Path) -> Datagram:
        """The next datagram; fail at ``deadline`` or as soon as the daemon dies."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no sd_notify datagram in time:\n{_tail(log)}")
            self.sock.settimeout(min(remaining, 0.5))
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                if proc.poll() is not None:
                    raise AssertionError(
                        f"daemon exited {proc.returncode} while waiting:\n{_tail(log)}"
                    ) from None
                continue
            pid = -1
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:12])[0]
            dgram = Datagram(time.monotonic(), pid, data.decode().split("\n"))
            self.received.append(dgram)
            return dgram

    def drain(self) -> None:
        """Collect what is already queued (after the sender exited)."""
        self.sock.setblocking(False)
        try:
            while True:
                data = self.sock.recv(4096)
                self.received.append(Datagram(time.monotonic(), -1, data.decode().split("\n")))
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)

    def wait_for(
        self, key: str, timeout: float, proc: subprocess.Popen[bytes], log: Path
    ) -> Datagram:
        deadline = time.monotonic() + timeout
        while True:
            dgram = self.recv(deadline, proc, log)
            if dgram.get(key) is not None:
                return dgram


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"


@contextmanager
def notify_listener(abstract: bool) -> Iterator[NotifyListener]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock_dir = short_tmpdir()
    try:
        if abstract:
            name = f"tracker-daemon-test/{os.getpid()}/{sock_dir.name}"
            sock.bind("\0" + name)
            env_value = "@" + name
        else:
            path = sock_dir / "notify"
            sock.bind(str(path))
            env_value = str(path)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        yield NotifyListener(sock, env_value)
    finally:
        sock.close()
        shutil.rmtree(sock_dir, ignore_errors=True)


def _start_daemon(
    tmp_path: Path, address: str, notify_socket: str, log: Path, **settings: str
) -> subprocess.Popen[bytes]:
    env = daemon_env({"NOTIFY_SOCKET": notify_socket, "WATCHDOG_USEC": "400000", **settings})
    # WATCHDOG_PID would have to be the daemon's own pid, unknown before Popen: leave it out
    # (sd_notify semantics: no WATCHDOG_PID means the watchdog is meant for this process).
    env.pop("WATCHDOG_PID", None)
    cmd = daemon_command(tmp_path / "state", address)
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=REPO
        )


def _status(address: str) -> dict[str, Any]:
    t = tracker_client.Tracker(address)
    try:
        status: dict[str, Any] = t.status(timeout=10.0)
        return status
    finally:
        t._transport.close(1.0)


def _notify_protocol(tmp_path: Path, abstract: bool) -> None:
    sock_dir = short_tmpdir()
    ipc = sock_dir / "d.sock"
    address = f"ipc://{ipc}"
    log = tmp_path / "daemon.log"
    with notify_listener(abstract) as listener:
        started = time.monotonic()
        proc = _start_daemon(tmp_path, address, listener.env_value, log)
        try:
            # READY=1 is the first datagram, sent once the socket is bound.
            ready = listener.recv(time.monotonic() + 90, proc, log)
            print(f"\nREADY=1 {ready.at - started:.2f} s after start: {ready.fields}")
            socket_bound = ipc.exists() and stat.S_ISSOCK(ipc.stat().st_mode)
            assert ready.get("READY") == "1", ready
            assert socket_bound, "READY=1 arrived before the ipc socket was bound"
            assert stat.S_IMODE(ipc.stat().st_mode) == 0o660
            assert ready.get("MAINPID") == str(proc.pid)
            assert ready.pid == proc.pid
            assert re.search(r"received=\d+ committed=\d+", ready.get("STATUS") or ""), ready
            assert _status(address)["pid"] == proc.pid

            # WATCHDOG=1 at half of WATCHDOG_USEC (400 ms): every ~200 ms.
            pings: list[float] = []
            deadline = time.monotonic() + 30
            while len(pings) < 11:
                dgram = listener.recv(deadline, proc, log)
                if dgram.get("WATCHDOG") == "1":
                    pings.append(dgram.at)
            gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
            mean = sum(gaps) / len(gaps)
            print(f"watchdog gaps (ms): {[round(g * 1000) for g in gaps]} mean {mean * 1000:.0f}")
            assert 0.1 <= mean <= 0.4, gaps

            # STATUS= lines carry live counters: log records, see them committed.
            tracker = tracker_client.connect(address)
            try:
                with tracker.start_run("systemd-notify", run_name="status") as run:
                    for step in range(50):
                        run.log_metric("loss", 1.0 / (step + 1), step=step)
            finally:
                tracker.close()
            deadline = time.monotonic() + 20
            while True:
                dgram = listener.recv(deadline, proc, log)
                line = dgram.get("STATUS")
                m = re.search(r"committed=(\d+)", line or "")
                if m and int(m.group(1)) >= 50:
                    break
            counters = dict(kv.split("=", 1) for kv in (line or "").split())
            assert counters["received"] == counters["committed"] == "50", line
            assert counters["failed"] == counters["queue"] == counters["open_runs"] == "0", line
            assert int(counters["clients"]) >= 1 and int(counters["journal_bytes"]) > 0, line

            # SIGTERM: STOPPING=1, then a clean exit.
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            stopping = listener.wait_for("STOPPING", 30, proc, log)
            print(f"STOPPING=1 {1000 * (stopping.at - sent):.0f} ms after SIGTERM: {stopping}")
            assert stopping.get("STOPPING") == "1"
            assert proc.wait(60) == 0, _tail(log)
            print(f"exit 0 {time.monotonic() - sent:.2f} s after SIGTERM")
            assert all(d.pid == proc.pid for d in listener.received), "sent by another process"
            assert [d for d in listener.received if d.get("READY")] == [ready]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            shutil.rmtree(sock_dir, ignore_errors=True)


@pytest.mark.timeout(180)
def test_notify_protocol_over_a_filesystem_socket(tmp_path: Path) -> None:
    _notify_protocol(tmp_path, abstract=False)


@pytest.mark.timeout(180)
def test_notify_protocol_over_an_abstract_socket(tmp_path: Path) -> None:
    _notify_protocol(tmp_path, abstract=True)


@pytest.mark.timeout(180)
# support/store.py sqlite_locked() leaves its lock process's pipes open (ResourceWarning at GC)
@pytest.mark.filterwarnings("ignore:unclosed file <_io.Buffered:ResourceWarning")
def test_draining_on_sigterm_extends_the_stop_timeout(tmp_path: Path) -> None:
    """A drain that cannot finish at once (the backend is locked) keeps sending
    EXTEND_TIMEOUT_USEC after STOPPING=1, so TimeoutStopSec= does not cut it short."""
    sock_dir = short_tmpdir()
    address = f"ipc://{sock_dir / 'd.sock'}"
    log = tmp_path / "daemon.log"
    drain_s = 20
    with notify_listener(abstract=False) as listener:
        proc = _start_daemon(
            tmp_path,
            address,
            listener.env_value,
            log,
            TRACKER_DAEMON_DRAIN_TIMEOUT_S=str(drain_s),
        )
        tracker = None
        try:
            listener.wait_for("READY", 90, proc, log)
            tracker = tracker_client.connect(address)
            run = tracker.start_run("systemd-drain", run_name="stuck")
            with sqlite_locked(tmp_path / "state" / "mlflow.db"):
                for step in range(100):
                    run.log_metric("loss", float(step), step=step)
                wait_for(
                    lambda: (s := _status(address))["received"] == 100 and s["committed"] == 0,
                    30,
                    "100 records received and not committed (backend locked)",
                )
                sent = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                stopping = listener.wait_for("STOPPING", 30, proc, log)
                extends = [listener.wait_for("EXTEND_TIMEOUT_USEC", 10, proc, log)]
                extends.append(listener.wait_for("EXTEND_TIMEOUT_USEC", 10, proc, log))
                assert proc.poll() is None, "exited while the backend was locked"
            # lock released: the drain commits the backlog and the daemon exits 0
            assert proc.wait(60) == 0, _tail(log)
            took = time.monotonic() - sent
            listener.drain()
            usecs = [int(d.get("EXTEND_TIMEOUT_USEC") or 0) for d in extends]
            n_extends = sum(1 for d in listener.received if d.get("EXTEND_TIMEOUT_USEC"))
            print(
                f"\nSTOPPING=1 {1000 * (stopping.at - sent):.0f} ms after SIGTERM; "
                f"EXTEND_TIMEOUT_USEC={usecs} {1000 * (extends[1].at - extends[0].at):.0f} ms "
                f"apart, {n_extends} in all; exit 0 after {took:.2f} s"
            )
            assert stopping.at < extends[0].at
            assert all(5_000_000 <= u <= (drain_s + 5) * 1_000_000 for u in usecs), usecs
            assert "event=drain_incomplete" not in log.read_text()
        finally:
            if tracker is not None:
                tracker.close(timeout=2.0)
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            shutil.rmtree(sock_dir, ignore_errors=True)
