"""Unmodified ``MlflowClient`` code that applies one workload of tests/support/plugin_workload.py,
run as a subprocess by tests/integration/test_plugin_differential.py once against ``sqlite:///``
and once against ``tracker://`` (``MLFLOW_TRACKING_URI``).

    python plugin_ops.py WORKLOAD.json

Each step's operations are called in order, each in its own ``try``; then one blocking call
(``get_experiment("0")``, the barrier) that raises what ``tracker://`` deferred. Prints one JSON
document: the run id of each run label, and per step the outcome of each operation and of the
barrier (``null`` or ``[exception class, MLflow error code, message]``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

Outcome = list[Any] | None


def outcome(call: Callable[[], Any]) -> Outcome:
    try:
        call()
    except Exception as exc:  # the outcome is the point: any exception MLflow lets through
        return [type(exc).__name__, getattr(exc, "error_code", None), str(exc)[:300]]
    return None


def main(path: str) -> dict[str, Any]:
    work = json.loads(open(path).read())
    client = MlflowClient()
    experiments: dict[str, str] = {"Default": "0"}
    runs: dict[str, str] = {}

    def create_experiment(op: dict[str, Any]) -> None:
        experiments[op["name"]] = client.create_experiment(op["name"], tags=op["tags"])

    def create_run(op: dict[str, Any]) -> None:
        run = client.create_run(
            experiments[op["exp"]],
            start_time=op["start_time"],
            tags=op["tags"],
            run_name=op["name"],
        )
        runs[op["label"]] = run.info.run_id

    def log_batch(op: dict[str, Any]) -> None:
        client.log_batch(
            runs[op["run"]],
            metrics=[Metric(k, v, ts, step) for k, v, ts, step in op["metrics"]],
            params=[Param(k, v) for k, v in op["params"]],
            tags=[RunTag(k, v) for k, v in op["tags"]],
        )

    ops: dict[str, Callable[[dict[str, Any]], Any]] = {
        "create_experiment": create_experiment,
        "set_experiment_tag": lambda op: client.set_experiment_tag(
            experiments[op["exp"]], op["key"], op["value"]
        ),
        "create_run": create_run,
        "log_metric": lambda op: client.log_metric(
            runs[op["run"]], op["key"], op["value"], timestamp=op["timestamp"], step=op["step"]
        ),
        "log_param": lambda op: client.log_param(runs[op["run"]], op["key"], op["value"]),
        "set_tag": lambda op: client.set_tag(runs[op["run"]], op["key"], op["value"]),
        "log_batch": log_batch,
        "delete_tag": lambda op: client.delete_tag(runs[op["run"]], op["key"]),
        "set_terminated": lambda op: client.set_terminated(
            runs[op["run"]], op["status"], end_time=op["end_time"]
        ),
        "update_run": lambda op: client.update_run(runs[op["run"]], name=op["name"]),
        "delete_run": lambda op: client.delete_run(runs[op["run"]]),
        "restore_run": lambda op: client.restore_run(runs[op["run"]]),
    }
    steps = []
    for step in work["steps"]:
        done = [outcome(lambda op=op: ops[op["op"]](op)) for op in step["ops"]]
        steps.append({"ops": done, "barrier": outcome(lambda: client.get_experiment("0"))})
    return {"runs": runs, "experiments": experiments, "steps": steps}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
