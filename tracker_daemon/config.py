"""The daemon's configuration: one frozen dataclass built from defaults, a TOML file, the
environment (``TRACKER_DAEMON_<KEY>``) and command-line flags, in that order of precedence.
Unknown keys and bad values raise :class:`~tracker_daemon.errors.ConfigError` naming the key."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracker_client.address import daemon_default_address
from tracker_client.protocol import DEFAULT_MAX_FRAME_BYTES

from .errors import ConfigError

__all__ = ["ENV_PREFIX", "Config", "default_state_dir", "load_config"]

ENV_PREFIX = "TRACKER_DAEMON_"


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
    address: str = ""
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    batch_max_age_ms: int = 50
    sink_concurrency: int = 0  # 0: 1 for SQLite (one writer), 4 for other backends
    barrier_timeout_s: float = 600.0
    retry_max_backoff_s: float = 30.0
    durability: str = "fsync"  # "fsync": ack after the journal is fsynced; "os": after write()
    fsync_interval_ms: int = 50
    journal_max_bytes: int = 8 * 1024**3
    journal_segment_bytes: int = 64 * 1024**2
    max_buffered_records: int = 200_000  # beyond this the backlog stays in the journal only
    drain_timeout_s: float = 30.0
    orphan_status: str = "FAILED"  # status for runs whose process died without ending them
    log_level: str = "INFO"

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
    def bind_address(self) -> str:
        return self.address or daemon_default_address()

    @property
    def is_sqlite(self) -> bool:
        return self.backend_uri.startswith("sqlite:")

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
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes")
            return bool(value)
        if kind is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind is float:
            return float(value)
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    except (TypeError, ValueError):
        raise ConfigError(
            f"{source}: {key} = {value!r} is not a valid {kind.__name__}"
        ) from None


def _check(cfg: Config) -> Config:
    if cfg.max_frame_bytes < 1024 or cfg.max_frame_bytes > 256 * 1024 * 1024:
        raise ConfigError(f"max_frame_bytes = {cfg.max_frame_bytes}: must be 1 KiB .. 256 MiB")
    if not 1 <= cfg.batch_max_age_ms <= 60_000:
        raise ConfigError(f"batch_max_age_ms = {cfg.batch_max_age_ms}: must be 1 .. 60000")
    if cfg.sink_concurrency < 0 or cfg.sink_concurrency > 64:
        raise ConfigError(f"sink_concurrency = {cfg.sink_concurrency}: must be 0 (auto) .. 64")
    if cfg.is_sqlite and cfg.sink_concurrency > 1:
        raise ConfigError("sink_concurrency > 1 is not allowed with SQLite: it has one writer")
    if cfg.barrier_timeout_s <= 0:
        raise ConfigError(f"barrier_timeout_s = {cfg.barrier_timeout_s}: must be > 0")
    addr = cfg.bind_address
    if not (addr.startswith("ipc://") or addr.startswith("tcp://")):
        raise ConfigError(f"address = {addr!r}: must start with ipc:// or tcp://")
    if addr.startswith("tcp://"):
        host = addr[len("tcp://") :].rsplit(":", 1)[0]
        if host not in ("127.0.0.1", "localhost", "[::1]", "::1"):
            raise ConfigError(
                f"address = {addr!r}: tcp is only allowed on loopback (127.0.0.1); "
                "other interfaces need CURVE authentication, which is not configured"
            )
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
    return cfg


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
