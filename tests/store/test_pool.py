"""An app process keeps as many PostgreSQL connections open as its request threads use at once (`DB_POOL_SIZE`):
with SQLAlchemy's default of 5, every connection past the fifth was opened for one transaction and closed after."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import event, text

from bff.settings import Settings, SettingsError
from bff.store.db import Store
from tests.conftest import PgSchema, need_postgres


def test_the_pool_size_comes_from_the_environment() -> None:
    assert Settings.from_env({}).db_pool_size == 10
    assert Settings.from_env({"DB_POOL_SIZE": "24"}).db_pool_size == 24
    with pytest.raises(SettingsError, match="DB_POOL_SIZE"):
        Settings.from_env({"DB_POOL_SIZE": "0"})


def test_eight_threads_at_once_reuse_eight_connections() -> None:
    need_postgres()
    schema = PgSchema()
    store = Store(Settings(database_url=schema.url, db_pool_size=8), check_schema=False)
    connects = []
    event.listen(store.engine, "connect", lambda *_args: connects.append(1))
    barrier = threading.Barrier(8)

    def work() -> None:
        for _ in range(5):
            with store.engine.connect() as conn:
                barrier.wait(timeout=30)  # eight connections checked out at the same moment
                conn.execute(text("SELECT 1"))

    try:
        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert store.engine.pool.size() == 8  # type: ignore[attr-defined]
        assert len(connects) == 8  # opened once each, then reused: none closed and opened again
    finally:
        store.dispose()
        schema.close()
