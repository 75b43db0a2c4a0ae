"""CURVE encryption and authentication for connections to a daemon that requires it.

A daemon listening on a non-loopback tcp address uses ZeroMQ's CURVE mechanism: it only accepts
clients whose public key it lists. A client then needs two certificate files (ZeroMQ's format, as
written by ``tracker-daemon keygen``), named by two environment variables:

* ``TRACKER_CURVE_SERVER_KEY``: the daemon's **public** certificate (``server.key``);
* ``TRACKER_CURVE_CLIENT_KEY``: this client's **secret** certificate (``client.key_secret``),
  whose public half (``client.key``) is in the daemon's ``curve_allowed_clients_dir``.

Set both or neither. A daemon that does not accept the key (or does not use CURVE) drops the
connection during the handshake without an answer, so the client sees ``DaemonUnavailable``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "ENV_CLIENT_KEY",
    "ENV_SERVER_KEY",
    "CurveConfigError",
    "CurveKeys",
    "apply_curve",
    "curve_from_env",
    "curve_hint",
    "load_curve_keys",
]

ENV_SERVER_KEY = "TRACKER_CURVE_SERVER_KEY"
ENV_CLIENT_KEY = "TRACKER_CURVE_CLIENT_KEY"


class CurveConfigError(ValueError):
    """The CURVE environment variables are incomplete or name unusable files."""


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """Z85-encoded keys: the daemon's public key and this client's key pair."""

    server_public: bytes
    public: bytes
    secret: bytes


def load_curve_keys(server_cert: str, client_secret_cert: str) -> CurveKeys:
    """Read the daemon's public certificate and a client's secret certificate."""
    from zmq.auth.certs import load_certificate

    try:
        server_public, _ = load_certificate(server_cert)
    except (OSError, ValueError) as exc:
        raise CurveConfigError(f"{ENV_SERVER_KEY}={server_cert}: cannot load it: {exc}") from None
    try:
        public, secret = load_certificate(client_secret_cert)
    except (OSError, ValueError) as exc:
        raise CurveConfigError(
            f"{ENV_CLIENT_KEY}={client_secret_cert}: cannot load it: {exc}"
        ) from None
    if not secret:
        raise CurveConfigError(
            f"{ENV_CLIENT_KEY}={client_secret_cert} holds no secret key: give this client's "
            ".key_secret file (its public .key goes into the daemon's curve_allowed_clients_dir)"
        )
    return CurveKeys(server_public, public, secret)


def curve_from_env(environ: Mapping[str, str] | None = None) -> CurveKeys | None:
    """The keys named by ``TRACKER_CURVE_SERVER_KEY``/``TRACKER_CURVE_CLIENT_KEY``, or None
    when neither is set. Raises CurveConfigError (a ValueError) when only one is set or a file
    is unusable."""
    env = os.environ if environ is None else environ
    server, client = env.get(ENV_SERVER_KEY, ""), env.get(ENV_CLIENT_KEY, "")
    if not server and not client:
        return None
    if not (server and client):
        missing = ENV_CLIENT_KEY if server else ENV_SERVER_KEY
        raise CurveConfigError(
            f"CURVE: {missing} is not set; set both {ENV_SERVER_KEY} and "
            f"{ENV_CLIENT_KEY}, or neither"
        )
    return load_curve_keys(server, client)


def apply_curve(sock: Any, keys: CurveKeys | None | Literal["env"] = "env") -> CurveKeys | None:
    """Make ``sock`` (before it connects) a CURVE client with ``keys`` ("env": from the
    environment; None: plain). Returns the keys used."""
    if keys == "env":
        keys = curve_from_env()
    if keys is not None:
        sock.curve_serverkey = keys.server_public
        sock.curve_publickey = keys.public
        sock.curve_secretkey = keys.secret
    return keys


def curve_hint(keys: CurveKeys | None) -> str:
    """Text for a "no answer" message: with CURVE, a refused key looks exactly like no daemon."""
    if keys is None:
        return ""
    return (
        f"; CURVE is on ({ENV_CLIENT_KEY}, public key {keys.public.decode()[:8]}…): a daemon that "
        "does not list this client's public key in its curve_allowed_clients_dir, or does not "
        f"use CURVE, or whose public key is not the one in {ENV_SERVER_KEY}, drops the "
        "connection without an answer"
    )
