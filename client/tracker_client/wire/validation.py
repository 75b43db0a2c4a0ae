"""MLflow's client-side input rules, reproduced without importing MLflow (pure, no I/O).

A bad metric, param or tag is reported where ``Run.log_metric(...)`` and friends are called, not
seconds later when the daemon hands a batch to MLflow. The rules follow ``mlflow.utils.validation``
(``_validate_metric``, ``_validate_param``, ``_validate_tag``), ``MlflowClient`` (params and tag
values are converted with ``str()``) and ``mlflow.entities``:

* Keys (metric, param and tag names) must match MLflow's ``^[/\\w.\\- :]*$`` (no ``:`` on Windows),
  must be normalised relative paths (MLflow's ``path_not_unique``: not empty, not ``.``, no leading
  ``/`` or ``..``, no ``//``, ``/./``, ``/../`` or trailing ``/``) and at most 250 characters. Like
  MLflow the name check uses ``re.match`` with ``$``, so a single trailing newline is accepted.
* Param values (6000 characters) and tag values (8000) that are too long are truncated with a
  logged warning, or rejected with :class:`ValueError` when ``MLFLOW_TRUNCATE_LONG_VALUES`` is
  false. The variable is read when a value is too long, so changing it at run time takes effect.
* Metric values must be real numbers: ``float`` (NaN and +/-inf included), ``int`` (converted to
  ``float``) or anything ``float()`` accepts that is not a string, bytes or ``bool``.
* Steps are int64, timestamps non-negative int64 (milliseconds); ``bool`` and ``float`` are not
  accepted. MLflow's defaults (step 0, timestamp "now") are the caller's job.

Wrong types raise :class:`TypeError`, wrong values :class:`ValueError`; every message names the
field, the problem and the limit. Keys and run IDs that passed once are remembered in bounded sets,
so validating a repeated key costs one set lookup.
"""

from __future__ import annotations

import logging
import operator
import os
import posixpath
import re
from typing import Final, SupportsIndex

from .messages import Metric, Param, Tag

__all__ = [
    "MAX_DATASET_DIGEST_LENGTH",
    "MAX_DATASET_NAME_LENGTH",
    "MAX_EXPERIMENT_NAME_LENGTH",
    "MAX_EXPERIMENT_TAG_VALUE_LENGTH",
    "MAX_KEY_LENGTH",
    "MAX_PARAM_VALUE_LENGTH",
    "MAX_TAG_VALUE_LENGTH",
    "artifact_path_problem",
    "check_artifact_path",
    "check_experiment_name",
    "check_experiment_tag",
    "check_key",
    "check_metric",
    "check_metric_extras",
    "check_param",
    "check_run_id",
    "check_status",
    "check_tag",
    "record_problem",
]

MAX_KEY_LENGTH: Final = 250
MAX_PARAM_VALUE_LENGTH: Final = 6000
MAX_TAG_VALUE_LENGTH: Final = 8000
MAX_EXPERIMENT_NAME_LENGTH: Final = 500
MAX_EXPERIMENT_TAG_VALUE_LENGTH: Final = 20000  # MLflow 3; MLflow 2 allowed 5000
MAX_DATASET_NAME_LENGTH: Final = 500
MAX_DATASET_DIGEST_LENGTH: Final = 36

_logger = logging.getLogger(__name__)

_TRUNCATE_ENV: Final = "MLFLOW_TRUNCATE_LONG_VALUES"
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1

# mlflow.utils.validation.validate_param_and_metric_name / bad_character_message: no ':' on Windows
_WINDOWS: Final = os.name == "nt"
_NAME_RE: Final = re.compile(r"^[/\w.\- ]*$" if _WINDOWS else r"^[/\w.\- :]*$")
_NAME_CHAR_RE: Final = re.compile(r"[/\w.\- ]" if _WINDOWS else r"[/\w.\- :]")
_ALLOWED_CHARS: Final = (
    "alphanumerics, underscores (_), dashes (-), periods (.), spaces ( )"
    + ("" if _WINDOWS else ", colons (:)")
    + " and slashes (/)"
)

