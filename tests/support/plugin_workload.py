"""The seeded workload of the ``tracker://`` differential (tests/integration/
test_plugin_differential.py), as named case families, and the JSON document tests/plugin_ops.py
applies through an unmodified ``MlflowClient``.

A workload is a list of steps; a step is a few operations of one family followed (in
plugin_ops.py) by one blocking call, the barrier at which ``tracker://`` raises what its
non-blocking writes deferred. Within a step no blocking operation follows a write (a blocking
call would itself be that barrier). Each family creates its own runs (labels ``family:k``) in its
first step, so a difference in the tables belongs to the family whose label it carries; the steps
of all families are interleaved at random, each family's own order kept. Every timestamp is
explicit, so rows compare exactly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

__all__ = ["BLOCKING", "EXPERIMENTS", "FAMILIES", "WRITES", "workload"]

Op = dict[str, Any]
Step = list[Op]

T0 = 1_700_000_000_000  # ms
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EXPERIMENTS = ("diff-a", "diff-b", "diff-c")  # made by the setup step, used by every family
# tracker:// sends these as records (non-blocking); every other operation is a call.
WRITES = frozenset({"log_metric", "log_param", "set_tag", "log_batch"})
BLOCKING = frozenset(
    {
        "create_experiment",
        "set_experiment_tag",
        "create_run",
        "delete_tag",
        "set_terminated",
        "update_run",
        "delete_run",
        "restore_run",
    }
)
RUN_NAME = "mlflow.runName"
# Keys MLflow accepts: 250 characters is the limit; CJK, Arabic and Hebrew letters are \w.
GOOD_KEYS = ("loss", "acc", "m/x", "a.b-c_d", "k" * 250, "损失", "خسارة", "הפסד")
BAD_KEYS = ("bad*key", "../up", "a" * 251, "/abs", "x\ny", "", "sp ace/../x")
EDGE_VALUES = (
    math.nan,
    math.inf,
    -math.inf,
    -0.0,
    0.0,
    5e-324,  # the smallest subnormal
    2.2250738585072014e-308,
    1.7976931348623157e308,
    -1e-300,
    7,  # an int: MLflow stores 7.0
)


class _Family:
    """One family's steps, built with a shared random source."""

    def __init__(self, name: str, rnd: random.Random) -> None:
        self.name = name
        self.rnd = rnd
        self.steps: list[Step] = []
        self.runs: list[str] = []

    def create_runs(self, n: int, **tags: str) -> list[str]:
        step = []
        for _ in range(n):
            label = f"{self.name}:{len(self.runs)}"
            self.runs.append(label)
            step.append(
                {
                    "op": "create_run",
                    "label": label,
                    "exp": self.rnd.choice(EXPERIMENTS),
                    "start_time": T0 + 1000 * len(self.runs),
                    "name": f"{self.name}-{len(self.runs) - 1}",
                    "tags": {"family": self.name, **tags},
                }
            )
        self.steps.append(step)
        return list(self.runs)

    def close(self) -> None:
        """End every run (one left open would be ended by the daemon when the process exits, as
        FAILED with a tracker.end_reason tag, by design); a deleted one refuses."""
        statuses = ("FINISHED", "FAILED", "KILLED")
        if not self.runs:
            return
        self.step(
            *(
                {
                    "op": "set_terminated",
                    "run": run,
                    "status": self.rnd.choice(statuses),
                    "end_time": T0 + 10**6 + k,
                }
                for k, run in enumerate(self.runs)
            )
        )

    def step(self, *ops: Op) -> None:
        self.steps.append(list(ops))

    def run(self) -> str:
        return self.rnd.choice(self.runs)

    def timestamp(self) -> int:
        return T0 + self.rnd.randrange(50)

    def metric(self, run: str, key: str, value: float, timestamp: int, step: int) -> Op:
        return {
            "op": "log_metric",
            "run": run,
            "key": key,
            "value": value,
            "timestamp": timestamp,
            "step": step,
        }


def param(run: str, key: str, value: str) -> Op:
    return {"op": "log_param", "run": run, "key": key, "value": value}


def tag(run: str, key: str, value: str) -> Op:
    return {"op": "set_tag", "run": run, "key": key, "value": value}


