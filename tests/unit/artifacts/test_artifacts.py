"""The staging rules and the artifact lane, on real files in tmp_path (no daemon).

The lane test alone uses stand-ins for the run lookup and the upload: a backend that keeps
failing for a bounded time cannot be produced for real in a unit test.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest

from tracker_client import protocol as p
from tracker_daemon.artifacts.lane import ArtifactLane, label
from tracker_daemon.artifacts.staging import (
    MAX_DEPTH,
    PARTIAL_PREFIX,
    SlotMissing,
    SlotRef,
    StagingArea,
    StagingRefused,
    clean_partial_uploads,
    parse_staged,
)
from tracker_daemon.commit.batcher import Origin
from tracker_daemon.errors import RetryableSinkError, SinkError

CID = "c" * 32
SLOT = "a" * 32


@pytest.fixture
def area(tmp_path: Path) -> StagingArea:
    staging = tmp_path / "staging"
    staging.mkdir()
    area = StagingArea(staging, tmp_path / "uploads")
    area.prepare()
    return area


def _slot(area: StagingArea, cid: str = CID, slot: str = SLOT) -> Path:
    path = area.root / cid / slot
    path.mkdir(parents=True)
    return path


def _snapshot_tree(copy: Path) -> dict[str, bytes]:
    if copy.is_file():
        return {copy.name: copy.read_bytes()}
    return {
        str(f.relative_to(copy)): f.read_bytes() for f in sorted(copy.rglob("*")) if f.is_file()
    }


# ------------------------------------------------------------------ the staged path's shape


def test_parse_accepts_exactly_a_slot_of_the_sender() -> None:
    assert parse_staged("/s", CID, f"/s/{CID}/{SLOT}/f.txt") == SlotRef(CID, SLOT, "f.txt")
    assert parse_staged("/s/", CID, f"/s/{CID}/{SLOT}/d") == SlotRef(CID, SLOT, "d")


@pytest.mark.parametrize(
    ("staged", "fragment"),
    [
        ("/etc/passwd", "not inside the staging dir"),
        ("/s-evil/x/y/z", "not inside the staging dir"),
        ("s/x/y/z", "not inside the staging dir"),
        (f"/s/{CID}", "is not of the form"),
        (f"/s/{CID}/{SLOT}", "is not of the form"),
        (f"/s/{CID}/{SLOT}/d/f.txt", "is not of the form"),
        (f"/s/{CID}/../{SLOT}/f", "is not of the form"),
        (f"/s/{CID}/{SLOT}/..", "is not of the form"),
        (f"/s/{CID}/./f", "is not of the form"),
        (f"/s/{CID}//f", "is not of the form"),
        (f"/s/{CID}/{SLOT}/f/", "is not of the form"),
        (f"/s/{CID}/{SLOT}/a\x00b", "is not of the form"),
        (f"/s/{'d' * 32}/{SLOT}/f.txt", "not in this client's staging dir"),
    ],
)
def test_parse_refuses(staged: str, fragment: str) -> None:
    with pytest.raises(StagingRefused, match=fragment):
        parse_staged("/s", CID, staged)


def test_parse_refuses_a_non_string() -> None:
    with pytest.raises(StagingRefused, match="staged_path: expected a str"):
        parse_staged("/s", CID, 5)


# ------------------------------------------------------------------ the slot walker


def test_snapshot_copies_a_file_and_a_tree(area: StagingArea) -> None:
    slot = _slot(area)
    (slot / "f.txt").write_bytes(b"x" * 100_000)
    copy = area.snapshot(SlotRef(CID, SLOT, "f.txt"))
    assert copy.parent.parent == area.private
    assert copy.read_bytes() == b"x" * 100_000
    area.release(copy)
    assert list(area.private.iterdir()) == []

    other = _slot(area, slot="b" * 32)
    (other / "d" / "sub").mkdir(parents=True)
    (other / "d" / "a.txt").write_text("a")
    (other / "d" / "sub" / "b.txt").write_text("b")
    copy = area.snapshot(SlotRef(CID, "b" * 32, "d"))
    assert _snapshot_tree(copy) == {"a.txt": b"a", "sub/b.txt": b"b"}
    assert (os.stat(copy.parent).st_mode & 0o777) == 0o700


def test_snapshot_refuses_links_and_special_files(area: StagingArea, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("secret")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("victim")
    cases = {
        "file-link": lambda d: (d / "file-link").symlink_to(secret),
        "dir-link": lambda d: (d / "dir-link").symlink_to(outside),
        "nested": lambda d: ((d / "nested").mkdir(), (d / "nested" / "l").symlink_to(secret)),
        "nested-dir": lambda d: (
            (d / "nested-dir").mkdir(),
            (d / "nested-dir" / "x").symlink_to(outside),
        ),
        "fifo": lambda d: ((d / "fifo").mkdir(), os.mkfifo(d / "fifo" / "p")),
        PARTIAL_PREFIX + "x": lambda d: (d / (PARTIAL_PREFIX + "x")).write_text("x"),
    }
    expect = {
        "file-link": "'file-link' is a symlink",
        "dir-link": "'dir-link' is a symlink",
        "nested": "'nested/l' is a symlink",
        "nested-dir": "'nested-dir/x' is a symlink",
        "fifo": "'fifo/p' is a fifo",
        PARTIAL_PREFIX + "x": "are MLflow's",
    }
    for i, (entry, make) in enumerate(cases.items()):
        slot_name = f"{i:032x}"
        make(_slot(area, slot=slot_name))
        with pytest.raises(StagingRefused, match=expect[entry]):
            area.snapshot(SlotRef(CID, slot_name, entry))
    assert list(area.private.iterdir()) == []  # no partial copy left
    assert secret.read_text() == "secret"


def test_snapshot_refuses_a_linked_slot_or_client_dir(area: StagingArea, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    (victim / "inner").mkdir(parents=True)
    (victim / "inner" / "f").write_text("victim")
    (area.root / CID).mkdir()
    (area.root / CID / SLOT).symlink_to(victim)
    with pytest.raises(StagingRefused, match=f"slot '{SLOT}' is not a directory"):
        area.snapshot(SlotRef(CID, SLOT, "inner"))
    other = "e" * 32
    (area.root / other).symlink_to(victim)
    with pytest.raises(StagingRefused, match=f"client staging dir '{other}' is not a directory"):
        area.snapshot(SlotRef(other, "inner", "f"))
    assert not area.discard(SlotRef(CID, SLOT, "inner"))
    assert not area.discard(SlotRef(other, "inner", "f"))
    assert (victim / "inner" / "f").read_text() == "victim"


def test_snapshot_missing(area: StagingArea) -> None:
    with pytest.raises(SlotMissing, match="does not exist"):
        area.snapshot(SlotRef(CID, SLOT, "f"))
    _slot(area)
    with pytest.raises(SlotMissing, match="'f' does not exist"):
        area.snapshot(SlotRef(CID, SLOT, "f"))


def test_snapshot_refuses_too_deep(area: StagingArea) -> None:
    deep = _slot(area) / "d"
    for _ in range(MAX_DEPTH + 1):
        deep = deep / "x"
    deep.mkdir(parents=True)
    with pytest.raises(StagingRefused, match=f"nested deeper than {MAX_DEPTH}"):
        area.snapshot(SlotRef(CID, SLOT, "d"))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file another owner")
def test_snapshot_refuses_files_of_another_owner(area: StagingArea, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("victim")
    os.chown(victim, 12345, 12345)
    slot = _slot(area)
    (slot / "d").mkdir()
    os.link(victim, slot / "d" / "hard")
    with pytest.raises(StagingRefused, match=r"'d/hard' is owned by uid 12345, hard-linked 2"):
        area.snapshot(SlotRef(CID, SLOT, "d"))


# ------------------------------------------------------------------ deleting


def test_discard_deletes_only_the_slot(area: StagingArea, tmp_path: Path) -> None:
    slot = _slot(area)
    (slot / "d").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    (slot / "d" / "link").symlink_to(outside)
    sibling = _slot(area, slot="b" * 32)
    assert area.discard(SlotRef(CID, SLOT, "d"))
    assert not slot.exists() and sibling.is_dir() and (area.root / CID).is_dir()
    assert (outside / "keep").read_text() == "keep"
    assert not area.discard(SlotRef(CID, SLOT, "d"))  # gone already


def test_prepare_empties_the_private_dir(area: StagingArea) -> None:
    (area.private / "upload-x").mkdir()
    (area.private / "upload-x" / "f").write_text("left by a killed daemon")
    area.prepare()
    assert list(area.private.iterdir()) == []
    assert (os.stat(area.private).st_mode & 0o777) == 0o700


def test_clean_partial_uploads(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    run = root / "0" / "r1" / "artifacts" / "sub"
    run.mkdir(parents=True)
    (run / (PARTIAL_PREFIX + "abc")).write_text("partial")
    (run.parent / (PARTIAL_PREFIX + "def")).write_text("partial")
    (run / "model.bin").write_text("keep")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / (PARTIAL_PREFIX + "o")).write_text("outside")
    (run / "linked").symlink_to(outside)
    (run / (PARTIAL_PREFIX + "link")).symlink_to(outside / (PARTIAL_PREFIX + "o"))
    assert clean_partial_uploads(str(root)) == 2
    assert clean_partial_uploads(f"file://{root}") == 0
    assert clean_partial_uploads("s3://bucket/x") == 0
    left = sorted(p.name for p in root.rglob("*"))
    assert left == sorted(
        ["0", "r1", "artifacts", "sub", "model.bin", "linked", PARTIAL_PREFIX + "link"]
    )
    assert (outside / (PARTIAL_PREFIX + "o")).read_text() == "outside"


# ------------------------------------------------------------------ the lane


def test_lane_retries_out_of_line_and_gives_up(area: StagingArea, tmp_path: Path) -> None:
    """A slow-failing upload (retryable forever) does not hold up another client's artifact,
    ends as a failure after the bound, and a poison artifact_path fails without an upload."""
    poison_cid, good_cid, bad_cid = "1" * 32, "2" * 32, "3" * 32
    for cid in (poison_cid, good_cid, bad_cid):
        (_slot(area, cid) / "f.txt").write_text(cid)
    uploads: list[tuple[str, str | None]] = []
    done: list[tuple[str, p.Failure | None, float]] = []

    async def uri_of(run_id: str) -> str:
        return f"file://{tmp_path}/runs/{run_id}"

    def upload(uri: str, local: str, artifact_path: str | None) -> None:
        content = Path(local).read_text()
        if content == bad_cid:
            raise RetryableSinkError("TEMPORARILY_UNAVAILABLE", "backend down")
        uploads.append((content, artifact_path))

    errors: list[SinkError] = []
    all_done: list[anyio.Event] = []  # made inside the event loop

    def on_done(origin: Origin, run_id: str, failure: p.Failure | None) -> None:
        done.append((origin.client_id, failure, time.monotonic()))
        if len(done) == 3:
            all_done[0].set()

    lane = ArtifactLane(
        area,
        artifact_root=str(tmp_path / "none"),
        uri_of=uri_of,
        upload=upload,
        done=on_done,
        on_retry=errors.append,
        retry_for=1.0,
        max_backoff=0.2,
    )

    def msg(cid: str, artifact_path: str | None) -> p.LogArtifact:
        return p.LogArtifact(cid, 1, "run", f"{area.root}/{cid}/{SLOT}/f.txt", artifact_path)

    async def main() -> None:
        all_done.append(anyio.Event())
        started = time.monotonic()
        lane.submit(Origin(bad_cid, 1), msg(bad_cid, "x"))
        lane.submit(Origin(poison_cid, 1), msg(poison_cid, "a//b"))
        lane.submit(Origin(good_cid, 1), msg(good_cid, "ok"))
        async with anyio.create_task_group() as tg:
            tg.start_soon(lane.run)
            with anyio.fail_after(10):
                await all_done[0].wait()
            tg.cancel_scope.cancel()
        assert [d[0] for d in done] == [poison_cid, good_cid, bad_cid]
        assert done[1][2] - started < 0.5  # not behind the failing one's retries
        assert done[2][2] - started >= 1.0
        poison, good, bad = (d[1] for d in done)
        assert good is None
        assert poison is not None and poison.code == "INVALID_PARAMETER_VALUE"
        assert poison.message.startswith("artifact 'a//b': refused artifact_path: must be")
        assert bad is not None and bad.code == "TEMPORARILY_UNAVAILABLE"
        assert bad.message.startswith("artifact 'x': gave up after ")
        assert "backend down" in bad.message

    anyio.run(main)
    assert uploads == [(good_cid, "ok")]
    assert len(errors) >= 3 and lane.retries == len(errors) - 1
    assert lane.waiting == 0
    assert all(not any((area.root / c).iterdir()) for c in (poison_cid, good_cid, bad_cid))
    assert list(area.private.iterdir()) == []


def test_label() -> None:
    assert label(p.LogArtifact("c", 1, "r", "/s/c/x/model.pt", None)) == "artifact 'model.pt'"
    assert label(p.LogArtifact("c", 1, "r", "/s/c/x/model.pt", "ckpt")) == "artifact 'ckpt'"
    # one spelling whatever the name holds: no Python repr quoting or escaping
    assert label(p.LogArtifact("c", 1, "r", "/s/c/x/it's é", None)) == "artifact 'it's é'"
    assert label(p.LogArtifact("c", 1, "r", "/s/c/x/m", "d" * 300)) == f"artifact '{'d' * 200}'"


def test_lane_missing_slots_and_contained_errors(area: StagingArea, tmp_path: Path) -> None:
    """A replayed artifact whose slot is gone was uploaded before a restart; a live one fails;
    an unexpected exception fails that artifact only and the lane goes on."""
    cid = "4" * 32
    (_slot(area, cid, "b" * 32) / "boom.txt").write_text("boom")
    (_slot(area, cid, "c" * 32) / "ok.txt").write_text("ok")
    done: list[tuple[int, p.Failure | None]] = []
    uploaded: list[str] = []

    async def uri_of(run_id: str) -> str:
        return "file:///nowhere"

    def upload(uri: str, local: str, artifact_path: str | None) -> None:
        if local.endswith("boom.txt"):
            raise RuntimeError("unexpected")
        uploaded.append(Path(local).name)

    lane = ArtifactLane(
        area,
        artifact_root=str(tmp_path / "none"),
        uri_of=uri_of,
        upload=upload,
        done=lambda origin, run_id, failure: done.append((origin.seq, failure)),
        on_retry=lambda exc: None,
    )

    def msg(seq: int, slot: str, name: str) -> p.LogArtifact:
        return p.LogArtifact(cid, seq, "run", f"{area.root}/{cid}/{slot}/{name}", None)

    async def main() -> None:
        lane.submit(Origin(cid, 1), msg(1, "a" * 32, "gone.txt"), replayed=True)
        lane.submit(Origin(cid, 2), msg(2, "a" * 32, "gone.txt"))
        lane.submit(Origin(cid, 3), msg(3, "b" * 32, "boom.txt"))
        lane.submit(Origin(cid, 4), msg(4, "c" * 32, "ok.txt"))
        async with anyio.create_task_group() as tg:
            tg.start_soon(lane.run)
            with anyio.fail_after(10):
                while lane.waiting or len(done) < 4:  # noqa: ASYNC110 (a stand-in's results)
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert [seq for seq, _ in done] == [1, 2, 3, 4]
    assert done[0][1] is None and done[3][1] is None
    assert done[1][1] is not None
    assert done[1][1].message == f"artifact 'gone.txt': slot '{'a' * 32}' does not exist"
    assert done[2][1] is not None and done[2][1].code == "INTERNAL_ERROR"
    assert done[2][1].message.startswith("artifact 'boom.txt': RuntimeError('unexpected')")
    assert uploaded == ["ok.txt"]


def test_the_slot_is_gone_before_any_outcome_is_reported(area: StagingArea, tmp_path: Path) -> None:
    """Refused, failed (an unexpected error included) or uploaded: when ``done`` is called (the
    outcome then reaches the barrier's reply), the sender's slot no longer exists."""
    cid = "5" * 32
    slots = {1: "d" * 32, 2: "e" * 32, 3: "f" * 32}
    for slot in slots.values():
        (_slot(area, cid, slot) / "m.txt").write_text("m")
    seen: dict[int, tuple[bool, str | None]] = {}

    async def uri_of(run_id: str) -> str:
        return "file:///nowhere"

    def upload(uri: str, local: str, artifact_path: str | None) -> None:
        if artifact_path == "boom":
            raise RuntimeError("unexpected")

    def on_done(origin: Origin, run_id: str, failure: p.Failure | None) -> None:
        exists = (area.root / cid / slots[origin.seq]).exists()
        seen[origin.seq] = (exists, failure.code if failure else None)

    lane = ArtifactLane(
        area,
        artifact_root=str(tmp_path / "none"),
        uri_of=uri_of,
        upload=upload,
        done=on_done,
        on_retry=lambda exc: None,
    )

    async def main() -> None:
        for seq, artifact_path in ((1, "a//b"), (2, "boom"), (3, "ok")):
            staged = f"{area.root}/{cid}/{slots[seq]}/m.txt"
            lane.submit(Origin(cid, seq), p.LogArtifact(cid, seq, "run", staged, artifact_path))
        async with anyio.create_task_group() as tg:
            tg.start_soon(lane.run)
            with anyio.fail_after(10):
                while len(seen) < 3:  # noqa: ASYNC110 (a stand-in's results)
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert seen == {
        1: (False, "INVALID_PARAMETER_VALUE"),
        2: (False, "INTERNAL_ERROR"),
        3: (False, None),
    }
