"""Shared fixtures: a fresh store on SQLite (embedded default) and on PostgreSQL (as in production).

PostgreSQL runs at 127.0.0.1:5432 (database `test`); each store gets its own schema, dropped afterwards.
Where PostgreSQL is not running the PostgreSQL cases are skipped with the reason, unless
GLUCOBRIDGE_REQUIRE_SERVICES=1 (set by .ci/run), which turns that into a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from sqlalchemy import create_engine, text

from bff.admin import passwords
from bff.settings import Settings
from bff.store.db import Store, make_engine, upgrade

#: The demo stacks of tests/web (a 90-day one and an empty one), started once per test process: under xdist every
#: test that uses one runs on the same worker, so each stack starts once in the whole run.
STACK_FIXTURES = frozenset({"stack", "fresh_stack"})
WEB = Path(__file__).resolve().parent / "web"


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (its own hook appends them to the node ids)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`make test` runs on several workers (pytest-xdist, --dist loadgroup): a file's tests stay together (their
    module-scoped servers and browsers start once), and tests/web's stack users share one worker."""
    for item in items:
        path = Path(str(item.path))
        uses_stack = STACK_FIXTURES & set(getattr(item, "fixturenames", ()))
        group = "web-stack" if uses_stack and path.is_relative_to(WEB) else path.relative_to(config.rootpath).as_posix()
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """xdist groups by a suffix it writes into each node id; a pytest that ignores that write (pytest-xdist#1386)
    would spread the groups silently, so each worker would start its own demo stack. Say so instead."""
    if getattr(session.config.option, "loadgroup", False) and session.items and "@" not in session.items[0].nodeid:
        raise pytest.UsageError("pytest-xdist --dist loadgroup is not grouping with this pytest (pytest-xdist#1386)")


PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REQUIRE = os.environ.get("GLUCOBRIDGE_REQUIRE_SERVICES") == "1"


def postgres_available() -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(text("select 1"))
        engine.dispose()
    except Exception as exc:
        return f"PostgreSQL at {PG_URL} is not available: {type(exc).__name__}"
    return None


def unavailable(reason: str) -> NoReturn:
    """Skip with the reason a service is missing; in CI (GLUCOBRIDGE_REQUIRE_SERVICES=1) fail instead."""
    if REQUIRE:
        pytest.fail(reason + " (GLUCOBRIDGE_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


def need_postgres() -> None:
    reason = postgres_available()
    if reason:
        unavailable(reason)


def need_redis(url: str) -> None:
    """Return when Redis at `url` answers a PING, else `unavailable`."""
    import redis  # noqa: PLC0415 - only the tests that use Redis load it

    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable(f"Redis at {url} is not available: {type(exc).__name__}")
    finally:
        client.close()


class PgSchema:
    """A fresh PostgreSQL schema with its own URL (search_path), dropped on close."""

    def __init__(self) -> None:
        self.name = "gb_" + uuid.uuid4().hex[:12]
        self.admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
        with self.admin.connect() as connection:
            connection.execute(text(f'CREATE SCHEMA "{self.name}"'))
        self.url = PG_URL + ("&" if "?" in PG_URL else "?") + f"options=-csearch_path%3D{self.name}"

    def close(self) -> None:
        with self.admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE'))
        self.admin.dispose()


def database_url(kind: str, tmp_path: Path) -> tuple[str, PgSchema | None]:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}", None
    need_postgres()
    schema = PgSchema()
    return schema.url, schema


@pytest.fixture(params=["sqlite", "postgresql"], name="db_url")
def fx_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database (no tables) of each kind."""
    url, schema = database_url(request.param, tmp_path)
    try:
        yield url
    finally:
        if schema:
            schema.close()


@pytest.fixture(name="store")
def fx_store(db_url: str) -> Iterator[Store]:
    """A migrated store on each kind of database."""
    engine = make_engine(db_url)
    upgrade(engine)
    store = Store(Settings(database_url=db_url), engine=engine)
    try:
        yield store
    finally:
        store.dispose()


@pytest.fixture(name="sqlite_store")
def fx_sqlite_store(tmp_path: Path) -> Iterator[Store]:
    """A migrated store on SQLite only, for tests of logic that does not depend on the database."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(Settings(database_url=url))
    try:
        yield store
    finally:
        store.dispose()


@pytest.fixture(name="cheap_hashes")
def fx_cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Cheaper scrypt for tests that sign in many times (as Django's tests swap in a fast hasher). The parameters
    are stored in each hash, so the code under test is the same; tests/admin/test_passwords.py uses the real ones."""
    monkeypatch.setattr(passwords, "LOG2_N", 10)
    monkeypatch.setattr(passwords, "P", 1)
    passwords._dummy_hash.cache_clear()
    yield
    passwords._dummy_hash.cache_clear()
