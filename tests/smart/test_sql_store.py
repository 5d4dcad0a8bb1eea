"""The SQL launch store on SQLite and PostgreSQL: shared by workers, single-use state, nothing secret in clear."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from bff.smart import FernetCipher, LaunchNotFoundError, SqlLaunchStore, StateError
from bff.smart.models import SMART_TABLES, SmartLaunch
from bff.store.db import Store
from bff.store.models import Base
from tests.smart.fakes import ISS, FakeEhr, launched, make_client, query, run


@pytest.fixture(name="launch_store")
def fx_launch_store(store: Store) -> SqlLaunchStore:
    """The smart tables on a migrated store (until their migration exists, made here from the models)."""
    Base.metadata.create_all(store.engine, tables=list(SMART_TABLES))
    return SqlLaunchStore(store)


def rows(store: Store, table: str) -> list[dict[str, Any]]:
    with store.engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(text(f"SELECT * FROM {table}"))]


def test_a_launch_round_trips_and_refreshes_through_the_database(ehr: FakeEhr, launch_store: SqlLaunchStore) -> None:
    ehr.rotate_refresh_tokens = False

    async def scenario() -> None:
        async with ehr.client() as http:
            client = make_client(ehr, http, store=launch_store)
            done = await launched(client, ehr)
            context = await client.launch(done.handle)
            assert context == done.context
            assert context.created_at.tzinfo is not None
            assert context.need_patient_banner is False
            assert await client.access_token(done.handle) == ehr.issued_access_tokens[-1]
            ehr.clock.advance(3590)
            tokens = await asyncio.gather(*(client.access_token(done.handle) for _ in range(20)))
            assert set(tokens) == {ehr.issued_access_tokens[-1]}
            assert len(ehr.refresh_requests) == 1
            ehr.clock.advance(3590)
            await client.access_token(done.handle)
            [original] = ehr.refresh_tokens
            assert [r["refresh_token"] for r in ehr.refresh_requests] == [original, original]
            assert await client.end(done.handle)
            assert not await client.end(done.handle)
            with pytest.raises(LaunchNotFoundError):
                await client.launch(done.handle)

    run(scenario())


def test_tokens_handles_and_state_are_not_stored_in_clear(
    ehr: FakeEhr, launch_store: SqlLaunchStore, store: Store
) -> None:
    async def scenario() -> tuple[list[str], str]:
        async with ehr.client() as http:
            client = make_client(ehr, http, store=launch_store)
            pending = await client.begin(ISS, "launch-pending")
            done = await launched(client, ehr)
            ehr.clock.advance(3590)
            await client.access_token(done.handle)  # a refreshed pair too
            secrets = [*ehr.issued_access_tokens, *ehr.refresh_tokens, *ehr.verifiers, done.handle]
            return secrets, query(pending.url)["state"]

    secrets, state = run(scenario())
    secrets.append(state)
    assert len(secrets) >= 6
    [launch] = rows(store, "smart_launches")
    [prelogin] = rows(store, "smart_prelogin")
    dumped = repr(launch) + repr(prelogin)
    for secret in secrets:
        assert secret not in dumped
    assert launch["access_token_enc"].startswith("gAAAAA")  # Fernet
    assert launch["refresh_token_enc"].startswith("gAAAAA")
    assert prelogin["code_verifier_enc"].startswith("gAAAAA")
    assert len(launch["handle_sha256"]) == 64
    assert len(prelogin["state_sha256"]) == 64
    if store.dialect == "sqlite":  # nor anywhere in the database files
        database = Path(store.engine.url.database or "")
        raw = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
        for secret in secrets:
            assert secret.encode() not in raw


def test_state_is_single_use_across_workers(ehr: FakeEhr, launch_store: SqlLaunchStore) -> None:
    async def scenario() -> None:
        async with ehr.client() as http:
            cipher = FernetCipher([FernetCipher.generate_key()])
            workers = [make_client(ehr, http, store=launch_store, cipher=cipher) for _ in range(3)]
            redirect = await workers[0].begin(ISS, "launch-1")
            state, code = query(redirect.url)["state"], ehr.authorize(redirect.url)
            results = await asyncio.gather(
                *(worker.complete(state, code) for worker in workers for _ in range(2)), return_exceptions=True
            )
            done = [r for r in results if not isinstance(r, BaseException)]
            assert len(done) == 1
            assert all(isinstance(r, StateError) for r in results if isinstance(r, BaseException))
            # the launch made by one worker is seen by the others
            for worker in workers:
                assert (await worker.launch(done[0].handle)).patient == "pat-123"
                assert await worker.access_token(done[0].handle) == ehr.issued_access_tokens[-1]

    run(scenario())


def test_expired_rows_are_purged(ehr: FakeEhr, launch_store: SqlLaunchStore, store: Store) -> None:
    async def scenario() -> None:
        async with ehr.client() as http:
            client = make_client(ehr, http, store=launch_store)
            await client.begin(ISS, "launch-abandoned")
            done = await launched(client, ehr)
            ehr.clock.advance(601)
            assert await client.purge() == 1
            assert len(rows(store, "smart_prelogin")) == 0
            assert (await client.launch(done.handle)).patient == "pat-123"
            ehr.clock.advance(12 * 3600)
            assert await client.purge() == 1
            with store.transaction() as session:
                assert session.scalars(select(SmartLaunch)).all() == []

    run(scenario())
