"""The BFF's SMART on FHIR client: App Launch (EHR and standalone) and Backend Services, tokens server-side only.

Start with `SmartClient` (`launch.py`), `BackendAuth` (`backend.py`) and `SiteBackends` (`backends.py`, a system
token per site); the OAuth requests themselves are built by authlib (`oauth.py`); `errors.py` documents the
exception tree.
Importing this package registers its tables (`smart_prelogin`, `smart_launches`) on the store's metadata.
"""

from bff.smart.backend import BackendAuth, combined_jwks
from bff.smart.backends import SiteBackends
from bff.smart.clock import Clock, utc_now
from bff.smart.config import SmartSettings, create_backend_auth, create_site_backends, create_smart_client
from bff.smart.crypto import FernetCipher, TokenCipher
from bff.smart.discovery import Discovery, SmartConfiguration
from bff.smart.errors import (
    BackendAuthError,
    DiscoveryError,
    IdTokenError,
    IssNotAllowedError,
    LaunchNotFoundError,
    LaunchRequestError,
    PatientMismatchError,
    RefreshError,
    SmartConfigError,
    SmartError,
    StateError,
    TokenCipherError,
    TokenEndpointError,
    TokenExchangeError,
)
from bff.smart.launch import AuthorizeRedirect, Launch, LaunchContext, SmartClient
from bff.smart.locks import LocalRefreshLock, RefreshLock, make_refresh_lock
from bff.smart.oauth import AssertionSigner, ClientAuthentication
from bff.smart.sites import SiteRegistry, SmartSite
from bff.smart.store import LaunchStore, MemoryLaunchStore, SqlLaunchStore

__all__ = [
    "AssertionSigner",
    "AuthorizeRedirect",
    "BackendAuth",
    "BackendAuthError",
    "ClientAuthentication",
    "Clock",
    "Discovery",
    "DiscoveryError",
    "FernetCipher",
    "IdTokenError",
    "IssNotAllowedError",
    "Launch",
    "LaunchContext",
    "LaunchNotFoundError",
    "LaunchRequestError",
    "LaunchStore",
    "LocalRefreshLock",
    "MemoryLaunchStore",
    "PatientMismatchError",
    "RefreshError",
    "RefreshLock",
    "SiteBackends",
    "SiteRegistry",
    "SmartClient",
    "SmartConfigError",
    "SmartConfiguration",
    "SmartError",
    "SmartSettings",
    "SmartSite",
    "SqlLaunchStore",
    "StateError",
    "TokenCipher",
    "TokenCipherError",
    "TokenEndpointError",
    "TokenExchangeError",
    "combined_jwks",
    "create_backend_auth",
    "create_site_backends",
    "create_smart_client",
    "make_refresh_lock",
    "utc_now",
]
