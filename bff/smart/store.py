"""Where the SMART client keeps pre-logins and launches: in memory (one worker, tests) or in the database.

`SqlLaunchStore` puts them in the store's database (`smart_prelogin`, `smart_launches`), so that every worker
on a shared PostgreSQL sees every launch. Its calls run the synchronous SQLAlchemy session in a worker thread,
never on the event loop. Records hold only ciphertext of secrets (the client encrypts before it stores); the
SQL store further keys rows by the SHA-256 of `state` and of the launch handle.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import bindparam, delete, select, update

from bff.smart.clock import as_utc
from bff.smart.crypto import digest
from bff.smart.models import SmartLaunch, SmartPrelogin
from bff.store.db import Store


@dataclass(frozen=True, slots=True)
class PreLogin:
    """An authorization in flight: created by `begin`, consumed once by `complete`."""

    state: str
    site_key: str
    iss: str
    redirect_uri: str
    scopes: tuple[str, ...]
    code_verifier_enc: str
    nonce: str
    standalone: bool
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class StoredTokens:
    """A launch's tokens, encrypted, with the access token's lifetime and the scopes granted."""

    access_token_enc: str
    refresh_token_enc: str | None
    issued_at: datetime
    expires_at: datetime
    scopes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LaunchRecord:
    """A completed launch as stored: its EHR context, its tokens and when the record expires."""

    handle: str
    site_key: str
    iss: str
    standalone: bool
    patient: str | None
    encounter: str | None
    fhir_user: str | None
    need_patient_banner: bool
    smart_style_url: str | None
    tokens: StoredTokens
    created_at: datetime
    expires_at: datetime
    context: Mapping[str, Any] = field(default_factory=dict)


class LaunchStore(Protocol):
    async def add_prelogin(self, record: PreLogin) -> None: ...

    async def take_prelogin(self, state: str) -> PreLogin | None:
        """Remove and return the pre-login of `state` atomically: of concurrent takers, one gets it."""
        ...

    async def add_launch(self, record: LaunchRecord) -> None: ...

    async def get_launch(self, handle: str) -> LaunchRecord | None: ...

    async def set_tokens(self, handle: str, tokens: StoredTokens) -> None: ...

    async def delete_launch(self, handle: str) -> bool: ...

    async def purge_expired(self, now: datetime) -> int:
        """Delete pre-logins and launches whose `expires_at` has passed; the number of rows deleted."""
        ...


class MemoryLaunchStore:
    """Dicts in one process: for a single worker and for tests. Every method is atomic under asyncio."""

    def __init__(self) -> None:
        self.prelogins: dict[str, PreLogin] = {}
        self.launches: dict[str, LaunchRecord] = {}

    async def add_prelogin(self, record: PreLogin) -> None:
        self.prelogins[record.state] = record

    async def take_prelogin(self, state: str) -> PreLogin | None:
        return self.prelogins.pop(state, None)

    async def add_launch(self, record: LaunchRecord) -> None:
        self.launches[record.handle] = record

    async def get_launch(self, handle: str) -> LaunchRecord | None:
        return self.launches.get(handle)

    async def set_tokens(self, handle: str, tokens: StoredTokens) -> None:
        record = self.launches.get(handle)
        if record is not None:
            self.launches[handle] = dataclasses.replace(record, tokens=tokens)

    async def delete_launch(self, handle: str) -> bool:
        return self.launches.pop(handle, None) is not None

    async def purge_expired(self, now: datetime) -> int:
        stale_prelogins = [k for k, r in self.prelogins.items() if r.expires_at <= now]
        stale_launches = [k for k, r in self.launches.items() if r.expires_at <= now]
        for key in stale_prelogins:
            del self.prelogins[key]
        for key in stale_launches:
            del self.launches[key]
        return len(stale_prelogins) + len(stale_launches)


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_LAUNCH = SmartLaunch.__table__.c
#: A launch's record by its handle's digest (`SqlLaunchStore._get_launch`).
_LAUNCH_BY_HANDLE = select(
    _LAUNCH.site_key,
    _LAUNCH.iss,
    _LAUNCH.standalone,
    _LAUNCH.patient,
    _LAUNCH.encounter,
    _LAUNCH.fhir_user,
    _LAUNCH.need_patient_banner,
    _LAUNCH.smart_style_url,
    _LAUNCH.access_token_enc,
    _LAUNCH.refresh_token_enc,
    _LAUNCH.token_issued_at,
    _LAUNCH.token_expires_at,
    _LAUNCH.scopes,
    _LAUNCH.created_at,
    _LAUNCH.expires_at,
    _LAUNCH.context,
).where(_LAUNCH.handle_sha256 == bindparam("handle_sha256"))


class SqlLaunchStore:
    """Pre-logins and launches in the store's database (SQLite or PostgreSQL), shared by all workers."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def add_prelogin(self, record: PreLogin) -> None:
        await asyncio.to_thread(self._add_prelogin, record)

    async def take_prelogin(self, state: str) -> PreLogin | None:
        return await asyncio.to_thread(self._take_prelogin, state)

    async def add_launch(self, record: LaunchRecord) -> None:
        await asyncio.to_thread(self._add_launch, record)

    async def get_launch(self, handle: str) -> LaunchRecord | None:
        return await asyncio.to_thread(self._get_launch, handle)

    async def set_tokens(self, handle: str, tokens: StoredTokens) -> None:
        await asyncio.to_thread(self._set_tokens, handle, tokens)

    async def delete_launch(self, handle: str) -> bool:
        return await asyncio.to_thread(self._delete_launch, handle)

    async def purge_expired(self, now: datetime) -> int:
        return await asyncio.to_thread(self._purge_expired, now)

    # MARK: synchronous halves (worker threads)

    def _add_prelogin(self, record: PreLogin) -> None:
        with self._store.transaction() as session:
            session.add(
                SmartPrelogin(
                    state_sha256=digest(record.state),
                    site_key=record.site_key,
                    iss=record.iss,
                    redirect_uri=record.redirect_uri,
                    scopes=" ".join(record.scopes),
                    code_verifier_enc=record.code_verifier_enc,
                    nonce=record.nonce,
                    standalone=record.standalone,
                    created_at=record.created_at,
                    expires_at=record.expires_at,
                )
            )

    def _take_prelogin(self, state: str) -> PreLogin | None:
        with self._store.transaction() as session:
            statement = (
                delete(SmartPrelogin)
                .where(SmartPrelogin.state_sha256 == digest(state))
                .returning(SmartPrelogin)
                .execution_options(synchronize_session=False)
            )
            row = session.scalars(statement).one_or_none()
            if row is None:
                return None
            return PreLogin(
                state=state,
                site_key=row.site_key,
                iss=row.iss,
                redirect_uri=row.redirect_uri,
                scopes=_words(row.scopes),
                code_verifier_enc=row.code_verifier_enc,
                nonce=row.nonce,
                standalone=row.standalone,
                created_at=as_utc(row.created_at),
                expires_at=as_utc(row.expires_at),
            )

    def _add_launch(self, record: LaunchRecord) -> None:
        tokens = record.tokens
        with self._store.transaction() as session:
            session.add(
                SmartLaunch(
                    handle_sha256=digest(record.handle),
                    site_key=record.site_key,
                    iss=record.iss,
                    standalone=record.standalone,
                    patient=record.patient,
                    encounter=record.encounter,
                    fhir_user=record.fhir_user,
                    need_patient_banner=record.need_patient_banner,
                    smart_style_url=record.smart_style_url,
                    context=dict(record.context),
                    scopes=" ".join(tokens.scopes),
                    access_token_enc=tokens.access_token_enc,
                    refresh_token_enc=tokens.refresh_token_enc,
                    token_issued_at=tokens.issued_at,
                    token_expires_at=tokens.expires_at,
                    created_at=record.created_at,
                    expires_at=record.expires_at,
                )
            )

    def _get_launch(self, handle: str) -> LaunchRecord | None:
        # One statement built once, on a connection (no ORM session): every patient-scoped request reads its launch.
        with self._store.reading() as conn:
            row = conn.execute(_LAUNCH_BY_HANDLE, {"handle_sha256": digest(handle)}).one_or_none()
            if row is None:
                return None
            return LaunchRecord(
                handle=handle,
                site_key=row.site_key,
                iss=row.iss,
                standalone=row.standalone,
                patient=row.patient,
                encounter=row.encounter,
                fhir_user=row.fhir_user,
                need_patient_banner=row.need_patient_banner,
                smart_style_url=row.smart_style_url,
                tokens=StoredTokens(
                    access_token_enc=row.access_token_enc,
                    refresh_token_enc=row.refresh_token_enc,
                    issued_at=as_utc(row.token_issued_at),
                    expires_at=as_utc(row.token_expires_at),
                    scopes=_words(row.scopes),
                ),
                created_at=as_utc(row.created_at),
                expires_at=as_utc(row.expires_at),
                context=dict(row.context or {}),
            )

    def _set_tokens(self, handle: str, tokens: StoredTokens) -> None:
        with self._store.transaction() as session:
            session.execute(
                update(SmartLaunch)
                .where(SmartLaunch.handle_sha256 == digest(handle))
                .values(
                    access_token_enc=tokens.access_token_enc,
                    refresh_token_enc=tokens.refresh_token_enc,
                    token_issued_at=tokens.issued_at,
                    token_expires_at=tokens.expires_at,
                    scopes=" ".join(tokens.scopes),
                )
                .execution_options(synchronize_session=False)
            )

    def _delete_launch(self, handle: str) -> bool:
        with self._store.transaction() as session:
            result = session.execute(
                delete(SmartLaunch)
                .where(SmartLaunch.handle_sha256 == digest(handle))
                .returning(SmartLaunch.handle_sha256)
                .execution_options(synchronize_session=False)
            )
            return result.first() is not None

    def _purge_expired(self, now: datetime) -> int:
        with self._store.transaction() as session:
            gone = 0
            for model in (SmartPrelogin, SmartLaunch):
                result = session.execute(
                    delete(model)
                    .where(model.expires_at <= now)
                    .returning(model.expires_at)
                    .execution_options(synchronize_session=False)
                )
                gone += len(result.all())
            return gone


__all__ = ["LaunchRecord", "LaunchStore", "MemoryLaunchStore", "PreLogin", "SqlLaunchStore", "StoredTokens"]
