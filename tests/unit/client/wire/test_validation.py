"""Tests for wire.validation: every rule accepted and rejected, plus a differential test
against MLflow's own validators (``mlflow.utils.validation``)."""

from __future__ import annotations

import logging
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.utils import validation as mv

from tracker_client.protocol import Metric, Param, Tag
from tracker_client.wire import validation as v

CLIENT_DIR = Path(__file__).resolve().parents[4] / "client"
RUN_ID = "0123456789abcdef0123456789abcdef"
TS = 1_700_000_000_000
INT64_MAX = 2**63 - 1

pytestmark = pytest.mark.compat  # agreement with MLflow: run on the oldest and newest MLflow too


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    v._valid_keys.clear()
    v._valid_run_ids.clear()
    monkeypatch.delenv("MLFLOW_TRUNCATE_LONG_VALUES", raising=False)


# --------------------------------------------------------------------------------------------
# Module surface
# --------------------------------------------------------------------------------------------


def test_public_api() -> None:
    assert sorted(v.__all__) == sorted(
        [
            "MAX_KEY_LENGTH",
            "MAX_PARAM_VALUE_LENGTH",
            "MAX_TAG_VALUE_LENGTH",
            "MAX_EXPERIMENT_NAME_LENGTH",
            "MAX_EXPERIMENT_TAG_VALUE_LENGTH",
            "MAX_DATASET_NAME_LENGTH",
            "MAX_DATASET_DIGEST_LENGTH",
            "check_key",
            "check_metric",
            "check_metric_extras",
            "check_param",
            "check_tag",
            "check_experiment_name",
            "check_experiment_tag",
            "check_run_id",
            "check_artifact_path",
            "artifact_path_problem",
            "check_status",
            "record_problem",
        ]
    )
    for name in v.__all__:
        assert hasattr(v, name)


def test_limits_match_mlflow() -> None:
    assert v.MAX_EXPERIMENT_TAG_VALUE_LENGTH == mv.MAX_EXPERIMENT_TAG_VAL_LENGTH == 20000
    assert v.MAX_KEY_LENGTH == mv.MAX_ENTITY_KEY_LENGTH == 250
    assert v.MAX_PARAM_VALUE_LENGTH == mv.MAX_PARAM_VAL_LENGTH == 6000
    assert v.MAX_TAG_VALUE_LENGTH == mv.MAX_TAG_VAL_LENGTH == 8000
    assert v.MAX_EXPERIMENT_NAME_LENGTH == mv.MAX_EXPERIMENT_NAME_LENGTH == 500
    assert v.MAX_DATASET_NAME_LENGTH == mv.MAX_DATASET_NAME_SIZE == 500
    assert v.MAX_DATASET_DIGEST_LENGTH == mv.MAX_DATASET_DIGEST_SIZE == 36


def test_import_does_not_pull_in_mlflow_or_anyio() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CLIENT_DIR), env.get("PYTHONPATH")]))
    code = (
        "import tracker_client.wire.validation, sys; "
        "assert 'mlflow' not in sys.modules, 'mlflow imported'; "
        "assert 'anyio' not in sys.modules, 'anyio imported'"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------

GOOD_KEYS = [
    "loss",
    "train/loss",
    "a.b-c d:e_f",
    "λ",
    "损失",
    "x" * 250,
    "a..",
    ".a",
    "a/b/c",
    " ",
]

BAD_KEYS = [
    ("", "empty"),
    ("loss\x00", "character '\\x00'"),
    ("a\tb", "character '\\t'"),
    ("loss\n\n", "character '\\n'"),
    ("loss\n", "character '\\n' at position 4"),  # MLflow < 3.18 let one trailing newline in
    ("a,b", "character ','"),
    ("a\\b", "character '\\\\'"),
    (".", "'.'"),
    ("..", "'..'"),
    ("..a", "'..'"),
    ("/a", "'/'"),
    ("a/", "normalises to 'a'"),
    ("a//b", "normalises to 'a/b'"),
    ("./a", "normalises to 'a'"),
    ("a/../b", "normalises to 'b'"),
    ("x" * 251, "is 251 characters; MLflow's limit is 250"),
]


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_check_key_accepts(key: str) -> None:
    assert v.check_key(key) == key
    assert key in v._valid_keys


@pytest.mark.parametrize(("key", "fragment"), BAD_KEYS)
def test_check_key_rejects(key: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)) as info:
        v.check_key(key, "metric key")
    assert str(info.value).startswith("metric key")
    assert "\n" not in str(info.value)
    assert key not in v._valid_keys


