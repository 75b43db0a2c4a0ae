"""A realistic, unmodified MLflow script (fluent API and ``MlflowClient``), run as a subprocess by
tests/integration/test_mlflow_plugin.py once against ``sqlite:///`` and once against
``tracker://`` — the resulting stores must be the same.

    python mlflow_scenario.py EXPERIMENT PREFIX [--wait-stdin]

Run names start with PREFIX (so several copies can share one experiment). Prints one JSON
document: what ``search_runs``, ``get_metric_history``, ``get_run`` and ``search_experiments``
returned, normalised (no ids, no wall-clock times).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

T0 = 1_700_000_000_000  # explicit metric timestamps (ms): compared exactly between stores
STEPS = 25


def dataset() -> Any:
    rng = np.random.default_rng(7)
    df = pd.DataFrame({"x1": rng.normal(size=40), "x2": rng.normal(size=40)})
    df["y"] = (df["x1"] + df["x2"] > 0).astype(float)
    return mlflow.data.from_pandas(
        df, source="https://example.com/data/train.csv", name="train", targets="y"
    )


def main(experiment: str, prefix: str) -> dict[str, Any]:
    client = MlflowClient()
    exp = mlflow.set_experiment(experiment)
    mlflow.set_experiment_tags({"project": "plugin-diff", "owner": "tests"})
    workdir = Path(tempfile.mkdtemp(prefix="scenario-"))
    weights = workdir / "weights.bin"
    weights.write_bytes(bytes(range(256)) * 8)

    with mlflow.start_run(run_name=f"{prefix}parent", tags={"prefix": prefix}) as parent:
        pid = parent.info.run_id
        mlflow.log_param("lr", 0.01)
        mlflow.log_params({"epochs": 5, "optimizer": "adam", "layers": [64, 32]})
        mlflow.set_tags({"team": "ml", "stage": "dev"})
        mlflow.set_tag("single", "x")
        for step in range(STEPS):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step, timestamp=T0 + step)
            mlflow.log_metrics(
                {"acc": step / STEPS, "f1": step / (2 * STEPS)}, step=step, timestamp=T0 + step
            )
        mlflow.log_dict({"model": {"hidden": [64, 32]}, "seed": 7}, "config/config.json")
        mlflow.log_text("first line\nsecond line\n", "notes/readme.txt")
        mlflow.log_artifact(str(weights), "checkpoints")
        mlflow.log_input(dataset(), context="training", tags={"split": "train"})

        for i, status in enumerate(("FINISHED", "FAILED")):
            child = mlflow.start_run(
                run_name=f"{prefix}child-{i}", nested=True, tags={"prefix": prefix}
            )
            mlflow.log_param("fold", i)
            for step in range(5):
                mlflow.log_metric("val_loss", 0.5 + i - step / 10, step=step, timestamp=T0 + step)
            mlflow.log_text(f"child {i}", f"child-{i}.txt")
            if status == "FAILED":
                client.set_tag(child.info.run_id, "failure", "diverged")
            mlflow.end_run(status=status)

        client.set_tag(pid, "client_tag", "set-by-client")
        client.log_batch(
            pid,
            metrics=[
                Metric("batch_metric", 3.5, T0 + 100, 0),
                Metric("batch_metric", 4.5, T0 + 101, 1),
            ],
            params=[Param("batch_param", "b")],
            tags=[RunTag("batch_tag", "t")],
        )
        run = client.get_run(pid)
        history = client.get_metric_history(pid, "loss")

    found = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=f"tags.prefix = '{prefix}' and params.fold = '1'",
        order_by=["attributes.run_name DESC"],
    )
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.prefix = '{prefix}'",
        order_by=["metrics.val_loss ASC", "attributes.run_name ASC"],
    )
    experiments = client.search_experiments(filter_string=f"name = '{experiment}'")
    return {
        "get_run": {
            "name": run.info.run_name,
            "status": run.info.status,
            "params": run.data.params,
            "metrics": run.data.metrics,
            "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
            "datasets": [
                [d.dataset.name, d.dataset.digest, d.dataset.source_type]
                for d in run.inputs.dataset_inputs
            ],
        },
        "history": [[m.key, m.step, m.value, m.timestamp] for m in history],
        "search_runs_pandas": {
            "names": found["tags.mlflow.runName"].tolist(),
            "status": found["status"].tolist(),
            "params.fold": found["params.fold"].tolist(),
        },
        "search_runs": [
            [r.info.run_name, r.info.status, r.data.metrics.get("val_loss")] for r in runs
        ],
        "search_experiments": [[e.name, e.tags] for e in experiments],
        "final_status": client.get_run(pid).info.status,
    }


if __name__ == "__main__":
    if "--wait-stdin" in sys.argv:
        sys.stdin.readline()
    result = main(sys.argv[1], sys.argv[2])
    print(json.dumps(result, sort_keys=True))
