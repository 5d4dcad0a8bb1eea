"""Database engines, sessions and migrations for the store.

SQLite (the embedded default) is migrated to the head revision automatically on first use; PostgreSQL must be
migrated explicitly (`glucobridge db upgrade`), and the store refuses to run against an older schema.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from bff.files import private_dir, private_sqlite
from bff.settings import ROOT, VAR, Settings

if TYPE_CHECKING:  # alembic loads when a schema is checked or upgraded, not with every import of the store
    from alembic.config import Config

MIGRATIONS = ROOT / "migrations"


class SchemaError(RuntimeError):
    """The database schema is not at the revision this code needs."""


def read_json(text: str | bytes) -> Any:
    """JSON columns as read back: orjson (the stored outcome documents are large; 5-10x the standard library's
    speed, the same values), and the standard library for what orjson refuses (NaN written by a SQLite JSON
    column, which the standard library's writer allows)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def make_engine(url: str, *, pool_size: int | None = None, **kwargs: Any) -> Engine:
    """The engine of a database URL. On PostgreSQL the pool keeps `pool_size` connections open (SQLAlchemy's default
    of 5 is fewer than an app process's request threads use at once: each connection past it was opened for one
    transaction and closed after, a new server process each time) and as many again at a burst."""
    kwargs.setdefault("json_deserializer", read_json)
    if url.startswith("sqlite:///"):
        database = make_url(url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            path = Path(database).absolute()
            private_dir(path.parent, tighten=path.parent == VAR)
            private_sqlite(path)  # it holds PHI: 0600, and so are the -wal/-shm files SQLite makes beside it
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    if pool_size is not None:
        kwargs.setdefault("pool_size", pool_size)
        kwargs.setdefault("max_overflow", pool_size)
    return create_engine(url, pool_pre_ping=True, **kwargs)


def alembic_config(url: str) -> Config:
    from alembic.config import Config  # noqa: PLC0415 - see the imports above

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory  # noqa: PLC0415 - see the imports above

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415 - see the imports above

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Migrate the database to the head revision."""
    from alembic import command  # noqa: PLC0415 - see the imports above

    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def ensure_schema(engine: Engine, *, auto_upgrade: bool) -> None:
    if current_revision(engine) == head_revision():
        return
    if auto_upgrade:
        upgrade(engine)
        return
    raise SchemaError(
        f"the database schema is at {current_revision(engine) or 'no revision'}, this code needs "
        f"{head_revision()}: run `glucobridge db upgrade`"
    )


class Store:
    """The database handle the rest of bff uses: an engine and a session factory, schema checked once."""

    def __init__(self, settings: Settings, *, engine: Engine | None = None, check_schema: bool = True) -> None:
        self.settings = settings
        self.engine = engine or make_engine(settings.database_url, pool_size=settings.db_pool_size)
        if check_schema:
            ensure_schema(self.engine, auto_upgrade=settings.is_sqlite)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on any error."""
        with self.sessions() as session, session.begin():
            yield session

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection for a read of a statement or two without the ORM (a hot path's): whatever it began is rolled
        back when it is returned to the pool."""
        with self.engine.connect() as conn:
            yield conn

    @contextmanager
    def joined(self, session: Session | None) -> Iterator[Session]:
        """The caller's session when one is given (its transaction, committed or rolled back by the caller: a view
        reads what it shows in one transaction), else a transaction of its own."""
        if session is not None:
            yield session
            return
        with self.transaction() as own:
            yield own

    def dispose(self) -> None:
        self.engine.dispose()