def test_bad_character_message_names_field_key_and_allowed_set() -> None:
    with pytest.raises(ValueError) as info:
        v.check_metric("loss\x00", 1.0, 0, TS)
    msg = str(info.value)
    assert msg.startswith("metric key 'loss\\x00'")
    assert "position 4" in msg and "alphanumerics" in msg


@pytest.mark.parametrize("key", [None, 5, b"loss", ["a"], 1.5])
def test_check_key_rejects_non_str(key: object) -> None:
    with pytest.raises(TypeError, match=r"^tag key: expected a str, got"):
        v.check_key(key, "tag key")


def test_str_subclass_key_becomes_plain_str() -> None:
    class Name(str):
        pass

    out = v.check_key(Name("loss"))
    assert out == "loss" and type(out) is str
    k, *_ = v.check_metric(Name("acc"), 1.0, 0, TS)
    assert type(k) is str


def test_long_key_is_shortened_in_message() -> None:
    with pytest.raises(ValueError) as info:
        v.check_key("k" * 10_000, "param key")
    assert len(str(info.value)) < 300


def test_key_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(v, "_CACHE_MAX", 10)
    for i in range(35):
        v.check_key(f"k{i}")
        assert len(v._valid_keys) <= 10
    assert "k34" in v._valid_keys


def test_cached_key_still_checked_by_type() -> None:
    v.check_key("loss")
    with pytest.raises(TypeError):
        v.check_key(b"loss")


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def test_check_metric_returns_normalised_tuple() -> None:
    assert v.check_metric("loss", 0.25, 3, TS) == ("loss", 0.25, 3, TS)
    # cached path gives the same answer
    assert v.check_metric("loss", 0.25, 3, TS) == ("loss", 0.25, 3, TS)


def test_int_value_converted_to_float() -> None:
    _, value, _, _ = v.check_metric("loss", 3, 0, TS)
    assert value == 3.0 and type(value) is float


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324])
def test_special_floats_accepted(value: float) -> None:
    _, out, _, _ = v.check_metric("loss", value, 0, TS)
    assert out == value or (math.isnan(out) and math.isnan(value))


@pytest.mark.parametrize(
    ("value", "expected"),
    [(Fraction(1, 4), 0.25), (Decimal("1.5"), 1.5), (2**1000, float(2**1000))],
)
def test_other_real_numbers_converted(value: object, expected: float) -> None:
    _, out, _, _ = v.check_metric("loss", value, 0, TS)
    assert out == expected and type(out) is float


def test_float_like_objects_converted() -> None:
    class Scalar:  # stands in for numpy scalars / 1-element tensors (numpy is not installed)
        def __float__(self) -> float:
            return 0.5

    class F64(float):
        pass

    assert v.check_metric("loss", Scalar(), 0, TS)[1] == 0.5
    out = v.check_metric("loss", F64(2.0), 0, TS)[1]
    assert out == 2.0 and type(out) is float


@pytest.mark.parametrize("value", [True, False, "abc", "1.5", b"1", None, [1.0], 1 + 2j, object()])
def test_non_numeric_values_rejected(value: object) -> None:
    with pytest.raises(TypeError, match=r"^metric 'loss' value: expected a real number"):
        v.check_metric("loss", value, 0, TS)


def test_int_too_large_for_double_rejected() -> None:
    with pytest.raises(ValueError, match=r"metric 'loss' value: .*too large for a 64-bit float"):
        v.check_metric("loss", 2**1024, 0, TS)


@pytest.mark.parametrize("step", [0, -1, -(2**63), INT64_MAX, 10**12])
def test_step_accepted(step: int) -> None:
    assert v.check_metric("loss", 1.0, step, TS)[2] == step


@pytest.mark.parametrize("step", [1.5, 3.0, "3", True, None])
def test_step_wrong_type(step: object) -> None:
    with pytest.raises(TypeError, match=r"^metric 'loss' step: expected an int"):
        v.check_metric("loss", 1.0, step, TS)