def batch(
    run: str,
    metrics: list[list[Any]] | None = None,
    params: list[list[str]] | None = None,
    tags: list[list[str]] | None = None,
) -> Op:
    return {
        "op": "log_batch",
        "run": run,
        "metrics": metrics or [],
        "params": params or [],
        "tags": tags or [],
    }


# ---------------------------------------------------------------------------- families


def _experiments(f: _Family) -> None:
    f.step({"op": "create_experiment", "name": "diff-exp-tags", "tags": {"a": "1", "b": "2"}})
    f.step({"op": "set_experiment_tag", "exp": "diff-exp-tags", "key": "a", "value": "changed"})
    for i in range(6):
        f.step(
            {
                "op": "set_experiment_tag",
                "exp": f.rnd.choice([*EXPERIMENTS, "diff-exp-tags"]),
                "key": f.rnd.choice(["owner", "stage", f"k{i}"]),
                "value": f"v{f.rnd.randrange(4)}",
            }
        )
    f.step({"op": "create_experiment", "name": "diff-a", "tags": {}})  # exists: refused
    f.step({"op": "set_experiment_tag", "exp": "diff-b", "key": "bad*key", "value": "x"})


def _runs(f: _Family) -> None:
    f.create_runs(5, team="core", **{"mlflow.note.content": "a note", "mlflow.user": "alice"})
    for run in f.runs[:3]:
        f.step(tag(run, "extra", "x"), param(run, "p", "1"))
    f.step({"op": "set_terminated", "run": f.runs[0], "status": "FINISHED", "end_time": T0 + 9})


def _metrics(f: _Family) -> None:
    f.create_runs(3)
    logged: list[Op] = []
    for _ in range(80):
        run = f.run()
        roll = f.rnd.random()
        if logged and roll < 0.1:  # the same point again
            op = dict(f.rnd.choice(logged))
        elif logged and roll < 0.2:  # a latest-metric tie: same step and time, another value
            op = {**f.rnd.choice(logged), "value": f.rnd.choice(EDGE_VALUES)}
        else:
            value = f.rnd.choice(EDGE_VALUES) if f.rnd.random() < 0.4 else f.rnd.random()
            timestamp = f.rnd.choice([0, INT64_MAX]) if f.rnd.random() < 0.1 else f.timestamp()
            step = f.rnd.choice([INT64_MIN, INT64_MAX, -1]) if f.rnd.random() < 0.1 else 0
            step = step or f.rnd.randrange(20)
            op = f.metric(run, f.rnd.choice(GOOD_KEYS), value, timestamp, step)
        logged.append(op)
        if f.steps[-1][0]["op"] == "log_metric" and f.rnd.random() < 0.4:
            f.steps[-1].append(op)  # several points in one step: one frame, one batch
        else:
            f.step(op)


def _metric_batches(f: _Family) -> None:
    f.create_runs(2)
    for _ in range(10):
        metrics: list[list[Any]] = []
        for _ in range(f.rnd.randrange(1, 30)):
            if metrics and f.rnd.random() < 0.15:
                metrics.append(list(f.rnd.choice(metrics)))  # a duplicate within the batch
                continue
            value = f.rnd.choice(EDGE_VALUES) if f.rnd.random() < 0.3 else f.rnd.random()
            step = f.rnd.choice([INT64_MIN, INT64_MAX, f.rnd.randrange(10)])
            timestamp = f.rnd.choice([0, INT64_MAX, f.timestamp(), f.timestamp()])
            metrics.append([f.rnd.choice(GOOD_KEYS[:4]), value, timestamp, step])
        f.step(batch(f.run(), metrics))


def _params(f: _Family) -> None:
    f.create_runs(2)
    values: dict[tuple[str, str], str] = {}
    for _ in range(30):
        run, key = f.run(), f.rnd.choice(["lr", "depth", "opt", "p" * 250, "名前"])
        old = values.get((run, key))
        roll = f.rnd.random()
        if old is not None and roll < 0.4:
            value = old  # the same value again: accepted
        elif old is not None and roll < 0.6:
            value = ("changed-" + old)[:6000]  # refused (within the length limit)
        else:
            value = f.rnd.choice(["0.1", "5", "", "x" * 6000, "adam"])
            values.setdefault((run, key), value)
        f.step(param(run, key, value))


