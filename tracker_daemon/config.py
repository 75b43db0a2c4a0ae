"""The daemon's configuration: one frozen dataclass built from defaults, a TOML file, the
environment (``TRACKER_DAEMON_<KEY>``) and command-line flags, in that order of precedence.
Unknown keys and bad values raise :class:`~tracker_daemon.errors.ConfigError` naming the key."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracker_client.protocol import DEFAULT_MAX_FRAME_BYTES
from tracker_client.wire.address import daemon_default_address

from .errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "MIN_RECORDS_PER_FRAME",
    "SINKS",
    "Config",
    "default_state_dir",
    "is_loopback_tcp",
    "load_config",
    "load_server_curve",
    "metrics_host_port",
    "redact_uri",
]

ENV_PREFIX = "TRACKER_DAEMON_"
# The reference client sends at most 1,000 records per DATA frame (Transport.frame_records); a
# lower max_records_per_frame would refuse its frames, which it would then resend forever.
MIN_RECORDS_PER_FRAME = 1000
SINKS = ("auto", "sql", "mlflow")
SQL_SCHEMES = frozenset({"sqlite", "postgresql", "mysql"})


def default_state_dir() -> Path:
    if os.getuid() == 0:
        return Path("/var/lib/tracker-daemon")
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "tracker-daemon"


@dataclass(frozen=True, slots=True)
class Config:
    """Effective settings. Empty strings for URIs/addresses mean "derive the default"."""

    state_dir: str = ""
    backend_store_uri: str = ""
    default_artifact_root: str = ""
    # local directories the daemon may write artifacts below (besides a local default root)
    artifact_roots: tuple[str, ...] = ()
    address: str = ""
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    batch_max_age_ms: int = 50
    commit_interval_ms: int = 500  # light load: commits this far apart at most (pacing.py)
    sink_concurrency: int = 0  # 0: 1 for SQLite (one writer), 4 for other backends
    sink: str = "auto"  # "sql": the SQL writer; "mlflow": MLflow's log_batch; "auto": see sqlwriter
    sqlite_wal: bool = (
        True  # a SQLite store is switched to WAL mode (readers never block the writer)
    )
    barrier_timeout_s: float = 600.0
    retry_max_backoff_s: float = 30.0
    durability: str = "fsync"  # "fsync": ack after the journal is fsynced; "os": after write()
    fsync_interval_ms: int = 50
    journal_max_bytes: int = 8 * 1024**3
    journal_segment_bytes: int = 64 * 1024**2
    max_buffered_records: int = 50_000  # beyond this the backlog stays in the journal only
    drain_timeout_s: float = 30.0
    orphan_status: str = "FAILED"  # status for runs whose process died without ending them
    log_level: str = "INFO"
    # observability
    metrics_address: str = ""  # "HOST:PORT": serve Prometheus metrics there; "" = off
    health_stall_s: float = 60.0  # see status.health(): sink failing and backlog this old
    # access control: CURVE (both or neither); required for tcp on a non-loopback address
    curve_secret_key_file: str = ""  # the daemon's secret certificate (zmq.auth format)
    curve_allowed_clients_dir: str = ""  # public certificates (*.key) of the allowed clients
    # limits that protect the daemon; a hit is answered with an error "limit_exceeded"
    max_records_per_frame: int = 10_000
    max_open_runs_per_client: int = 1_000
    max_clients: int = 10_000
    max_requests_per_client: int = 128  # start_run/end_run/flush/call in progress, one client
    max_requests: int = 4096  # ... over all clients
    # system metrics of runs that ask (sampler.py): seconds between samples, 0 = off; the GPU
    # part: "auto" (NVML, when nvidia-ml-py is installed) or "off"
    system_metrics_interval_s: float = 10.0
    system_metrics_gpu: str = "auto"

    # ---- derived values

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir) if self.state_dir else default_state_dir()

    @property
    def backend_uri(self) -> str:
        return self.backend_store_uri or f"sqlite:///{self.state_path / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str:
        return self.default_artifact_root or str(self.state_path / "artifacts")

    @property
    def local_artifact_roots(self) -> list[str]:
        """The local artifact roots: the default artifact root when it is local, then
        ``artifact_roots`` (artifact_roots.py places every local upload below one of them)."""
        from .artifacts.artifact_roots import local_path

        default = local_path(self.artifact_root)
        first = [os.path.abspath(default)] if default is not None else []
        return list(dict.fromkeys([*first, *self.artifact_roots]))

    @property
    def bind_address(self) -> str:
        return self.address or daemon_default_address()

    @property
    def curve_enabled(self) -> bool:
        return bool(self.curve_secret_key_file)

    @property
    def is_sqlite(self) -> bool:
        return self.backend_uri.startswith("sqlite:")

    @property
    def is_sql(self) -> bool:
        """A database MLflow reaches through SQLAlchemy (the SQL writer can write it)."""
        return self.backend_uri.split(":", 1)[0].split("+", 1)[0] in SQL_SCHEMES

    @property
    def writers(self) -> int:
        if self.sink_concurrency:
            return self.sink_concurrency
        return 1 if self.is_sqlite else 4

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(
            state_dir=str(self.state_path),
            backend_store_uri=self.backend_uri,
            default_artifact_root=self.artifact_root,
            address=self.bind_address,
        )
        return d


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _coerce(key: str, value: Any, source: str) -> Any:
    kind = type(getattr(Config(), key))
    try:
        if kind is tuple:  # a TOML array of strings, or one string of comma-separated items
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
                raise ValueError(value)
            return tuple(item.strip() for item in items if item.strip())
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes")
            return bool(value)
        if kind is int:
            if isinstance(value, bool):
                raise ValueError(value)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)  # 65536.9 is not an integer (and nan/inf are not either)
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(value)
            return number
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    except (TypeError, ValueError, OverflowError):
        what = {float: "finite float", tuple: "list of strings"}.get(kind, kind.__name__)
        raise ConfigError(f"{source}: {key} = {value!r} is not a valid {what}") from None


def _check(cfg: Config) -> Config:
    if cfg.max_frame_bytes < 1024 or cfg.max_frame_bytes > 256 * 1024 * 1024:
        raise ConfigError(f"max_frame_bytes = {cfg.max_frame_bytes}: must be 1 KiB .. 256 MiB")
    if not 1 <= cfg.batch_max_age_ms <= 60_000:
        raise ConfigError(f"batch_max_age_ms = {cfg.batch_max_age_ms}: must be 1 .. 60000")
    if not 1 <= cfg.commit_interval_ms <= 60_000:
        raise ConfigError(f"commit_interval_ms = {cfg.commit_interval_ms}: must be 1 .. 60000")
    if cfg.sink_concurrency < 0 or cfg.sink_concurrency > 64:
        raise ConfigError(f"sink_concurrency = {cfg.sink_concurrency}: must be 0 (auto) .. 64")
    if cfg.is_sqlite and cfg.sink_concurrency > 1:
        raise ConfigError("sink_concurrency > 1 is not allowed with SQLite: it has one writer")
    _check_sink(cfg)
    _check_artifact_roots(cfg)
    if cfg.barrier_timeout_s <= 0:
        raise ConfigError(f"barrier_timeout_s = {cfg.barrier_timeout_s}: must be > 0")
    _check_curve(cfg)
    _check_address(cfg)
    if cfg.durability not in ("fsync", "os"):
        raise ConfigError(f"durability = {cfg.durability!r}: must be 'fsync' or 'os'")
    if not 1 <= cfg.fsync_interval_ms <= 10_000:
        raise ConfigError(f"fsync_interval_ms = {cfg.fsync_interval_ms}: must be 1 .. 10000")
    if cfg.journal_segment_bytes < 4096:
        raise ConfigError(f"journal_segment_bytes = {cfg.journal_segment_bytes}: must be >= 4096")
    if cfg.journal_max_bytes < 2 * cfg.journal_segment_bytes:
        raise ConfigError(
            f"journal_max_bytes = {cfg.journal_max_bytes}: must be at least two segments "
            f"(2 x journal_segment_bytes = {2 * cfg.journal_segment_bytes})"
        )
    if cfg.max_buffered_records < 1000:
        raise ConfigError(f"max_buffered_records = {cfg.max_buffered_records}: must be >= 1000")
    if cfg.drain_timeout_s < 0:
        raise ConfigError(f"drain_timeout_s = {cfg.drain_timeout_s}: must be >= 0")
    if cfg.orphan_status not in ("FAILED", "KILLED"):
        raise ConfigError(f"orphan_status = {cfg.orphan_status!r}: must be FAILED or KILLED")
    if cfg.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"log_level = {cfg.log_level!r}: must be DEBUG, INFO, WARNING or ERROR")
    _check_operations(cfg)
    return cfg


def _check_sink(cfg: Config) -> None:
    if cfg.sink not in SINKS:
        raise ConfigError(f"sink = {cfg.sink!r}: must be one of {', '.join(SINKS)}")
    if cfg.sink == "sql" and not cfg.is_sql:
        raise ConfigError(
            f"sink = 'sql' needs a SQL backend_store_uri (sqlite, postgresql, mysql), "
            f"not {redact_uri(cfg.backend_uri)!r}; use sink = 'auto' or 'mlflow'"
        )


def _check_artifact_roots(cfg: Config) -> None:
    from .artifacts.artifact_roots import LocationRefused, root_path

    for entry in cfg.artifact_roots:
        try:
            root_path(entry)
        except LocationRefused as exc:
            raise ConfigError(
                f"artifact_roots: {entry!r} is not a local directory given as an absolute path "
                f"or a file:/// URI ({exc})"
            ) from None


def _check_operations(cfg: Config) -> None:
    """Observability and limits."""
    if cfg.retry_max_backoff_s <= 0:
        raise ConfigError(f"retry_max_backoff_s = {cfg.retry_max_backoff_s}: must be > 0")
    if cfg.health_stall_s <= 0:
        raise ConfigError(f"health_stall_s = {cfg.health_stall_s}: must be > 0")
    interval = cfg.system_metrics_interval_s
    if interval != 0 and not 0.1 <= interval <= 3600:
        raise ConfigError(f"system_metrics_interval_s = {interval}: must be 0 (off) or 0.1 – 3600")
    if cfg.system_metrics_gpu not in ("auto", "off"):
        raise ConfigError(
            f"system_metrics_gpu = {cfg.system_metrics_gpu!r}: must be 'auto' or 'off'"
        )
    if cfg.metrics_address:
        _parse_host_port("metrics_address", cfg.metrics_address)
    if not MIN_RECORDS_PER_FRAME <= cfg.max_records_per_frame <= 10_000_000:
        raise ConfigError(
            f"max_records_per_frame = {cfg.max_records_per_frame}: must be "
            f"{MIN_RECORDS_PER_FRAME} (what the reference client sends per frame) .. 10000000"
        )
    if cfg.max_open_runs_per_client < 1:
        raise ConfigError(
            f"max_open_runs_per_client = {cfg.max_open_runs_per_client}: must be >= 1"
        )
    if cfg.max_clients < 1:
        raise ConfigError(f"max_clients = {cfg.max_clients}: must be >= 1")
    if cfg.max_requests_per_client < 1:
        raise ConfigError(f"max_requests_per_client = {cfg.max_requests_per_client}: must be >= 1")
    if cfg.max_requests < cfg.max_requests_per_client:
        raise ConfigError(
            f"max_requests = {cfg.max_requests}: must be >= max_requests_per_client "
            f"({cfg.max_requests_per_client})"
        )


def _check_address(cfg: Config) -> None:
    addr = cfg.bind_address
    if not (addr.startswith("ipc://") or addr.startswith("tcp://")):
        raise ConfigError(f"address = {addr!r}: must start with ipc:// or tcp://")
    if addr.startswith("tcp://") and not is_loopback_tcp(addr) and not cfg.curve_enabled:
        raise ConfigError(
            f"address = {addr!r}: tcp is only allowed on loopback (127.0.0.1, ::1, localhost) "
            "unless CURVE is configured: anyone who can reach the port could write to MLflow. "
            "Set curve_secret_key_file and curve_allowed_clients_dir (keys from "
            "`tracker-daemon keygen`), or use ipc:// or tcp://127.0.0.1:PORT"
        )


def is_loopback_tcp(address: str) -> bool:
    """True for ``tcp://`` addresses on a loopback interface (127.0.0.0/8, ::1, localhost)."""
    host = address[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name or a host name: not known to be loopback


def _parse_host_port(key: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(
            f"{key} = {value!r}: must be HOST:PORT, e.g. 127.0.0.1:9464 (port 0 = any free port)"
        )
    return host, int(port)


def metrics_host_port(cfg: Config) -> tuple[str, int]:
    return _parse_host_port("metrics_address", cfg.metrics_address)


def _check_curve(cfg: Config) -> None:
    key_file, clients_dir = cfg.curve_secret_key_file, cfg.curve_allowed_clients_dir
    if bool(key_file) != bool(clients_dir):
        raise ConfigError(
            "curve_secret_key_file and curve_allowed_clients_dir must be set together "
            f"(curve_secret_key_file = {key_file!r}, curve_allowed_clients_dir = {clients_dir!r})"
        )
    if not key_file:
        return
    load_server_curve(cfg)
    if not os.path.isdir(clients_dir):
        raise ConfigError(f"curve_allowed_clients_dir = {clients_dir!r}: not a directory")
    if not os.access(clients_dir, os.R_OK | os.X_OK):
        raise ConfigError(f"curve_allowed_clients_dir = {clients_dir!r}: not readable")


def load_server_curve(cfg: Config) -> tuple[bytes, bytes]:
    """The daemon's CURVE (public, secret) key pair from ``curve_secret_key_file``."""
    from zmq.auth.certs import load_certificate

    path = cfg.curve_secret_key_file
    try:
        public, secret = load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"curve_secret_key_file = {path!r}: cannot load it: {exc}") from None
    if not secret:
        raise ConfigError(
            f"curve_secret_key_file = {path!r}: holds no secret key (give the .key_secret file "
            "written by `tracker-daemon keygen`, not the public .key)"
        )
    return public, secret


def redact_uri(uri: str) -> str:
    """``uri`` with a password replaced by ``***`` (for logs and the status document)."""
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        return uri
    if parts.password is None:
        return uri
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def load_config(
    overrides: Mapping[str, Any] | None = None,
    *,
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Defaults < TOML file < environment < ``overrides`` (CLI flags; None values are ignored)."""
    values: dict[str, Any] = {}
    if config_file:
        try:
            with open(config_file, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_file}: invalid TOML: {exc}") from None
        for key, value in data.items():
            if key not in _FIELDS:
                raise ConfigError(f"{config_file}: unknown key {key!r}")
            values[key] = _coerce(key, value, config_file)
    env = os.environ if environ is None else environ
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in _FIELDS:
            raise ConfigError(f"environment: unknown setting {name}")
        values[key] = _coerce(key, value, f"environment {name}")
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in _FIELDS:
            raise ConfigError(f"unknown setting {key!r}")
        values[key] = _coerce(key, value, f"--{key.replace('_', '-')}")
    return _check(Config(**values))
