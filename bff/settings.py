"""Settings: one typed object parsed from the environment by a pure function, cached only at the edge.

| variable | default | meaning |
| --- | --- | --- |
| `DATABASE_URL` | `sqlite:///var/glucobridge.db` | SQLAlchemy URL; `postgresql://…` uses psycopg 3 |
| `REDIS_URL` | unset | Redis for rate limits, sessions, locks and jobs when there are several workers |
| `DB_POOL_SIZE` | `10` | PostgreSQL connections a process keeps open (and as many more at a burst, closed after) |
| `INGEST_FUTURE_TOLERANCE_MIN` | `10` | readings further in the future than this are quarantined |
| `INGEST_CHUNK` | `10000` | readings written per round trip during ingestion |
| `SIGNING_KEY_FILE` | unset | PEM EC P-256 private key: Provenance of exports gets a JWS over the input digest |
| `APP_PUBLIC_URL` | `http://127.0.0.1:8000` | where the clinician app is reached (redirect URI, JWKS URL) |
| `APP_SECRET_KEY` | `var/app-secret.key` (made on first use) | secret for CSRF tokens and EHR tokens at rest |
| `SITES_DIR` | `sites/` | one TOML file per EHR site (allow-listed `iss`, client id, framing origins) |
| `APP_TRUSTED_PROXIES` | unset | reverse proxies (IPs or networks, comma-separated) whose `X-Forwarded-*` is believed |
| `ADMIN_LOCKOUT_FAILURES` | `20` | wrong passwords in a row that lock an `/admin` account |
| `ADMIN_LOCKOUT_MIN` | `15` | how long a lock lasts; also the window of `ADMIN_CLIENT_FAILURES` |
| `ADMIN_CLIENT_FAILURES` | `50` | failed `/admin` sign-ins per address and `ADMIN_LOCKOUT_MIN` before it must wait |
| `ADMIN_SESSION_IDLE_MIN` | `30` | an `/admin` session ends this long after its last request (12 h at most) |

`/admin` has named accounts only (`glucobridge admin add-user NAME`). The shared `ADMIN_PASSWORD` of earlier
versions is gone: setting it is an error, so that nobody believes it still guards the pages.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from bff.files import private_dir, write_private

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"  # the app's own files (secrets, the default database): 0700
DEFAULT_DATABASE_URL = f"sqlite:///{VAR / 'glucobridge.db'}"


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


def _positive(environ: Mapping[str, str], name: str, default: int) -> int:
    value = _int(environ, name, default)
    if value < 1:
        raise SettingsError(f"{name} must be at least 1, got {value}")
    return value


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(name: str, raw: str) -> tuple[IpNetwork, ...]:
    """Comma-separated addresses or networks (`10.0.0.5`, `10.0.0.0/8`, `::1`)."""
    networks = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise SettingsError(f"{name}: {item!r} is not an IP address or network") from None
    return tuple(networks)


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str | None = None
    db_pool_size: int = 10
    future_tolerance_min: int = 10
    ingest_chunk: int = 10_000
    signing_key_file: str | None = None
    public_url: str = "http://127.0.0.1:8000"
    secret_key: str | None = None
    sites_dir: str = str(ROOT / "sites")
    trusted_proxies: tuple[IpNetwork, ...] = ()
    admin_lockout_failures: int = 20
    admin_lockout_min: int = 15
    admin_client_failures: int = 50
    admin_session_idle_min: int = 30

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        if environ.get("ADMIN_PASSWORD"):
            raise SettingsError(
                "ADMIN_PASSWORD is no longer used: /admin has named accounts. Unset it, then create yours with "
                "`glucobridge admin add-user NAME`"
            )
        return cls(
            database_url=normalise_database_url(environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL),
            redis_url=environ.get("REDIS_URL") or None,
            db_pool_size=_positive(environ, "DB_POOL_SIZE", 10),
            future_tolerance_min=_int(environ, "INGEST_FUTURE_TOLERANCE_MIN", 10),
            ingest_chunk=max(1, _int(environ, "INGEST_CHUNK", 10_000)),
            signing_key_file=environ.get("SIGNING_KEY_FILE") or None,
            public_url=(environ.get("APP_PUBLIC_URL") or "http://127.0.0.1:8000").rstrip("/"),
            secret_key=environ.get("APP_SECRET_KEY") or None,
            sites_dir=environ.get("SITES_DIR") or str(ROOT / "sites"),
            trusted_proxies=parse_networks("APP_TRUSTED_PROXIES", environ.get("APP_TRUSTED_PROXIES", "")),
            admin_lockout_failures=_positive(environ, "ADMIN_LOCKOUT_FAILURES", 20),
            admin_lockout_min=_positive(environ, "ADMIN_LOCKOUT_MIN", 15),
            admin_client_failures=_positive(environ, "ADMIN_CLIENT_FAILURES", 50),
            admin_session_idle_min=_positive(environ, "ADMIN_SESSION_IDLE_MIN", 30),
        )

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def secret(self) -> bytes:
        """The app secret: APP_SECRET_KEY, else a random key kept in var/app-secret.key (shared by local workers)."""
        if self.secret_key:
            return self.secret_key.encode()
        path = private_dir(VAR, tighten=True) / "app-secret.key"
        if not path.exists():
            write_private(path, base64.urlsafe_b64encode(os.urandom(32)))  # False: another process made it first
        return path.read_bytes().strip()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_env(os.environ)
