"""The ``tracker://`` plugin's checks at the call (mlflow_store.metric_wire, param_wire, tag_wire)
and its message for deferred failures: pure functions of MLflow entities, no daemon."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from tracker_client import protocol as p
from tracker_client.mlflow.store import deferred_failures, metric_wire, param_wire, tag_wire

RUN = "r" * 32


def _invalid(call: Any, *args: Any) -> str:
    with pytest.raises(MlflowException) as info:
        call(*args)
    assert info.value.error_code == "INVALID_PARAMETER_VALUE"
    return info.value.message


@pytest.mark.parametrize(
    ("kw", "says"),
    [
        ({"timestamp": 2**63}, "Invalid value 9223372036854775808 for parameter 'timestamp'"),
        ({"timestamp": 2**64}, "parameter 'timestamp' supplied: metric 'k' (value=1.0)"),
        ({"timestamp": -1}, "Timestamp must be a nonnegative long (64-bit integer)"),
        ({"timestamp": math.inf}, "parameter 'timestamp'"),
        ({"timestamp": math.nan}, "parameter 'timestamp'"),
        ({"step": 2**63}, "Step must be a valid long (64-bit integer)."),
        ({"step": -(2**63) - 1}, "Invalid value -9223372036854775809 for parameter 'step'"),
        ({"step": "3"}, "Invalid value \"3\" for parameter 'step'"),
        ({"value": "a"}, "Please specify value as a valid double (64-bit floating point)"),
        ({"value": None}, "Missing value for required parameter 'value'."),
        ({"value": 10**400}, "too large for a 64-bit float"),
        ({"key": "a//b"}, "normalises to 'a/b'"),
        ({"key": "x" * 251}, "MLflow's limit is 250"),
    ],
)
def test_a_metric_mlflow_refuses_raises_at_the_call(kw: dict[str, Any], says: str) -> None:
    args = {"key": "k", "value": 1.0, "timestamp": 5, "step": 0, **kw}
    assert says in _invalid(metric_wire, RUN, Metric(**args))


def test_a_metric_in_range_becomes_its_wire_record() -> None:
    m = Metric("k", 2, 2**63 - 1, -(2**63), model_id="m-1", dataset_name="d", dataset_digest="h")
    assert metric_wire(RUN, m) == p.metric_wire(RUN, "k", 2.0, 2**63 - 1, -(2**63), "m-1", "d", "h")
    # MLflow's own leniency: a float timestamp or step is a number; the wire carries its int
    assert metric_wire(RUN, Metric("k", 1.0, 1.5, 2.7)) == p.metric_wire(RUN, "k", 1.0, 1, 2)
    assert metric_wire(RUN, Metric("k", 1.0, 1, None)) == p.metric_wire(RUN, "k", 1.0, 1, 0)


def test_long_values_are_truncated_like_mlflow(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert param_wire(RUN, Param("p", "y" * 6001)) == ["p", RUN, "p", "y" * 6000]
        assert tag_wire(RUN, RunTag("t", "y" * 8001)) == ["t", RUN, "t", "y" * 8000]
    assert "truncated" in caplog.text
    assert param_wire(RUN, Param("p", "y" * 6000)) == ["p", RUN, "p", "y" * 6000]
    monkeypatch.setenv("MLFLOW_TRUNCATE_LONG_VALUES", "false")
    assert "MLflow's limit is 6000" in _invalid(param_wire, RUN, Param("p", "y" * 6001))
    assert "MLflow's limit is 8000" in _invalid(tag_wire, RUN, RunTag("t", "y" * 8001))
    assert "param key 'a\\n'" in _invalid(param_wire, RUN, Param("a\n", "v"))


def test_deferred_failures_name_the_run_and_the_first_three() -> None:
    failures = [
        p.Failure(p.Param(f"run-{i}", f"k{i}", "v"), "INVALID_PARAMETER_VALUE", f"bad {i}")
        for i in range(5)
    ]
    text = deferred_failures(failures)
    assert text.startswith("5 earlier write(s) of this process were not committed")
    for i in range(3):
        assert f"run run-{i}: param 'k{i}': INVALID_PARAMETER_VALUE: bad {i}" in text
    assert "run-3" not in text and text.endswith("; and 2 more")
    one = deferred_failures([p.Failure(None, "INVALID_PARAMETER_VALUE", "run r: x")])
    assert one.endswith(": INVALID_PARAMETER_VALUE: run r: x") and "more" not in one
    tag = p.Failure(p.Tag("r", "t", "v"), "INTERNAL_ERROR", "boom")
    metric = p.Failure(p.Metric("r", "m", 1.0, 1, 1), "INTERNAL_ERROR", "boom")
    assert "run r: tag 't'" in deferred_failures([tag])
    assert "run r: metric 'm'" in deferred_failures([metric])
