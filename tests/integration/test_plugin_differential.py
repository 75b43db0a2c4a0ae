"""Differential test of the whole drop-in path: one seeded workload through an unmodified
``MlflowClient`` over ``tracker://`` and directly against SQLite, compared table by table.

The workload (tests/support/plugin_workload.py: experiments and their tags; runs with names and
tags; metrics with NaN, +/-inf, -0.0, subnormals, int64 step bounds, timestamps 0 and 2**63-1,
duplicate points and latest-metric ties; params with repeats and changes; tags with overwrites,
deletes and renames; invalid and 250/251-character keys; ``log_batch``; terminate, rename,
delete and restore) is applied by tests/plugin_ops.py twice, at the same time, in two
subprocesses that only differ in ``MLFLOW_TRACKING_URI``: ``sqlite:///direct.db`` (MLflow
alone) and ``tracker://`` on a real daemon (whose store is ``sqlite:///<state>/mlflow.db``).

Compared afterwards, run ids mapped by the label each run was created under (so by creation
order within its family): the rows of runs (name, status, lifecycle stage, start and end time,
experiment), metrics, latest_metrics, params, tags, experiments and experiment_tags; floats by
``repr`` (so -0.0 is not 0.0).

And the outcome of every step. ``tracker://`` sends ``log_metric``/``log_param``/``set_tag``/
``log_batch`` as records and raises their failures at the process's next blocking call, so the
workload ends each step with one blocking call (the barrier) and no step has a blocking operation
after a write. Per step, the blocking operations must raise exactly where and as MLflow does
(exception class and error code); the writes' failures are compared as the set of (class, code)
the step's writes raised — for ``tracker://`` at the call or at the barrier, whichever the
client chose — not per write, because the barrier reports the first deferred failure only.

``TRACKER_TEST_SEED`` chooses the seed (printed in every failure); ``TRACKER_DIFF_FAMILIES``
(comma-separated, or ``all``) the families, instead of every family not in PENDING_FAMILIES.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.support.daemon import REPO, Daemon, daemon_env, running_daemon
from tests.support.mlflow_tables import table_rows
from tests.support.plugin_workload import FAMILIES, WRITES, workload

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("TRACKER_TEST_SEED", "1130"))
OPS = REPO / "tests" / "plugin_ops.py"

# Families whose differences the fixes of issue 18 remove; left out of the test while listed
# (remove a family when its fix lands; TRACKER_DIFF_FAMILIES=all runs them too).
PENDING_FAMILIES = frozenset({})
# Tags the daemon adds by design: none for runs created through tracker:// (create_run is a
# call run on the backend store as is; tracker.offline_id and tracker.end_reason belong to the
# native client's offline runs and to runs the daemon ends for a dead process). Listed so a
# change to that shows up here as a row difference first.
DAEMON_TAGS: frozenset[str] = frozenset()

Rows = dict[str, list[tuple[Any, ...]]]


def families() -> list[str]:
    chosen = os.environ.get("TRACKER_DIFF_FAMILIES", "")
    if chosen == "all":
        return list(FAMILIES)
    if chosen:
        names = [n.strip() for n in chosen.split(",") if n.strip()]
        unknown = set(names) - set(FAMILIES)
        assert not unknown, f"unknown families {sorted(unknown)}; known: {list(FAMILIES)}"
        return names
    return [n for n in FAMILIES if n not in PENDING_FAMILIES]


def start_ops(uri: str, work: Path, cwd: Path, env: Mapping[str, str]) -> subprocess.Popen[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, str(OPS), str(work)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=daemon_env({"MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true", **env}),
    )


def finish(proc: subprocess.Popen[str], what: str, timeout: float) -> tuple[dict[str, Any], str]:
    """The process's result and its stderr (which the caller checks for tracebacks)."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate(10)
        raise AssertionError(f"{what}: no result within {timeout} s:\n{stderr[-3000:]}") from None
    assert proc.returncode == 0, f"{what}: exit {proc.returncode}:\n{stderr[-3000:]}"
    result: dict[str, Any] = json.loads(stdout)
    return result, stderr


def tracker_uri(d: Daemon) -> str:
    assert d.address.startswith("ipc://")
    return "tracker://" + d.address[len("ipc://") :]


# ---------------------------------------------------------------------------- the tables


