"""store_check: which SQLite store paths are refused at once, and with which words (real files
in a temporary directory)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracker_daemon.errors import ConfigError
from tracker_daemon.store.store_check import SQLITE_MAGIC, check_sqlite_store, sqlite_file


def test_the_file_of_a_sqlite_uri() -> None:
    assert sqlite_file("sqlite:////data/m.db?timeout=5") == Path("/data/m.db")
    assert sqlite_file("sqlite:///rel.db") == Path("rel.db")
    assert sqlite_file("sqlite:///:memory:") is None
    assert sqlite_file("postgresql://db/mlflow") is None


def test_a_new_store_creates_only_its_own_directory(tmp_path: Path) -> None:
    check_sqlite_store(f"sqlite:///{tmp_path}/stores/m.db", make_parents=False)
    assert (tmp_path / "stores").is_dir()
    assert list((tmp_path / "stores").iterdir()) == []  # the probe file is gone, no store made
    with pytest.raises(ConfigError, match=f"the directory {tmp_path}/a does not exist"):
        check_sqlite_store(f"sqlite:///{tmp_path}/a/b/m.db", make_parents=False)
    assert not (tmp_path / "a").exists()
    check_sqlite_store(f"sqlite:///{tmp_path}/x/y/m.db", make_parents=True)  # the default store
    assert (tmp_path / "x" / "y").is_dir()


def test_an_existing_database_passes_and_other_files_are_refused(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    db.write_bytes(SQLITE_MAGIC + b"\0" * 100)
    check_sqlite_store(f"sqlite:///{db}", make_parents=False)
    empty = tmp_path / "empty.db"
    empty.touch()
    check_sqlite_store(f"sqlite:///{empty}", make_parents=False)  # SQLite starts a new database
    text = tmp_path / "t.db"
    text.write_text("x")
    with pytest.raises(ConfigError, match="is not an SQLite database"):
        check_sqlite_store(f"sqlite:///{text}", make_parents=False)
    with pytest.raises(ConfigError, match=f"{tmp_path} is a directory"):
        check_sqlite_store(f"sqlite:///{tmp_path}", make_parents=False)
    check_sqlite_store("postgresql://nowhere/mlflow", make_parents=False)  # retried, not checked
