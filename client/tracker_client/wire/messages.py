"""The wire protocol's messages (pure, no I/O): what a client and the daemon say to each other.

Every ZeroMQ message from a client DEALER to the daemon ROUTER (and back) is one frame holding one
msgpack *envelope*: ``[version, kind, body]`` where ``version`` is an int, ``kind`` a string and
``body`` a map with string keys. Each message is a frozen dataclass here: its field order is the
documented field list (``client/PROTOCOL.md``), declared once; :mod:`.codec` derives the wire rules
from it. Also here: the version, the features (PROTOCOL.md 11.1), the records (:class:`Metric`,
:class:`Param`, :class:`Tag`), :class:`ProtocolError` and the kind of each message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from .bounds import DEFAULT_MAX_RECORDS

__all__ = [
    "Accepted",
    "Ack",
    "Call",
    "ClientMessage",
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_MAX_RECORDS",
    "DaemonMessage",
    "Data",
    "Done",
    "EndRun",
    "ErrorReply",
    "FEATURES",
    "FEATURE_ACCEPTED",
    "FEATURE_SYSTEM_METRICS",
    "FEATURE_UNITS",
    "Failure",
    "Flush",
    "Hello",
    "LogArtifact",
    "Message",
    "Metric",
    "OPTIONAL_FIELDS",
    "PROTOCOL_VERSION",
    "Param",
    "ProtocolError",
    "Record",
    "Result",
    "RunStarted",
    "SENT_WHEN_SET",
    "SUPPORTED_VERSIONS",
    "StartRun",
    "StatusReply",
    "StatusRequest",
    "Tag",
    "Unreadable",
    "Welcome",
    "new_metric",
]

PROTOCOL_VERSION: Final = 1
SUPPORTED_VERSIONS: Final = frozenset({1})
DEFAULT_MAX_FRAME_BYTES: Final = 4 * 1024 * 1024

# Features (PROTOCOL.md 11.1): what this implementation understands beyond version 1 as first
# published. A peer sends a feature's fields only to a peer that announced the feature.
FEATURE_UNITS: Final = "units"  # data.units: records committed all-or-nothing (section 5.2)
# start_run.system_metrics: the daemon samples the run's processes (section 11.1)
FEATURE_SYSTEM_METRICS: Final = "system_metrics"
FEATURE_ACCEPTED: Final = "accepted"  # the interim reply `accepted` to end_run (sections 5.5, 6.8)
FEATURES: Final = (
    FEATURE_UNITS,
    FEATURE_SYSTEM_METRICS,
    FEATURE_ACCEPTED,
)


class ProtocolError(ValueError):
    """A frame that does not follow the protocol. ``code`` is stable and machine-readable;
    ``req`` is the frame's ``req`` when the decoder read a valid one (to echo in the reply)."""

    def __init__(self, code: str, message: str, req: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.req = req


# --------------------------------------------------------------------------------------------
# Records (the payload of DATA frames)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Metric:
    run_id: str
    key: str
    value: float
    timestamp: int
    step: int
    model_id: str | None = None
    dataset_name: str | None = None
    dataset_digest: str | None = None


def _metric_maker() -> Callable[[str, str, float, int, int], Metric]:
    """``Metric(run_id, key, value, timestamp, step)`` at half the cost of the frozen dataclass's
    ``__init__`` (eight ``object.__setattr__`` calls): the slots are set through their
    descriptors. For the decoder's fast path, whose arguments are checked already."""
    new = object.__new__
    set_run, set_key, set_value, set_ts, set_step, set_model, set_dsn, set_dsd = (
        getattr(Metric, name).__set__ for name in Metric.__slots__
    )

    def make(run_id: str, key: str, value: float, ts: int, step: int) -> Metric:
        m = new(Metric)
        set_run(m, run_id)
        set_key(m, key)
        set_value(m, value)
        set_ts(m, ts)
        set_step(m, step)
        set_model(m, None)
        set_dsn(m, None)
        set_dsd(m, None)
        return m

    return make


new_metric: Final = _metric_maker()


@dataclass(frozen=True, slots=True)
class Param:
    run_id: str
    key: str
    value: str


@dataclass(frozen=True, slots=True)
class Tag:
    run_id: str
    key: str
    value: str


Record: TypeAlias = Metric | Param | Tag


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A record of a ``data`` frame that does not decode: ``problem`` names the element and why
    (``data.records[3].timestamp: ...``); ``run_id`` is its element 1 when that is a string of
    at most 256 characters, else None. Never encoded: it fails where it is found."""

    run_id: str | None
    problem: str


# --------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Failure:
    """A record the daemon could not commit, with MLflow's error code and a reason."""

    record: Record | None
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Hello:
    req: int
    client_id: str
    pid: int
    host: str
    version: str
    acked_floor: int = 0  # every seq <= this was acked by a daemon before (resume after restart)
    features: tuple[str, ...] = ()  # what the client understands (sent only when not empty)


@dataclass(frozen=True, slots=True)
class Data:
    client_id: str
    seq: int
    records: tuple[Record | Unreadable, ...]  # an Unreadable only in a decoded frame
    # (first, count) of each unit: records of one run committed all-or-nothing, as one MLflow
    # log_batch call; ascending, not overlapping. Sent only to a daemon announcing "units".
    units: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class LogArtifact:
    client_id: str
    seq: int
    run_id: str
    staged_path: str
    artifact_path: str | None


@dataclass(frozen=True, slots=True)
class StartRun:
    req: int
    client_id: str = ""
    experiment_id: str | None = None
    experiment_name: str | None = None
    run_id: str | None = None
    run_name: str | None = None
    parent_run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    start_time: int = 0
    offline_id: str | None = None  # the placeholder id a client used while no daemon answered
    # set on the experiment (created or not); artifact_location only when the daemon creates it
    experiment_tags: dict[str, str] = field(default_factory=dict)
    artifact_location: str | None = None
    resume: str | None = None  # "by_name": resume the latest run named run_name, else create it
    # 1: the daemon samples the run's processes and the host (feature "system_metrics")
    system_metrics: int = 0


@dataclass(frozen=True, slots=True)
class EndRun:
    req: int
    client_id: str
    seq: int
    run_id: str
    status: str
    end_time: int


@dataclass(frozen=True, slots=True)
class Flush:
    req: int
    client_id: str
    seq: int
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class Call:
    """Invoke an MLflow store method in the daemon (the ``tracker://`` plugin). ``target`` is
    ``tracking`` or ``registry``; ``args``/``kwargs`` are encoded by ``mlflow.entities``.
    Runs after everything this client sent up to ``seq`` is committed (read-your-writes)."""

    req: int
    client_id: str
    seq: int
    target: str
    method: str
    args: bytes
    kwargs: bytes


@dataclass(frozen=True, slots=True)
class Result:
    """Reply to ``call``: the encoded return value and the failures since the last barrier."""

    req: int
    value: bytes
    failures: tuple[Failure, ...] = ()


@dataclass(frozen=True, slots=True)
class StatusRequest:
    req: int


@dataclass(frozen=True, slots=True)
class Welcome:
    req: int
    daemon_version: str
    acked_seq: int
    staging_dir: str
    max_frame: int
    spool_dir: str = ""
    features: tuple[str, ...] = ()  # what the daemon understands; only to a hello with features


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int


@dataclass(frozen=True, slots=True)
class Accepted:
    """The daemon holds an ``end_run`` durably (journaled before this reply): it sets the run's
    status once the records before it are committed, even if the client is gone by then. The
    request's ``done`` (or ``error``) follows."""

    req: int


@dataclass(frozen=True, slots=True)
class RunStarted:
    req: int
    run_id: str
    experiment_id: str
    artifact_uri: str
    run_name: str


@dataclass(frozen=True, slots=True)
class Done:
    req: int
    failures: tuple[Failure, ...] = ()


@dataclass(frozen=True, slots=True)
class StatusReply:
    req: int
    status: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ErrorReply:
    req: int | None
    code: str
    message: str


ClientMessage: TypeAlias = (
    Hello | Data | LogArtifact | StartRun | EndRun | Flush | StatusRequest | Call
)
DaemonMessage: TypeAlias = (
    Welcome | Ack | RunStarted | Done | StatusReply | ErrorReply | Result | Accepted
)
Message: TypeAlias = ClientMessage | DaemonMessage

# kind string <-> class; the field order of each dataclass is the documented field list.
_KINDS: Final[dict[str, type[Any]]] = {
    "hello": Hello,
    "data": Data,
    "artifact": LogArtifact,
    "start_run": StartRun,
    "end_run": EndRun,
    "flush": Flush,
    "status": StatusRequest,
    "call": Call,
    "result": Result,
    "welcome": Welcome,
    "ack": Ack,
    "run": RunStarted,
    "done": Done,
    "accepted": Accepted,
    "status_reply": StatusReply,
    "error": ErrorReply,
}
_KIND_OF: Final[dict[type[Any], str]] = {cls: kind for kind, cls in _KINDS.items()}

# Fields added to version 1 after spool files and clients without them existed: an encoder always
# sends them, a decoder takes a missing one as its default (so older spools still import).
OPTIONAL_FIELDS: Final[dict[type[Any], frozenset[str]]] = {
    StartRun: frozenset({"experiment_tags", "artifact_location", "resume", "system_metrics"}),
    Hello: frozenset({"features"}),
    Welcome: frozenset({"features"}),
    Data: frozenset({"units"}),
}
# Fields of a feature (PROTOCOL.md 11.1): an encoder leaves them out when empty, so a peer that
# did not announce the feature never sees them; a decoder takes a missing one as empty.
SENT_WHEN_SET: Final[dict[type[Any], frozenset[str]]] = {
    Hello: frozenset({"features"}),
    Welcome: frozenset({"features"}),
    Data: frozenset({"units"}),
    StartRun: frozenset({"system_metrics"}),
}
