"""``decode_value`` with ``max_values`` (the bound a daemon puts on a ``call``'s args and kwargs,
and a client on a result): one budget for the document and every ext payload inside it, protobuf
payloads charged before they are parsed, ext values nested at most ``MAX_EXT_DEPTH`` deep. Before,
call values decoded without a bound (4 MB of empty arrays: ~275 MB) and 300 nested ext values
overflowed the C stack (SIGSEGV)."""

from __future__ import annotations

import msgpack
import pytest
from mlflow.entities import Metric, Param, Run, RunData, RunInfo, RunTag
from mlflow.store.entities.paged_list import PagedList

from tracker_client.mlflow.entities import (
    EXT_PROTO,
    EXT_SET,
    MAX_EXT_DEPTH,
    DecodeError,
    call_value_budget,
    decode_value,
    encode_value,
    result_value_budget,
)
from tracker_client.wire.bounds import DEFAULT_MAX_RECORDS, value_budget

pytestmark = pytest.mark.compat


def empty_arrays(n: int) -> bytes:
    return b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n


def run_of_empty_metrics(n: int) -> bytes:
    run_data = b"\x0a\x00" * n
    size = len(run_data)
    length = bytearray()
    while True:
        low, size = size & 0x7F, size >> 7
        length.append(low | (0x80 if size else 0))
        if not size:
            break
    run = b"\x12" + bytes(length) + run_data
    entity = msgpack.packb(["mlflow.entities.run:Run", "mlflow.Run", run], use_bin_type=True)
    return msgpack.packb([msgpack.ExtType(EXT_PROTO, entity)], use_bin_type=True)


def nested_sets(depth: int) -> bytes:
    inner = msgpack.packb([False, []])
    for _ in range(depth):
        inner = msgpack.packb([False, [msgpack.ExtType(EXT_SET, inner)]])
    return msgpack.packb([msgpack.ExtType(EXT_SET, inner)])


def runs(n: int) -> PagedList[Run]:
    info = RunInfo(
        run_id="r" * 32,
        experiment_id="1",
        user_id="u",
        status="FINISHED",
        start_time=1,
        end_time=2,
        artifact_uri="file:///tmp/x",
        lifecycle_stage="active",
        run_name="n",
    )
    data = RunData(
        metrics=[Metric(f"m{i}", 1.0, 1, i) for i in range(100)],
        params=[Param(f"p{i}", "v") for i in range(50)],
        tags=[RunTag(f"t{i}", "") for i in range(20)],
    )
    return PagedList([Run(info, data) for _ in range(n)], "next")


def test_msgpack_values_past_the_budget_are_refused_naming_the_field_and_limit() -> None:
    # n empty arrays in an array: each is an element and an array (2n + 1 values)
    assert decode_value(empty_arrays(499), "call.args", 999) == [[]] * 499
    with pytest.raises(DecodeError) as err:
        decode_value(empty_arrays(500), "call.args", 1000)
    assert str(err.value).startswith("call.args: the value holds more than 1000 values")
    # an array header longer than the budget is refused before it is allocated
    with pytest.raises(DecodeError, match="^call.kwargs: the value holds more than 10 values"):
        decode_value(b"\xdd\x00\x10\x00\x00" + b"\xc0" * 0x100000, "call.kwargs", 10)


def test_the_budget_spans_ext_payloads() -> None:
    value = [{1, 2, 3}, frozenset({4, 5})] * 100
    data = encode_value(value)
    assert decode_value(data, "v", 2000) == value
    with pytest.raises(DecodeError, match="more than 1000 values"):
        decode_value(data, "v", 1000)  # each set's payload alone is under it


def test_protobuf_is_charged_before_it_is_parsed() -> None:
    with pytest.raises(DecodeError, match="^call.args: the value holds more than 100000 values"):
        decode_value(run_of_empty_metrics(2_000_000), "call.args", 100_000)
    (run,) = decode_value(run_of_empty_metrics(1000), "call.args", 100_000)
    assert isinstance(run, Run) and run.data.metrics == {"": 0.0}  # 1000 empty metrics, one key


def test_ext_values_nest_at_most_max_ext_depth() -> None:
    with pytest.raises(DecodeError, match="unhashable"):  # deep enough to decode each level
        decode_value(nested_sets(MAX_EXT_DEPTH - 1), "v")
    for depth in (MAX_EXT_DEPTH, 300, 5000):  # 300 levels overflowed the stack before
        with pytest.raises(DecodeError, match=f"nest deeper than {MAX_EXT_DEPTH} levels"):
            decode_value(nested_sets(depth), "call.args")


def test_legitimate_values_fit_their_budgets() -> None:
    limit = call_value_budget(DEFAULT_MAX_RECORDS, 4 * 1024 * 1024)
    assert limit == max(value_budget(DEFAULT_MAX_RECORDS), 512 * 1024)
    page = runs(300)  # a search result of ~850 KB
    data = encode_value(page)
    back = decode_value(data, "result", result_value_budget(len(data)))
    assert [(r.info, r.data.to_dictionary()) for r in back] == [
        (r.info, r.data.to_dictionary()) for r in page
    ]
    assert back.token == "next"
    # a result is refused only when it is far out of proportion to its size
    assert result_value_budget(10) == value_budget(DEFAULT_MAX_RECORDS)
