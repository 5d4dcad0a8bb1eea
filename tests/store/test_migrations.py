"""Migrations are code and are tested: upgrade head on an empty database, then autogenerate finds nothing."""

from __future__ import annotations

import io

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

import bff.smart.models  # noqa: F401 - the SMART tables are part of the schema
from bff.ingest.csv_feed import CsvParser
from bff.settings import Settings
from bff.store.db import Store, alembic_config, current_revision, head_revision, make_engine, upgrade
from bff.store.ingest import Ingestor
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


def test_the_readings_owner_check_migration_keeps_every_reading_both_ways(db_url: str) -> None:
    """7d3f1b9e4a26 drops the readings' foreign keys to patients and streams (SQLite rebuilds the table); down and
    up again, the readings stored before are the same rows, and the foreign keys are back only below it."""
    from alembic import command  # noqa: PLC0415 - as bff.store.db does

    engine = make_engine(db_url)
    store = Store(Settings(database_url=db_url), engine=engine, check_schema=False)
    try:
        upgrade(engine)
        data = "patient_id,time,value,unit,device,record_id\n" + "".join(
            f"P1,2024-03-01T00:{i * 5:02d}:00Z,{100 + i},mg/dL,dexcom-g6,r{i}\n" for i in range(10)
        )
        Ingestor(store).ingest(CsvParser(), io.BytesIO(data.encode()), site="site-a", source_name="t")

        def readings() -> list[tuple[object, ...]]:
            with engine.connect() as connection:
                return [tuple(r) for r in connection.execute(text(
                    "SELECT id, reading_key, patient_id, stream_id, observed_ms, value_mg_dl FROM readings ORDER BY id"
                )).all()]  # fmt: skip

        before = readings()
        assert len(before) == 10
        config = alembic_config(engine.url.render_as_string(hide_password=False))
        for target in ("e5b8d3a1c7f2", "head"):
            with engine.begin() as connection:
                config.attributes["connection"] = connection
                (command.downgrade if target != "head" else command.upgrade)(config, target)
            assert readings() == before
            foreign = {tuple(fk["constrained_columns"]) for fk in inspect(engine).get_foreign_keys("readings")}
            assert (("patient_id",) in foreign) is (target != "head")
            assert (("stream_id",) in foreign) is (target != "head")
        assert current_revision(engine) == head_revision()
    finally:
        store.dispose()