# mlflow.utils.validation._RUN_ID_REGEX
_RUN_ID_RE: Final = re.compile(r"^[a-zA-Z0-9][\w\-]{0,255}$")

# mlflow.entities.RunStatus (the names of the RunStatus proto enum)
_RUN_STATUSES: Final = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")

# Keys / run IDs already validated. Only exact ``str`` instances are added; when a set is full it
# is cleared, which keeps memory bounded and costs one re-validation per key afterwards.
_CACHE_MAX = 8192  # not Final: tests shrink it
_valid_keys: set[str] = set()
_valid_run_ids: set[str] = set()


def _short(s: str, limit: int = 60) -> str:
    """``repr`` of ``s``, shortened so that error messages stay one readable line."""
    if len(s) <= limit:
        return repr(s)
    return f"{s[:limit]!r}..."


def _tname(v: object) -> str:
    return type(v).__name__


def _truncate_enabled() -> bool:
    """``MLFLOW_TRUNCATE_LONG_VALUES`` parsed like MLflow's ``_BooleanEnvironmentVariable``."""
    raw = os.environ.get(_TRUNCATE_ENV)
    if raw is None:
        return True
    low = raw.lower()
    if low in ("true", "1"):
        return True
    if low in ("false", "0"):
        return False
    raise ValueError(
        f"{_TRUNCATE_ENV} value must be one of ['true', 'false', '1', '0'] (case-insensitive), "
        f"but got {raw!r}"
    )


def _key_problem(key: str, field: str) -> str | None:
    """Why MLflow would reject ``key`` as a metric/param/tag name, or None."""
    # fullmatch: "$" alone would let a trailing newline through (MLflow 3.18 refuses it)
    if _NAME_RE.fullmatch(key) is None:
        for i, ch in enumerate(key):
            if _NAME_CHAR_RE.fullmatch(ch) is None:
                return (
                    f"{field} {_short(key)}: character {ch!r} at position {i} is not allowed; "
                    f"MLflow names may only contain {_ALLOWED_CHARS}"
                )
        raise AssertionError(key)  # pragma: no cover - the regex failed, so a character did
    if not key:
        return f"{field} is empty; MLflow requires a non-empty name"
    # mlflow.utils.validation.path_not_unique
    norm = posixpath.normpath(key)
    if norm != key:
        return (
            f"{field} {_short(key)}: MLflow treats names as paths and this one normalises to "
            f"{_short(norm)}; names must be normalised relative paths (no '//', '/./', '/../' "
            "or trailing '/')"
        )
    if norm == ".":
        return f"{field} '.': MLflow does not allow '.' as a name"
    if norm.startswith(".."):
        return f"{field} {_short(key)}: MLflow does not allow names starting with '..'"
    if norm.startswith("/"):
        return f"{field} {_short(key)}: MLflow does not allow names starting with '/'"
    if len(key) > MAX_KEY_LENGTH:
        return (
            f"{field} {_short(key)}: is {len(key)} characters; MLflow's limit is {MAX_KEY_LENGTH}"
        )
    return None


def check_key(key: object, field: str = "key") -> str:
    """Validate a metric, param or tag name and return it as a plain ``str``.

    ``field`` names the argument in error messages (for example ``"metric key"``). Raises
    :class:`TypeError` if ``key`` is not a string and :class:`ValueError` if MLflow would reject it.
    """
    if type(key) is str and key in _valid_keys:
        return key
    if not isinstance(key, str):
        raise TypeError(f"{field}: expected a str, got {_tname(key)}")
    key = str.__str__(key)  # a str subclass becomes a plain str
    problem = _key_problem(key, field)
    if problem is not None:
        raise ValueError(problem)
    if len(_valid_keys) >= _CACHE_MAX:
        _valid_keys.clear()
    _valid_keys.add(key)
    return key


