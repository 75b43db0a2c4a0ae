"""Unit tests for tracker_daemon.journal.journal: real files under tmp_path, no daemon."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tracker_client.wire.framing import HEADER, encode_frame
from tracker_daemon.journal.journal import Journal, JournalFull, Position

SEG = 256  # small segments: a few frames each, so rotation happens early and often


def payload(i: int, size: int = 50) -> bytes:
    head = f"entry-{i:05d}|".encode()
    return (head * (size // len(head) + 1))[:size]


def opened(directory: Path, **kw: int) -> Journal:
    j = Journal(directory, segment_bytes=kw.pop("segment_bytes", SEG), **kw)
    j.open()
    return j


def seg_path(directory: Path, seg: int) -> Path:
    return directory / f"{seg:010d}.seg"


def seg_files(directory: Path) -> list[int]:
    return sorted(int(p.stem) for p in directory.glob("*.seg"))


def quarantined(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((directory / "quarantine").iterdir())}


def fill(j: Journal, n: int, start: int = 0, size: int = 50) -> list[tuple[Position, bytes]]:
    out = []
    for i in range(start, start + n):
        data = payload(i, size)
        out.append((j.append(data), data))
    return out


def read_all(j: Journal, start: Position | None = None) -> list[tuple[Position, bytes]]:
    """Everything from ``start`` (default: the mark), in small chunks to exercise the budget."""
    out: list[tuple[Position, bytes]] = []
    pos = start or j.mark.position
    while chunk := j.read(pos, max_bytes=100):
        out += chunk
        last, data = chunk[-1]
        pos = Position(last.segment, last.offset + HEADER.size + len(data))
    return out


# --------------------------------------------------------------------------------------------
# append / read


def test_round_trip_across_segment_rotation(tmp_path: Path) -> None:
    d = tmp_path / "j"
    j = Journal(d, segment_bytes=SEG)
    mark = j.open()
    assert mark.position == Position(1, 0) and mark.clients == {}
    assert j.head == Position(1, 0)
    entries = fill(j, 40)
    frame = HEADER.size + 50
    assert seg_files(d) == list(range(1, len(seg_files(d)) + 1))
    assert len(seg_files(d)) >= 8
    # a segment is rotated once it reaches segment_bytes: never more than one frame past it
    for seg in seg_files(d):
        assert seg_path(d, seg).stat().st_size < SEG + frame
    positions = [pos for pos, _ in entries]
    assert positions == sorted(positions) and len(set(positions)) == 40
    assert positions[0] == Position(1, 0)
    assert j.sync() == j.head
    assert j.bytes_used == 40 * frame == sum(seg_path(d, s).stat().st_size for s in seg_files(d))

    assert j.read(Position(1, 0), max_bytes=1 << 20) == entries
    assert read_all(j) == entries  # chunked reads cross segment ends
    assert j.read(positions[17], max_bytes=1 << 20) == entries[17:]
    # a budget smaller than one frame still returns exactly that frame
    assert j.read(positions[5], max_bytes=HEADER.size + 1) == [entries[5]]
    assert j.read(j.head) == []

    j.close()
    again = opened(d)
    assert again.head == j.head
    assert read_all(again) == entries
    assert quarantined(d) == {}
    again.close()


def test_positions_after_clean_reopen_continue_and_rotation_goes_on(tmp_path: Path) -> None:
    d = tmp_path / "j"
    j = opened(d)
    first = fill(j, 10)
    head, segments = j.head, seg_files(d)
    j.close()

    j = opened(d)
    assert j.head == head
    more = fill(j, 10, start=10)
    # the next entry goes where the head was (or to the next segment if that one was full)
    assert more[0][0] == head or (
        head.offset >= SEG and more[0][0] == Position(head.segment + 1, 0)
    )
    assert seg_files(d)[: len(segments)] == segments  # no earlier segment was rewritten
    assert read_all(j) == first + more
    j.close()


# --------------------------------------------------------------------------------------------
# settling and the low-water mark


def test_settle_out_of_order_and_low_water(tmp_path: Path) -> None:
    j = opened(tmp_path / "j")
    assert j.low_water() == j.head and j.outstanding == 0
    (a, _), (b, _), (c, _) = fill(j, 3)
    assert j.outstanding == 3
    assert j.low_water() == a
    j.settle(b)
    assert j.low_water() == a
    j.settle(c)
    assert j.low_water() == a
    j.settle(Position(99, 0))  # unknown positions are ignored
    j.settle(a)
    assert j.low_water() == j.head
    assert j.outstanding == 0

    d = j.append(b"already-settled", settled=True)
    assert j.low_water() == j.head  # entries appended settled do not hold the mark back
    e = j.append(b"open")
    j.settle(d)
    assert j.low_water() == e
    j.track(Position(e.segment, e.offset))  # replay re-tracks: still outstanding, not settled
    assert j.low_water() == e
    j.settle(e)
    assert j.low_water() == j.head
    j.close()


# --------------------------------------------------------------------------------------------
# the mark and segment deletion


def test_write_mark_deletes_only_segments_wholly_before_it(tmp_path: Path) -> None:
    d = tmp_path / "j"
    j = opened(d)
    entries = fill(j, 40)
    segments = seg_files(d)
    assert len(segments) >= 6
    # a position in the middle of segment 3: segments 1 and 2 go, 3 (partly before) stays
    mid3 = next(pos for pos, _ in entries if pos.segment == 3 and pos.offset > 0)
    sizes_before = {s: seg_path(d, s).stat().st_size for s in segments}
    j.write_mark(mid3, {"client-a": 7})
    assert seg_files(d) == segments[2:]
    assert j.bytes_used == sum(sizes_before[s] for s in segments[2:])
    assert json.loads((d / "mark.json").read_text()) == {
        "segment": 3,
        "offset": mid3.offset,
        "clients": {"client-a": 7},
    }
    assert not (d / "mark.json.tmp").exists()
    assert j.mark.position == mid3 and j.mark.clients == {"client-a": 7}

    # a mark at the very start of a segment: that segment is kept (it is not before the mark)
    j.write_mark(Position(5, 0), {})
    assert seg_files(d) == segments[4:]

    # the current segment is never deleted, even with the mark at the head
    j.write_mark(j.head, {})
    assert seg_files(d) == [j.head.segment]
    assert j.read(j.head) == []
    j.close()

    # the mark survives a reopen; replay starts there
    j = opened(d)
    assert j.mark.position == Position(segments[-1], sizes_before[segments[-1]])
    assert read_all(j) == []
    j.close()


def test_reopen_replays_from_the_mark_and_removes_segments_left_before_it(tmp_path: Path) -> None:
    d = tmp_path / "j"
    j = opened(d)
    entries = fill(j, 30)
    at = entries[12][0]
    j.write_mark(at, {"c": 3})
    j.close()
    # a crash between writing the mark and deleting the segments leaves a stale one behind
    stale = seg_path(d, 1)
    stale.write_bytes(encode_frame(b"stale, fully committed"))
    j = opened(d)
    assert not stale.exists()
    assert j.mark.position == at and j.mark.clients == {"c": 3}
    assert read_all(j) == entries[12:]
    j.close()


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"", b"[]", b'{"segment": "x", "offset": 0}', b'{"offset": 3}', b"\xff\xfe\x00"],
    ids=["garbage", "empty", "list", "bad-type", "missing-key", "not-utf8"],
)
def test_unreadable_mark_is_quarantined_and_everything_replays(
    tmp_path: Path, content: bytes
) -> None:
    d = tmp_path / "j"
    j = opened(d)
    entries = fill(j, 30)
    j.write_mark(entries[14][0], {"c": 1})
    left = [(pos, data) for pos, data in entries if pos.segment >= entries[14][0].segment]
    j.close()
    (d / "mark.json").write_bytes(content)

    j = opened(d)
    assert j.mark.position == Position(left[0][0].segment, 0)
    assert j.mark.clients == {}
    assert not (d / "mark.json").exists()
    assert quarantined(d) == {"mark.json.bad": content}
    # everything still on disk replays, including the entries before the lost mark
    assert read_all(j) == left
    pos = j.append(b"after")
    assert read_all(j)[-1] == (pos, b"after")
    j.close()


# --------------------------------------------------------------------------------------------
# recovery: torn tails, garbage, bad CRCs


def _write_and_close(d: Path, n: int, **kw: int) -> list[tuple[Position, bytes]]:
    j = opened(d, **kw)
    entries = fill(j, n)
    j.close()
    return entries


def _after_damage_appends_continue(
    d: Path, good: list[tuple[Position, bytes]], good_end: Position, **kw: int
) -> None:
    """Reopen (clean now), append, reopen again: the good data, then the new entries."""
    j = opened(d, **kw)
    assert j.head == good_end
    new = j.append(b"new entry after repair")
    assert new == good_end  # written right after the good data
    assert read_all(j) == [*good, (new, b"new entry after repair")]
    j.close()
    before = quarantined(d)
    j = opened(d, **kw)
    assert quarantined(d) == before  # nothing more to repair
    assert read_all(j) == [*good, (new, b"new entry after repair")]
    j.close()


@pytest.mark.parametrize(
    "keep", [3, HEADER.size, HEADER.size + 20], ids=["in-header", "header-only", "in-payload"]
)
def test_torn_tail_is_cut_into_quarantine(tmp_path: Path, keep: int) -> None:
    d = tmp_path / "j"
    big = 1 << 20  # one segment
    entries = _write_and_close(d, 5, segment_bytes=big)
    path = seg_path(d, 1)
    data = path.read_bytes()
    last_pos = entries[-1][0]
    cut_at = last_pos.offset + keep
    path.write_bytes(data[:cut_at])  # the last frame was only partly written

    j = Journal(d, segment_bytes=big)
    j.open()
    assert path.stat().st_size == last_pos.offset
    assert quarantined(d) == {f"{path.name}.{last_pos.offset}.bad": data[last_pos.offset : cut_at]}
    assert read_all(j) == entries[:-1]
    j.close()
    _after_damage_appends_continue(d, entries[:-1], last_pos, segment_bytes=big)


def test_appended_garbage_is_cut_into_quarantine(tmp_path: Path) -> None:
    d = tmp_path / "j"
    big = 1 << 20
    entries = _write_and_close(d, 5, segment_bytes=big)
    path = seg_path(d, 1)
    good_size = path.stat().st_size
    garbage = b"GARBAGE! not a frame \xff\x00\x13" * 3
    with open(path, "ab") as fh:
        fh.write(garbage)

    j = opened(d, segment_bytes=big)
    assert path.stat().st_size == good_size
    assert quarantined(d) == {f"{path.name}.{good_size}.bad": garbage}
    assert read_all(j) == entries
    j.close()
    _after_damage_appends_continue(d, entries, Position(1, good_size), segment_bytes=big)


def test_flipped_bit_in_a_middle_frame_cuts_from_that_frame(tmp_path: Path) -> None:
    d = tmp_path / "j"
    big = 1 << 20
    entries = _write_and_close(d, 6, segment_bytes=big)
    path = seg_path(d, 1)
    data = bytearray(path.read_bytes())
    bad = entries[2][0]
    data[bad.offset + HEADER.size + 10] ^= 0x04  # one bit in the third frame's payload
    path.write_bytes(bytes(data))

    j = opened(d, segment_bytes=big)
    # the good prefix is kept; from the bad frame on everything is cut (frames after a bad CRC
    # cannot be trusted to start where the bad frame's length says)
    assert path.stat().st_size == bad.offset
    assert quarantined(d) == {f"{path.name}.{bad.offset}.bad": bytes(data[bad.offset :])}
    assert read_all(j) == entries[:2]
    j.close()
    _after_damage_appends_continue(d, entries[:2], bad, segment_bytes=big)


def test_bad_crc_in_an_older_segment_keeps_later_segments(tmp_path: Path) -> None:
    d = tmp_path / "j"
    entries = _write_and_close(d, 30)
    segments = seg_files(d)
    in2 = [(pos, data) for pos, data in entries if pos.segment == 2]
    assert len(in2) >= 3
    path = seg_path(d, 2)
    data = bytearray(path.read_bytes())
    bad = in2[1][0]
    data[bad.offset + HEADER.size] ^= 0x80
    path.write_bytes(bytes(data))

    j = opened(d)
    assert seg_files(d) == segments
    assert path.stat().st_size == bad.offset
    assert quarantined(d) == {f"{path.name}.{bad.offset}.bad": bytes(data[bad.offset :])}
    lost = {pos for pos, _ in in2[1:]}
    assert read_all(j) == [e for e in entries if e[0] not in lost]
    last = j.append(b"x")
    assert last.segment >= segments[-1]  # appends continue at the end, not in segment 2
    j.close()


# --------------------------------------------------------------------------------------------
# the size limit


def test_journal_full_writes_nothing_and_recovers_after_the_mark_moves(tmp_path: Path) -> None:
    d = tmp_path / "j"
    j = opened(d, max_bytes=1024)
    frame = HEADER.size + 50
    entries = []
    with pytest.raises(JournalFull, match="journal_max_bytes"):
        for i in range(100):
            entries.append((j.append(payload(i)), payload(i)))
    assert len(entries) == 1024 // frame
    assert j.bytes_used + frame > 1024 >= j.bytes_used
    sizes = {s: seg_path(d, s).stat().st_size for s in seg_files(d)}
    head, outstanding = j.head, j.outstanding
    assert "journal_max_bytes" in j.full_reason
    assert j.status()["journal_full"] == j.full_reason

    for _ in range(3):  # refused again and again: no partial frame is ever left behind
        with pytest.raises(JournalFull):
            j.append(payload(999))
    assert {s: seg_path(d, s).stat().st_size for s in seg_files(d)} == sizes
    assert j.head == head and j.outstanding == outstanding
    assert read_all(j) == entries

    # a smaller entry that still fits is accepted, but the journal stays "full": the refused
    # frame still has no room (health must not flap with every small frame that slips in)
    room = 1024 - j.bytes_used
    assert room >= HEADER.size
    small = j.append(b"s" * (room - HEADER.size))
    entries.append((small, b"s" * (room - HEADER.size)))
    assert "journal_max_bytes" in j.full_reason
    with pytest.raises(JournalFull):
        j.append(b"")

    # the backend catches up: entries settle, the mark moves, whole segments are deleted
    for pos, _ in entries:
        j.settle(pos)
    j.write_mark(j.low_water(), {})
    assert j.bytes_used < 1024 - frame
    assert j.full_reason == ""  # room for the refused frame again, without waiting for a write
    pos = j.append(payload(1000))
    assert j.full_reason == ""
    assert read_all(j) == [(pos, payload(1000))]
    j.close()


def test_disk_full_mid_frame_leaves_no_partial_frame(tmp_path: Path) -> None:
    """A short write (here: RLIMIT_FSIZE, standing in for a full disk) is rolled back and
    reported as JournalFull. Run in a subprocess: the limit applies to the whole process."""
    script = textwrap.dedent(
        """
        import resource, signal, sys
        from pathlib import Path
        from tracker_daemon.journal.journal import Journal, JournalFull
        d = Path(sys.argv[1])
        j = Journal(d, segment_bytes=1 << 20)
        j.open()
        for i in range(3):
            j.append(b"x" * 100)
        j.sync()
        size = (d / "0000000001.seg").stat().st_size
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 50, resource.RLIM_INFINITY))
        try:
            j.append(b"y" * 100)  # 108 bytes: only 50 fit
        except JournalFull as exc:
            print("full", exc)
        else:
            print("written")
        print("size", (d / "0000000001.seg").stat().st_size, size, j.head.offset)
        """
    )
    d = tmp_path / "j"
    proc = subprocess.run(
        [sys.executable, "-c", script, str(d)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("full disk full writing the journal"), proc.stdout
    _, on_disk, before, head = lines[1].split()
    assert on_disk == before == head  # truncated back: no half frame
    j = opened(d, segment_bytes=1 << 20)
    assert [data for _, data in read_all(j)] == [b"x" * 100] * 3
    assert quarantined(d) == {}
    j.close()


def test_full_journal_of_committed_data_in_the_current_segment_accepts_again(
    tmp_path: Path,
) -> None:
    """The current segment can outgrow segment_bytes by one large frame; once everything in it
    is committed and the mark is at the head, the journal must not stay "full" forever (the
    current segment is never deleted by write_mark, so append has to move on from it)."""
    d = tmp_path / "j"
    j = opened(d, segment_bytes=4096, max_bytes=65536)
    a = j.append(b"s" * 100)
    b = j.append(b"L" * 60_000)
    assert seg_files(d) == [1]
    with pytest.raises(JournalFull):  # not committed yet: full is right
        j.append(b"n" * 6000)
    j.settle(a)
    j.settle(b)
    j.sync()
    j.write_mark(j.low_water(), {})
    assert j.mark.position == j.head
    new = j.append(b"n" * 6000)
    assert new == Position(2, 0) and j.full_reason == ""
    assert seg_files(d) == [2] and j.bytes_used == HEADER.size + 6000
    assert j.read(j.mark.position) == [(new, b"n" * 6000)]
    j.close()
    j = opened(d, segment_bytes=4096, max_bytes=65536)  # the mark points into the dropped one
    assert read_all(j) == [(new, b"n" * 6000)]
    j.close()


def test_repeated_damage_at_the_same_offset_keeps_every_quarantined_piece(tmp_path: Path) -> None:
    d = tmp_path / "j"
    big = 1 << 20
    j = opened(d, segment_bytes=big)
    keep = j.append(b"a" * 50)
    j.append(b"b" * 50)
    j.close()
    path = seg_path(d, 1)
    cut = HEADER.size + 50
    first_bad = path.read_bytes()[cut:-10]
    path.write_bytes(path.read_bytes()[:-10])
    j = opened(d, segment_bytes=big)  # first repair: cut at offset 58
    j.append(b"c" * 50)
    j.close()
    second_bad = path.read_bytes()[cut:-20]
    path.write_bytes(path.read_bytes()[:-20])
    j = opened(d, segment_bytes=big)  # second repair at the same offset
    assert read_all(j) == [(keep, b"a" * 50)]
    j.close()
    assert sorted(quarantined(d).values()) == sorted([first_bad, second_bad])

    (d / "mark.json").write_text("garbage 1")
    opened(d, segment_bytes=big).close()
    (d / "mark.json").write_text("garbage 2")
    opened(d, segment_bytes=big).close()
    marks = [v for k, v in quarantined(d).items() if k.startswith("mark.json")]
    assert sorted(marks) == [b"garbage 1", b"garbage 2"]