@pytest.mark.parametrize("step", [2**63, -(2**63) - 1])
def test_step_out_of_int64(step: int) -> None:
    with pytest.raises(ValueError, match=r"^metric 'loss' step: .* out of range"):
        v.check_metric("loss", 1.0, step, TS)


@pytest.mark.parametrize("ts", [0, TS, INT64_MAX])
def test_timestamp_accepted(ts: int) -> None:
    assert v.check_metric("loss", 1.0, 0, ts)[3] == ts


@pytest.mark.parametrize(
    ("ts", "exc", "fragment"),
    [
        (-1, ValueError, "non-negative int64"),
        (2**63, ValueError, "2**63-1"),
        (1.5, TypeError, "expected an int"),
        ("0", TypeError, "expected an int"),
        (False, TypeError, "expected an int"),
        (None, TypeError, "expected an int"),
    ],
)
def test_timestamp_rejected(ts: object, exc: type[Exception], fragment: str) -> None:
    with pytest.raises(exc, match=re.escape(fragment)) as info:
        v.check_metric("loss", 1.0, 0, ts)
    assert str(info.value).startswith("metric 'loss' timestamp")


def test_index_types_accepted_for_step_and_timestamp() -> None:
    class I64:  # stands in for numpy.int64
        def __index__(self) -> int:
            return 7

    _, _, step, ts = v.check_metric("loss", 1.0, I64(), I64())
    assert (step, ts) == (7, 7) and type(step) is int


def test_check_metric_key_errors_name_metric_key() -> None:
    with pytest.raises(TypeError, match=r"^metric key: expected a str"):
        v.check_metric(None, 1.0, 0, TS)
    with pytest.raises(ValueError, match=r"^metric key 'a//b'"):
        v.check_metric("a//b", 1.0, 0, TS)


def test_check_metric_extras() -> None:
    assert v.check_metric_extras(None, None, None) == (None, None, None)
    assert v.check_metric_extras("m-1", "train", "abc123") == ("m-1", "train", "abc123")
    assert v.check_metric_extras(None, "d" * 500, "x" * 36) == (None, "d" * 500, "x" * 36)
    with pytest.raises(
        ValueError, match=r"dataset_name .*is 501 characters; MLflow's limit is 500"
    ):
        v.check_metric_extras(None, "d" * 501, "x")
    with pytest.raises(
        ValueError, match=r"dataset_digest .*is 37 characters; MLflow's limit is 36"
    ):
        v.check_metric_extras(None, "d", "x" * 37)
    with pytest.raises(ValueError, match="both must be given"):
        v.check_metric_extras(None, "train", None)
    with pytest.raises(ValueError, match="both must be given"):
        v.check_metric_extras(None, None, "abc")
    with pytest.raises(TypeError, match=r"^metric model_id: expected a str or None, got int"):
        v.check_metric_extras(5, None, None)
    with pytest.raises(TypeError, match=r"^metric dataset_name"):
        v.check_metric_extras(None, b"x", "y")


# --------------------------------------------------------------------------------------------
# Params and tags
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("0.01", "0.01"),
        (0.01, "0.01"),
        (3, "3"),
        (True, "True"),
        (None, "None"),
        ([1, 2], "[1, 2]"),
    ],
)
def test_values_converted_with_str(value: object, text: str) -> None:
    assert v.check_param("lr", value) == ("lr", text)
    assert v.check_tag("lr", value) == ("lr", text)


@pytest.mark.parametrize(
    ("check", "kind", "limit"),
    [(v.check_param, "param", 6000), (v.check_tag, "tag", 8000)],
)
def test_value_at_limit_accepted(check: object, kind: str, limit: int) -> None:
    assert callable(check)
    assert check("k", "x" * limit) == ("k", "x" * limit)


