"""Files holding PHI or secrets are their owner's alone (table row 15): the SQLite store, its -wal/-shm, var/ keys."""

from __future__ import annotations

import stat
from pathlib import Path

from sqlalchemy import text

from app.demo import backend_key
from bff.files import private_dir, sqlite_files, write_private
from bff.settings import Settings
from bff.store.db import Store, make_engine


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_sqlite_store_and_its_wal_and_shm_are_0600_in_a_0700_directory(tmp_path: Path) -> None:
    database = tmp_path / "made" / "here" / "store.db"
    store = Store(Settings(database_url=f"sqlite:///{database}"))  # migrates: the file and WAL are written
    try:
        with store.transaction() as session:
            session.execute(text("SELECT 1"))
        files = sqlite_files(database)
        assert all(f.exists() for f in files)
        assert [mode(f) for f in files] == [0o600, 0o600, 0o600]
        assert mode(database.parent) == 0o700
        assert mode(database.parent.parent) == 0o700  # made here too
    finally:
        store.dispose()


def test_an_existing_store_with_wider_modes_is_tightened(tmp_path: Path) -> None:
    database = tmp_path / "old.db"
    for path in sqlite_files(database):
        path.touch()
        path.chmod(0o644)
    make_engine(f"sqlite:///{database}").dispose()
    assert [mode(f) for f in sqlite_files(database)] == [0o600, 0o600, 0o600]


def test_secrets_are_written_0600_once(tmp_path: Path) -> None:
    folder = private_dir(tmp_path / "var")
    assert mode(folder) == 0o700
    assert write_private(folder / "k", b"first")
    assert not write_private(folder / "k", b"second")  # another process made it first: kept
    assert (folder / "k").read_bytes() == b"first"
    assert mode(folder / "k") == 0o600
    key, kid = backend_key(tmp_path / "keys")
    assert (mode(key), mode(key.parent)) == (0o600, 0o700)
    assert kid.startswith("demo-")
