"""MLflow's ``log_batch`` rules, decided in memory for the SQL writer (sqlwriter.py). Pure.

:class:`Decisions` holds what one transaction read from the database (params, latest_metrics,
which tags exist) and what it will write; :meth:`Decisions.entry` applies one entry's records to
it, in arrival order, the way ``sqlalchemy_store.py`` does (``_log_params``,
``_log_metrics_once``, ``_update_latest_metrics_if_necessary``, ``_set_tags``/``set_tag``/
``update_run_info``) and as the committer applies them (a failing batch bisected down to its
failing records):

* metrics: MLflow's ``_validate_metric`` (the key check cached per key); NaN stored as value 0
  with ``is_nan``, +/-inf as +/-1.7976931348623157e308; ``latest_metrics`` keeps per (run, key)
  the greatest (step, timestamp, sanitized value), strictly greater replaces. Duplicates on the
  primary key are left to the insert-or-ignore (a stored point is always <= the latest row, so
  it never changes it).
* params: ``_validate_param`` (truncation included), then insert-once: the same value again is
  a no-op, another value fails that record with ``_log_params``' message for one param.
* tags: ``_validate_tag`` for every record, then applied in arrival order, every value of a key
  in turn (the last one that changes anything wins). ``mlflow.runName`` goes through
  ``set_tag`` -> ``update_run_info`` in MLflow, for a ``set_tag`` call and for each such tag of
  a ``log_batch`` call (``_set_tags``) alike: a non-empty value sets the tag and ``runs.name``,
  an empty one changes nothing — so ``["renamed", ""]`` leaves ``renamed``.

Validation messages carry the paths MLflow reports for a batch of one record (``params[0].key``),
which is what the committer's bisection reports.

A *unit* (the records of one ``tracker://`` ``log_batch`` call, PROTOCOL.md 5.2) is decided as
MLflow's ``log_batch`` decides one call, all-or-nothing: :func:`unit_problem` makes its checks
before the run is looked at (each record's validation with its path in the call, the batch
limits, duplicate param keys — MLflow's own functions), :meth:`Decisions.unit` the changed-param
check against the params stored and decided so far (``_log_params``' message, listing every
changed key); a unit that fails leaves no trace in the decisions (:class:`UnitFailed`).
:func:`run_failure` gives ``_get_run``'s and ``_check_run_is_active``'s errors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from mlflow.exceptions import MlflowException
from mlflow.utils.validation import (
    _validate_batch_log_limits,
    _validate_metric,
    _validate_param,
    _validate_param_keys_unique,
    _validate_run_id,
    _validate_tag,
)

from tracker_client.protocol import Metric, Param, Record, Tag

__all__ = [
    "Decisions",
    "Failure",
    "Key",
    "Outcome",
    "RunFailed",
    "UnitFailed",
    "bad_run_id",
    "run_failure",
    "unit_problem",
]

RUN_NAME_TAG: Final = "mlflow.runName"
_MAX_FLOAT: Final = 1.7976931348623157e308
_INF: Final = math.inf
_MAX_CACHED_KEYS: Final = 100_000


@dataclass(frozen=True, slots=True)
class RunFailed:
    """Every record of the entry failed: the run is missing, deleted or its id is malformed.
    ``code`` and ``message`` are MLflow's (``_get_run`` / ``_check_run_is_active``)."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class UnitFailed:
    """A unit failed as one and nothing of it was written: ``index`` is the record (into the
    entry's records) MLflow's error is about; ``code`` and ``message`` are MLflow's."""

    index: int
    code: str
    message: str


Outcome: TypeAlias = RunFailed | UnitFailed | dict[int, tuple[str, str]] | None
"""None: every record committed; RunFailed: none did; UnitFailed: none of a unit did; a dict:
index into the entry's records -> (code, message) of each record that failed (the others
committed)."""

Failure: TypeAlias = tuple[str, str]
Key: TypeAlias = tuple[str, str]  # (run_uuid, key)


def _mlflow_failure(exc: MlflowException) -> Failure:
    message = exc.message if isinstance(exc.message, str) else str(exc.message)
    return str(exc.error_code), message


def bad_run_id(run_id: str) -> RunFailed | None:
    """log_batch's ``_validate_run_id``."""
    try:
        _validate_run_id(run_id)  # type: ignore[no-untyped-call]
    except MlflowException as exc:
        return RunFailed(*_mlflow_failure(exc))
    return None