@pytest.mark.parametrize(
    ("check", "kind", "limit"),
    [(v.check_param, "param", 6000), (v.check_tag, "tag", 8000)],
)
@pytest.mark.parametrize("env", [None, "true", "TRUE", "1"])
def test_long_value_truncated_with_warning(
    check: object,
    kind: str,
    limit: int,
    env: str | None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert callable(check)
    if env is not None:
        monkeypatch.setenv("MLFLOW_TRUNCATE_LONG_VALUES", env)
    with caplog.at_level(logging.WARNING, logger="tracker_client.wire.validation"):
        key, value = check("lr", "y" * (limit + 1))
    assert key == "lr" and value == "y" * limit
    (record,) = caplog.records
    assert f"{kind} 'lr'" in record.getMessage()
    assert str(limit) in record.getMessage()


@pytest.mark.parametrize(
    ("check", "kind", "limit"),
    [(v.check_param, "param", 6000), (v.check_tag, "tag", 8000)],
)
@pytest.mark.parametrize("env", ["false", "False", "0"])
def test_long_value_rejected_when_truncation_off(
    check: object, kind: str, limit: int, env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert callable(check)
    monkeypatch.setenv("MLFLOW_TRUNCATE_LONG_VALUES", env)
    expected = f"{kind} 'lr': value is {limit + 1} characters; MLflow's limit is {limit}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        check("lr", "y" * (limit + 1))
    # short values are unaffected
    assert check("lr", "ok") == ("lr", "ok")


def test_env_var_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    long = "z" * 7001
    assert v.check_param("lr", long)[1] == "z" * 6000
    monkeypatch.setenv("MLFLOW_TRUNCATE_LONG_VALUES", "false")
    with pytest.raises(ValueError):
        v.check_param("lr", long)
    monkeypatch.setenv("MLFLOW_TRUNCATE_LONG_VALUES", "true")
    assert v.check_param("lr", long)[1] == "z" * 6000


def test_invalid_env_value_rejected_like_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRUNCATE_LONG_VALUES", "maybe")
    assert v.check_param("lr", "short") == ("lr", "short")  # only consulted for long values
    with pytest.raises(ValueError, match="MLFLOW_TRUNCATE_LONG_VALUES"):
        v.check_param("lr", "z" * 7000)


def test_param_and_tag_key_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"^param key 'a b\\x00'"):
        v.check_param("a b\x00", "1")
    with pytest.raises(TypeError, match=r"^tag key: expected a str, got int"):
        v.check_tag(5, "1")
    with pytest.raises(ValueError, match=r"^tag key 'x{60}'\.\.\.: is 251 characters"):
        v.check_tag("x" * 251, "1")


# --------------------------------------------------------------------------------------------
# Experiment names, run IDs, artifact paths, statuses
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["exp", "a/b c:d", "x" * 500, " a ", "émoji 🚀"])
def test_experiment_name_accepted(name: str) -> None:
    assert v.check_experiment_name(name) == name


@pytest.mark.parametrize(
    ("name", "exc", "fragment"),
    [
        ("", ValueError, "empty"),
        (" \t", ValueError, "is empty or whitespace only"),
        ("x" * 501, ValueError, "is 501 characters; MLflow's limit is 500"),
        (None, TypeError, "expected a str, got NoneType"),
        (5, TypeError, "expected a str, got int"),
    ],
)
def test_experiment_name_rejected(name: object, exc: type[Exception], fragment: str) -> None:
    with pytest.raises(exc, match=re.escape(fragment)) as info:
        v.check_experiment_name(name)
    assert str(info.value).startswith("experiment name")


RUN_IDS_OK = [RUN_ID, "a", "A-b_c", "9" * 256, "aé"]
RUN_IDS_BAD = ["", "-abc", "_abc", "ab c", "a/b", "a" * 257, "a.b", "a\x00", "abc\n"]


@pytest.mark.parametrize("run_id", RUN_IDS_OK)
def test_run_id_accepted(run_id: str) -> None:
    assert v.check_run_id(run_id) == run_id
    assert v.check_run_id(run_id) == run_id  # cached


@pytest.mark.parametrize("run_id", RUN_IDS_BAD)
def test_run_id_rejected(run_id: str) -> None:
    with pytest.raises(ValueError, match=r"^run_id "):
        v.check_run_id(run_id)