def _tags(f: _Family) -> None:
    f.create_runs(2)
    keys: dict[str, set[str]] = {r: set() for r in f.runs}
    for i in range(30):
        run = f.run()
        roll = f.rnd.random()
        if keys[run] and roll < 0.2:
            key = f.rnd.choice(sorted(keys[run]))
            keys[run].discard(key)
            f.step({"op": "delete_tag", "run": run, "key": key})
        elif roll < 0.25:
            f.step({"op": "delete_tag", "run": run, "key": "never-set"})  # refused
        elif roll < 0.35:
            f.step(tag(run, RUN_NAME, f"renamed-{i}"))
        else:
            key = f.rnd.choice(["t0", "t1", "note", "mlflow.note.content", "t" * 250])
            keys[run].add(key)
            f.step(tag(run, key, f.rnd.choice([f"v{i}", "", "w" * 8000])))


def _invalid_keys(f: _Family) -> None:
    f.create_runs(2)
    for key in BAD_KEYS:
        run = f.run()
        f.step(f.metric(run, key, 1.0, f.timestamp(), 0))
        f.step(param(run, key, "v"))
        f.step(tag(run, key, "v"))
    for key in GOOD_KEYS[4:]:
        f.step(param(f.run(), key, "ok"), tag(f.run(), key, "ok"))


def _batches(f: _Family) -> None:
    f.create_runs(2)
    for i in range(12):
        run = f.run()
        metrics = [
            [f.rnd.choice(["loss", "acc"]), f.rnd.random(), f.timestamp(), f.rnd.randrange(5)]
            for _ in range(f.rnd.randrange(0, 6))
        ]
        params = [[f"bp{i}", str(i)]] + ([["fixed", "same"]] if f.rnd.random() < 0.5 else [])
        tags = [[f.rnd.choice(["bt0", "bt1"]), f"v{i}"]]
        f.step(batch(run, metrics, params, tags))


def _lifecycle(f: _Family) -> None:
    a, b, c, d = f.create_runs(4)
    f.step(f.metric(a, "m", 1.0, T0, 0), param(b, "p", "1"))
    f.step({"op": "set_terminated", "run": a, "status": "FAILED", "end_time": T0 + 100})
    f.step({"op": "set_terminated", "run": b, "status": "KILLED", "end_time": T0 + 200})
    f.step({"op": "set_terminated", "run": b, "status": "FINISHED", "end_time": T0 + 300})
    f.step({"op": "update_run", "run": c, "name": "c-renamed"})
    f.step({"op": "update_run", "run": a, "name": "a-renamed-after-end"})
    f.step({"op": "delete_run", "run": c})
    f.step(f.metric(c, "m", 2.0, T0, 1))  # a write to a deleted run: refused
    f.step(param(c, "p", "1"))
    f.step(tag(c, "t", "x"))
    f.step({"op": "set_terminated", "run": c, "status": "FINISHED", "end_time": T0 + 400})
    f.step({"op": "delete_tag", "run": c, "key": "family"})
    f.step({"op": "update_run", "run": c, "name": "c-deleted-renamed"})
    f.step({"op": "restore_run", "run": c})
    f.step(f.metric(c, "m", 3.0, T0, 2), tag(c, "t", "after-restore"))
    f.step({"op": "delete_run", "run": d})
    f.step({"op": "delete_run", "run": d})  # deleted twice
    f.step({"op": "restore_run", "run": a})  # not deleted
    f.step({"op": "set_terminated", "run": c, "status": "FINISHED", "end_time": T0 + 500})


# Families that the fixes of issue 18 address (see PENDING_FAMILIES in the test).


def _int64_range(f: _Family) -> None:
    """Issue 18 item 1: an int64 step or timestamp out of range fails alone (run B keeps
    everything and no call waits)."""
    a, b = f.create_runs(2)
    for timestamp, step in ((2**63, 0), (T0, 2**63), (T0, INT64_MIN - 1), (-(2**63) - 1, 0)):
        f.step(
            f.metric(b, "ok", 1.0, T0, 1),
            f.metric(a, "bad", 1.0, timestamp, step),
            f.metric(b, "ok", 2.0, T0, 2),
        )
    f.step(batch(a, [["bad", 1.0, 2**64, 0], ["fine", 1.0, T0, 0]]))
    f.step({"op": "set_terminated", "run": b, "status": "FINISHED", "end_time": T0 + 1})