def _plain(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(repr(v) if isinstance(v, float) else v for v in row)


def store_rows(uri: str, result: dict[str, Any]) -> Rows:
    """Every compared row of the store at ``uri``, run ids replaced by their labels and
    experiment ids by their names."""
    labels = {run_id: label for label, run_id in result["runs"].items()}
    engine = sa.create_engine(uri)
    try:
        out = table_rows(engine, labels)
        meta = sa.MetaData()
        with engine.connect() as conn:
            tags = sa.Table("tags", meta, autoload_with=conn)
            key_at = sorted(c.name for c in tags.columns).index("key")
            out["tags"] = [r for r in out["tags"] if r[key_at] not in DAEMON_TAGS]
            exps = sa.Table("experiments", meta, autoload_with=conn)
            names = {e: n for e, n in conn.execute(sa.select(exps.c.experiment_id, exps.c.name))}
            out["experiments"] = sorted(
                (r.name, r.lifecycle_stage) for r in conn.execute(sa.select(exps))
            )
            etags = sa.Table("experiment_tags", meta, autoload_with=conn)
            out["experiment_tags"] = sorted(
                (names[r.experiment_id], r.key, r.value) for r in conn.execute(sa.select(etags))
            )
            runs = sa.Table("runs", meta, autoload_with=conn)
            out["run_experiments"] = sorted(
                (labels[r.run_uuid], names[r.experiment_id])
                for r in conn.execute(sa.select(runs.c.run_uuid, runs.c.experiment_id))
                if r.run_uuid in labels
            )
    finally:
        engine.dispose()
    return {table: sorted((_plain(r) for r in rows), key=repr) for table, rows in out.items()}


def _family_of(row: tuple[Any, ...]) -> str:
    for v in row:
        if isinstance(v, str) and ":" in v and v.split(":", 1)[0] in FAMILIES:
            return v.split(":", 1)[0]
    return "-"


def _short(row: tuple[Any, ...]) -> str:
    return repr(
        tuple(v[:40] + f"...({len(v)})" if isinstance(v, str) and len(v) > 60 else v for v in row)
    )


def table_differences(direct: Rows, tracker: Rows) -> list[str]:
    out = []
    for table in direct:
        theirs, ours = direct[table], tracker[table]
        if theirs == ours:
            continue
        only_direct = [r for r in theirs if r not in ours]
        only_tracker = [r for r in ours if r not in theirs]
        out.append(
            f"table {table}: {len(only_direct)} row(s) only in MLflow's, "
            f"{len(only_tracker)} only in tracker://'s"
        )
        for side, rows in (("MLflow  ", only_direct), ("tracker ", only_tracker)):
            for r in rows[:8]:
                out.append(f"  {side} [{_family_of(r)}] {_short(r)}")
            if len(rows) > 8:
                out.append(f"  {side} ... and {len(rows) - 8} more")
    return out


# ---------------------------------------------------------------------------- the outcomes


# Where tracker:// answers with a clearer code than MLflow on purpose: an int64 step or timestamp
# out of range reaches MLflow's database, whose overflow MLflow reports as INTERNAL_ERROR; the
# plugin refuses the value at the call as INVALID_PARAMETER_VALUE, naming it (issue 18 item 1).
CLEARER_CODES = {("int64_range", "MlflowException", "INTERNAL_ERROR"): "INVALID_PARAMETER_VALUE"}


def step_outcome(step: dict[str, Any], done: dict[str, Any]) -> dict[str, Any]:
    """What a step raised: the blocking operations' (index, class, code) and the set of
    (class, code) of its failed writes (for tracker:// including the barrier's)."""
    calls, writes = [], set()
    for i, (op, got) in enumerate(zip(step["ops"], done["ops"], strict=True)):
        if got is None:
            continue
        if op["op"] in WRITES:
            code = CLEARER_CODES.get((step["family"], got[0], got[1]), got[1])
            writes.add((got[0], code))
        else:
            calls.append((i, op["op"], got[0], got[1]))
    if done["barrier"] is not None:
        writes.add((done["barrier"][0], done["barrier"][1]))
    return {"calls": calls, "writes": sorted(writes)}


def outcome_differences(
    work: dict[str, Any], direct: dict[str, Any], tracker: dict[str, Any]
) -> list[str]:
    out = []
    for n, step in enumerate(work["steps"]):
        a, b = direct["steps"][n], tracker["steps"][n]
        assert a["barrier"] is None, f"step {n}: MLflow's own barrier raised {a['barrier']}"
        want, got = step_outcome(step, a), step_outcome(step, b)
        if want != got:
            kinds = [op["op"] for op in step["ops"]]
            raised = b["barrier"] or next((o for o in b["ops"] if o), None)
            out.append(
                f"step {n} [{step['family']}] {kinds}: MLflow raised {want}, tracker:// {got}"
                + (f" ({raised[2][:200]})" if raised else "")
            )
    return out


# ---------------------------------------------------------------------------- the test


@pytest.mark.timeout(150)
def test_tracker_uri_stores_what_mlflow_stores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chosen = families()
    hint = f"seed {SEED} (TRACKER_TEST_SEED), families {chosen}"
    work = workload(SEED, chosen)
    path = tmp_path / "workload.json"
    path.write_text(json.dumps(work))
    direct_uri = f"sqlite:///{tmp_path / 'direct.db'}"
    began = time.monotonic()
    with running_daemon(tmp_path) as d:
        # both at once: the same calls, only MLFLOW_TRACKING_URI differs
        procs = [
            start_ops(direct_uri, path, tmp_path / "direct", {}),
            start_ops(tracker_uri(d), path, tmp_path / "tracker", {}),
        ]
        try:
            direct, direct_err = finish(procs[0], f"{hint}: sqlite://", timeout=110)
            tracker, tracker_err = finish(procs[1], f"{hint}: tracker://", timeout=110)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
    assert sorted(tracker["runs"]) == sorted(direct["runs"]), hint
    theirs = store_rows(direct_uri, direct)
    ours = store_rows(d.backend_uri, tracker)
    problems = table_differences(theirs, ours) + outcome_differences(work, direct, tracker)
    for side, err in (("MLflow", direct_err), ("tracker://", tracker_err)):
        if "Traceback" in err:  # e.g. the client's I/O thread died
            problems.append(f"{side} printed a traceback:\n{err[-2000:]}")
    assert not problems, f"{hint}:\n" + "\n".join(problems)

    # the workload exercised what it claims to
    ops = sum(len(s["ops"]) for s in work["steps"])
    raised = sum(
        step_outcome(s, r) != {"calls": [], "writes": []}
        for s, r in zip(work["steps"], direct["steps"], strict=True)
    )
    rows = sum(map(len, theirs.values()))
    assert raised >= 10, f"{hint}: only {raised} steps raised"
    assert len(theirs["metrics"]) >= 100 and len(theirs["tags"]) >= 50, hint
    with capsys.disabled():
        print(
            f"\n{len(direct['runs'])} runs, {ops} operations in {len(work['steps'])} steps "
            f"({raised} raising), {rows} rows compared, {time.monotonic() - began:.1f} s"
        )