@pytest.mark.parametrize("run_id", [None, 5, b"abc"])
def test_run_id_wrong_type(run_id: object) -> None:
    with pytest.raises(TypeError, match=r"^run_id: expected a str"):
        v.check_run_id(run_id)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (None, None),
        ("", None),
        ("plots", "plots"),
        ("a/b", "a/b"),
        ("a b:c", "a b:c"),
        ("a..", "a.."),
        (".a/b", ".a/b"),
    ],
)
def test_artifact_path_accepted(path: str | None, expected: str | None) -> None:
    assert v.check_artifact_path(path) == expected


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("/abs", "not absolute"),
        ("//abs", "not absolute"),
        ("..", "'..'"),
        ("../x", "'..'"),
        ("a/../b", "'..'"),
        ("a/..", "'..'"),
        ("a\x00b", "NUL"),
        ("..a", "starting with '..'"),
        (".../x", "starting with '..'"),
        (".", "pass None"),
        ("./", "pass None"),
        ("a//b", "normalised"),
        ("a/", "normalised"),
        ("./x/./y", "normalised"),
        ("a/./b", "normalised"),
    ],
)
def test_artifact_path_rejected(path: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)) as info:
        v.check_artifact_path(path)
    assert str(info.value).startswith("artifact_path")


def test_artifact_path_wrong_type() -> None:
    with pytest.raises(TypeError, match=r"^artifact_path: expected a str or None"):
        v.check_artifact_path(Path("a"))


