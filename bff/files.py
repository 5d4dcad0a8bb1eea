"""Files that hold secrets or patient data, readable by their owner only (0600 files, 0700 directories).

Modes are given at creation (`os.open(..., 0o600)`), never fixed afterwards, so there is no moment at which another
user of the machine could open the file; a file or directory that already exists with wider modes is tightened.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def _tighten(path: Path, mode: int) -> None:
    if stat.S_IMODE(path.stat().st_mode) & ~mode:
        path.chmod(mode)


def private_dir(path: Path, *, tighten: bool = False) -> Path:
    """`path` as a directory, the ones made here (it and missing parents) only for their owner to enter.

    Directories that already exist are left as they are (they may be /tmp or a shared folder), unless `tighten`
    (the app's own `var/`)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for made in missing:
        made.chmod(DIR_MODE)
    if tighten:
        _tighten(path, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """`path` as a file only its owner may read (made empty when absent; an existing one is tightened)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        _tighten(path, FILE_MODE)
    return path


def write_private(path: Path, data: bytes) -> bool:
    """Write a new secret file with mode 0600; False (and nothing written) when it already exists, e.g. because
    another process made it first."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return True


def sqlite_files(database: Path) -> tuple[Path, Path, Path]:
    """The database file and the two files SQLite keeps beside it in WAL mode."""
    return database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")


def private_sqlite(database: Path) -> None:
    """A SQLite database (it holds PHI) and its -wal/-shm files, owner-only. SQLite creates -wal and -shm with
    the database file's mode, so a 0600 database gets 0600 companions; older, wider ones are tightened."""
    private_file(database)
    for companion in sqlite_files(database)[1:]:
        if companion.exists():
            _tighten(companion, FILE_MODE)


__all__ = ["private_dir", "private_file", "private_sqlite", "sqlite_files", "write_private"]
