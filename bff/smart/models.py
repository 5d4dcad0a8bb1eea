"""The SMART client's tables, on the store's `Base` (so Alembic sees them once this module is imported).

Bearer secrets are never stored as such: a pre-login is keyed by the SHA-256 of its `state` and a launch by the
SHA-256 of its handle, and the PKCE verifier and the EHR's tokens are stored encrypted (`bff.smart.crypto`).
Rows expire (`expires_at`) and are purged by `LaunchStore.purge_expired`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, String, Table, Text
from sqlalchemy.orm import Mapped, mapped_column

from bff.store.models import Base, Timestamp


class SmartPrelogin(Base):
    """An authorization in flight, between the redirect to the EHR and its callback: single use, about 10 min."""

    __tablename__ = "smart_prelogin"
    state_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    site_key: Mapped[str] = mapped_column(String(64))
    iss: Mapped[str] = mapped_column(String(500))
    redirect_uri: Mapped[str] = mapped_column(String(500))
    scopes: Mapped[str] = mapped_column(Text)  # space-separated, as requested
    code_verifier_enc: Mapped[str] = mapped_column(Text)
    nonce: Mapped[str] = mapped_column(String(128))
    standalone: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    expires_at: Mapped[datetime] = mapped_column(Timestamp, index=True)


class SmartLaunch(Base):
    """A completed launch: its EHR context and its tokens (encrypted), named by a launch handle (one per tab)."""

    __tablename__ = "smart_launches"
    handle_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    site_key: Mapped[str] = mapped_column(String(64))
    iss: Mapped[str] = mapped_column(String(500))
    standalone: Mapped[bool] = mapped_column(Boolean)
    patient: Mapped[str | None] = mapped_column(String(256))
    encounter: Mapped[str | None] = mapped_column(String(256))
    fhir_user: Mapped[str | None] = mapped_column(String(500))
    need_patient_banner: Mapped[bool] = mapped_column(Boolean)
    smart_style_url: Mapped[str | None] = mapped_column(Text)
    context: Mapped[dict[str, Any]] = mapped_column(JSON)  # other launch context (location, appointment, ...)
    scopes: Mapped[str] = mapped_column(Text)  # space-separated, as granted
    access_token_enc: Mapped[str] = mapped_column(Text)
    refresh_token_enc: Mapped[str | None] = mapped_column(Text)
    token_issued_at: Mapped[datetime] = mapped_column(Timestamp)
    token_expires_at: Mapped[datetime] = mapped_column(Timestamp)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    expires_at: Mapped[datetime] = mapped_column(Timestamp, index=True)


SMART_TABLES: tuple[Table, ...] = (Base.metadata.tables["smart_prelogin"], Base.metadata.tables["smart_launches"])

__all__ = ["SMART_TABLES", "SmartLaunch", "SmartPrelogin"]
