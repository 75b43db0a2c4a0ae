"""An MLflow 2.x worker (``mlflow-skinny<3`` in its own venv, tests/support/mlflow2_venv.py) logs
through ``tracker://`` to a daemon on MLflow 3: experiment tags, params, metrics, tags, an
artifact, a nested run, reads, and ``@mlflow.trace`` — whose v2 store calls the daemon translates
(tracker_daemon/store/mlflow2.py), so the traces are stored, readable by both MLflow versions.
Skipped
only when the package registry cannot be reached to build the venv (and none is cached)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.support.daemon import REPO, daemon_env, running_daemon
from tests.support.mlflow2_venv import mlflow2_python
from tests.support.net import free_port

pytestmark = pytest.mark.integration

WORKER = REPO / "tests" / "mlflow2_worker.py"
T0 = 1_700_000_000_000


@pytest.mark.timeout(900)  # the first run builds the venv (~1 min); later runs reuse it
def test_an_mlflow2_worker_logs_reads_and_traces_through_the_daemon(tmp_path: Path) -> None:
    python = mlflow2_python()
    version = subprocess.run(
        [str(python), "-c", "import mlflow; print(mlflow.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.strip()
    assert version.startswith("2."), version
    with running_daemon(tmp_path) as d:
        env = daemon_env(
            {
                "MLFLOW_TRACKING_URI": "tracker://" + d.address.removeprefix("ipc://"),
                "MLFLOW_DISABLE_TELEMETRY": "true",
            }
        )
        env.pop("PYTHONPATH", None)  # the venv's own packages only
        cwd = tmp_path / "cwd"
        cwd.mkdir()
        proc = subprocess.run(
            [str(python), str(WORKER), "mlflow2"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
        # MLflow 2 reports a failed trace export only as a warning (or at DEBUG): none here
        assert "Traceback" not in proc.stderr and "WARNING" not in proc.stderr, proc.stderr
        out = json.loads(proc.stdout)
        calls = d.status()["calls"]
        assert "event=call_failed" not in d.log(), d.log()

    # what the worker read back through the daemon
    assert out == {
        "experiment_tags": {"stage": "dev", "team": "vision"},
        "parent": {
            "status": "FINISHED",
            "params": {"layers": "3", "lr": "0.1"},
            "tags": {"owner": "worker2"},
            "metrics": {"loss": 0.05},
        },
        "child": {"parent_is_parent": True, "params": {"k": "v"}, "metrics": {"acc": 0.75}},
        "runs": ["child", "parent"],
        "history": [[s, 1.0 / (s + 1), T0 + s] for s in range(20)],
        "artifacts": ["docs/notes.txt"],
        "artifact_text": "written by an MLflow 2 worker\n",
        "traces": [
            {"status": "TraceStatus.ERROR", "spans": ["explode"], "experiment_is_ours": True},
            {
                "status": "TraceStatus.OK",
                "spans": ["helper", "predict"],
                "experiment_is_ours": True,
            },
        ],
        "trace_tags": {"reviewed": "yes"},
        "trace_spans": {"helper": [{"x": 3}, 4], "predict": [{"x": 3}, 8]},
    }
    assert calls["read"]["failures"] == calls["write"]["failures"] == 0

    # and what MLflow 3 finds in the store
    client = MlflowClient(d.backend_uri)
    exp = client.get_experiment_by_name("mlflow2")
    assert exp is not None and exp.tags["team"] == "vision" and exp.tags["stage"] == "dev"
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(runs) == ["child", "parent"]
    assert runs["child"].data.tags["mlflow.parentRunId"] == runs["parent"].info.run_id
    assert [m.value for m in client.get_metric_history(runs["parent"].info.run_id, "loss")] == [
        1.0 / (s + 1) for s in range(20)
    ]
    traces = client.search_traces(locations=[exp.experiment_id], order_by=["timestamp_ms ASC"])
    assert sorted(
        (str(t.info.state), sorted(s.name for s in t.data.spans), t.info.tags.get("reviewed"))
        for t in traces
    ) == [("ERROR", ["explode"], None), ("OK", ["helper", "predict"], "yes")]


@pytest.mark.timeout(300)
def test_an_unreachable_registry_skips_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The skip above happens only for want of the registry, and says so (pip pointed at a
    closed port, with no configuration files: no extra index, no local wheels)."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{free_port()}/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)
    venv = tmp_path / "venv"
    with pytest.raises(pytest.skip.Exception) as skipped:
        mlflow2_python(venv)
    assert str(skipped.value).startswith(
        "package registry unreachable, cannot install mlflow-skinny>=2.22,<3"
    ), skipped.value
    assert not venv.exists()  # nothing half-built is left to be taken for a cached venv
