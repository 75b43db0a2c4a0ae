"""Reading a spool as the importer does: one record at a time, each within the wire's bounds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tracker_client import protocol as p
from tracker_client.delivery.spool import Oversized, Spool, record_value_budget
from tracker_client.delivery.spool_import import count_records
from tracker_client.wire.bounds import value_budget
from tracker_client.wire.framing import HEADER, encode_frame

CID = "c" * 32
MB = 1024 * 1024


def write(path: Path, data: bytes) -> Spool:
    path.write_bytes(data)
    s = Spool(path)
    s.open()
    return s


def test_records_skips_an_oversized_record_unread_and_goes_on(tmp_path: Path) -> None:
    small = p.encode(p.Hello(0, CID, 1, "h", "x", 0))
    big = b"\x90" * (2 * MB)
    s = write(tmp_path / "a.spool", encode_frame(small) + encode_frame(big) + encode_frame(small))
    out = list(s.records(MB))
    assert out == [small, Oversized(HEADER.size + len(small), 2 * MB, MB), small]
    assert str(out[1]) == (
        f"spool record at offset {HEADER.size + len(small)} is {2 * MB} bytes; the limit is "
        f"{MB} bytes (the wire's max_frame): not read"
    )
    assert s.owner_uid == os.getuid()
    s.close()


def test_records_stops_at_a_torn_or_corrupt_tail(tmp_path: Path) -> None:
    good = encode_frame(b"one")
    claims_more_than_the_file = HEADER.pack(200 * MB, 0) + b"x" * 10
    s = write(tmp_path / "t.spool", good + claims_more_than_the_file)
    assert list(s.records(MB)) == [b"one"]
    s.close()
    bad_crc = HEADER.pack(3, 0) + b"two"
    s = write(tmp_path / "c.spool", good + bad_crc + good)
    assert list(s.records(MB)) == [b"one"]
    s.close()


def test_a_spool_that_is_no_regular_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "f.spool"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        Spool(fifo).open()
    target = tmp_path / "target"
    target.write_bytes(b"")
    (tmp_path / "l.spool").symlink_to(target)
    with pytest.raises(OSError):
        Spool(tmp_path / "l.spool").open()  # O_NOFOLLOW


def test_the_value_budget_follows_the_record_limit() -> None:
    assert record_value_budget(1024) == value_budget(p.DEFAULT_MAX_RECORDS)
    assert record_value_budget(4 * MB) == MB


def test_count_records_decodes_within_the_budget() -> None:
    now = 1
    records = [["m", "r" * 32, "k", 1.0, now, i, None, None, None] for i in range(30)]
    frames: list[bytes | Oversized] = [
        p.encode_data(CID, 1, records),
        b"\xdc" + (3000).to_bytes(2, "big") + b"\x90" * 3000,  # too many values for 1000
        Oversized(0, 10, 5),
    ]
    assert count_records(frames, 1000) == 30
