"""The destination side of artifact uploads against a hostile group member: the daemon writes
artifacts only below its artifact roots, walking them by fd without following a link, and bad
names get a clear refusal. The daemon runs as its own user and the attacker as another uid (in
the daemon's group), with a real SQLite store and real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

import tracker_client
from tests.faults.test_artifact_attacks import failures_of, run_files
from tests.support import users as test_accounts
from tests.support.daemon import Daemon, daemon_env, running_daemon
from tests.support.users import TestUsers, as_user, run_python_as, shared_tmpdir

pytestmark = pytest.mark.integration

CANARY = b"the daemon's own file: nobody else may change it\n"

# The attacker's program: start a run (with or without an experiment location), plant a link in
# the run's artifact directory pointing at the daemon's private dir, log canary.txt, report.
ATTACK = r"""
import json, os, sys
import tracker_client

address, plan = sys.argv[1], json.loads(sys.argv[2])
out = {"start_error": None, "failures": [], "run_id": None}
t = tracker_client.connect(address)
try:
    run = t.start_run(experiment_id=plan.get("experiment_id"), **plan["start"])
except tracker_client.TrackerError as exc:
    out["start_error"] = f"{type(exc).__name__}: {exc}"
else:
    out["run_id"] = run.run_id
    art = plan["uri_dir"].replace("{run_id}", run.run_id)
    os.makedirs(os.path.dirname(art), exist_ok=True)
    os.symlink(plan["target"], art)
    src = os.path.join(os.environ["HOME"], "canary.txt")
    with open(src, "w") as fh:
        fh.write("overwritten by the attacker\n")
    run.log_artifact(src)
    try:
        run.flush(timeout=60)
    except tracker_client.CommitError as exc:
        out["failures"] = [f"{f.code}: {f.message}" for f in exc.failures]
    run.end()
