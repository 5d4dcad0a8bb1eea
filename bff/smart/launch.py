"""The SMART App Launch client of the BFF: EHR and standalone launches, tokens held server-side only.

    begin(iss, launch)    allow-list, discovery, a server-side pre-login (state, PKCE, nonce) → the authorize URL
    complete(state, code) the pre-login taken once, the code redeemed at the discovered token endpoint, the
                          id_token verified → a launch handle (one per launch, so one per tab)
    launch(handle)        the launch's EHR context, without tokens
    access_token(handle)  the access token, refreshed ahead of expiry by one caller at a time (single flight);
                          a refresh without a new refresh token keeps the old one (Oracle Health)
    check_patient(...)    PatientMismatchError when a request names another patient than the launch's

The browser only ever sees the launch handle. Tokens are encrypted before they reach the store.
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx

from bff.smart.clock import Clock, utc_now
from bff.smart.crypto import TokenCipher, digest, pkce_challenge, pkce_verifier, random_token
from bff.smart.discovery import Discovery, SmartConfiguration
from bff.smart.errors import (
    DiscoveryError,
    IdTokenError,
    LaunchNotFoundError,
    LaunchRequestError,
    PatientMismatchError,
    RefreshError,
    StateError,
    TokenExchangeError,
)
from bff.smart.locks import LocalRefreshLock, RefreshLock
from bff.smart.sites import SiteRegistry, SmartSite
from bff.smart.store import LaunchRecord, LaunchStore, PreLogin, StoredTokens
from bff.smart.tokens import fhir_user, id_token_kid, key_set_has, request_token, validate_id_token

MAX_STATE_LENGTH = 256


@dataclass(frozen=True, slots=True)
class AuthorizeRedirect:
    """Where to send the browser: GET `url`, or POST `params` to `endpoint` where `post_allowed` (Epic advises
    POST for EHR launches, whose launch tokens can make the URL too long)."""

    url: str
    endpoint: str
    params: Mapping[str, str]
    site_key: str
    frame_ancestors: tuple[str, ...]
    post_allowed: bool


@dataclass(frozen=True, slots=True)
class LaunchContext:
    """What the EHR told us about a launch. No tokens, and not the handle either (it is a bearer secret)."""

    site_key: str
    iss: str
    vendor: str
    standalone: bool
    patient: str | None
    encounter: str | None
    fhir_user: str | None
    need_patient_banner: bool
    smart_style_url: str | None
    scopes: tuple[str, ...]  # as granted, which may differ from those requested
    frame_ancestors: tuple[str, ...]
    created_at: datetime
    expires_at: datetime
    context: Mapping[str, Any] = field(default_factory=dict)  # further launch context (location, appointment, ...)


@dataclass(frozen=True, slots=True)
class Launch:
    """A completed launch: the handle that names it (put it in the tab's URLs) and its context."""

    handle: str = field(repr=False)
    context: LaunchContext

    @property
    def patient(self) -> str | None:
        return self.context.patient

    @property
    def frame_ancestors(self) -> tuple[str, ...]:
        return self.context.frame_ancestors


def _patient_id(reference: str) -> str:
    """A patient id from an id or a `Patient/<id>` reference."""
    return reference.removeprefix("Patient/")


class SmartClient:
    """SMART App Launch for the BFF (public client with PKCE; see the module docstring)."""

    def __init__(
        self,
        registry: SiteRegistry,
        http: httpx.AsyncClient,
        store: LaunchStore,
        cipher: TokenCipher,
        clock: Clock = utc_now,
        *,
        discovery: Discovery | None = None,
        lock: RefreshLock | None = None,
        prelogin_ttl_s: float = 600,
        launch_ttl_s: float = 12 * 3600,
        refresh_leeway_s: float = 60,
        clock_skew_s: float = 60,
        purge_every_s: float = 300,
    ) -> None:
        self.registry = registry
        self.discovery = discovery or Discovery(http, clock=clock)
        self._http = http
        self._store = store
        self._cipher = cipher
        self._clock = clock
        self._lock = lock or LocalRefreshLock()
        self._prelogin_ttl = timedelta(seconds=prelogin_ttl_s)
        self._launch_ttl = timedelta(seconds=launch_ttl_s)
        self._leeway_s = refresh_leeway_s
        self._skew_s = clock_skew_s
        self._purge_every = timedelta(seconds=purge_every_s)
        self._last_purge: datetime | None = None

    # MARK: launch

    async def begin(self, iss: str, launch: str | None, *, standalone: bool = False) -> AuthorizeRedirect:
        """Start a launch from `iss`: IssNotAllowedError when it is not on the allow-list (audit it)."""
        site = self.registry.for_iss(iss)
        if standalone and launch:
            raise LaunchRequestError("a standalone launch has no `launch` parameter")
        if not standalone and not launch:
            raise LaunchRequestError("an EHR launch needs the `launch` parameter")
        config = await self.discovery.configuration(site.iss)
        config.require_grant("authorization_code")
        now = self._clock()
        state, verifier, nonce = random_token(), pkce_verifier(), random_token()
        scopes = site.launch_scopes(standalone=standalone)
        await self._store.add_prelogin(
            PreLogin(
                state=state,
                site_key=site.key,
                iss=site.iss,
                redirect_uri=site.redirect_uri,
                scopes=scopes,
                code_verifier_enc=self._cipher.encrypt(verifier),
                nonce=nonce,
                standalone=standalone,
                created_at=now,
                expires_at=now + self._prelogin_ttl,
            )
        )
        await self._maybe_purge(now)
        params = {
            "response_type": "code",
            "client_id": site.client_id,
            "redirect_uri": site.redirect_uri,
            "scope": " ".join(scopes),
            "state": state,
            "aud": site.iss,
            **({"launch": launch} if launch else {}),
            "code_challenge": pkce_challenge(verifier),
            "code_challenge_method": "S256",
            "nonce": nonce,
        }
        url = httpx.URL(config.authorization_endpoint).copy_merge_params(params)
        return AuthorizeRedirect(
            url=str(url),
            endpoint=config.authorization_endpoint,
            params=params,
            site_key=site.key,
            frame_ancestors=site.frame_ancestors,
            post_allowed=not standalone and "authorize-post" in config.capabilities,
        )

    async def complete(self, state: str, code: str) -> Launch:
        """Finish a launch at the callback. The `state` is usable once, before it expires (StateError)."""
        if not state or len(state) > MAX_STATE_LENGTH:
            raise StateError("the callback has no usable state")
        prelogin = await self._store.take_prelogin(state)
        if prelogin is None:
            raise StateError("unknown or already used state")
        now = self._clock()
        if now >= prelogin.expires_at:
            raise StateError("the sign-in took too long (state expired): launch again")
        if not code:
            raise TokenExchangeError("the callback has no authorization code")
        site = self.registry.get(prelogin.site_key)
        if site is None or site.iss != prelogin.iss:
            raise StateError("the site of this sign-in is no longer on the allow-list")
        config = await self.discovery.configuration(site.iss)
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": prelogin.redirect_uri,
            "client_id": site.client_id,
            "code_verifier": self._cipher.decrypt(prelogin.code_verifier_enc),
        }
        tokens = await request_token(self._http, config.token_endpoint, form, TokenExchangeError)
        user = None
        if tokens.id_token is not None:
            claims = await self._verify_id_token(tokens.id_token, site, config, prelogin.nonce)
            user = fhir_user(claims)
        elif "openid" in prelogin.scopes:
            raise IdTokenError("the EHR returned no id_token although openid was requested")

        now = self._clock()
        lifetime = timedelta(seconds=tokens.expires_in or site.expected_token_lifetime_s)
        stored = StoredTokens(
            access_token_enc=self._cipher.encrypt(tokens.access_token),
            refresh_token_enc=self._cipher.encrypt(tokens.refresh_token) if tokens.refresh_token else None,
            issued_at=now,
            expires_at=now + lifetime,
            scopes=tokens.scopes or prelogin.scopes,
        )
        # Without a refresh token the launch is over when its access token is.
        ends = now + self._launch_ttl if tokens.refresh_token else min(now + self._launch_ttl, stored.expires_at)
        record = LaunchRecord(
            handle=random_token(),
            site_key=site.key,
            iss=site.iss,
            standalone=prelogin.standalone,
            patient=tokens.patient,
            encounter=tokens.encounter,
            fhir_user=user,
            need_patient_banner=tokens.need_patient_banner,
            smart_style_url=tokens.smart_style_url,
            tokens=stored,
            created_at=now,
            expires_at=ends,
            context=dict(tokens.context),
        )
        await self._store.add_launch(record)
        return Launch(handle=record.handle, context=self._context(record, site))

    async def _verify_id_token(
        self, id_token: str, site: SmartSite, config: SmartConfiguration, nonce: str
    ) -> dict[str, Any]:
        if config.jwks_uri is None:
            raise IdTokenError("the EHR returned an id_token but its smart-configuration has no jwks_uri")
        keys = await self.discovery.jwks(config.jwks_uri)
        kid = id_token_kid(id_token)
        if kid is not None and not key_set_has(keys, kid):
            keys = await self.discovery.jwks(config.jwks_uri, refresh=True)  # the EHR may have rotated its keys
        # The OIDC issuer may differ from the FHIR base (Epic: .../oauth2 vs .../api/FHIR/R4).
        issuers = {site.iss} | ({config.issuer} if config.issuer else set())
        return validate_id_token(
            id_token,
            keys,
            issuers=issuers,
            client_id=site.client_id,
            nonce=nonce,
            now=self._clock(),
            leeway_s=self._skew_s,
        )

    # MARK: using a launch

    async def launch(self, handle: str) -> LaunchContext:
        """The context of a live launch; LaunchNotFoundError when there is none."""
        record, site = await self._record(handle)
        return self._context(record, site)

    async def check_patient(self, handle: str, patient_id: str) -> LaunchContext:
        """The launch's context if `patient_id` (an id or `Patient/<id>`) is its patient, else PatientMismatchError."""
        context = await self.launch(handle)
        requested = _patient_id(patient_id)
        if context.patient is None or not hmac.compare_digest(requested.encode(), context.patient.encode()):
            raise PatientMismatchError(context.patient, patient_id)
        return context

    async def access_token(self, handle: str) -> str:
        """The launch's access token, refreshed when it has less than the leeway left (one refresh at a time)."""
        record, _ = await self._record(handle)
        if self._fresh(record.tokens):
            return self._cipher.decrypt(record.tokens.access_token_enc)
        async with self._lock.hold(digest(handle)):
            record, site = await self._record(handle)  # someone may have refreshed while we waited
            if self._fresh(record.tokens):
                return self._cipher.decrypt(record.tokens.access_token_enc)
            return await self._refresh(record, site)

    async def end(self, handle: str) -> bool:
        """Forget a launch (sign-out); True when there was one."""
        return await self._store.delete_launch(handle)

    async def purge(self) -> int:
        """Delete expired pre-logins and launches now; the number deleted."""
        now = self._clock()
        self._last_purge = now
        return await self._store.purge_expired(now)

    # MARK: internals

    async def _record(self, handle: str) -> tuple[LaunchRecord, SmartSite]:
        record = await self._store.get_launch(handle) if handle else None
        if record is None or self._clock() >= record.expires_at:
            raise LaunchNotFoundError("this launch has ended or never existed: launch the app again")
        site = self.registry.get(record.site_key)
        if site is None or site.iss != record.iss:
            raise LaunchNotFoundError("the site of this launch is no longer on the allow-list")
        return record, site

    def _fresh(self, tokens: StoredTokens) -> bool:
        """Enough time left? The margin is the leeway, or half the lifetime for very short-lived tokens."""
        lifetime = (tokens.expires_at - tokens.issued_at).total_seconds()
        margin = min(self._leeway_s, lifetime / 2)
        return (tokens.expires_at - self._clock()).total_seconds() > margin

    async def _refresh(self, record: LaunchRecord, site: SmartSite) -> str:
        tokens = record.tokens
        if tokens.refresh_token_enc is None:
            if self._clock() < tokens.expires_at:
                return self._cipher.decrypt(tokens.access_token_enc)  # nothing to refresh with; still valid
            raise RefreshError("the access token has expired and the EHR gave no refresh token: launch again")
        try:
            config = await self.discovery.configuration(site.iss)
        except DiscoveryError as exc:
            raise RefreshError(f"cannot refresh: {exc}") from exc
        form = {
            "grant_type": "refresh_token",
            "refresh_token": self._cipher.decrypt(tokens.refresh_token_enc),
            "client_id": site.client_id,
        }
        answer = await request_token(self._http, config.token_endpoint, form, RefreshError)
        now = self._clock()
        renewed = dataclasses.replace(
            tokens,
            access_token_enc=self._cipher.encrypt(answer.access_token),
            # Oracle Health sends no new refresh token: keep the one we have.
            refresh_token_enc=self._cipher.encrypt(answer.refresh_token)
            if answer.refresh_token
            else tokens.refresh_token_enc,
            issued_at=now,
            expires_at=now + timedelta(seconds=answer.expires_in or site.expected_token_lifetime_s),
            scopes=answer.scopes or tokens.scopes,
        )
        await self._store.set_tokens(record.handle, renewed)
        return answer.access_token

    def _context(self, record: LaunchRecord, site: SmartSite) -> LaunchContext:
        return LaunchContext(
            site_key=record.site_key,
            iss=record.iss,
            vendor=site.vendor,
            standalone=record.standalone,
            patient=record.patient,
            encounter=record.encounter,
            fhir_user=record.fhir_user,
            need_patient_banner=record.need_patient_banner,
            smart_style_url=record.smart_style_url,
            scopes=record.tokens.scopes,
            frame_ancestors=site.frame_ancestors,
            created_at=record.created_at,
            expires_at=record.expires_at,
            context=record.context,
        )

    async def _maybe_purge(self, now: datetime) -> None:
        if self._last_purge is None or now - self._last_purge >= self._purge_every:
            self._last_purge = now
            await self._store.purge_expired(now)


__all__ = ["AuthorizeRedirect", "Launch", "LaunchContext", "SmartClient"]
