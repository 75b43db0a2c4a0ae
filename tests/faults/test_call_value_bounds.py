"""A ``call``'s ``args``/``kwargs`` decode within a budget of values, against a real daemon.

The wire frame is decoded within a value budget, but a call's arguments are a msgpack document
inside it, decoded afterwards by ``mlflow.entities`` (client) — before, without any bound: one call
whose args were a 4 MB array of 4 M empty arrays took the daemon ~275 MB (x69) and seconds; a
``Run`` entity holding 2 M empty metrics in 4 MB of protobuf took ~680 MB and ~16 s; and 300 ext
values nested in each other (2 KB) overflowed the C stack: the daemon died of SIGSEGV. Now each of
``args``/``kwargs`` is refused past ``entities.call_value_budget`` values (protobuf charged by its
messages and fields before it is parsed, ext values nested at most ``MAX_EXT_DEPTH`` deep) with
``INVALID_PARAMETER_VALUE`` naming the field and the limit; the daemon's peak RSS stays within a
bound, it keeps serving a good client at once, and a legitimately large call still fits.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from tests.support import workers
from tests.support.daemon import Daemon, running_daemon
from tests.support.net import raw_dealer, recv_reply
from tracker_client import protocol as p
from tracker_client.mlflow.entities import (
    EXT_PROTO,
    EXT_SET,
    MAX_EXT_DEPTH,
    call_value_budget,
    decode_value,
    encode_value,
    result_value_budget,
)

pytestmark = pytest.mark.integration

MB = 1024 * 1024
POINTS = 200
LIMIT = call_value_budget(p.DEFAULT_MAX_RECORDS, p.DEFAULT_MAX_FRAME_BYTES)


def vm(pid: int, key: str) -> int:
    """``VmRSS`` / ``VmHWM`` of ``pid`` in bytes."""
    for text in Path(f"/proc/{pid}/status").read_text().splitlines():
        if text.startswith(key + ":"):
            return int(text.split()[1]) * 1024
    raise AssertionError(f"no {key} for pid {pid}")


def empty_arrays(n: int) -> bytes:
    """msgpack ``[[], [], ...]`` with ``n`` empty arrays: one value per byte."""
    return b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def run_of_empty_metrics(n: int) -> bytes:
    """``{"run": Run}``: a ``Run`` entity (ext 1) whose protobuf ``data`` holds ``n`` empty
    metrics (2 bytes each)."""
    run_data = b"\x0a\x00" * n  # RunData.metrics (field 1), empty Metric
    run = b"\x12" + varint(len(run_data)) + run_data  # Run.data (field 2)
    entity = msgpack.packb(["mlflow.entities.run:Run", "mlflow.Run", run], use_bin_type=True)
    return msgpack.packb({"run": msgpack.ExtType(EXT_PROTO, entity)}, use_bin_type=True)


def nested_sets(depth: int) -> bytes:
    """A set holding a set holding ... ``depth`` levels of ext 6 values (2 KB at 300)."""
    inner = msgpack.packb([False, []])
    for _ in range(depth):
        inner = msgpack.packb([False, [msgpack.ExtType(EXT_SET, inner)]])
    return msgpack.packb([msgpack.ExtType(EXT_SET, inner)])


def raw_call(
    sock: zmq.Socket[bytes], req: int, method: str, args: bytes, kwargs: bytes
) -> p.Message:
    sock.send(p.encode(p.Call(req, "hostile-1", 0, "tracking", method, args, kwargs)))
    return recv_reply(sock, f"call {method} (req {req})", timeout=60.0)


def good_client(d: Daemon) -> float:
    return workers.good_client(d.address, d.backend_uri, "after-call-bombs", POINTS)


@pytest.mark.timeout(150)
def test_call_argument_bombs_are_refused_within_a_memory_bound(tmp_path: Path) -> None:
    room = p.DEFAULT_MAX_FRAME_BYTES - 4096  # the frame's envelope and other fields
    no_kwargs = encode_value({})
    bombs: list[tuple[str, bytes, bytes]] = [
        ("call.args", empty_arrays(room - 5), no_kwargs),
        ("call.kwargs", encode_value([]), run_of_empty_metrics(room // 2 - 64)),
    ]
    with running_daemon(tmp_path) as d:
        assert d.proc is not None
        pid = d.proc.pid
        with raw_dealer(d.address) as sock:
            sock.send(p.encode(p.Hello(1, "hostile-1", 4242, "host", "0.0.0", 0)))
            assert isinstance(recv_reply(sock, "hello"), p.Welcome)
            # warm up: the decode table and the store are loaded, as for any daemon at work
            assert isinstance(
                raw_call(sock, 2, "search_experiments", encode_value([]), no_kwargs), p.Result
            )
            time.sleep(0.5)
            before = vm(pid, "VmRSS")
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS from here on
            replies, seconds = [], []
            for req, (_, args, kwargs) in enumerate(bombs, start=3):
                started = time.monotonic()
                replies.append(raw_call(sock, req, "get_run", args, kwargs))
                seconds.append(time.monotonic() - started)
            peak = vm(pid, "VmHWM")
            deep = raw_call(sock, 9, "get_run", nested_sets(300), no_kwargs)
            assert d.proc.poll() is None, f"the daemon exited {d.proc.returncode}:\n{d.log()}"
        flushed = good_client(d)
        print(
            f"daemon RSS before {before / MB:.0f} MB, peak during the bombs {peak / MB:.0f} MB; "
            f"replies in {', '.join(f'{s:.2f}' for s in seconds)} s; good flush {flushed:.3f} s"
        )
        for (field, _, _), reply in zip(bombs, replies, strict=True):
            assert isinstance(reply, p.ErrorReply), reply
            assert reply.code == "INVALID_PARAMETER_VALUE", reply
            assert reply.message.startswith(f"{field}: the value holds more than {LIMIT} values")
        assert peak - before < 64 * MB, (before, peak)
        assert max(seconds) < 5.0, seconds
        assert isinstance(deep, p.ErrorReply) and deep.code == "INVALID_PARAMETER_VALUE", deep
        assert f"nest deeper than {MAX_EXT_DEPTH} levels" in deep.message, deep.message
        assert flushed < 10.0
        assert d.status()["task_failures"] == 0
        assert d.stop() == 0


def spans(n: int) -> list[Any]:
    """``n`` finished spans of one trace, as tracing's exporter hands them to ``log_spans``."""
    from mlflow.entities.span import LiveSpan
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    out = []
    for i in range(n):
        otel = tracer.start_span(f"step-{i}")
        live = LiveSpan(otel, "tr-0123456789abcdef0123456789abcdef")
        live.set_inputs({"i": i, "messages": [{"role": "user", "content": "hello " * 10}]})
        live.set_outputs({"answer": "abc" * 20})
        otel.end()
        out.append(live.to_immutable_span())
    return out


@pytest.mark.timeout(120)
def test_a_call_that_fills_the_frame_with_spans_still_decodes(tmp_path: Path) -> None:
    """Nearly a whole frame of spans (~0.08 values per byte) is within the budget: the daemon
    logs them all, and the client decodes the (as large) result within its own budget."""
    many = spans(6000)
    args = encode_value(["0", many])
    assert 3 * MB < len(args) < p.DEFAULT_MAX_FRAME_BYTES - 4096, len(args)
    with running_daemon(tmp_path) as d, raw_dealer(d.address) as sock:
        sock.send(p.encode(p.Hello(1, "spans-1", 4242, "host", "0.0.0", 0)))
        assert isinstance(recv_reply(sock, "hello"), p.Welcome)
        sock.send(
            p.encode(p.Call(2, "spans-1", 0, "tracking", "log_spans", args, encode_value({})))
        )
        reply = recv_reply(sock, "log_spans", timeout=60.0)
    assert isinstance(reply, p.Result), reply
    logged = decode_value(reply.value, "result", result_value_budget(len(reply.value)))
    assert len(logged) == len(many)
    assert {s.name for s in logged} == {f"step-{i}" for i in range(len(many))}