def _metric_value(key: str, value: object) -> float:
    """Slow path of :func:`check_metric` for a value that is not exactly a ``float``."""
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:
            raise ValueError(
                f"metric {key!r} value: an int of {value.bit_length()} bits is too large for a "
                "64-bit float"
            ) from None
    if isinstance(value, bool | str | bytes | bytearray | memoryview) or value is None:
        raise TypeError(
            f"metric {key!r} value: expected a real number (float or int), got {_tname(value)}"
        )
    try:
        # float subclasses (numpy.float64), numpy scalars, Fraction, Decimal, 1-element tensors.
        return float(value)  # type: ignore[arg-type]
    except OverflowError:
        raise ValueError(f"metric {key!r} value: too large for a 64-bit float") from None
    except (TypeError, ValueError):
        raise TypeError(
            f"metric {key!r} value: expected a real number (float or int), got {_tname(value)}"
        ) from None


def _int64(key: str, what: str, v: object, minimum: int) -> int:
    """Slow path of :func:`check_metric` for step and timestamp."""
    if type(v) is int:
        n = v
    elif isinstance(v, bool) or not isinstance(v, SupportsIndex):
        raise TypeError(f"metric {key!r} {what}: expected an int, got {_tname(v)}")
    else:
        n = operator.index(v)  # numpy integers and other exact integer types
    if n < minimum:
        need = "a non-negative" if minimum == 0 else "an"
        raise ValueError(f"metric {key!r} {what}: {n} is out of range; MLflow needs {need} int64")
    if n > _INT64_MAX:
        raise ValueError(
            f"metric {key!r} {what}: {n} is out of range; MLflow's limit is 2**63-1 (int64)"
        )
    return n


def check_metric(
    key: object, value: object, step: object, timestamp: object
) -> tuple[str, float, int, int]:
    """Validate one metric; return ``(key, value as float, step, timestamp)``.

    This is on the hot path of ``log_metric``: a cached key, a ``float`` value and in-range
    ``int`` step and timestamp cost one set lookup and a few type checks.
    """
    if type(key) is not str or key not in _valid_keys:
        key = check_key(key, "metric key")
    if type(value) is not float:
        value = _metric_value(key, value)
    if type(step) is not int or not -9223372036854775808 <= step <= 9223372036854775807:
        step = _int64(key, "step", step, _INT64_MIN)
    if type(timestamp) is not int or not 0 <= timestamp <= 9223372036854775807:
        timestamp = _int64(key, "timestamp", timestamp, 0)
    return key, value, step, timestamp


def _opt_str(v: object, field: str, limit: int | None) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise TypeError(f"{field}: expected a str or None, got {_tname(v)}")
    if limit is not None and len(v) > limit:
        raise ValueError(f"{field} {_short(v)}: is {len(v)} characters; MLflow's limit is {limit}")
    return str.__str__(v)


def check_metric_extras(
    model_id: object, dataset_name: object, dataset_digest: object
) -> tuple[str | None, str | None, str | None]:
    """Validate a metric's optional ``model_id``, ``dataset_name`` and ``dataset_digest``.

    As in ``mlflow.entities.Metric``, the dataset name and digest come together or not at all.
    """
    mid = _opt_str(model_id, "metric model_id", None)
    name = _opt_str(dataset_name, "metric dataset_name", MAX_DATASET_NAME_LENGTH)
    digest = _opt_str(dataset_digest, "metric dataset_digest", MAX_DATASET_DIGEST_LENGTH)
    if (name is None) != (digest is None):
        raise ValueError(
            "metric dataset_name and dataset_digest: both must be given if one is "
            f"(got dataset_name={_short(name) if name is not None else None}, "
            f"dataset_digest={_short(digest) if digest is not None else None})"
        )
    return mid, name, digest


