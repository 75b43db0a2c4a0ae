"""``tracker_client.validation``: the path the daemon and older code import; the module is
:mod:`tracker_client.wire.validation` (this one only re-exports it; the client's own modules import
the new path, a contract in .importlinter)."""

from __future__ import annotations

from .wire.validation import (
    MAX_DATASET_DIGEST_LENGTH,
    MAX_DATASET_NAME_LENGTH,
    MAX_EXPERIMENT_NAME_LENGTH,
    MAX_EXPERIMENT_TAG_VALUE_LENGTH,
    MAX_KEY_LENGTH,
    MAX_PARAM_VALUE_LENGTH,
    MAX_TAG_VALUE_LENGTH,
    artifact_path_problem,
    check_artifact_path,
    check_experiment_name,
    check_experiment_tag,
    check_key,
    check_metric,
    check_metric_extras,
    check_param,
    check_run_id,
    check_status,
    check_tag,
    record_problem,
)

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
