"""Settings: one typed object parsed from the environment by a pure function, cached only at the edge.

| variable | default | meaning |
| --- | --- | --- |
| `DATABASE_URL` | `sqlite:///var/glucobridge.db` | SQLAlchemy URL; `postgresql://…` uses psycopg 3 |
| `REDIS_URL` | unset | Redis for rate limits, sessions, locks and jobs when there are several workers |
| `INGEST_FUTURE_TOLERANCE_MIN` | `10` | readings further in the future than this are quarantined |
| `INGEST_CHUNK` | `10000` | readings written per round trip during ingestion |
| `SIGNING_KEY_FILE` | unset | PEM EC P-256 private key: Provenance of exports gets a JWS over the input digest |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = f"sqlite:///{ROOT / 'var' / 'glucobridge.db'}"


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the variable."""


def normalise_database_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL whatever driver the URL names (or none)."""
    for prefix in ("postgresql+psycopg2://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str | None = None
    future_tolerance_min: int = 10
    ingest_chunk: int = 10_000
    signing_key_file: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        return cls(
            database_url=normalise_database_url(environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL),
            redis_url=environ.get("REDIS_URL") or None,
            future_tolerance_min=_int(environ, "INGEST_FUTURE_TOLERANCE_MIN", 10),
            ingest_chunk=max(1, _int(environ, "INGEST_CHUNK", 10_000)),
            signing_key_file=environ.get("SIGNING_KEY_FILE") or None,
        )

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_env(os.environ)
