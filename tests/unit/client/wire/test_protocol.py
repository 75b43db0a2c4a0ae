"""Wire protocol: the PROTOCOL.md test vectors, round trips and strict rejection of bad frames."""

from __future__ import annotations

import dataclasses
import math
import random
import re
import typing
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tracker_client import protocol as p
from tracker_client.mlflow.entities import decode_value, encode_value
from tracker_client.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    OPTIONAL_FIELDS,
    PROTOCOL_VERSION,
    Accepted,
    Ack,
    Call,
    Data,
    Done,
    EndRun,
    ErrorReply,
    Failure,
    Flush,
    Hello,
    LogArtifact,
    Message,
    Metric,
    Param,
    ProtocolError,
    Result,
    RunStarted,
    StartRun,
    StatusReply,
    StatusRequest,
    Tag,
    Unreadable,
    Welcome,
    decode,
    decode_record,
    encode,
    encode_data,
    peek_req,
    peek_sequenced,
    record_to_wire,
    value_budget,
)
from tracker_client.wire import messages
from tracker_client.wire.bounds import Budget, OverBudget
from tracker_client.wire.framing import encode_frame

SPEC = Path(__file__).resolve().parents[4] / "client" / "PROTOCOL.md"

ALL_CLASSES = {
    Hello,
    Data,
    LogArtifact,
    StartRun,
    EndRun,
    Flush,
    StatusRequest,
    Call,
    Welcome,
    Ack,
    RunStarted,
    Done,
    Result,
    StatusReply,
    ErrorReply,
    Accepted,
}

CID = "6f1c2a9e0b3d4c5e8f7a1b2c3d4e5f60"
RUN = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
STAGING = "/var/lib/tracker-daemon/staging"
SPOOL = "/var/lib/tracker-daemon/spool"
OFFLINE = "offline-5d41402abc4b2a76b9719d911017c592"
MODEL = "m-0f9e8d7c6b5a49382716051f2e3d4c5b"
SLOT = "3e7a1c5b9d2f4e6a8b0c1d2e3f4a5b6c"

# The messages the valid vectors of PROTOCOL.md must encode / decode to, by vector name.
EXPECTED: dict[str, Message] = {
    "hello": Hello(
        req=1, client_id=CID, pid=4242, host="gpu-node-01", version="0.1.0", acked_floor=0
    ),
    "hello_reconnect": Hello(
        req=8, client_id=CID, pid=4242, host="gpu-node-01", version="0.1.0", acked_floor=12
    ),
    "hello_features": Hello(
        req=1,
        client_id=CID,
        pid=4242,
        host="gpu-node-01",
        version="0.1.0",
        acked_floor=0,
        features=("units", "accepted"),
    ),
    "welcome_features": Welcome(
        req=1,
        daemon_version="0.1.0",
        acked_seq=0,
        staging_dir=STAGING,
        max_frame=4194304,
        spool_dir=SPOOL,
        features=("units", "accepted"),
    ),
    "data_units": Data(
        client_id=CID,
        seq=5,
        records=(
            Param(RUN, "lr", "0.01"),
            Metric(RUN, "loss", 0.25, 1700000003000, 3),
            Tag(RUN, "phase", "warmup"),
        ),
        units=((0, 3),),
    ),
    "welcome": Welcome(
        req=1,
        daemon_version="0.1.0",
        acked_seq=0,
        staging_dir=STAGING,
        max_frame=4194304,
        spool_dir=SPOOL,
    ),
    "start_run": StartRun(
        req=2,
        client_id=CID,
        experiment_name="resnet50",
        run_name="baseline",
        tags={"team": "vision"},
        start_time=1700000000000,
        offline_id=OFFLINE,
    ),
    "start_run_nested": StartRun(
        req=3,
        client_id=CID,
        experiment_id="1",
        run_name="fold-0",
        parent_run_id=RUN,
        start_time=1700000000500,
    ),
    "start_run_resume": StartRun(req=9, client_id=CID, run_id=RUN, start_time=1700000200000),
    "start_run_by_name": StartRun(
        req=13,
        client_id=CID,
        experiment_name="resnet50",
        run_name="nightly",
        tags={"team": "vision"},
        start_time=1700000300000,
        offline_id="offline-7b52009b64fd0a2a49e6d8a939753077",
        experiment_tags={"owner": "vision"},
        artifact_location="/data/mlartifacts/resnet50",
        resume="by_name",
    ),
    "run": RunStarted(
        req=2,
        run_id=RUN,
        experiment_id="1",
        artifact_uri=f"mlflow-artifacts:/1/{RUN}/artifacts",
        run_name="baseline",
    ),
    "data": Data(
        client_id=CID,
        seq=1,
        records=(
            Metric(RUN, "loss", 0.25, 1700000001000, 1),
            Param(RUN, "lr", "0.001"),
            Tag(RUN, "phase", "train"),
        ),
    ),
    "data_nan_dataset": Data(
        client_id=CID,
        seq=2,
        records=(
            Metric(RUN, "loss", math.nan, 1700000002000, 2),
            Metric(
                RUN,
                "val_acc",
                0.875,
                1700000002000,
                2,
                model_id=MODEL,
                dataset_name="imagenet-val",
                dataset_digest="3f2a9c1e",
            ),
            Metric(RUN, "grad_norm", math.inf, 1700000002000, -1),
        ),
    ),
    "artifact": LogArtifact(
        client_id=CID,
        seq=3,
        run_id=RUN,
        staged_path=f"{STAGING}/{CID}/{SLOT}/model.pt",
        artifact_path="checkpoints",
    ),
    "ack": Ack(seq=3),
    "flush": Flush(req=4, client_id=CID, seq=3, run_id=RUN),
    "flush_all": Flush(req=5, client_id=CID, seq=3, run_id=None),
    "done": Done(
        req=4,
        failures=(
            Failure(
                Param(RUN, "lr", "0.01"),
                "INVALID_PARAMETER_VALUE",
                "Changing param values is not allowed. Param with key='lr' was already logged "
                "with value='0.001'.",
            ),
        ),
    ),
    "done_empty": Done(req=5, failures=()),
    "end_run": EndRun(
        req=6, client_id=CID, seq=3, run_id=RUN, status="FINISHED", end_time=1700000100000
    ),
    "accepted": Accepted(req=6),
    "call": Call(
        req=10,
        client_id=CID,
        seq=3,
        target="tracking",
        method="get_run",
        args=encode_value([RUN]),
        kwargs=encode_value({}),
    ),
    "call_create_experiment": Call(
        req=11,
        client_id=CID,
        seq=3,
        target="tracking",
        method="create_experiment",
        args=encode_value(["resnet101"]),
        kwargs=encode_value({"artifact_location": None}),
    ),
    "result": Result(
        req=11,
        value=encode_value("2"),
        failures=(
            Failure(
                Metric(RUN, "acc//top1", 0.5, 1700000003000, 3),
                "INVALID_PARAMETER_VALUE",
                "metric key 'acc//top1': MLflow treats names as paths and this one normalises to "
                "'acc/top1'; names must be normalised relative paths (no '//', '/./', '/../' or "
                "trailing '/')",
            ),
        ),
    ),
    "status": StatusRequest(req=7),
    "status_reply": StatusReply(
        req=7, status={"daemon_version": "0.1.0", "clients": 1, "pending": 0}
    ),
    "error_timeout": ErrorReply(
        req=6,
        code="timeout",
        message="records up to seq 3 were not committed within 600 s; last sink error: none",
    ),
    "error_no_req": ErrorReply(req=None, code="bad_msgpack", message="not a msgpack document"),
    "error_endpoint_not_found": ErrorReply(
        req=12,
        code="ENDPOINT_NOT_FOUND",
        message="tracking store method 'drop_all' is not part of MLflow's store API",
    ),
    "error_journal_full": ErrorReply(
        req=None,
        code="journal_full",
        message="journal holds 8589930000 bytes; the limit (journal_max_bytes) is 8589934592; "
        "waiting for the MLflow backend to catch up",
    ),
}