def run_failure(
    run_id: str, lifecycle_stage: str | None, records: Sequence[Record], metric_keys_ok: set[str]
) -> Outcome:
    """None for an active run. Else ``_get_run``'s error (``lifecycle_stage`` None: no such run)
    or ``_check_run_is_active``'s for every record, except that ``log_batch`` validates the
    records before it looks at the run: an invalid record fails with its own error."""
    if lifecycle_stage is None:
        failed = RunFailed("RESOURCE_DOES_NOT_EXIST", f"Run with id={run_id} not found")
    elif lifecycle_stage != "active":
        failed = RunFailed(
            "INVALID_PARAMETER_VALUE",
            f"The run {run_id} must be in the 'active' state. Current state is {lifecycle_stage}.",
        )
    else:
        return None
    invalid = {}
    for i, rec in enumerate(records):
        if isinstance(rec, Metric):
            problem = _metric_problem(rec, metric_keys_ok)
        elif isinstance(rec, Param):
            problem = _param_problem(rec)[0]
        else:
            problem = _tag(rec, {})
        if problem is not None:
            invalid[i] = problem
    if not invalid:
        return failed
    return {i: invalid.get(i, (failed.code, failed.message)) for i in range(len(records))}


def unit_problem(records: Sequence[Record], keys_ok: set[str]) -> UnitFailed | None:
    """The checks MLflow's ``log_batch`` makes on one call before it looks at the run, in its
    order, with its messages: every metric, then param, then tag (path ``metrics[i]`` etc., ``i``
    counting that kind in the call), the batch limits, duplicate param keys. A metric of a name
    MLflow already accepted (``keys_ok``) with plainly valid values skips the validator, as in
    :meth:`Decisions.entry`."""
    metrics = [(i, r) for i, r in enumerate(records) if type(r) is Metric]
    params = [(i, r) for i, r in enumerate(records) if type(r) is Param]
    tags = [(i, r) for i, r in enumerate(records) if type(r) is Tag]
    checks: list[tuple[int, Any, tuple[Any, ...], str]] = [
        *(
            (i, _validate_metric, (r.key, r.value, r.timestamp, r.step), f"metrics[{n}]")
            for n, (i, r) in enumerate(metrics)
            if not (
                r.key in keys_ok
                and type(r.value) is float
                and type(r.timestamp) is int
                and r.timestamp >= 0
                and type(r.step) is int
            )
        ),
        *(
            (i, _validate_param, (r.key, r.value), f"params[{n}]")
            for n, (i, r) in enumerate(params)
        ),
        *((i, _validate_tag, (r.key, r.value), f"tags[{n}]") for n, (i, r) in enumerate(tags)),
    ]
    at = 0
    try:
        for at, check, args, path in checks:  # noqa: B007 (``at`` names the failing record)
            check(*args, path=path)
            if check is _validate_metric:
                _remember(keys_ok, args[0])
        at = 0
        _validate_batch_log_limits(metrics, params, tags)  # type: ignore[no-untyped-call]
        seen: set[str] = set()
        for i, prm in params:
            if prm.key in seen:
                at = i
                break
            seen.add(prm.key)
        _validate_param_keys_unique([prm for _, prm in params])  # type: ignore[no-untyped-call]
    except MlflowException as exc:
        return UnitFailed(at, *_mlflow_failure(exc))
    return None