def _check_value(kind: str, key: str, value: object, limit: int) -> str:
    text = value if type(value) is str else str(value)
    n = len(text)
    if n <= limit:
        return text
    if _truncate_enabled():
        _logger.warning(
            "%s %r: value is %d characters; truncated to MLflow's limit of %d "
            "(set %s=false to raise instead)",
            kind,
            key,
            n,
            limit,
            _TRUNCATE_ENV,
        )
        return text[:limit]
    raise ValueError(
        f"{kind} {key!r}: value is {n} characters; MLflow's limit is {limit} "
        f"({_TRUNCATE_ENV} is false, so it is not truncated)"
    )


def check_param(key: object, value: object) -> tuple[str, str]:
    """Validate a param; the value is converted with ``str()`` like ``MlflowClient.log_param``.

    A value over 6000 characters is truncated with a logged warning, or raises
    :class:`ValueError` if ``MLFLOW_TRUNCATE_LONG_VALUES`` is false.
    """
    k = check_key(key, "param key")
    return k, _check_value("param", k, value, MAX_PARAM_VALUE_LENGTH)


def check_tag(key: object, value: object) -> tuple[str, str]:
    """Validate a run tag; the value is converted with ``str()`` like ``MlflowClient.set_tag``.

    A value over 8000 characters is truncated with a logged warning, or raises
    :class:`ValueError` if ``MLFLOW_TRUNCATE_LONG_VALUES`` is false.
    """
    k = check_key(key, "tag key")
    return k, _check_value("tag", k, value, MAX_TAG_VALUE_LENGTH)


def check_experiment_tag(key: object, value: object) -> tuple[str, str]:
    """Validate an experiment tag (MLflow's ``_validate_experiment_tag``): a key like a run
    tag's, the value converted with ``str()``, at most 20000 characters (never truncated)."""
    k = check_key(key, "experiment tag key")
    text = value if type(value) is str else str(value)
    if len(text) > MAX_EXPERIMENT_TAG_VALUE_LENGTH:
        raise ValueError(
            f"experiment tag {k!r}: value is {len(text)} characters; MLflow's limit is "
            f"{MAX_EXPERIMENT_TAG_VALUE_LENGTH}"
        )
    return k, text


def check_experiment_name(name: object) -> str:
    """Validate an experiment name: a ``str`` of at most 500 characters, not empty or whitespace
    only (the strictest rule across the supported MLflow versions: 3.18 refuses whitespace)."""
    if not isinstance(name, str):
        raise TypeError(f"experiment name: expected a str, got {_tname(name)}")
    if not name.strip():
        raise ValueError(
            f"experiment name {name!r} is empty or whitespace only; MLflow requires a name"
        )
    if len(name) > MAX_EXPERIMENT_NAME_LENGTH:
        raise ValueError(
            f"experiment name {_short(name)}: is {len(name)} characters; "
            f"MLflow's limit is {MAX_EXPERIMENT_NAME_LENGTH}"
        )
    return str.__str__(name)


def check_run_id(run_id: object) -> str:
    """Validate a run ID against MLflow's ``_RUN_ID_REGEX`` (``^[a-zA-Z0-9][\\w\\-]{0,255}$``)."""
    if type(run_id) is str and run_id in _valid_run_ids:
        return run_id
    if not isinstance(run_id, str):
        raise TypeError(f"run_id: expected a str, got {_tname(run_id)}")
    run_id = str.__str__(run_id)
    if _RUN_ID_RE.fullmatch(run_id) is None:  # no trailing newline (MLflow >= 3.18)
        raise ValueError(
            f"run_id {_short(run_id)}: MLflow run IDs start with a letter or digit followed by "
            "up to 255 letters, digits, underscores or dashes (256 characters at most)"
        )
    if len(_valid_run_ids) >= _CACHE_MAX:
        _valid_run_ids.clear()
    _valid_run_ids.add(run_id)
    return run_id


