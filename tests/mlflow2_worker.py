"""An unmodified MLflow 2.x training script, run by tests/integration/test_mlflow2_worker.py in
its own venv (``mlflow-skinny<3`` plus the client) with ``MLFLOW_TRACKING_URI=tracker://…``,
against a daemon on MLflow 3:

    python mlflow2_worker.py EXPERIMENT

Experiment tags, a run with params, tags, a metric history, an artifact and a nested run, two
traced calls (``@mlflow.trace``, one of them raising), trace tags, and reads of all of it. Prints
one JSON document of what the reads returned (no ids, no wall-clock times).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient

T0 = 1_700_000_000_000  # explicit metric timestamps (ms)


@mlflow.trace(name="predict", attributes={"model": "tiny"})
def predict(x: int) -> int:
    return helper(x) * 2


@mlflow.trace
def helper(x: int) -> int:
    return x + 1


@mlflow.trace(name="explode")
def explode() -> None:
    raise ValueError("boom")


def main(experiment: str) -> dict[str, Any]:
    client = MlflowClient()
    exp_id = mlflow.set_experiment(experiment).experiment_id
    mlflow.set_experiment_tags({"team": "vision", "stage": "dev"})
    with mlflow.start_run(run_name="parent") as parent:
        mlflow.log_params({"lr": "0.1", "layers": "3"})
        mlflow.set_tag("owner", "worker2")
        for step in range(20):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step, timestamp=T0 + step)
        with tempfile.TemporaryDirectory() as tmp:
            notes = Path(tmp, "notes.txt")
            notes.write_text("written by an MLflow 2 worker\n")
            mlflow.log_artifact(str(notes), artifact_path="docs")
        with mlflow.start_run(run_name="child", nested=True) as child:
            mlflow.log_param("k", "v")
            mlflow.log_metric("acc", 0.75, step=1, timestamp=T0)
        assert predict(3) == 8
        try:
            explode()
        except ValueError:
            pass
    # reads (through the daemon): runs, metric history, artifacts, experiment, traces
    run = client.get_run(parent.info.run_id)
    kid = client.get_run(child.info.run_id)
    found = client.search_runs([exp_id], order_by=["attributes.run_name ASC"])
    history = client.get_metric_history(parent.info.run_id, "loss")
    artifacts = [f.path for f in client.list_artifacts(parent.info.run_id, "docs")]
    local = client.download_artifacts(parent.info.run_id, "docs/notes.txt", tempfile.mkdtemp())
    traces = client.search_traces([exp_id], order_by=["timestamp_ms ASC"])
    by_name = {t.data.spans[0].name if t.data.spans else "?": t for t in traces}
    ok = by_name["predict"]
    client.set_trace_tag(ok.info.request_id, "reviewed", "yes")
    client.set_trace_tag(ok.info.request_id, "drop", "me")
    client.delete_trace_tag(ok.info.request_id, "drop")
    again = mlflow.get_trace(ok.info.request_id)
    return {
        "experiment_tags": {
            k: v
            for k, v in client.get_experiment(exp_id).tags.items()
            if not k.startswith("mlflow.")
        },
        "parent": {
            "status": run.info.status,
            "params": run.data.params,
            "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
            "metrics": run.data.metrics,
        },
        "child": {
            "parent_is_parent": kid.data.tags.get("mlflow.parentRunId") == parent.info.run_id,
            "params": kid.data.params,
            "metrics": kid.data.metrics,
        },
        "runs": [r.info.run_name for r in found],
        "history": [[m.step, m.value, m.timestamp] for m in history],
        "artifacts": artifacts,
        "artifact_text": Path(local).read_text(),
        "traces": sorted(
            [
                {
                    "status": str(t.info.status),
                    "spans": sorted(s.name for s in t.data.spans),
                    "experiment_is_ours": t.info.experiment_id == exp_id,
                }
                for t in traces
            ],
            key=lambda t: t["spans"],
        ),
        "trace_tags": {k: v for k, v in again.info.tags.items() if not k.startswith("mlflow.")},
        "trace_spans": {s.name: [s.inputs, s.outputs] for s in again.data.spans},
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1]), sort_keys=True))