class Decisions:
    """What one transaction read and decided: the state its records are applied to, in order."""

    __slots__ = (
        "latest",
        "latest_dirty",
        "latest_stored",
        "metric_keys_ok",
        "metric_rows",
        "param_rows",
        "params",
        "run_names",
        "tags",
        "tags_stored",
    )

    def __init__(self, metric_keys_ok: set[str]) -> None:
        self.params: dict[Key, str] = {}
        self.param_rows: list[dict[str, Any]] = []
        self.metric_rows: list[tuple[str, float, int, int, bool, str]] = []  # table's column order
        self.latest: dict[Key, tuple[int, int, float, bool]] = {}  # step, timestamp, value, nan
        self.latest_stored: set[Key] = set()
        self.latest_dirty: dict[Key, None] = {}
        self.tags: dict[Key, str] = {}
        self.tags_stored: set[Key] = set()
        self.run_names: dict[str, str] = {}
        self.metric_keys_ok = metric_keys_ok  # metric names MLflow's rules accepted (shared)

    def entry(self, run_id: str, records: Sequence[Record]) -> dict[int, Failure]:
        """Apply one entry of a live run; the failed records by index."""
        failures: dict[int, Failure] = {}
        last_tag: dict[str, str] = {}  # key -> the last value of the entry that changes it
        ok_keys = self.metric_keys_ok
        metric_rows = self.metric_rows
        latest = self.latest
        dirty = self.latest_dirty
        for i, rec in enumerate(records):
            if isinstance(rec, Metric):
                key, value, ts, step = rec.key, rec.value, rec.timestamp, rec.step
                if not (
                    key in ok_keys
                    and type(value) is float
                    and type(ts) is int
                    and ts >= 0
                    and type(step) is int
                ):
                    problem = _metric_problem(rec, ok_keys)
                    if problem is not None:
                        failures[i] = problem
                        continue
                    value = float(value)
                is_nan = False
                if value != value:
                    is_nan, value = True, 0.0
                elif value == _INF:
                    value = _MAX_FLOAT
                elif value == -_INF:
                    value = -_MAX_FLOAT
                metric_rows.append((key, value, ts, step, is_nan, run_id))
                lk = (run_id, key)
                cur = latest.get(lk)
                if cur is None or (step, ts, value) > (cur[0], cur[1], cur[2]):
                    latest[lk] = (step, ts, value, is_nan)
                    dirty[lk] = None
            elif isinstance(rec, Param):
                problem = self._param(run_id, rec)
                if problem is not None:
                    failures[i] = problem
            else:
                problem = _tag(rec, last_tag)
                if problem is not None:
                    failures[i] = problem
        for tag_key, tag_value in last_tag.items():
            if tag_key == RUN_NAME_TAG:
                self.run_names[run_id] = tag_value
            self.tags[(run_id, tag_key)] = tag_value
        return failures

    def unit(self, run_id: str, records: Sequence[Record]) -> UnitFailed | None:
        """Apply one unit of a live run (it passed :func:`unit_problem`) all-or-nothing:
        ``_log_params``' changed-param check first, for every param of the unit."""
        changed: list[dict[str, str]] = []
        first = 0
        for i, rec in enumerate(records):
            if type(rec) is Param:
                _, key, value = _param_problem(rec)
                old = self.params.get((run_id, key))
                if old is not None and old != value:
                    if not changed:
                        first = i
                    changed.append({"key": key, "old_value": old, "new_value": value})
        if changed:
            return UnitFailed(
                first,
                "INVALID_PARAMETER_VALUE",
                "Changing param values is not allowed. Params were already"
                f" logged='{changed}' for run ID='{run_id}'.",
            )
        failures = self.entry(run_id, records)
        if failures:  # not expected after unit_problem; reported, though written
            i = min(failures)
            return UnitFailed(i, *failures[i])
        return None

    def _param(self, run_id: str, rec: Param) -> Failure | None:
        problem, key, value = _param_problem(rec)
        if problem is not None:
            return problem
        old = self.params.get((run_id, key))
        if old is None:
            self.params[(run_id, key)] = value
            self.param_rows.append({"run_uuid": run_id, "key": key, "value": value})
            return None
        if old == value:
            return None
        non_matching = [{"key": key, "old_value": old, "new_value": value}]
        return (
            "INVALID_PARAMETER_VALUE",
            "Changing param values is not allowed. Params were already"
            f" logged='{non_matching}' for run ID='{run_id}'.",
        )


def _tag(rec: Record, last: dict[str, str]) -> Failure | None:
    try:
        tag = _validate_tag(rec.key, rec.value, path="tags[0]")  # type: ignore[no-untyped-call]
    except MlflowException as exc:
        return _mlflow_failure(exc)
    if tag.key == RUN_NAME_TAG and not tag.value:
        return None  # set_tag -> update_run_info(run_name=""): validated, changes nothing
    last[tag.key] = tag.value
    return None


def _metric_problem(rec: Metric, keys_ok: set[str]) -> Failure | None:
    try:
        _validate_metric(rec.key, rec.value, rec.timestamp, rec.step, path="metrics[0]")  # type: ignore[no-untyped-call]
    except MlflowException as exc:
        return _mlflow_failure(exc)
    _remember(keys_ok, rec.key)
    return None


def _remember(keys_ok: set[str], key: str) -> None:
    """A metric name MLflow's rules accepted (the cache is bounded)."""
    if len(keys_ok) >= _MAX_CACHED_KEYS:
        keys_ok.clear()
    keys_ok.add(key)


def _param_problem(rec: Param) -> tuple[Failure | None, str, str]:
    """(error, key, value as MLflow stores it: truncated)."""
    try:
        param = _validate_param(rec.key, rec.value, path="params[0]")  # type: ignore[no-untyped-call]
    except MlflowException as exc:
        return _mlflow_failure(exc), rec.key, rec.value
    return None, param.key, param.value