def artifact_path_problem(path: str) -> str | None:
    """What MLflow's ``verify_artifact_path`` (``path_not_unique``) finds wrong with a non-empty
    ``artifact_path``, as a phrase without the path ("must not contain a '..' component"), or
    None when it is valid."""
    if "\x00" in path:
        return "contains a NUL character"
    if path.startswith("/"):
        return "must be relative to the run's artifact root, not absolute"
    if ".." in path.split("/"):
        return "must not contain a '..' component"
    norm = posixpath.normpath(path)
    if norm == ".":
        return "names the run's artifact root; pass None instead"
    if norm != path:
        return (
            "must be a normalised relative path (no empty, '.' or '..' component, no trailing "
            f"'/'); MLflow refuses it, write {_short(norm)}"
        )
    if norm.startswith(".."):  # MLflow's path_not_unique rejects '..a' and '...' too
        return "MLflow does not allow paths starting with '..'"
    return None


def check_artifact_path(path: object) -> str | None:
    """Validate the destination directory of an artifact inside the run's artifact root,
    exactly as MLflow's ``verify_artifact_path`` will (``path_not_unique``).

    ``None`` and ``""`` mean the root and return None. Otherwise the path must be relative,
    ``/``-separated and already normalised: ``posixpath.normpath(path) == path`` (so no empty,
    ``.`` or ``..`` component and no trailing ``/``: ``a//b``, ``./a``, ``a/`` and ``.`` are
    refused), must not start with ``..`` (MLflow rejects ``..a`` too) and must not contain NUL.
    It is returned unchanged: the daemon uploads under exactly this path.
    """
    if path is None:
        return None
    if not isinstance(path, str):
        raise TypeError(f"artifact_path: expected a str or None, got {_tname(path)}")
    if not path:
        return None
    problem = artifact_path_problem(path)
    if problem is not None:
        raise ValueError(f"artifact_path {_short(path)}: {problem}")
    return path


def check_status(status: object) -> str:
    """Validate a run status name: one of MLflow's ``RunStatus`` names (case-sensitive)."""
    if not isinstance(status, str):
        raise TypeError(f"run status: expected a str, got {_tname(status)}")
    if status not in _RUN_STATUSES:
        raise ValueError(
            f"run status {_short(status)} is not one of MLflow's run statuses: "
            f"{', '.join(_RUN_STATUSES)}"
        )
    return str.__str__(status)


def record_problem(record: Metric | Param | Tag) -> str | None:
    """Re-validate a record decoded off the wire; None if valid, else a one-line reason.

    Used by the daemon, because a foreign (for example C++) client may skip client-side checks.
    Unlike :func:`check_param` and :func:`check_tag`, an over-long param or tag value is a
    problem here whatever ``MLFLOW_TRUNCATE_LONG_VALUES`` says: the daemon must not silently
    truncate what another client sent.
    """
    try:
        if type(record) is Metric:
            check_run_id(record.run_id)
            check_metric(record.key, record.value, record.step, record.timestamp)
            check_metric_extras(record.model_id, record.dataset_name, record.dataset_digest)
            return None
        if type(record) is Param:
            kind, limit = "param", MAX_PARAM_VALUE_LENGTH
        elif type(record) is Tag:
            kind, limit = "tag", MAX_TAG_VALUE_LENGTH
        else:
            return f"record: expected a Metric, Param or Tag, got {_tname(record)}"
        check_run_id(record.run_id)
        key = check_key(record.key, f"{kind} key")
        value: object = record.value
        if not isinstance(value, str):
            return f"{kind} {key!r} value: expected a str, got {_tname(value)}"
        if len(value) > limit:
            return (
                f"{kind} {key!r}: value is {len(value)} characters; MLflow's limit is {limit} "
                "(the daemon does not truncate values sent by clients)"
            )
        return None
    except (TypeError, ValueError) as exc:
        return str(exc)