DOCUMENTED_CODES = {
    "bad_msgpack",
    "bad_envelope",
    "unsupported_version",
    "unknown_kind",
    "bad_field",
    "frame_too_large",
    "frame_too_complex",
}

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

_VECTOR_RE = re.compile(
    r"^### (?P<sort>vector|invalid): (?P<name>[a-z0-9_]+)[ \t]*\n"
    r"(?P<prose>(?:(?!^###).)*?)"
    r"^```hex[ \t]*\n(?P<hex>[0-9a-f \n]*?)^```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
_EXPECTED_ERROR_RE = re.compile(r"^Expected error: `([a-z_]+)`[ \t]*$", re.MULTILINE)


def _parse_vectors(text: str) -> tuple[dict[str, bytes], dict[str, tuple[bytes, str]]]:
    valid: dict[str, bytes] = {}
    invalid: dict[str, tuple[bytes, str]] = {}
    for m in _VECTOR_RE.finditer(text):
        name, frame = m["name"], bytes.fromhex(m["hex"])
        if m["sort"] == "vector":
            assert name not in valid, f"duplicate vector {name!r}"
            valid[name] = frame
        else:
            codes = _EXPECTED_ERROR_RE.findall(m["prose"])
            assert len(codes) == 1, f"invalid vector {name!r} needs one 'Expected error:' line"
            assert name not in invalid, f"duplicate invalid vector {name!r}"
            invalid[name] = (frame, codes[0])
    return valid, invalid


SPEC_TEXT = SPEC.read_text(encoding="utf-8")
VALID_VECTORS, INVALID_VECTORS = _parse_vectors(SPEC_TEXT)


def _canon(obj: Any) -> Any:
    """A comparable form of a message in which NaN equals NaN (math.isnan) and types count."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return (type(obj).__name__,) + tuple(
            _canon(getattr(obj, f.name)) for f in dataclasses.fields(obj)
        )
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, *(_canon(x) for x in obj))
    if isinstance(obj, dict):
        return ("dict", *((k, _canon(v)) for k, v in obj.items()))
    if isinstance(obj, float):
        return ("float", "NaN" if math.isnan(obj) else obj)
    return (type(obj).__name__, obj)


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _frame(kind: str, body: Any, version: Any = PROTOCOL_VERSION) -> bytes:
    return _pack([version, kind, body])


def _body(msg: Message) -> dict[str, Any]:
    """The wire body of a valid message, as a mutable msgpack-level dict."""
    envelope = msgpack.unpackb(encode(msg), raw=False)
    return envelope[2]


def _kind(msg: Message) -> str:
    return msgpack.unpackb(encode(msg), raw=False)[1]


def _reject(frame: bytes, code: str, *fragments: str, **kw: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(frame, **kw)
    exc = info.value
    assert type(exc) is ProtocolError
    assert exc.code == code, f"expected {code}, got {exc.code}: {exc}"
    assert exc.message == str(exc)
    for fragment in fragments:
        assert fragment in str(exc), f"{fragment!r} not in {str(exc)!r}"
    return exc


DATA_FRAME = encode(EXPECTED["data"])

# ---------------------------------------------------------------------------------------------
# PROTOCOL.md test vectors
# ---------------------------------------------------------------------------------------------


def test_spec_contains_every_vector() -> None:
    assert len(VALID_VECTORS) == len(EXPECTED) == 30
    assert set(VALID_VECTORS) == set(EXPECTED)
    assert len(INVALID_VECTORS) == 8
    assert {type(m) for m in EXPECTED.values()} == ALL_CLASSES  # all 16 kinds
    assert len(ALL_CLASSES) == 16
    assert {code for _, code in INVALID_VECTORS.values()} <= DOCUMENTED_CODES


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_vector_encodes_to_documented_bytes(name: str) -> None:
    assert encode(EXPECTED[name]) == VALID_VECTORS[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_vector_decodes_to_documented_message(name: str) -> None:
    decoded = decode(VALID_VECTORS[name])
    assert type(decoded) is type(EXPECTED[name])
    assert _canon(decoded) == _canon(EXPECTED[name])


def test_nan_vector_decodes_to_nan() -> None:
    decoded = decode(VALID_VECTORS["data_nan_dataset"])
    assert isinstance(decoded, Data)
    nan_metric, dataset_metric, inf_metric = decoded.records
    assert isinstance(nan_metric, Metric) and math.isnan(nan_metric.value)
    assert dataclasses.replace(nan_metric, value=0.0) == Metric(RUN, "loss", 0.0, 1700000002000, 2)
    assert dataset_metric == EXPECTED["data_nan_dataset"].records[1]  # type: ignore[union-attr]
    assert isinstance(inf_metric, Metric) and inf_metric.value == math.inf


@pytest.mark.parametrize("name", sorted(INVALID_VECTORS))
def test_invalid_vector_rejected_with_documented_code(name: str) -> None:
    frame, code = INVALID_VECTORS[name]
    _reject(frame, code)


def test_vector_parser_rejects_empty_document() -> None:
    assert _parse_vectors("") == ({}, {})
    text = "### vector: x\nhello\n```hex\n93 01\n```\n### invalid: y\nExpected error: `bad_field`\n"
    text += "```hex\n90\n```\n"
    assert _parse_vectors(text) == ({"x": b"\x93\x01"}, {"y": (b"\x90", "bad_field")})


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------

I64_MIN, I64_MAX = -(2**63), 2**63 - 1

ROUND_TRIP: list[Message] = [
    Hello(
        req=I64_MAX,
        client_id="f" * 32,
        pid=1,
        host="h\u00f6st-\u65e5\u672c",
        version="",
        acked_floor=I64_MAX,
    ),
    Data(client_id="c" * 32, seq=I64_MAX, records=()),
    Data(
        client_id="c" * 32,
        seq=7,
        records=(
            Metric("r", "k", -1.5e300, I64_MIN, I64_MAX, "m-1", "ds", "dg"),
            Metric("r", "k", -math.inf, 0, 0),
            Metric("r", "k" * 300, 5e-324, 1, -1, None, "only-name", None),
            Param("r", "", "x" * 70000),
            Tag("r", "mlflow.note.content", "\u2603"),
        ),
    ),
    LogArtifact(client_id="c", seq=2, run_id="r", staged_path="/s/x/d", artifact_path=None),
    LogArtifact(client_id="c", seq=3, run_id="r", staged_path="/s/y/f.txt", artifact_path="a/b"),
    StartRun(
        req=9,
        experiment_id="42",
        experiment_name="e",
        run_id="r",
        run_name="n",
        parent_run_id="p",
        tags={"a": "1", "b": ""},
        start_time=I64_MIN,
    ),
    StartRun(req=10),
    StartRun(
        req=0,
        client_id="c",
        experiment_name="\u00e9",
        start_time=1,
        offline_id="offline-" + "0" * 32,
    ),
    EndRun(req=11, client_id="c", seq=0, run_id="r", status="KILLED", end_time=-5),
    Flush(req=-1, client_id="c", seq=99, run_id=None),
    StatusRequest(req=0),
    Call(req=1, client_id="c", seq=0, target="registry", method="m", args=b"", kwargs=b""),
    Call(
        req=I64_MAX,
        client_id="c",
        seq=I64_MAX,
        target="",
        method="search_runs",
        args=bytes(range(256)) * 300,  # bin16 .. bin32 sizes; any bytes, not checked as msgpack
        kwargs=b"\xc1",
    ),
    Welcome(req=12, daemon_version="9.9", acked_seq=123456789, staging_dir="/x", max_frame=1),
    Welcome(
        req=12, daemon_version="", acked_seq=0, staging_dir="", max_frame=0, spool_dir="/s p/\u00f6"
    ),
    Ack(seq=I64_MIN),
    RunStarted(req=13, run_id="r", experiment_id="0", artifact_uri="s3://b/k", run_name="n"),
    Done(
        req=14,
        failures=(
            Failure(None, "INTERNAL_ERROR", "upload failed"),
            Failure(Metric("r", "k", 1.0, 2, 3, None, None, "d"), "RESOURCE_DOES_NOT_EXIST", "m"),
            Failure(Tag("r", "k", "v"), "INVALID_PARAMETER_VALUE", ""),
        ),
    ),
    Result(req=18, value=b"\xc0"),
    Accepted(req=I64_MAX),
    Result(
        req=19,
        value=b"x" * 70000,
        failures=(Failure(Param("r", "k", "v"), "INVALID_PARAMETER_VALUE", "m"),),
    ),
    StatusReply(req=15, status={"nested": {"list": [1, "a", None, 2.5]}, "ok": True}),
    StatusReply(req=16, status={}),
    ErrorReply(req=17, code="RESOURCE_DOES_NOT_EXIST", message="Run 'x' not found"),
    ErrorReply(req=None, code="invalid_request", message=""),
]


def test_round_trip_covers_every_class() -> None:
    assert {type(m) for m in ROUND_TRIP} == ALL_CLASSES


@pytest.mark.parametrize("msg", ROUND_TRIP, ids=lambda m: type(m).__name__)
def test_round_trip(msg: Message) -> None:
    frame = encode(msg)
    assert frame[:2] == bytes([0x93, PROTOCOL_VERSION])
    decoded = decode(frame)
    assert type(decoded) is type(msg)
    assert _canon(decoded) == _canon(msg)
    assert encode(decoded) == frame


def test_round_trip_nan_metric() -> None:
    msg = Data(client_id="c", seq=1, records=(Metric("r", "k", math.nan, 1, 2),))
    (metric,) = decode(encode(msg)).records  # type: ignore[union-attr]
    assert isinstance(metric, Metric) and math.isnan(metric.value)


@pytest.mark.parametrize(
    "msg", [m for m in [*EXPECTED.values(), *ROUND_TRIP] if isinstance(m, Data)]
)
def test_encode_data_matches_encode(msg: Data) -> None:
    wire = [record_to_wire(r) for r in msg.records]
    units = [list(u) for u in msg.units]
    assert encode_data(msg.client_id, msg.seq, wire, units) == encode(msg)


def test_record_to_wire_shapes() -> None:
    wire = record_to_wire(Metric("r", "k", 1.0, 2, 3))
    assert wire == ["m", "r", "k", 1.0, 2, 3, None, None, None]
    assert type(wire[3]) is float
    assert record_to_wire(Param("r", "k", "v")) == ["p", "r", "k", "v"]
    assert record_to_wire(Tag("r", "k", "v")) == ["t", "r", "k", "v"]
    for rec in (
        Metric("r", "k", 1.0, 2, 3, "m", "n", "d"),
        Param("r", "k", "v"),
        Tag("r", "k", "v"),
    ):
        assert decode_record(record_to_wire(rec)) == rec


def test_lenient_metric_value_int_and_float32() -> None:
    """Documented decoder leniency: an int64 or float32 metric value decodes as a float64."""
    (metric,) = decode(_data(_metric(value=3))).records  # type: ignore[union-attr]
    assert type(metric.value) is float and metric.value == 3.0
    body = {"client_id": CID, "seq": 1, "records": [_metric(value=0.5)]}
    as_float32 = msgpack.packb([1, "data", body], use_bin_type=True, use_single_float=True)
    assert b"\xca\x3f\x00\x00\x00" in as_float32
    (metric,) = decode(as_float32).records  # type: ignore[union-attr]
    assert type(metric.value) is float and metric.value == 0.5


def test_decode_accepts_any_field_order_and_int_width() -> None:
    body = dict(reversed(list(_body(EXPECTED["hello"]).items())))
    frame = _frame("hello", body)
    assert frame != VALID_VECTORS["hello"]
    assert decode(frame) == EXPECTED["hello"]
    wide = bytes.fromhex("9301a361636b81a3736571") + b"\xd3" + (3).to_bytes(8, "big", signed=True)
    assert decode(wide) == Ack(seq=3)


# ---------------------------------------------------------------------------------------------
# Rejection of malformed frames
# ---------------------------------------------------------------------------------------------


def test_empty_frame() -> None:
    _reject(b"", "bad_msgpack")


def test_random_garbage_never_raises_anything_else() -> None:
    rng = random.Random(20240611)
    for _ in range(500):
        frame = rng.randbytes(rng.randint(0, 64))
        try:
            msg = decode(frame)
        except ProtocolError as exc:
            assert exc.code in DOCUMENTED_CODES
        else:
            assert type(msg) in ALL_CLASSES


def test_mutated_frames_never_raise_anything_else() -> None:
    rng = random.Random(7)
    frames = [VALID_VECTORS[name] for name in sorted(VALID_VECTORS)]
    for _ in range(2000):
        frame = bytearray(rng.choice(frames))
        for _ in range(rng.randint(1, 3)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        try:
            msg = decode(bytes(frame))
        except ProtocolError as exc:
            assert exc.code in DOCUMENTED_CODES
        else:
            assert type(msg) in ALL_CLASSES


def test_every_truncation_of_a_data_frame() -> None:
    for n in range(len(DATA_FRAME)):
        _reject(DATA_FRAME[:n], "bad_msgpack")
    assert decode(DATA_FRAME) == EXPECTED["data"]


@pytest.mark.parametrize("extra", [b"\x00", b"\xc0", DATA_FRAME])
def test_trailing_bytes(extra: bytes) -> None:
    _reject(DATA_FRAME + extra, "bad_msgpack", "trailing")


def test_invalid_utf8_string() -> None:
    frame = _frame("ack", {"seq": 1}).replace(b"\xa3ack", b"\xa3a\xffk")
    _reject(frame, "bad_msgpack")


@pytest.mark.parametrize(
    "obj",
    [
        {"version": 1, "kind": "ack", "body": {"seq": 1}},
        "ack",
        1,
        None,
        [],
        [1],
        [1, "ack"],
        [1, "ack", {"seq": 1}, None],
    ],
    ids=repr,
)
def test_envelope_not_a_three_element_array(obj: Any) -> None:
    _reject(_pack(obj), "bad_envelope", "envelope")


@pytest.mark.parametrize("version", ["1", 1.0, None, True, [1], 2**64 - 1], ids=repr)
def test_version_not_an_int(version: Any) -> None:
    _reject(_frame("ack", {"seq": 1}, version=version), "bad_envelope", "version")


@pytest.mark.parametrize("version", [0, 2, -1, I64_MAX])
def test_unsupported_version(version: int) -> None:
    _reject(_frame("ack", {"seq": 1}, version=version), "unsupported_version", str(version))


@pytest.mark.parametrize("kind", ["ping", "", "ACK", "Hello", 5, None, b"ack"], ids=repr)
def test_unknown_kind(kind: Any) -> None:
    _reject(_frame(kind, {"seq": 1}), "unknown_kind")


@pytest.mark.parametrize("body", [[], ["seq", 1], None, "seq", 1], ids=repr)
def test_body_not_a_map(body: Any) -> None:
    _reject(_frame("ack", body), "bad_envelope", "ack", "body")


def _all_fields() -> list[tuple[str, dict[str, Any], str]]:
    out = []
    for name in sorted(EXPECTED):
        msg = EXPECTED[name]
        optional = OPTIONAL_FIELDS.get(type(msg), frozenset())
        for field in _body(msg):
            if field not in optional:  # those have their own test (defaults)
                out.append((_kind(msg), _body(msg), field))
    return out


@pytest.mark.parametrize(
    ("kind", "body", "field"), _all_fields(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_missing_field(kind: str, body: dict[str, Any], field: str) -> None:
    del body[field]
    _reject(_frame(kind, body), "bad_field", kind, "missing", repr(field))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_unknown_extra_field(name: str) -> None:
    body = _body(EXPECTED[name])
    body["zz_extra"] = None
    kind = _kind(EXPECTED[name])
    _reject(_frame(kind, body), "bad_field", kind, "unknown", "'zz_extra'")


def test_absent_optional_field_must_still_be_present() -> None:
    body = _body(EXPECTED["flush_all"])
    del body["run_id"]
    _reject(_frame("flush", body), "bad_field", "flush", "run_id")


def _metric(**changes: Any) -> list[Any]:
    rec = ["m", "r", "k", 1.0, 1700000000000, 1, None, None, None]
    names = ["kind", "run_id", "key", "value", "timestamp", "step", "model_id", "name", "digest"]
    for key, value in changes.items():
        rec[names.index(key)] = value
    return rec


def _data(*records: Any) -> bytes:
    return _frame("data", {"client_id": CID, "seq": 1, "records": list(records)})


# (frame, fragment the error message must contain)
WRONG_TYPES: dict[str, tuple[bytes, str]] = {
    # str
    "str-int": (_frame("hello", {**_body(EXPECTED["hello"]), "client_id": 5}), "hello.client_id"),
    "str-nil": (_frame("hello", {**_body(EXPECTED["hello"]), "host": None}), "hello.host"),
    "str-bin": (_frame("hello", {**_body(EXPECTED["hello"]), "version": b"0.1"}), "hello.version"),
    "str-float": (_frame("error", {"req": 1, "code": 1.5, "message": ""}), "error.code"),
    # int
    "int-str": (_frame("data", {"client_id": CID, "seq": "1", "records": []}), "data.seq"),
    "int-float": (_frame("data", {"client_id": CID, "seq": 1.0, "records": []}), "data.seq"),
    "int-bool": (_frame("data", {"client_id": CID, "seq": True, "records": []}), "data.seq"),
    "int-nil": (_frame("data", {"client_id": CID, "seq": None, "records": []}), "data.seq"),
    "int-uint64": (_frame("ack", {"seq": 2**63}), "ack.seq"),
    "int-uint64-max": (
        _frame("welcome", {**_body(EXPECTED["welcome"]), "max_frame": 2**64 - 1}),
        "welcome.max_frame",
    ),
    "int-in-hello": (_frame("hello", {**_body(EXPECTED["hello"]), "pid": "4242"}), "hello.pid"),
    "acked-floor-nil": (
        _frame("hello", {**_body(EXPECTED["hello"]), "acked_floor": None}),
        "hello.acked_floor",
    ),
    "acked-floor-str": (
        _frame("hello", {**_body(EXPECTED["hello"]), "acked_floor": "12"}),
        "hello.acked_floor",
    ),
    # optional str
    "optstr-int": (_frame("flush", {**_body(EXPECTED["flush"]), "run_id": 7}), "flush.run_id"),
    "optstr-list": (
        _frame("artifact", {**_body(EXPECTED["artifact"]), "artifact_path": ["a"]}),
        "artifact.artifact_path",
    ),
    "optstr-bool": (
        _frame("start_run", {**_body(EXPECTED["start_run"]), "parent_run_id": False}),
        "start_run.parent_run_id",
    ),
    # optional int
    "optint-str": (_frame("error", {"req": "1", "code": "x", "message": ""}), "error.req"),
    # tags map
    "tags-int-value": (
        _frame("start_run", {**_body(EXPECTED["start_run"]), "tags": {"a": 1}}),
        "start_run.tags",
    ),
    "tags-nil-value": (
        _frame("start_run", {**_body(EXPECTED["start_run"]), "tags": {"a": None}}),
        "start_run.tags",
    ),
    "tags-bin-key": (
        _frame("start_run", {**_body(EXPECTED["start_run"]), "tags": {b"a": "1"}}),
        "start_run.tags",
    ),
    "tags-list": (
        _frame("start_run", {**_body(EXPECTED["start_run"]), "tags": [["a", "1"]]}),
        "start_run.tags",
    ),
    "tags-nil": (
        _frame("start_run", {**_body(EXPECTED["start_run"]), "tags": None}),
        "start_run.tags",
    ),
    # map
    "map-list": (_frame("status_reply", {"req": 1, "status": []}), "status_reply.status"),
    "map-nil": (_frame("status_reply", {"req": 1, "status": None}), "status_reply.status"),
    # records
    "records-map": (_frame("data", {"client_id": CID, "seq": 1, "records": {}}), "data.records"),
    "records-str": (_frame("data", {"client_id": CID, "seq": 1, "records": "m"}), "data.records"),
    "records-nil": (_frame("data", {"client_id": CID, "seq": 1, "records": None}), "data.records"),
    "record-not-array": (_data(5), "data.records[0]"),
    "record-map": (_data({"kind": "m"}), "data.records[0]"),
    "record-empty": (_data([]), "data.records[0]"),
    "record-kind-int": (_data([1, "r", "k", "v"]), "data.records[0]"),
    "record-kind-unknown": (_data(["x", "r", "k", "v"]), "data.records[0]"),
    "record-kind-long": (_data(["metric", *_metric()[1:]]), "data.records[0]"),
    "metric-8-elements": (_data(_metric()[:8]), "data.records[0]"),
    "metric-10-elements": (_data([*_metric(), None]), "data.records[0]"),
    "param-3-elements": (_data(["p", "r", "k"]), "data.records[0]"),
    "tag-5-elements": (_data(["t", "r", "k", "v", "w"]), "data.records[0]"),
    "second-record-bad": (
        _data(_metric(), ["p", "r", "k", 1]),
        "data.records[1].value",
    ),
    "metric-run-id-int": (_data(_metric(run_id=1)), "data.records[0].run_id"),
    "metric-key-nil": (_data(_metric(key=None)), "data.records[0].key"),
    "metric-value-str": (_data(_metric(value="1.0")), "data.records[0].value"),
    "metric-value-nil": (_data(_metric(value=None)), "data.records[0].value"),
    "metric-value-bool": (_data(_metric(value=True)), "data.records[0].value"),
    "metric-value-uint64": (_data(_metric(value=2**63)), "data.records[0].value"),
    "metric-timestamp-float": (_data(_metric(timestamp=1.0)), "data.records[0].timestamp"),
    "metric-timestamp-overflow": (_data(_metric(timestamp=2**63)), "data.records[0].timestamp"),
    "metric-step-bool": (_data(_metric(step=False)), "data.records[0].step"),
    "metric-step-str": (_data(_metric(step="1")), "data.records[0].step"),
    "metric-step-overflow": (_data(_metric(step=2**64 - 1)), "data.records[0].step"),
    "metric-model-id-int": (_data(_metric(model_id=1)), "data.records[0].model_id"),
    "metric-dataset-name-bin": (_data(_metric(name=b"ds")), "data.records[0].dataset_name"),
    "metric-dataset-digest-float": (_data(_metric(digest=1.0)), "data.records[0].dataset_digest"),
    "param-value-int": (_data(["p", "r", "k", 1]), "data.records[0].value"),
    "param-value-nil": (_data(["p", "r", "k", None]), "data.records[0].value"),
    "tag-key-nil": (_data(["t", "r", None, "v"]), "data.records[0].key"),
    "tag-run-id-bin": (_data(["t", b"r", "k", "v"]), "data.records[0].run_id"),
    # failures
    "failures-map": (_frame("done", {"req": 1, "failures": {}}), "done.failures"),
    "failures-nil": (_frame("done", {"req": 1, "failures": None}), "done.failures"),
    "failure-not-array": (_frame("done", {"req": 1, "failures": ["x"]}), "done.failures[0]"),
    "failure-2-elements": (
        _frame("done", {"req": 1, "failures": [[None, "CODE"]]}),
        "done.failures[0]",
    ),
    "failure-code-int": (
        _frame("done", {"req": 1, "failures": [[None, 1, "m"]]}),
        "done.failures[0].code",
    ),
    "failure-message-nil": (
        _frame("done", {"req": 1, "failures": [[None, "CODE", None]]}),
        "done.failures[0].message",
    ),
    "failure-record-bad": (
        _frame("done", {"req": 1, "failures": [[["p", "r", "k"], "CODE", "m"]]}),
        "done.failures[0].record",
    ),
    "failure-record-step": (
        _frame("done", {"req": 1, "failures": [[_metric(step=1.5), "CODE", "m"]]}),
        "done.failures[0].record.step",
    ),
    # bin (call / result)
    "bin-array": (_frame("call", {**_body(EXPECTED["call"]), "args": [RUN]}), "call.args"),
    "bin-str": (_frame("call", {**_body(EXPECTED["call"]), "args": "\x91"}), "call.args"),
    "bin-nil": (_frame("call", {**_body(EXPECTED["call"]), "kwargs": None}), "call.kwargs"),
    "bin-map": (_frame("call", {**_body(EXPECTED["call"]), "kwargs": {}}), "call.kwargs"),
    "bin-int": (_frame("result", {**_body(EXPECTED["result"]), "value": 2}), "result.value"),
    "bin-ext": (
        _frame("result", {**_body(EXPECTED["result"]), "value": msgpack.ExtType(1, b"\xc0")}),
        "result.value",
    ),
    "call-target-bin": (
        _frame("call", {**_body(EXPECTED["call"]), "target": b"tracking"}),
        "call.target",
    ),
    "call-method-nil": (_frame("call", {**_body(EXPECTED["call"]), "method": None}), "call.method"),
    "call-seq-str": (_frame("call", {**_body(EXPECTED["call"]), "seq": "3"}), "call.seq"),
    "call-client-id-int": (
        _frame("call", {**_body(EXPECTED["call"]), "client_id": 1}),
        "call.client_id",
    ),
    "result-failures-nil": (
        _frame("result", {**_body(EXPECTED["result"]), "failures": None}),
        "result.failures",
    ),
    "result-failure-record-bad": (
        _frame("result", {"req": 1, "value": b"\xc0", "failures": [[["p", "r"], "C", "m"]]}),
        "result.failures[0].record",
    ),
    # new fields of start_run and welcome
    "start-run-client-id-nil": (
        _frame("start_run", {**_body(EXPECTED["start_run"]), "client_id": None}),
        "start_run.client_id",
    ),
    "start-run-offline-id-int": (
        _frame("start_run", {**_body(EXPECTED["start_run"]), "offline_id": 1}),
        "start_run.offline_id",
    ),
    "start-run-offline-id-bin": (
        _frame("start_run", {**_body(EXPECTED["start_run"]), "offline_id": OFFLINE.encode()}),
        "start_run.offline_id",
    ),
    "start-run-experiment-tags-nil": (
        _frame("start_run", {**_body(EXPECTED["start_run"]), "experiment_tags": None}),
        "start_run.experiment_tags",
    ),
    "start-run-experiment-tags-int-value": (
        _frame("start_run", {**_body(EXPECTED["start_run"]), "experiment_tags": {"a": 1}}),
        "start_run.experiment_tags",
    ),
    "start-run-artifact-location-int": (
        _frame("start_run", {**_body(EXPECTED["start_run"]), "artifact_location": 7}),
        "start_run.artifact_location",
    ),
    "start-run-resume-bool": (
        _frame("start_run", {**_body(EXPECTED["start_run"]), "resume": True}),
        "start_run.resume",
    ),
    "welcome-spool-dir-nil": (
        _frame("welcome", {**_body(EXPECTED["welcome"]), "spool_dir": None}),
        "welcome.spool_dir",
    ),
    # ext types are never valid field values
    "ext-in-str": (
        _frame("ack", {"seq": msgpack.ExtType(1, b"\x01")}),
        "ack.seq",
    ),
}


# A record of a data frame that does not decode does not make the frame bad_field: it becomes an
# Unreadable in its place, so that it fails alone and the frame's other records still count.
UNREADABLE_RECORDS = {
    case: WRONG_TYPES.pop(case)
    for case in sorted(WRONG_TYPES)
    if WRONG_TYPES[case][1].startswith("data.records[")
}


@pytest.mark.parametrize("case", sorted(WRONG_TYPES))
def test_wrong_field_type(case: str) -> None:
    frame, fragment = WRONG_TYPES[case]
    _reject(frame, "bad_field", fragment)


def test_record_level_cases_are_the_ones_expected() -> None:
    assert len(UNREADABLE_RECORDS) == 29
    assert {"records-map", "records-str", "records-nil"} <= set(WRONG_TYPES)  # not an array


@pytest.mark.parametrize("case", sorted(UNREADABLE_RECORDS))
def test_a_record_that_does_not_decode_is_unreadable_in_place(case: str) -> None:
    frame, fragment = UNREADABLE_RECORDS[case]
    msg = decode(frame, max_values=BUDGET)
    assert isinstance(msg, Data)
    index = int(fragment[len("data.records[") :].split("]")[0])
    bad = msg.records[index]
    assert isinstance(bad, Unreadable), bad
    assert bad.problem.startswith(fragment), bad.problem
    others = [r for i, r in enumerate(msg.records) if i != index]
    assert all(isinstance(r, Metric | Param | Tag) for r in others)
    with pytest.raises(ValueError, match="unreadable record is not encoded"):
        encode(msg)


def test_an_unreadable_record_keeps_its_run_and_names_the_limit() -> None:
    frame = _data(_metric(run_id="run-b"), _metric(run_id="run-a", timestamp=2**63))
    msg = decode(frame, max_values=BUDGET)
    assert isinstance(msg, Data)
    assert isinstance(msg.records[0], Metric) and msg.records[0].run_id == "run-b"
    assert msg.records[1] == Unreadable(
        "run-a",
        "data.records[1].timestamp: 9223372036854775808 is outside int64 (-2**63 .. 2**63-1)",
    )
    # a run id that is not a short string is not kept
    for run_id in (1, None, "r" * 257, b"r"):
        msg = decode(_data(["p", run_id, "k", 1]), max_values=BUDGET)
        assert isinstance(msg, Data) and msg.records[0] == Unreadable(
            None,
            msg.records[0].problem,  # type: ignore[union-attr]
        )
    assert decode(_data(["p", "r" * 256, "k", 1])).records[0].run_id == "r" * 256  # type: ignore[union-attr]


def test_error_messages_name_the_field() -> None:
    assert "data.seq" in str(_reject(WRONG_TYPES["int-str"][0], "bad_field"))
    assert "start_run.tags" in str(_reject(WRONG_TYPES["tags-int-value"][0], "bad_field"))
    assert "flush.run_id" in str(_reject(WRONG_TYPES["optstr-int"][0], "bad_field"))


def test_oversize_frame() -> None:
    frame = VALID_VECTORS["data"]
    assert decode(frame, max_frame=len(frame)) == EXPECTED["data"]
    _reject(frame, "frame_too_large", str(len(frame)), max_frame=len(frame) - 1)
    _reject(encode(Ack(seq=1)), "frame_too_large", max_frame=0)


def test_default_frame_limit_is_4_mib() -> None:
    assert DEFAULT_MAX_FRAME_BYTES == 4 * 1024 * 1024
    big_value = "x" * DEFAULT_MAX_FRAME_BYTES
    frame = encode(Data(client_id="c", seq=1, records=(Param("r", "k", big_value),)))
    assert len(frame) > DEFAULT_MAX_FRAME_BYTES
    _reject(frame, "frame_too_large", str(DEFAULT_MAX_FRAME_BYTES))
    # Checked before parsing: even garbage of that size is "too large", not "bad msgpack".
    _reject(bytes(DEFAULT_MAX_FRAME_BYTES + 1), "frame_too_large")
    assert decode(frame, max_frame=len(frame)).records[0].value == big_value  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "frame",
    [
        _frame("ack", {1: 1}),
        _frame("ack", {"seq": 1, 2: 2}),
        _frame("start_run", {**_body(EXPECTED["start_run"]), "tags": {1: "x"}}),
        _frame("status_reply", {"req": 1, "status": {"nested": {3: "x"}}}),
        _pack({1: "x"}),
    ],
    ids=["body-int-key", "body-mixed-keys", "tags-int-key", "status-int-key", "envelope-map"],
)
def test_map_with_non_string_keys(frame: bytes) -> None:
    _reject(frame, "bad_msgpack")


BODY_KEY_MESSAGE = "every body key must be a string"


def test_body_with_single_bin_key() -> None:
    exc = _reject(_frame("ack", {b"seq": 1}), "bad_field", "ack")
    assert exc.message == f"ack: {BODY_KEY_MESSAGE}"


def test_body_with_bin_and_str_unknown_keys() -> None:
    exc = _reject(_frame("ack", {"seq": 1, b"x": 1, "y": 2}), "bad_field", "ack")
    assert exc.message == f"ack: {BODY_KEY_MESSAGE}"


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("start_run", "client_id"),
        ("start_run", "offline_id"),
        ("start_run_nested", "offline_id"),
        ("welcome", "spool_dir"),
    ],
)
def test_message_without_new_field_is_rejected(name: str, field: str) -> None:
    """Peers built before ``client_id`` / ``offline_id`` / ``spool_dir`` are rejected."""
    body = _body(EXPECTED[name])
    del body[field]
    kind = _kind(EXPECTED[name])
    _reject(_frame(kind, body), "bad_field", kind, "missing", repr(field))


def test_start_run_without_the_experiment_and_by_name_fields_decodes_with_defaults() -> None:
    """start_run frames of clients (and spool files) from before experiment_tags,
    artifact_location and resume still decode: a missing one takes its default."""
    body = _body(EXPECTED["start_run_by_name"])
    for name in ("experiment_tags", "artifact_location", "resume"):
        del body[name]
    msg = decode(_frame("start_run", body))
    assert isinstance(msg, StartRun)
    assert (msg.experiment_tags, msg.artifact_location, msg.resume) == ({}, None, None)
    assert msg.run_name == EXPECTED["start_run_by_name"].run_name
    # present fields are still checked
    _reject(_frame("start_run", {**body, "resume": 1}), "bad_field", "start_run.resume")


def test_call_vector_arguments_are_entities_encoding() -> None:
    call = decode(VALID_VECTORS["call"])
    assert isinstance(call, Call)
    assert (call.target, call.method) == ("tracking", "get_run")
    assert decode_value(call.args) == [RUN]
    assert decode_value(call.kwargs) == {}
    create = decode(VALID_VECTORS["call_create_experiment"])
    assert isinstance(create, Call)
    assert decode_value(create.args) == ["resnet101"]
    assert decode_value(create.kwargs) == {"artifact_location": None}
    result = decode(VALID_VECTORS["result"])
    assert isinstance(result, Result) and result.req == create.req
    assert decode_value(result.value) == "2"


def test_hello_without_acked_floor_is_rejected() -> None:
    """A version-1 peer that predates ``acked_floor`` is rejected, not silently defaulted."""
    body = _body(EXPECTED["hello_reconnect"])
    del body["acked_floor"]
    _reject(_frame("hello", body), "bad_field", "hello", "missing", "'acked_floor'")


# ---------------------------------------------------------------------------------------------
# PROTOCOL.md prose that the implementation settled
# ---------------------------------------------------------------------------------------------


def test_spec_documents_body_key_message_and_hello_floor() -> None:
    assert BODY_KEY_MESSAGE in SPEC_TEXT
    assert "| `acked_floor` | `int` |" in SPEC_TEXT


def test_spec_drops_codes_the_daemon_never_sends() -> None:
    assert "unknown_client" not in SPEC_TEXT
    assert "`internal`" not in SPEC_TEXT
    for code in ("timeout", "invalid_request", "journal_full", "limit_exceeded"):
        assert f"| `{code}` |" in SPEC_TEXT


def _row(prefix: str) -> str:
    (row,) = [line for line in SPEC_TEXT.splitlines() if line.startswith(prefix)]
    return row


def test_spec_documents_journal_full_and_limits() -> None:
    journal_full = _row("| `journal_full` |")
    assert "`req` nil" in journal_full and "not** accepted" in journal_full
    assert "1 s" in journal_full
    limit = _row("| `limit_exceeded` |")
    assert "Reserved" not in limit and "not** acknowledged" in limit
    assert "min(`max_frame_bytes`, `journal_max_bytes` / 4)" in SPEC_TEXT
    assert "A `done` or `result` reply acknowledges too" in SPEC_TEXT


def test_spec_documents_new_fields_and_types() -> None:
    assert _row("| `bin` |").count("`c4`") == 1
    assert _row("| `offline_id` | `str?` |")
    assert "| `client_id` | `str` | As in `hello`. With `req`" in SPEC_TEXT
    assert _row("| `spool_dir` | `str` |")
    assert "TRACKER_SPOOL_DIR" in _row("| `spool_dir` | `str` |")
    for field in ("args", "kwargs", "value"):
        assert _row(f"| `{field}` | `bin` |")
    assert "ENDPOINT_NOT_FOUND" in SPEC_TEXT
    assert "Python/MLflow-specific" in SPEC_TEXT
    assert "`offline:<offline_id>`" in SPEC_TEXT and "`tracker.offline_id`" in SPEC_TEXT
    assert re.fullmatch(r"offline-[0-9a-f]{32}", OFFLINE)


def test_spec_spool_example_uses_the_file_framing() -> None:
    section = SPEC_TEXT[SPEC_TEXT.index("## 12. Spool files") : SPEC_TEXT.index("## 13.")]
    assert "<spool_dir>/<client_id>.spool" in section
    example = section[section.index("```text\n") + 8 : section.rindex("\n```")]
    assert bytes.fromhex(example) == encode_frame(VALID_VECTORS["flush_all"])


def test_spec_documents_staging_layout() -> None:
    assert "<staging_dir>/<client_id>/<uuid>/<file or directory name>" in SPEC_TEXT
    artifact = EXPECTED["artifact"]
    assert isinstance(artifact, LogArtifact)
    slot = Path(artifact.staged_path).parent
    assert slot.parent == Path(STAGING) / CID
    assert re.fullmatch(r"[0-9a-f]{32}", slot.name)


# ---------------------------------------------------------------------------------------------
# Decoder bounds: a hostile frame of N bytes costs a small multiple of N, and is decoded once
# ---------------------------------------------------------------------------------------------

BUDGET = value_budget(10_000)


def _metrics_frame(n: int) -> bytes:
    return encode_data(CID, 1, [record_to_wire(Metric(RUN, "k", 0.5, TS_MS, i)) for i in range(n)])


TS_MS = 1_700_000_000_000


def _array32(n: int, item: bytes) -> bytes:
    return b"\xdd" + n.to_bytes(4, "big") + item * n


def _nested_records(size: int) -> bytes:
    inner = [[] for _ in range(400)]
    body = {"client_id": "x", "seq": 1, "records": [inner] * ((size - 64) // 403)}
    return msgpack.packb([1, "data", body])  # type: ignore[no-any-return]


def test_value_budget_numbers() -> None:
    # PROTOCOL.md section 11: 22 values per allowed record, plus 64
    assert value_budget(10_000) == 220_064
    assert value_budget(1000) == 22_064
    assert "22 × `max_records_per_frame` + 64" in SPEC_TEXT
    assert "| `frame_too_complex` |" in SPEC_TEXT


def test_budget_admits_twice_max_records_so_the_daemon_can_name_its_limit() -> None:
    # a data frame of n metrics holds 12 + 11 n values
    msg = decode(_metrics_frame(2004), max_values=value_budget(1000))
    assert isinstance(msg, Data) and len(msg.records) == 2004
    _reject(_metrics_frame(2005), "frame_too_complex", "22064", max_values=value_budget(1000))
    assert len(decode(_metrics_frame(2005)).records) == 2005  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("name", "frame"),
    [
        ("4 M empty arrays in one array", _array32(4_000_000, b"\x90")),
        ("4 M empty maps in one array", _array32(4_000_000, b"\x80")),
        ("records of 400 empty arrays each", _nested_records(4_000_000)),
        ("1.3 M two-char strings", _array32(1_333_000, b"\xa2ab")),
        ("array header claiming 4 G elements", b"\x93\x01\xa4data\xdd\xff\xff\xff\xff"),
        ("map header claiming 4 G pairs", b"\x93\x01\xa4data\xdf\xff\xff\xff\xff"),
    ],
)
def test_hostile_frame_is_refused_within_a_small_multiple_of_its_size(
    name: str, frame: bytes
) -> None:
    import tracemalloc

    tracemalloc.start()
    try:
        exc = _reject(frame, "frame_too_complex", "220064 msgpack values", max_values=BUDGET)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # at most the budget of values (~60 bytes each at worst) plus one array/map past it: far
    # below what building the frame would take (e.g. 4 M lists: about 300 MB)
    assert peak < 16 * 2**20, (name, peak)
    assert exc.req is None


def test_deep_nesting_is_refused_in_every_mode() -> None:
    deep = b"\x91" * 100_000 + b"\x90"
    _reject(deep, "frame_too_complex", "deeper", "1024", max_values=BUDGET)
    _reject(deep, "frame_too_complex", "deeper")
    shallow = _frame("status", {"req": 1, "x": [[[[[[[[[[]]]]]]]]]]})
    _reject(shallow, "bad_field", "'x'", max_values=BUDGET)  # schema, not the bound


def test_a_huge_array_header_without_a_budget_is_just_truncated() -> None:
    _reject(b"\x93\x01\xa4data\xdd\xff\xff\xff\xff", "bad_msgpack")


def test_valid_vectors_decode_the_same_with_the_budget() -> None:
    for name, frame in VALID_VECTORS.items():
        if name in EXPECTED:  # (compared encoded: a NaN metric is not equal to itself)
            assert encode(decode(frame, max_values=value_budget(1000))) == frame, name


def test_error_carries_the_req_it_read_once() -> None:
    # decoded once: the req of a body that failed the schema comes with the error
    assert _reject(_frame("flush", {"req": 9, "seq": 1, "run_id": None}), "bad_field").req == 9
    assert _reject(_frame("ping", {"req": 6}), "unknown_kind").req == 6
    assert _reject(_pack([2, "status", {"req": 5}, 0]), "bad_envelope").req == 5
    assert _reject(_frame("status", {"req": -1, "x": 1}), "bad_field").req is None
    assert _reject(_frame("status", {"req": "8"}), "bad_field").req is None
    assert _reject(b"\xc1", "bad_msgpack").req is None
    assert _reject(encode(StatusRequest(4)) + b"\x00", "bad_msgpack", "trailing").req is None
    # not decoded at all: read from the frame's first 4 KiB only
    big = _pack([1, "status", {"req": 11, "pad": b"x" * 70_000}])
    assert _reject(big, "frame_too_large", max_frame=65536).req == 11
    late = _pack([1, "status", {"pad": b"x" * 70_000, "req": 12}])
    assert _reject(late, "frame_too_large", max_frame=65536).req is None
    head = _pack([1, "status", {"req": 13, "pad": None}])[:-1]
    nested = head + _array32(300_000, b"\x90")
    assert _reject(nested, "frame_too_complex", max_values=BUDGET).req == 13


@pytest.mark.parametrize(
    ("frame", "req"),
    [
        (_pack([1, "status", {"req": 3}]), 3),
        (_pack([1, "status", {"a": [1, 2, {"b": 3}], "req": 4}]), 4),
        (_pack([1, "status", {"req": 2**63}]), None),
        (_pack([1, "status", {"req": True}]), None),
        (_pack([1, "status", [1]]), None),
        (_pack({"req": 1}), None),
        (b"", None),
        (b"\x93", None),
    ],
)
def test_peek_req(frame: bytes, req: int | None) -> None:
    assert peek_req(frame) == req


def test_fast_metric_path_matches_the_general_one() -> None:
    rng = random.Random(3)
    values: list[Any] = [0.5, 1, -(2**63), 2**63, True, None, "s", math.inf, b"b", [], 1.5e300]
    strs: list[Any] = ["r", "", None, 1, b"x"]
    for _ in range(3000):
        item = [
            rng.choice(["m", "p", "x"]),
            rng.choice(strs),
            rng.choice(strs),
            rng.choice(values),
            rng.choice(values),
            rng.choice(values),
            rng.choice([None, None, "m-1", 3]),
            rng.choice([None, None, "d"]),
            rng.choice([None, None, "h"]),
        ][: rng.choice([9, 9, 9, 4, 8])]
        frame = _frame("data", {"client_id": CID, "seq": 1, "records": [item]})
        try:
            want: Any = decode_record(item, "data.records[0]")
        except ProtocolError as exc:
            want = (exc.code, exc.message)
        msg = decode(frame, max_values=BUDGET)
        assert isinstance(msg, Data)
        got: Any = msg.records[0]
        if isinstance(got, Unreadable):
            got = ("bad_field", got.problem)
        assert got == want, item
        if isinstance(got, Metric):
            assert type(got.value) is float


def test_budgeted_decode_never_raises_anything_else() -> None:
    rng = random.Random(11)
    frames = [VALID_VECTORS[name] for name in sorted(VALID_VECTORS)]
    for _ in range(2000):
        frame = bytearray(rng.choice(frames))
        for _ in range(rng.randint(1, 4)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        try:
            decode(bytes(frame), max_values=rng.choice([0, 5, 64, BUDGET]))
        except ProtocolError as exc:
            assert exc.code in DOCUMENTED_CODES


def test_peek_sequenced_reads_only_the_header() -> None:
    assert peek_sequenced(_metrics_frame(1000)) == (CID, 1, 1000)
    data, artifact_msg = EXPECTED["data"], EXPECTED["artifact"]
    assert isinstance(data, Data) and isinstance(artifact_msg, LogArtifact)
    assert peek_sequenced(VALID_VECTORS["data"]) == (CID, data.seq, len(data.records))
    assert peek_sequenced(encode(artifact_msg)) == (CID, artifact_msg.seq, 1)
    # any field order
    body = {"records": [record_to_wire(Param(RUN, "k", "v"))] * 2, "seq": 9, "client_id": "c"}
    assert peek_sequenced(_frame("data", body)) == ("c", 9, 2)
    artifact = _body(EXPECTED["artifact"])
    reordered = dict(reversed(list(artifact.items())))
    assert peek_sequenced(_frame("artifact", reordered)) == (CID, artifact_msg.seq, 1)


def test_invalid_request_lists_every_daemon_kind() -> None:
    """PROTOCOL.md section 10: the daemon refuses every daemon -> client kind a client sends, so
    the `invalid_request` row names them all (it lacked `accepted`)."""
    (row,) = [line for line in SPEC_TEXT.splitlines() if line.startswith("| `invalid_request` |")]
    listed = set(re.findall(r"`([a-z_]+)`", row.split("(", 1)[1].split(")", 1)[0]))
    daemon_kinds = {
        k for k, cls in messages._KINDS.items() if cls in typing.get_args(p.DaemonMessage)
    }
    assert daemon_kinds == listed, daemon_kinds ^ listed


def test_the_spec_settles_curve_with_one_variable_as_the_client_does() -> None:
    """PROTOCOL.md 1.1: only one CURVE variable set is an error naming the missing one; the
    spec quotes the reference client's message exactly."""
    from tracker_client.wire.curve import CurveConfigError, curve_from_env

    with pytest.raises(CurveConfigError) as err:
        curve_from_env({"TRACKER_CURVE_SERVER_KEY": "/etc/server.key"})
    assert f"`{err.value}`" in " ".join(SPEC_TEXT.split())


def test_the_spec_answers_both_by_name_questions() -> None:
    """PROTOCOL.md 5.4 (tested against a real daemon in tests/integration/test_resume_by_name.py):
    a found run takes the new offline id, and experiment_tags apply to it."""
    text = " ".join(SPEC_TEXT.split())
    assert "its `experiment_tags` **are** set on that experiment, whether the run is found" in text
    assert "its `offline_id` names the found run" in text


@pytest.mark.parametrize(
    "doc",
    [
        [[[[[[]]]]]] * 50,  # nested empty arrays: the most values per byte
        [{}] * 100,
        [{"a": [], "b": {}}] * 30,
        [1, [2, [3, [4, {"k": [None] * 20}]]]] * 10,
    ],
)
def test_a_frame_of_at_most_half_the_budget_in_bytes_never_exceeds_it(doc: object) -> None:
    """decode skips the budget hooks for frames of at most max_values / 2 bytes: the count the
    hooks keep never exceeds twice the frame's length."""
    frame = msgpack.packb(doc, use_bin_type=True)
    budget = Budget(2 * len(frame))
    msgpack.unpackb(frame, list_hook=budget.array, object_hook=budget.map)
    assert budget.left >= 0
    tight = Budget(len(frame) // 4)  # and the hooks do bound a frame over its budget
    with pytest.raises(OverBudget):
        msgpack.unpackb(frame, list_hook=tight.array, object_hook=tight.map)


def test_the_fast_path_builds_the_same_frozen_metric_as_the_constructor() -> None:
    frame = p.encode_data("c1", 1, [["m", "r1", "loss", 0.5, 7, 3, None, None, None]])
    msg = p.decode(frame, p.DEFAULT_MAX_FRAME_BYTES, p.value_budget(10))
    assert isinstance(msg, p.Data)
    (rec,) = msg.records
    expected = p.Metric("r1", "loss", 0.5, 7, 3)
    assert type(rec) is p.Metric
    assert rec == expected and hash(rec) == hash(expected) and repr(rec) == repr(expected)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.value = 1.0  # type: ignore[misc]