def _run_name_sequences(f: _Family) -> None:
    """Issue 18 item 2: every value of a tag key in one batch applies in order, with MLflow's
    rules for mlflow.runName. One run per sequence: the tables keep only a run's last name."""
    sequences = (["renamed", ""], ["a", "b"], ["", "x"], ["y", "", ""], ["z", "", "w"])
    runs = f.create_runs(len(sequences) + 2)
    for run, values in zip(runs, sequences, strict=False):
        f.step(*(tag(run, RUN_NAME, v) for v in values))  # one step: one frame, one batch
    f.step(batch(runs[-2], tags=[[RUN_NAME, "in-batch"], [RUN_NAME, ""]]))
    f.step(batch(runs[-1], tags=[[RUN_NAME, "p"], [RUN_NAME, "q"], ["t", "1"], ["t", "2"]]))


def _batch_atomicity(f: _Family) -> None:
    """Issue 18 item 3: a log_batch is all-or-nothing."""
    a, b = f.create_runs(2)
    f.step(param(a, "a", "1"))
    f.step(batch(a, params=[["a", "2"], ["newp", "x"]]))  # a changed param
    f.step(batch(a, [["m", 1.0, T0, 0], ["bad*name", 1.0, T0, 0]], [["q", "1"]], [["t", "1"]]))
    f.step(batch(b, [["m", 1.0, -1, 0]], [["r", "1"]]))  # a negative timestamp
    f.step(batch(b, params=[["dup", "1"], ["dup", "2"], ["s", "1"]]))  # duplicate keys
    f.step(batch(b, [["m", 2.0, T0, 1]], [["ok", "1"]], [["t", "ok"]]))  # valid


def _long_values(f: _Family) -> None:
    """Issue 18 item 4: values are truncated where MLflow truncates them."""
    a, b = f.create_runs(2)
    f.step(param(a, "long", "y" * 6001))
    f.step(param(a, "long", "y" * 6001))  # the same long value again
    f.step(param(a, "long", "z"))  # a different value: refused
    f.step(tag(a, "long", "t" * 8001))
    f.step(batch(b, params=[["lp", "u" * 7000]], tags=[["lt", "v" * 9000]]))
    f.step(param(b, "lp", "u" * 6000))  # what MLflow stored: the same value


FAMILIES: dict[str, Callable[[_Family], None]] = {
    "experiments": _experiments,
    "runs": _runs,
    "metrics": _metrics,
    "metric_batches": _metric_batches,
    "params": _params,
    "tags": _tags,
    "invalid_keys": _invalid_keys,
    "batches": _batches,
    "lifecycle": _lifecycle,
    "int64_range": _int64_range,
    "run_name_sequences": _run_name_sequences,
    "batch_atomicity": _batch_atomicity,
    "long_values": _long_values,
}


def workload(seed: int, families: list[str]) -> dict[str, Any]:
    """The steps of ``families`` (each built from its own seeded random source, so enabling one
    family does not change another's cases), interleaved at random: ``{"steps": [{"family":
    name, "ops": [op, ...]}, ...]}``. The first step creates :data:`EXPERIMENTS`."""
    built = []
    for name in families:
        f = _Family(name, random.Random(f"{seed}:{name}"))
        FAMILIES[name](f)
        f.close()
        for step in f.steps:
            kinds = [op["op"] for op in step]
            first_write = next((i for i, k in enumerate(kinds) if k in WRITES), len(kinds))
            assert all(k in WRITES for k in kinds[first_write:]), (name, kinds)
            assert all(k in WRITES | BLOCKING for k in kinds), kinds
        built.append((name, f.steps))
    rnd = random.Random(seed)
    steps = [
        {
            "family": "setup",
            "ops": [
                {"op": "create_experiment", "name": n, "tags": {"made-by": "setup"}}
                for n in EXPERIMENTS
            ],
        }
    ]
    cursors = [0] * len(built)
    while any(c < len(s) for c, (_, s) in zip(cursors, built, strict=True)):
        left = [i for i, (_, s) in enumerate(built) if cursors[i] < len(s)]
        i = rnd.choices(left, weights=[len(built[j][1]) - cursors[j] for j in left])[0]
        steps.append({"family": built[i][0], "ops": built[i][1][cursors[i]]})
        cursors[i] += 1
    return {"steps": steps}
