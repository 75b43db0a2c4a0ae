"""The bench's raw sqlite3 ceiling (``python -m tracker_daemon.bench raw``) writes exactly the
workload into a real MLflow-schema SQLite file, in the transactions it says, and MLflow reads
back the same metrics and latest values as if it had logged them itself."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from tests.support.daemon import REPO, daemon_env
from tracker_daemon.bench.harness import TS0

pytestmark = pytest.mark.integration


def raw(tmp_path: Path, **spec: object) -> dict[str, object]:
    spec = {
        "db": str(tmp_path / "raw.db"),
        "artifacts": str(tmp_path / "artifacts"),
        "experiment": "raw",
        **spec,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "tracker_daemon.bench", "raw", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=daemon_env(),
    )
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return doc


@pytest.mark.timeout(120)
@pytest.mark.parametrize("wal", [True, False])
def test_raw_ceiling_writes_exactly_the_workload(tmp_path: Path, wal: bool) -> None:
    runs, steps, keys = 3, 40, 4  # 480 rows, 7 transactions of <= 70 rows
    doc = raw(tmp_path, runs=runs, steps=steps, keys=keys, wal=wal, txn_rows=70)
    assert doc["sent"] == runs * steps * keys == 480
    assert doc["transactions"] == 7
    assert isinstance(doc["seconds"], float) and doc["seconds"] > 0
    run_ids = doc["runs"]
    assert isinstance(run_ids, list) and len(set(run_ids)) == runs

    con = sqlite3.connect(tmp_path / "raw.db")
    try:
        mode = con.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == ("wal" if wal else "delete")
        rows = con.execute(
            "SELECT run_uuid, key, step, value, timestamp, is_nan FROM metrics"
        ).fetchall()
        latest = con.execute(
            "SELECT run_uuid, key, step, value, timestamp, is_nan FROM latest_metrics"
        ).fetchall()
    finally:
        con.close()
    expected = {
        (r, f"k{k}", s, s * 0.5, TS0 + s, 0)
        for r in run_ids
        for s in range(steps)
        for k in range(keys)
    }
    assert len(rows) == len(expected) and set(rows) == expected
    last = steps - 1
    assert sorted(latest) == sorted(
        (r, f"k{k}", last, last * 0.5, TS0 + last, 0) for r in run_ids for k in range(keys)
    )

    # MLflow's own reads agree: latest values and full histories
    store = SqlAlchemyStore(f"sqlite:///{tmp_path / 'raw.db'}", str(tmp_path / "artifacts"))
    try:
        for run_id in run_ids:
            assert store.get_run(run_id).data.metrics == {f"k{k}": last * 0.5 for k in range(keys)}
            history = store.get_metric_history(run_id, "k1")
            assert sorted(m.step for m in history) == list(range(steps))
    finally:
        store.engine.dispose()
