"""Migrations are code and are tested: upgrade head on an empty database, then autogenerate finds nothing."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

import bff.smart.models  # noqa: F401 - the SMART tables are part of the schema
from bff.store.db import current_revision, head_revision, make_engine, upgrade
from bff.store.models import Base


def test_upgrade_head_on_an_empty_database_then_autogenerate_finds_no_difference(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        assert inspect(engine).get_table_names() == []
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
        assert diff == []
        upgrade(engine)  # a second upgrade is a no-op
    finally:
        engine.dispose()
