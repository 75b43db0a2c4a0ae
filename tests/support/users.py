"""Other uids for owner checks: as root, an owner check cannot fail, so tests that prove one run
the attacker (and, where it matters, the daemon) as real, distinct users.

:func:`test_users` makes (once, idempotently) a group standing for the daemon's group
(``tracker`` under the systemd unit) and three system users: ``daemon`` (the daemon's own user,
primary group the test group), ``attacker`` and ``victim`` (members of the group, each with a
primary group of its own, as ordinary users added with ``usermod -aG tracker``). Commands run as
one of them through util-linux ``setpriv`` (:func:`as_user`), with that user's groups.

These tests need root (CI runs as root) and an interpreter the other users can execute; when
either is missing, :func:`test_users` skips the calling test and says which (root, setpriv,
useradd or groupadd missing with ``CI=true``: fails, tests/support/prereq.py). Files the users
share live in :func:`shared_tmpdir` (mode 0755 under /tmp: pytest's own tmp_path is 0700 root).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.prereq import require

__all__ = ["TestUser", "TestUsers", "as_user", "run_python_as", "shared_tmpdir", "test_users"]

GROUP = "trkd-test"
NAMES = {"daemon": "trkd-daemon", "attacker": "trkd-attacker", "victim": "trkd-victim"}


@dataclass(frozen=True, slots=True)
class TestUser:
    __test__ = False  # not a pytest test class
    name: str
    uid: int
    gid: int  # primary group

    def env(self, home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
        """An environment for a process of this user: its own HOME and client spool dir (under
        ``home``, which must be writable by it), nothing of the test process's private dirs."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
        env.pop("PYTEST_CURRENT_TEST", None)
        env.pop("MLFLOW_TRACKING_URI", None)
        env.update(
            HOME=str(home),
            USER=self.name,
            LOGNAME=self.name,
            TRACKER_SPOOL_DIR=str(home / "spool"),
            PYTHONDONTWRITEBYTECODE="1",
        )
        env.update(extra or {})
        return env


@dataclass(frozen=True, slots=True)
class TestUsers:
    __test__ = False
    group_gid: int
    daemon: TestUser
    attacker: TestUser
    victim: TestUser


def as_user(user: TestUser, cmd: list[str]) -> list[str]:
    """``cmd`` run as ``user`` with its real, effective and saved ids and its groups."""
    return [
        "setpriv",
        f"--reuid={user.uid}",
        f"--regid={user.gid}",
        "--init-groups",
        "--",
        *cmd,
    ]


def shared_tmpdir(prefix: str = "td-users-") -> Path:
    """A fresh directory the test users can traverse and read (0755, owned by root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def _run(*cmd: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if res.returncode not in (0, 9):  # 9: already exists (groupadd/useradd), raced by a worker
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")


def _user(name: str, *, primary: str, extra_group: str | None) -> TestUser:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        args = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
        if primary == name:
            args += ["--user-group"]
        else:
            args += ["--gid", primary]
        if extra_group:
            args += ["--groups", extra_group]
        _run(*args, name)
        entry = pwd.getpwnam(name)
    return TestUser(name, entry.pw_uid, entry.pw_gid)


def test_users() -> TestUsers:
    """The group and users (made on first use); skips without root, setpriv or an interpreter
    the users can run."""
    require("root", os.geteuid() == 0, "owner checks need distinct uids: run as root (CI does)")
    for tool in ("setpriv", "useradd", "groupadd"):
        require(
            tool,
            shutil.which(tool) is not None,
            f"{tool} (util-linux / passwd) is not installed: "
            "apt-get install -y --no-install-recommends util-linux passwd",
        )
    try:
        group_gid = grp.getgrnam(GROUP).gr_gid
    except KeyError:
        _run("groupadd", "--system", GROUP)
        group_gid = grp.getgrnam(GROUP).gr_gid
    users = TestUsers(
        group_gid,
        daemon=_user(NAMES["daemon"], primary=GROUP, extra_group=None),
        attacker=_user(NAMES["attacker"], primary=NAMES["attacker"], extra_group=GROUP),
        victim=_user(NAMES["victim"], primary=NAMES["victim"], extra_group=GROUP),
    )
    probe = subprocess.run(
        as_user(users.attacker, [sys.executable, "-c", "import tracker_client, zmq"]),
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    if probe.returncode != 0:
        pytest.skip(
            f"user {users.attacker.name} cannot run this interpreter and the client "
            f"({sys.executable}): {probe.stderr.strip()[-300:]}"
        )
    return users


def run_python_as(
    user: TestUser,
    home: Path,
    code: str,
    *args: str,
    extra: dict[str, str] | None = None,
    timeout: float = 90,
) -> Any:
    """Run ``python -c code args`` as ``user`` (HOME ``home``, from ``/``) and return the JSON
    document its last line of output holds; fails the test with its stderr if it exits non-zero."""
    res = subprocess.run(
        as_user(user, [sys.executable, "-c", code, *args]),
        env=user.env(home, extra),
        cwd="/",
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])