t.close()
print(json.dumps(out))
"""


@contextmanager
def daemon_as_its_user(users: TestUsers, *args: str) -> Iterator[tuple[Daemon, Path]]:
    """The daemon as its own user, its artifact root group-writable (2770: as the systemd
    unit's UMask=0007 leaves the directories it creates), and a 0700 dir of the daemon user
    holding a 0600 canary file: what a link must never let an upload reach."""
    root = shared_tmpdir()
    os.chown(root, users.daemon.uid, users.daemon.gid)
    artifacts = root / "state" / "artifacts"
    artifacts.mkdir(parents=True)
    for path in (root / "state", artifacts):
        os.chown(path, users.daemon.uid, users.group_gid)
        path.chmod(0o2770)
    private = root / "private"
    private.mkdir(mode=0o700)
    (private / "canary.txt").write_bytes(CANARY)
    (private / "canary.txt").chmod(0o600)
    for path in (private, private / "canary.txt"):
        os.chown(path, users.daemon.uid, users.daemon.gid)
    with running_daemon(root, *args, user=users.daemon) as d:
        yield d, private


def attack(users: TestUsers, d: Daemon, plan: dict[str, Any]) -> dict[str, Any]:
    home = shared_tmpdir("td-attacker-")
    os.chown(home, users.attacker.uid, users.attacker.gid)
    result: dict[str, Any] = run_python_as(
        users.attacker, home, ATTACK, d.address, json.dumps(plan)
    )
    return result


def attacker_dir(users: TestUsers) -> Path:
    loc = shared_tmpdir("td-attacker-loc-")
    os.chown(loc, users.attacker.uid, users.attacker.gid)
    return loc


def untouched(private: Path) -> None:
    assert (private / "canary.txt").read_bytes() == CANARY
    assert sorted(p.name for p in private.iterdir()) == ["canary.txt"]


# ------------------------------------------------------------------ a location of the attacker's


@pytest.mark.timeout(120)
def test_a_location_outside_the_roots_is_refused_at_start_run() -> None:
    users = test_accounts.test_users()
    with daemon_as_its_user(users) as (d, private):
        loc = attacker_dir(users)
        plan = {
            "start": {"experiment": "evil", "artifact_location": str(loc)},
            "uri_dir": f"{loc}/{{run_id}}/artifacts",
            "target": str(private),
        }
        out = attack(users, d, plan)
        untouched(private)
        assert out["run_id"] is None, out
        error = out["start_error"]
        assert "INVALID_PARAMETER_VALUE" in error, error
        assert f"start_run.artifact_location {str(loc)!r} is refused" in error
        assert "artifact_roots" in error and str(d.state_dir / "artifacts") in error
        assert MlflowClient(tracking_uri=d.backend_uri).get_experiment_by_name("evil") is None


@pytest.mark.timeout(120)
def test_an_existing_experiment_outside_the_roots_gets_no_upload() -> None:
    """An experiment created directly in MLflow with the attacker's dir as its location: the
    run's artifact URI is checked at upload time, so the link planted there is never reached."""
    users = test_accounts.test_users()
    with daemon_as_its_user(users) as (d, private):
        loc = attacker_dir(users)
        code = (
            "import sys; from mlflow import MlflowClient; "
            "print(MlflowClient(tracking_uri=sys.argv[1]).create_experiment("
            "'made-in-mlflow', artifact_location=sys.argv[2]))"
        )
        made = subprocess.run(
            as_user(users.daemon, [sys.executable, "-c", code, d.backend_uri, str(loc)]),
            env=users.daemon.env(d.state_dir),
            cwd="/",
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert made.returncode == 0, made.stderr[-2000:]
        exp_id = made.stdout.strip().splitlines()[-1]
        plan = {
            "experiment_id": exp_id,
            "start": {"run_name": "planted"},
            "uri_dir": f"{loc}/{{run_id}}/artifacts",
            "target": str(private),
        }
        out = attack(users, d, plan)
        untouched(private)
        assert out["start_error"] is None, out
        assert len(out["failures"]) == 1, out
        failure = out["failures"][0]
        assert failure.startswith(
            "INVALID_PARAMETER_VALUE: artifact 'canary.txt': the run's artifact location "
        ), failure
        assert "is refused: it is outside the daemon's local artifact roots" in failure
        assert "artifact_roots" in failure


# ------------------------------------------------------------------ a link inside the root


@pytest.mark.timeout(120)
def test_a_link_planted_inside_the_root_is_not_followed() -> None:
    """The root is group-writable (as under the systemd unit): the attacker plants
    ``<root>/0/<run_id>/artifacts`` as a link to the daemon's private dir. The upload is
    refused naming the link; the canary is untouched."""
    users = test_accounts.test_users()
    with daemon_as_its_user(users) as (d, private):
        root = d.state_dir / "artifacts"
        plan = {
            "experiment_id": "0",
            "start": {"run_name": "inside"},
            "uri_dir": f"{root}/0/{{run_id}}/artifacts",
            "target": str(private),
        }
        out = attack(users, d, plan)
        untouched(private)
        assert out["start_error"] is None, out
        assert len(out["failures"]) == 1, out
        run_dir = f"{root}/0/{out['run_id']}/artifacts"
        assert out["failures"][0] == (
            f"INVALID_PARAMETER_VALUE: artifact 'canary.txt': {run_dir!r} is a symbolic link or "
            "not a directory: the daemon follows no link below its artifact roots"
        )
        assert d.status()["failed"] == 1

        # an ordinary client still lands its artifacts, nested paths and directories included
        t = tracker_client.connect(d.address)
        run = t.start_run("ordinary", run_name="fine")
        src = d.state_dir.parent / "weights.txt"
        src.write_text("weights")
        tree = d.state_dir.parent / "tree"
        (tree / "sub").mkdir(parents=True)
        (tree / "top.txt").write_text("top")
        (tree / "sub" / "deep.txt").write_text("deep")
        run.log_artifact(src, "a/b/c")
        run.log_artifact(src)
        run.log_artifacts(tree, "snap")
        assert failures_of(run) == []
        assert run_files(d, run.run_id) == {
            "a/b/c/weights.txt": b"weights",
            "weights.txt": b"weights",
            "snap/top.txt": b"top",
            "snap/sub/deep.txt": b"deep",
        }
        run.end()
        t.close()
    untouched(private)


# ------------------------------------------------------------------ names too long (item 9)


@pytest.mark.timeout(120)
def test_a_name_or_path_too_long_is_refused_naming_the_limit(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        t = tracker_client.connect(d.address)
        run = t.start_run("long-names", run_name="long")
        src = tmp_path / "x.txt"
        src.write_text("x")
        long_name = "L" * 300
        deep = "/".join(["d"] * 2100)
        run.log_artifact(src, long_name)
        run.log_artifact(src, deep)
        run.log_artifact(src, "fine")
        failures = failures_of(run)
        assert len(failures) == 2, failures
        assert failures[0].startswith(
            f"INVALID_PARAMETER_VALUE: artifact '{long_name[:200]}': the name 'LLLL"
        ), failures[0]
        assert (
            "is 300 bytes long: the limit is 255 bytes per file or directory name" in (failures[0])
        )
        assert "NAME_MAX" in failures[0]
        assert failures[1].startswith(f"INVALID_PARAMETER_VALUE: artifact '{deep[:200]}': ")
        assert "the limit is 4095 bytes (PATH_MAX 4096" in failures[1], failures[1]
        assert run_files(d, run.run_id) == {"fine/x.txt": b"x"}
        assert d.proc is not None and d.proc.poll() is None
        run.end()
        t.close()


# ------------------------------------------------------------------ the plugin's create_experiment

PLUGIN_CREATE = r"""
import sys
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

client = MlflowClient()
try:
    client.create_experiment("outside", artifact_location=sys.argv[1])
except MlflowException as exc:
    print("refused", exc.error_code, exc.message)
print("created", client.create_experiment("inside", artifact_location=sys.argv[2]))
"""


@pytest.mark.timeout(120)
def test_the_plugins_create_experiment_outside_the_roots_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    with running_daemon(tmp_path) as d:
        inside = d.state_dir / "artifacts" / "team-a"
        res = subprocess.run(
            [sys.executable, "-c", PLUGIN_CREATE, str(outside), str(inside)],
            env=daemon_env(
                {"MLFLOW_TRACKING_URI": "tracker://" + d.address.removeprefix("ipc://")}
            ),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        lines = res.stdout.strip().splitlines()
        assert lines[0].startswith(
            f"refused INVALID_PARAMETER_VALUE create_experiment.artifact_location {str(outside)!r}"
            " is refused: it is outside the daemon's local artifact roots (artifact_roots = "
        ), lines
        assert lines[1].startswith("created ")
        store = MlflowClient(tracking_uri=d.backend_uri)
        assert store.get_experiment_by_name("outside") is None
        made = store.get_experiment_by_name("inside")
        assert made is not None and made.artifact_location == str(inside)
