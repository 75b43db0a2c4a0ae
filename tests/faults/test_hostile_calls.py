"""Hostile ``call`` messages against a real daemon, from a raw DEALER socket: values naming classes
outside the decode table, and a store call that raises ``SystemExit``. Before, a ``call get_run``
whose args held an ext-3 value naming ``mlflow.pyfunc.stdin_server:X`` made the daemon import that
module while decoding; its import-time ``argparse`` raised ``SystemExit(2)`` and the daemon exited
2 without draining. Now such a name is refused with ``INVALID_PARAMETER_VALUE`` naming the field
and the name (nothing is imported), a ``BaseException`` from a store call is answered
``INTERNAL_ERROR``, and the daemon goes on serving: a good client's points all land and it
drains and exits 0 on SIGTERM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from tests.support import workers
from tests.support.daemon import Daemon, running_daemon
from tests.support.net import raw_dealer, recv_reply
from tracker_client import protocol as p
from tracker_client.mlflow.entities import EXT_DICT, EXT_ENUM, EXT_PROTO, encode_value

pytestmark = pytest.mark.integration

POINTS = 200


def ext(code: int, *fields: Any) -> msgpack.ExtType:
    return msgpack.ExtType(code, msgpack.packb(list(fields), use_bin_type=True))


def raw_call(sock: zmq.Socket[bytes], req: int, method: str, args: list[Any]) -> p.Message:
    """A ``call`` of the tracking store with ``args`` packed as a raw client packs them."""
    body = msgpack.packb(args, use_bin_type=True)
    sock.send(p.encode(p.Call(req, "hostile-1", 0, "tracking", method, body, encode_value({}))))
    return recv_reply(sock, f"call {method} (req {req})", timeout=20.0)


def good_client(d: Daemon) -> float:
    return workers.good_client(d.address, d.backend_uri, "after-hostile-calls", POINTS)


@pytest.mark.timeout(120)
def test_a_call_naming_a_module_that_exits_at_import_is_refused_and_the_daemon_lives(
    tmp_path: Path,
) -> None:
    hostile = [
        # the probe: importing this module raises SystemExit(2) (argparse at import)
        ("mlflow.pyfunc.stdin_server:X", ext(EXT_ENUM, "mlflow.pyfunc.stdin_server:X", 1)),
        # an MLflow class that is not an entity, and a function reachable as an attribute
        (
            "mlflow.store.tracking.sqlalchemy_store:SqlAlchemyStore",
            ext(EXT_ENUM, "mlflow.store.tracking.sqlalchemy_store:SqlAlchemyStore", 1),
        ),
        (
            "mlflow.utils.file_utils:os.system",
            ext(EXT_PROTO, "mlflow.utils.file_utils:os.system", "mlflow.Run", b""),
        ),
        ("mlflow.server.auth:X", ext(EXT_DICT, "mlflow.server.auth:X", {})),
    ]
    with running_daemon(tmp_path) as d:
        assert d.proc is not None
        replies = []
        with raw_dealer(d.address) as sock:
            sock.send(p.encode(p.Hello(1, "hostile-1", 4242, "host", "0.0.0", 0)))
            assert isinstance(recv_reply(sock, "hello"), p.Welcome)
            for req, (_, value) in enumerate(hostile, start=2):
                replies.append(raw_call(sock, req, "get_run", [value]))
            # the same socket is still served: a well-formed call with a real entity enum
            ok = raw_call(sock, 10, "search_experiments", [])
        assert d.proc.poll() is None, f"the daemon exited {d.proc.returncode}:\n{d.log()}"
        for (name, _), reply in zip(hostile, replies, strict=True):
            assert isinstance(reply, p.ErrorReply), reply
            assert reply.code == "INVALID_PARAMETER_VALUE", reply
            assert reply.message.startswith("call.args: refusing to decode"), reply.message
            assert repr(name) in reply.message and "not an allowed MLflow entity class" in (
                reply.message
            )
        assert isinstance(ok, p.Result), ok

        flushed = good_client(d)  # served at once, every point lands
        assert flushed < 10.0
        status = d.status()
        assert status["calls"]["read"]["failures"] == len(hostile)
        assert status["task_failures"] == 0  # refused as bad input, not a failed task
        log = d.log()
        assert "Traceback" not in log and "usage:" not in log  # stdin_server's argparse: not run
        assert d.stop() == 0  # drains and exits cleanly when asked


# The daemon process's own MLflow store, made to raise SystemExit for one experiment name: stands
# in for library code that calls sys.exit on a request's behalf (which cannot be produced with
# an allowed value).
EXITING_STORE = """
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
_real = SqlAlchemyStore.get_experiment_by_name
def _get_experiment_by_name(self, name, *args, **kwargs):
    if name == "exit-now":
        raise SystemExit(3)
    return _real(self, name, *args, **kwargs)
SqlAlchemyStore.get_experiment_by_name = _get_experiment_by_name
"""


@pytest.mark.timeout(120)
def test_a_store_call_that_raises_system_exit_is_answered_and_contained(tmp_path: Path) -> None:
    with running_daemon(tmp_path, prelude=EXITING_STORE) as d:
        assert d.proc is not None
        with raw_dealer(d.address) as sock:
            sock.send(p.encode(p.Hello(1, "hostile-1", 4242, "host", "0.0.0", 0)))
            assert isinstance(recv_reply(sock, "hello"), p.Welcome)
            exited = raw_call(sock, 2, "get_experiment_by_name", ["exit-now"])
            again = raw_call(sock, 3, "get_experiment_by_name", ["exit-now"])
            found = raw_call(sock, 4, "get_experiment_by_name", ["Default"])
        assert d.proc.poll() is None, f"the daemon exited {d.proc.returncode}:\n{d.log()}"
        for reply in (exited, again):
            assert isinstance(reply, p.ErrorReply) and reply.code == "INTERNAL_ERROR", reply
            assert "get_experiment_by_name" in reply.message, reply.message
            assert "SystemExit: 3" in reply.message, reply.message
        assert isinstance(found, p.Result), found
        good_client(d)
        assert d.status()["calls"]["read"]["failures"] == 2
        assert "event=call_failed" in d.log() and "SystemExit: 3" in d.log()
        assert d.stop() == 0
