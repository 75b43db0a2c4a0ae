"""Unit tests for the journal and the run book on a small or full filesystem: early rolls,
reclaiming a settled current segment, the mark written on a full disk, runs.log kept in memory.

The full disk is real: a tmpfs of a few hundred KiB mounted by the test (skipped, with the reason,
where mounting is not permitted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.disk import fill_disk, mounted_tmpfs
from tracker_client.wire.framing import HEADER
from tracker_daemon.journal.diskspace import DiskProblems
from tracker_daemon.journal.journal import MIN_SEGMENT_BYTES, Journal, JournalFull, Position
from tracker_daemon.runs.runs import RunBook
from tracker_daemon.store.sink import RunHandle

MiB = 1024 * 1024
BIG_DISK = 1 << 40


def read_all(j: Journal) -> list[tuple[Position, bytes]]:
    out: list[tuple[Position, bytes]] = []
    pos = j.mark.position
    while chunk := j.read(pos, max_bytes=4096):
        out += chunk
        last, data = chunk[-1]
        pos = Position(last.segment, last.offset + HEADER.size + len(data))
    return out


def segs(d: Path) -> list[int]:
    return sorted(int(p.stem) for p in d.glob("*.seg"))


@pytest.mark.parametrize(
    ("room", "limit"),
    [(BIG_DISK, 64 * MiB), (8 * MiB, MiB), (0, MIN_SEGMENT_BYTES)],
    ids=["big-disk", "8MiB-disk", "no-room"],
)
def test_segments_roll_early_on_a_small_filesystem(tmp_path: Path, room: int, limit: int) -> None:
    j = Journal(tmp_path / "j", segment_bytes=64 * MiB, room=lambda _: room)
    j.open()
    assert j.seg_limit == limit and j.status()["journal_segment_limit_bytes"] == limit
    entries = [(j.append(b"x" * 60_000), b"x" * 60_000) for _ in range(20)]  # ~1.2 MiB
    per_segment = -(-limit // (HEADER.size + 60_000))  # rolled once a segment reaches limit
    assert segs(tmp_path / "j") == list(range(1, 1 + -(-20 // per_segment)))
    assert read_all(j) == entries
    assert j.appended_bytes == 20 * (HEADER.size + 60_000)
    j.close()


def test_a_settled_current_segment_is_rolled_and_reclaimed(tmp_path: Path) -> None:
    d = tmp_path / "j"
    j = Journal(d, segment_bytes=64 * MiB, room=lambda _: BIG_DISK)
    j.open()
    positions = [j.append(b"e%d" % i) for i in range(10)]
    assert not j.roll_if_settled()  # entries outstanding: nothing to reclaim
    for pos in positions[:-1]:
        j.settle(pos)
    assert not j.roll_if_settled()
    j.settle(positions[-1])
    assert j.roll_if_settled()
    assert j.head == Position(2, 0) and j.low_water() == Position(2, 0)
    assert not j.roll_if_settled()  # an empty current segment is not rolled again
    j.sync()
    j.write_mark(j.low_water(), {"c": 10})
    assert segs(d) == [2] and j.bytes_used == 0
    after = j.append(b"after")
    assert after == Position(2, 0)
    j.close()
    j = Journal(d, segment_bytes=64 * MiB, room=lambda _: BIG_DISK)
    assert j.open().clients == {"c": 10}
    assert read_all(j) == [(after, b"after")]
    j.close()


def test_full_disk_everything_in_the_current_segment_keeps_flowing(tmp_path: Path) -> None:
    """A journal on a disk smaller than its segment size (early rolls disabled): appends hit
    ENOSPC; once the entries are committed the current segment is rolled, the mark cannot be
    written (no room for a new file), the committed segment is deleted anyway, the mark is
    written, and appends are accepted again. Replay after reopening is exact."""
    with mounted_tmpfs(tmp_path / "fs", "512k") as fs:
        d = fs / "j"
        j = Journal(d, segment_bytes=64 * MiB, room=lambda _: BIG_DISK)
        j.open()
        written = []
        with pytest.raises(JournalFull) as refused:
            for i in range(1000):
                written.append(j.append(b"%04d" % i + b"x" * 996))
        assert "disk full writing the journal" in str(refused.value)
        assert j.disk_full and j.full_reason and segs(d) == [1]
        size = (d / "0000000001.seg").stat().st_size
        assert size == j.head.offset == len(written) * (HEADER.size + 1000)  # no half frame
        for pos in written:
            j.settle(pos)
        assert j.roll_if_settled()
        j.write_mark(j.low_water(), {"c": len(written)})  # needs the reclaim first
        assert segs(d) == [2] and j.mark.position == Position(2, 0)
        assert not (d / "mark.json.tmp").exists()
        pos = j.append(b"again")
        assert pos == Position(2, 0) and j.full_reason == "" and not j.disk_full
        j.close()
        j = Journal(d, segment_bytes=64 * MiB, room=lambda _: BIG_DISK)
        assert j.open().clients == {"c": len(written)}
        assert read_all(j) == [(pos, b"again")]
        j.close()


def test_the_mark_is_written_in_place_on_a_full_disk(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "fs", "256k") as fs:
        d = fs / "j"
        j = Journal(d, segment_bytes=64 * MiB, room=lambda _: BIG_DISK)
        j.open()
        first = j.append(b"a" * 100)
        second = j.append(b"b" * 100)
        j.write_mark(first, {"c": 1})
        assert (d / "mark.json").stat().st_size == 4096  # padded: room for later marks
        fill_disk(fs / "filler")
        with pytest.raises(JournalFull):
            j.append(b"c" * 100_000)
        j.settle(first)
        j.write_mark(j.low_water(), {"c": 2})  # nothing to delete; rewritten in place
        assert j.mark.position == second
        assert json.loads((d / "mark.json").read_text()) == {
            "segment": second.segment,
            "offset": second.offset,
            "clients": {"c": 2},
        }
        assert not (d / "mark.json.tmp").exists()
        j.close()
        j = Journal(d, segment_bytes=64 * MiB, room=lambda _: BIG_DISK)
        j.open()
        assert read_all(j) == [(second, b"b" * 100)]
        j.close()


def test_runbook_keeps_runs_in_memory_on_a_full_disk_and_saves_them_later(
    tmp_path: Path,
) -> None:
    with mounted_tmpfs(tmp_path / "fs", "256k") as fs:
        disk = DiskProblems()
        book = RunBook(fs / "runs.log", disk)
        book.load()
        h1 = RunHandle("r1", "0", "file:///a/r1", "one", {})
        book.record_creation("c:1", h1)
        fill_disk(fs / "filler")
        # appends fill the page runs.log already has, then fail: kept in memory, no error
        handles = {
            f"c:{i}": RunHandle(f"r{i}", "0", f"file:///a/r{i}", "x", {}) for i in range(2, 200)
        }
        for key, handle in handles.items():
            book.record_creation(key, handle)
        h2 = handles["c:2"]
        book.record_open(h2, "c", 123, "host")
        assert book.unsaved and "runs.log" in disk.active
        assert book.created == {"c:1": h1, **handles} and set(book.open) == {"r2"}
        assert not book.save_pending()  # still no room
        (fs / "filler").unlink()
        assert book.save_pending() and not book.unsaved and not disk
        book.record_closed("r2")  # appends work again
        book.close()
        again = RunBook(fs / "runs.log")
        again.load()
        assert again.created == {"c:1": h1, **handles} and again.open == {}
        again.close()