def test_artifact_path_rule_is_mlflows() -> None:
    """Accepted exactly when MLflow's verify_artifact_path accepts (NUL aside)."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact import artifact_repo

    verify_artifact_path: Callable[..., None] = artifact_repo.verify_artifact_path
    paths = ["a//b/", "./a/./b", "x/y", "a..", ".a", "a/./", ".", "..a", "a/", "/a", "a/../b"]
    paths += ["a b", "-x", "~/x", "a/.b/c", "./", "a\\b", "...", "x/..."]
    for path in paths:
        try:
            verify_artifact_path(path)
            mlflow_ok = True
        except MlflowException:
            mlflow_ok = False
        try:
            ours_ok = v.check_artifact_path(path) == path
        except ValueError:
            ours_ok = False
        assert ours_ok == mlflow_ok, path


def test_status_accepts_mlflow_run_statuses() -> None:
    names = sorted(RunStatus._STRING_TO_STATUS)
    assert names == sorted(["RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"])
    for name in names:
        assert v.check_status(name) == name


@pytest.mark.parametrize("status", ["running", "DONE", "", "FINISHED "])
def test_status_rejected_lists_valid_ones(status: str) -> None:
    with pytest.raises(ValueError, match="RUNNING, SCHEDULED, FINISHED, FAILED, KILLED"):
        v.check_status(status)


def test_status_wrong_type() -> None:
    with pytest.raises(TypeError, match=r"^run status: expected a str"):
        v.check_status(3)


# --------------------------------------------------------------------------------------------
# record_problem (the daemon's re-validation)
# --------------------------------------------------------------------------------------------


def test_record_problem_accepts_valid_records() -> None:
    assert record_ok(Metric(RUN_ID, "loss", 0.5, TS, 3))
    assert record_ok(Metric(RUN_ID, "loss", math.nan, 0, -1, "m-1", "train", "d1"))
    assert record_ok(Param(RUN_ID, "lr", "x" * 6000))
    assert record_ok(Tag(RUN_ID, "note", "x" * 8000))


def record_ok(record: Metric | Param | Tag) -> bool:
    return v.record_problem(record) is None


@pytest.mark.parametrize(
    ("record", "fragment"),
    [
        (Metric(RUN_ID, "a//b", 0.5, TS, 0), "metric key 'a//b'"),
        (Metric(RUN_ID, "loss", 0.5, -5, 0), "metric 'loss' timestamp: -5"),
        (Metric(RUN_ID, "loss", 0.5, TS, 2**63), "metric 'loss' step"),
        (Metric("bad run", "loss", 0.5, TS, 0), "run_id 'bad run'"),
        (Metric(RUN_ID, "loss", 0.5, TS, 0, None, "train", None), "both must be given"),
        (Metric(RUN_ID, "loss", 0.5, TS, 0, None, "t", "d" * 37), "limit is 36"),
        (Param(RUN_ID, "lr", "x" * 6001), "param 'lr': value is 6001 characters"),
        (Tag(RUN_ID, "t", "x" * 8001), "tag 't': value is 8001 characters; MLflow's limit is 8000"),
        (Param(RUN_ID, "l\nr", "1"), "param key 'l\\nr'"),
        (Tag(RUN_ID, "", "1"), "tag key is empty"),
        (Tag(RUN_ID, "x" * 300, "1"), "is 300 characters; MLflow's limit is 250"),
    ],
)
def test_record_problem_reports_one_line(record: Metric | Param | Tag, fragment: str) -> None:
    problem = v.record_problem(record)
    assert problem is not None
    assert fragment in problem
    assert "\n" not in problem


def test_record_problem_never_truncates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRUNCATE_LONG_VALUES", "true")
    problem = v.record_problem(Param(RUN_ID, "lr", "x" * 6001))
    assert problem is not None and "6000" in problem and "does not truncate" in problem


def test_record_problem_other_objects() -> None:
    bogus: Any = "nope"
    assert v.record_problem(bogus) == "record: expected a Metric, Param or Tag, got str"


# --------------------------------------------------------------------------------------------
# Differential test against MLflow's own validators
# --------------------------------------------------------------------------------------------

TRICKY_KEYS: list[object] = [
    "loss",
    "train/loss",
    "a.b-c d:e_f",
    "λ",
    "损失",
    "²",
    "Ⅻ",
    "١٢٣",
    "loss\n",
    "loss\n\n",
    "\nloss",
    "a\tb",
    "a\r",
    "a\u2028",
    "a\u200b",
    "a\x00",
    "a\\b",
    "a,b",
    "a#b",
    "a+b",
    "",
    " ",
    " a ",
    ".",
    "..",
    "...",
    "..a",
    "a..",
    ".a",
    "a/.",
    "./a",
    "a/",
    "/a",
    "//a",
    "a//b",
    "a/../b",
    "x" * 250,
    "x" * 251,
    "é" * 250,
    "a/" * 124 + "bc",
    None,
    5,
    b"loss",
]

TRICKY_VALUES: list[object] = [
    "",
    "0.01",
    "x" * 6000,
    "x" * 6001,
    "x" * 8000,
    "x" * 8001,
    "\x00\n",
    None,
    1.5,
    True,
]


# Inputs that MLflow refuses from 3.18 on and older MLflow accepted. The client applies the
# strictest rule of the supported range, so on an older MLflow it is stricter exactly here (and
# nowhere else): these tests run on the lock's MLflow and on the oldest and newest of the range.
REFUSED_BY_NEWER_MLFLOW: frozenset[object] = frozenset({"loss\n", "abc\n", " "})


def agrees(ours: bool, mlflow: bool, value: object) -> bool:
    """Ours accepts exactly what this MLflow accepts, but for what a newer MLflow refuses."""
    return ours is mlflow or (not ours and mlflow and value in REFUSED_BY_NEWER_MLFLOW)


def _mlflow_ok(fn: object, *args: object) -> bool:
    assert callable(fn)
    try:
        fn(*args)
    except (MlflowException, TypeError):
        return False
    return True


def _ours_ok(fn: object, *args: object) -> bool:
    assert callable(fn)
    try:
        fn(*args)
    except (TypeError, ValueError):
        return False
    return True


@pytest.mark.parametrize("key", TRICKY_KEYS, ids=repr)
def test_keys_agree_with_mlflow(key: object) -> None:
    expected = _mlflow_ok(mv._validate_metric, key, 1.0, TS, 0)
    assert _mlflow_ok(mv._validate_param, key, "1") is expected
    assert _mlflow_ok(mv._validate_tag, key, "1") is expected
    for ours in (
        _ours_ok(v.check_metric, key, 1.0, 0, TS),
        _ours_ok(v.check_param, key, "1"),
        _ours_ok(v.check_tag, key, "1"),
        _ours_ok(v.check_key, key),
    ):
        assert agrees(ours, expected, key)


@pytest.mark.parametrize("truncate", ["true", "false"])
@pytest.mark.parametrize("value", TRICKY_VALUES, ids=lambda x: repr(x)[:20])
def test_param_and_tag_values_agree_with_mlflow(
    value: object, truncate: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRUNCATE_LONG_VALUES", truncate)
    pairs: list[tuple[Callable[..., tuple[str, str]], Callable[..., Any]]] = [
        (v.check_param, mv._validate_param),
        (v.check_tag, mv._validate_tag),
    ]
    for ours, theirs in pairs:
        text = str(value)  # what MlflowClient.log_param / set_tag hand to the store
        try:
            entity = theirs("k", text)
        except MlflowException:
            with pytest.raises(ValueError):
                ours("k", value)
        else:
            assert ours("k", value) == (entity.key, entity.value)


# (key, value, step, timestamp) that both accept or both reject.
METRIC_CASES: list[tuple[object, object, object, object]] = [
    ("m", 1.0, 0, TS),
    ("m", 0, 0, 0),
    ("m", -5, -3, TS),
    ("m", math.nan, 0, TS),
    ("m", math.inf, 0, TS),
    ("m", -math.inf, 0, TS),
    ("m", 2**1000, 0, TS),
    ("m", Fraction(1, 3), 0, TS),
    ("m", Decimal("2.5"), 0, TS),
    ("m", True, 0, TS),
    ("m", False, 0, TS),
    ("m", None, 0, TS),
    ("m", "1.5", 0, TS),
    ("m", "abc", 0, TS),
    ("m", [1.0], 0, TS),
    ("m", 1.0, None, TS),
    ("m", 1.0, "3", TS),
    ("m", 1.0, 0, -1),
    ("m", 1.0, 0, None),
    ("m", 1.0, 0, "0"),
    ("m", 1.0, INT64_MAX, INT64_MAX),
    ("m", 1.0, -(2**63), 0),
    ("a//b", 1.0, 0, TS),
    ("x" * 251, 1.0, 0, TS),
]

# Where we are deliberately stricter than mlflow.utils.validation._validate_metric, which takes
# any numbers.Number for value, step and timestamp (the SQL store then fails or stores garbage).
STRICTER_THAN_MLFLOW: list[tuple[object, object, object, object]] = [
    ("m", 1 + 2j, 0, TS),  # complex: MlflowClient's float() conversion raises TypeError
    ("m", 2**1024, 0, TS),  # too large for a double: MlflowClient raises OverflowError
    ("m", 1.0, 1.5, TS),  # float step
    ("m", 1.0, 3.0, TS),  # integral float step
    ("m", 1.0, True, TS),  # bool step
    ("m", 1.0, 0, 1.5),  # float timestamp
    ("m", 1.0, 2**63, TS),  # step beyond int64
    ("m", 1.0, 0, 2**63),  # timestamp beyond int64 (SQLite: "Python int too large")
]


@pytest.mark.parametrize("case", METRIC_CASES, ids=lambda c: repr(c)[:40])
def test_metrics_agree_with_mlflow(case: tuple[object, object, object, object]) -> None:
    key, value, step, ts = case
    expected = _mlflow_ok(mv._validate_metric, key, value, ts, step)
    assert _ours_ok(v.check_metric, key, value, step, ts) is expected
    if expected:
        out = v.check_metric(key, value, step, ts)
        assert out[0] == key and out[2:] == (step, ts)
        assert type(out[1]) is float
        assert out[1] == float(value) or math.isnan(out[1])  # type: ignore[arg-type]


@pytest.mark.parametrize("case", STRICTER_THAN_MLFLOW, ids=lambda c: repr(c)[:40])
def test_metrics_where_we_are_stricter(case: tuple[object, object, object, object]) -> None:
    key, value, step, ts = case
    assert _mlflow_ok(mv._validate_metric, key, value, ts, step)
    assert not _ours_ok(v.check_metric, key, value, step, ts)


@pytest.mark.parametrize("run_id", [*RUN_IDS_OK, *RUN_IDS_BAD, "abc\n", "abc\n\n", "\u00e9abc"])
def test_run_ids_agree_with_mlflow(run_id: str) -> None:
    assert agrees(_ours_ok(v.check_run_id, run_id), _mlflow_ok(mv._validate_run_id, run_id), run_id)


@pytest.mark.parametrize("name", ["exp", "", "x" * 500, "x" * 501, None, 5, " ", " a "])
def test_experiment_names_agree_with_mlflow(name: object) -> None:
    expected = _mlflow_ok(mv._validate_experiment_name, name)
    assert agrees(_ours_ok(v.check_experiment_name, name), expected, name)


def test_experiment_tags_follow_mlflows_rules() -> None:
    assert v.check_experiment_tag("owner", 7) == ("owner", "7")
    assert v.check_experiment_tag("k", "x" * 20000) == ("k", "x" * 20000)
    with pytest.raises(ValueError, match="experiment tag 'k': value is 20001 characters"):
        v.check_experiment_tag("k", "x" * 20001)  # never truncated: MLflow raises too
    with pytest.raises(ValueError, match="experiment tag key"):
        v.check_experiment_tag("a//b", "x")
