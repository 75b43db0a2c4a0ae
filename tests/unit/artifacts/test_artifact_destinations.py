"""The artifact destination rules on real directories: which locations are local and below a root
(artifact_roots.py), and the fd-walk writer (artifact_writer.py): created directories, a link at
every level refused, temp-then-rename publishing, name limits checked before any write."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from tests.support.disk import mounted_tmpfs
from tracker_daemon.artifacts.artifact_roots import (
    ArtifactRoots,
    LocalPlace,
    LocationRefused,
    local_path,
)
from tracker_daemon.artifacts.artifact_writer import (
    ArtifactWriter,
    NameLimits,
    name_problem,
    write_local,
)
from tracker_daemon.artifacts.staging import PARTIAL_PREFIX
from tracker_daemon.errors import PermanentSinkError

# ------------------------------------------------------------------ artifact_roots (pure)


def test_local_and_remote_locations_are_told_apart_as_mlflow_does() -> None:
    assert local_path("/data/a") == "/data/a"
    assert local_path("file:///data/a%20b") == "/data/a b"
    assert local_path("file://host/data/a") == "/data/a"  # MLflow ignores the host on posix
    assert local_path("relative/x") == "relative/x"
    for remote in ("s3://b/p", "mlflow-artifacts:/1/x", "https://h/p", "gs://b", "hdfs://n/p"):
        assert local_path(remote) is None, remote
    for reference in ("runs:/abc/artifacts", "models:/m/1", "RUNS:/x"):
        with pytest.raises(LocationRefused, match="not a store"):
            local_path(reference)


def test_a_location_is_placed_below_a_root_as_written() -> None:
    roots = ArtifactRoots.of(["/srv/art", "file:///data/ml/"], resolve=False)
    assert roots.paths == ["/srv/art", "/data/ml"]
    assert roots.place("/srv/art") == LocalPlace("/srv/art", ())
    assert roots.place("/srv/art/1/r/artifacts") == LocalPlace("/srv/art", ("1", "r", "artifacts"))
    assert roots.place("file:///data/ml//x/./y/") == LocalPlace("/data/ml", ("x", "y"))
    assert roots.place("s3://bucket/anything") is None
    for outside, why in (
        ("/srv/artifacts-not/1", "outside the daemon's local artifact roots"),
        ("/srv", "outside"),
        ("/srv/art/../etc", "'..' component"),
        ("srv/art/x", "not an absolute path"),
        ("file:///etc/passwd", "outside"),
        ("runs:/r/artifacts", "not a store"),
    ):
        with pytest.raises(LocationRefused, match=why):
            roots.place(outside)


def test_the_deepest_root_wins_and_a_root_is_accepted_by_its_real_path(tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "inner").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real)
    roots = ArtifactRoots.of([str(link), str(link / "inner")])
    assert roots.place(f"{real}/inner/x") == LocalPlace(str(link / "inner"), ("x",))
    assert roots.place(f"{link}/y") == LocalPlace(str(link), ("y",))


def test_check_names_the_field_and_the_setting() -> None:
    roots = ArtifactRoots.of(["/srv/art"], resolve=False)
    roots.check("/srv/art/e", "start_run.artifact_location")
    roots.check("s3://b/e", "start_run.artifact_location")
    with pytest.raises(PermanentSinkError) as info:
        roots.check("/home/u/e", "start_run.artifact_location")
    assert info.value.code == "INVALID_PARAMETER_VALUE"
    assert info.value.message.startswith(
        "start_run.artifact_location '/home/u/e' is refused: it is outside the daemon's local "
        "artifact roots (artifact_roots = ['/srv/art'])"
    )


def test_name_limits() -> None:
    limits = NameLimits(name_max=255, path_max=4096)
    assert name_problem("/r", ("a", "b" * 255), limits) is None
    long = name_problem("/r", ("a", "b" * 256), limits)
    assert long is not None and "is 256 bytes long: the limit is 255 bytes" in long
    assert "NAME_MAX" in long
    assert name_problem("/r", ("é" * 128,), limits) is not None  # bytes, not characters
    deep = name_problem("/r", ("d",) * 2047, limits)  # 2 + 2047 * 2 = 4096 bytes
    assert deep is not None and "the limit is 4095 bytes (PATH_MAX 4096" in deep
    assert name_problem("/r", ("d",) * 2046, limits) is None  # 4094 bytes


def test_name_limits_are_read_at_the_root(tmp_path: Path) -> None:
    limits = NameLimits.at(str(tmp_path))
    assert limits.name_max == os.pathconf(tmp_path, "PC_NAME_MAX")
    assert limits.path_max == os.pathconf(tmp_path, "PC_PATH_MAX")
    assert NameLimits.at(str(tmp_path / "missing")) == NameLimits()


# ------------------------------------------------------------------ the fd-walk writer


def _source(tmp_path: Path, name: str = "model.bin", data: bytes = b"weights") -> Path:
    src = tmp_path / "src" / name
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(data)
    src.chmod(0o640)
    return src


def _tree(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = f"-> {os.readlink(path)}"
        elif path.is_file():
            out[rel] = path.read_bytes()
    return out


def test_a_file_lands_with_its_directories_created(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    src = _source(tmp_path)
    place = LocalPlace(str(root), ("1", "run", "artifacts"))
    write_local(place, str(src), "a/b")
    write_local(place, str(src), None)
    dest = root / "1" / "run" / "artifacts"
    assert _tree(dest) == {"a/b/model.bin": b"weights", "model.bin": b"weights"}
    assert stat.S_IMODE((dest / "model.bin").stat().st_mode) == 0o640  # copystat, as MLflow
    assert (dest / "model.bin").stat().st_mtime_ns == src.stat().st_mtime_ns
    src.write_bytes(b"second")
    write_local(place, str(src), None)  # overwrites, as MLflow does
    assert (dest / "model.bin").read_bytes() == b"second"


def test_a_directory_lands_its_contents(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    tree = tmp_path / "snap"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "top.txt").write_text("top")
    (tree / "sub" / "deeper" / "leaf.txt").write_text("leaf")
    write_local(LocalPlace(str(root), ("r",)), str(tree), "ckpt")
    assert _tree(root / "r") == {"ckpt/top.txt": b"top", "ckpt/sub/deeper/leaf.txt": b"leaf"}


@pytest.mark.parametrize("level", range(5))
def test_a_link_at_any_level_below_the_root_is_refused(tmp_path: Path, level: int) -> None:
    """root/1/run/artifacts/a/b: a symlink (to a directory the daemon could write) in place of
    each directory in turn refuses the upload and leaves the target untouched."""
    root = tmp_path / "root"
    target = tmp_path / "protected"
    target.mkdir()
    (target / "model.bin").write_bytes(b"protected")
    names = ["1", "run", "artifacts", "a", "b"]
    parent = root.joinpath(*names[:level])
    parent.mkdir(parents=True)
    (parent / names[level]).symlink_to(target)
    src = _source(tmp_path)
    before = _tree(target)
    with pytest.raises(PermanentSinkError) as info:
        write_local(LocalPlace(str(root), ("1", "run", "artifacts")), str(src), "a/b")
    assert info.value.code == "INVALID_PARAMETER_VALUE"
    shown = "/".join([str(root), *names[: level + 1]])
    assert info.value.message == (
        f"{shown!r} is a symbolic link or not a directory: the daemon follows no link below "
        "its artifact roots"
    )
    assert _tree(target) == before


def test_a_link_inside_a_directory_upload_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "r" / "ckpt").mkdir(parents=True)
    target = tmp_path / "protected"
    target.mkdir()
    (root / "r" / "ckpt" / "sub").symlink_to(target)
    tree = tmp_path / "snap"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "x.txt").write_text("x")
    with pytest.raises(PermanentSinkError, match="is a symbolic link or not a directory"):
        write_local(LocalPlace(str(root), ("r",)), str(tree), "ckpt")
    assert list(target.iterdir()) == []


def test_a_link_or_hard_link_at_the_file_name_is_replaced_not_written_through(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    dest = root / "r"
    dest.mkdir(parents=True)
    protected = tmp_path / "protected.db"
    protected.write_bytes(b"database")
    (dest / "model.bin").symlink_to(protected)
    os.link(protected, dest / "other.bin")
    src = _source(tmp_path)
    write_local(LocalPlace(str(root), ("r",)), str(src), None)
    write_local(LocalPlace(str(root), ("r",)), str(_source(tmp_path, "other.bin")), None)
    assert protected.read_bytes() == b"database"
    assert not (dest / "model.bin").is_symlink()
    assert _tree(dest) == {"model.bin": b"weights", "other.bin": b"weights"}
    assert not [p for p in dest.iterdir() if p.name.startswith(PARTIAL_PREFIX)]


def test_a_directory_at_the_file_name_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "r" / "model.bin").mkdir(parents=True)
    with pytest.raises(PermanentSinkError, match="exists and is a directory"):
        write_local(LocalPlace(str(root), ("r",)), str(_source(tmp_path)), None)
    assert not [p for p in (root / "r").iterdir() if p.name.startswith(PARTIAL_PREFIX)]


def test_too_long_names_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    src = _source(tmp_path)
    place = LocalPlace(str(root), ("1", "run", "artifacts"))
    with pytest.raises(PermanentSinkError, match=r"NAME_MAX"):
        write_local(place, str(src), "ok/" + "L" * 300)
    deep = "/".join(["d"] * 2100)
    with pytest.raises(PermanentSinkError, match=r"PATH_MAX 4096"):
        write_local(place, str(src), deep)
    tree = tmp_path / "snap"
    (tree / "fine").mkdir(parents=True)
    (tree / "fine" / ("n" * 250)).write_text("x")
    nearly = "/".join(["p" * 200] * 19)  # with the root and the entry: over 4095 bytes
    with pytest.raises(PermanentSinkError, match=r"PATH_MAX"):
        write_local(place, str(tree), nearly)
    assert list(root.iterdir()) == []  # not even the run's directories were created


def test_the_writer_refuses_a_run_outside_the_roots_and_passes_remote_ones_on(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    remote: list[tuple[str, str, str | None]] = []
    writer = ArtifactWriter(ArtifactRoots.of([str(root)]), lambda *args: remote.append(args))
    src = _source(tmp_path)
    writer.upload(f"file://{root}/1/r/artifacts", str(src), "x")
    assert (root / "1" / "r" / "artifacts" / "x" / "model.bin").read_bytes() == b"weights"
    writer.upload("s3://bucket/1/r/artifacts", str(src), None)
    assert remote == [("s3://bucket/1/r/artifacts", str(src), None)]
    with pytest.raises(PermanentSinkError) as info:
        writer.upload(str(tmp_path / "elsewhere" / "r" / "artifacts"), str(src), None)
    assert info.value.code == "INVALID_PARAMETER_VALUE"
    assert "the run's artifact location" in info.value.message
    assert "(artifact_roots = [" in info.value.message
    assert not (tmp_path / "elsewhere").exists()


def test_a_full_disk_raises_enospc_and_leaves_no_partial_file(tmp_path: Path) -> None:
    """copy_file_range reports a full tmpfs as a short copy returning 0: the writer must not
    take that for the end of the file and publish a truncated artifact."""
    with mounted_tmpfs(tmp_path / "small", "1m") as small:
        (small / "filler").write_bytes(b"f" * (900 * 1024))
        src = _source(tmp_path, "big.bin", b"b" * (300 * 1024))
        with pytest.raises(OSError) as info:
            write_local(LocalPlace(str(small), ("r",)), str(src), None)
        assert info.value.errno == errno.ENOSPC
        assert list((small / "r").iterdir()) == []
        (small / "filler").unlink()
        write_local(LocalPlace(str(small), ("r",)), str(src), None)
        assert (small / "r" / "big.bin").read_bytes() == src.read_bytes()
