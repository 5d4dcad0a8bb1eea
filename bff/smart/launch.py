"""The SMART App Launch client of the BFF: EHR and standalone launches, tokens held server-side only.

    begin(iss, launch)    allow-list, discovery, a server-side pre-login (state, PKCE, nonce) → the authorize
                          request (a redirect, or a form POST where the server offers it: `AuthorizeRedirect.method`)
    complete(state, code) the pre-login taken once, the code redeemed at the token endpoint with the site's client
                          authentication, the id_token verified → a launch handle (one per launch, so one per tab)
    abandon(state)        the pre-login of a callback the EHR answered with an error, taken once → its site key
    launch(handle)        the launch's EHR context, without tokens
    access_token(handle)  the access token, refreshed ahead of expiry by one caller at a time (single flight), no
                          more often than the site allows (`[rate_limit] refresh_min_interval_s`); a refresh
                          without a new refresh token keeps the old one (Oracle Health)
    check_patient(...)    PatientMismatchError when a request names another patient than the launch's

Each site authenticates as its file says (`[smart] client_auth`: a public client with PKCE, a client secret in
a Basic header or in the body, or a signed JWT assertion; `bff.smart.oauth`, on authlib), at the token endpoint of
its smart-configuration or the one its file names. A site may launch from several `iss` (`[fhir] iss_allow`): the
launch keeps the one it came from, for `aud`, discovery and every FHIR call. Errors carry the site key, and a
refusal from the EHR its `error` and `error_description` (for the audit; the clinician sees a plain message).

The browser only ever sees the launch handle. Tokens are encrypted before they reach the store.
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx

from bff.sitefile import SiteFileError, normalise_iss
from bff.smart.clock import Clock, utc_now
from bff.smart.crypto import TokenCipher, digest, pkce_verifier, random_token
from bff.smart.discovery import Discovery, SmartConfiguration
from bff.smart.errors import (
    DiscoveryError,
    IdTokenError,
    LaunchNotFoundError,
    LaunchRequestError,
    PatientMismatchError,
    RefreshError,
    SmartConfigError,
    SmartError,
    StateError,
    TokenExchangeError,
)
from bff.smart.locks import LocalRefreshLock, RefreshLock
from bff.smart.oauth import AssertionSigner, ClientAuthentication, authorize_url, s256_challenge
from bff.smart.sites import SiteRegistry, SmartSite
from bff.smart.store import LaunchRecord, LaunchStore, PreLogin, StoredTokens
from bff.smart.tokens import fhir_user, id_token_kid, key_set_has, request_token, validate_id_token

MAX_STATE_LENGTH = 256
#: An authorize URL longer than this is sent as a form POST where the server offers it (browsers and proxies in
#: front of EHRs cut long URLs; Epic's launch tokens can be long JWTs).
MAX_GET_URL = 2000


@dataclass(frozen=True, slots=True)
class AuthorizeRedirect:
    """Where to send the browser: `method` GET, a redirect to `url`; or POST, a form (`params`) posted to
    `endpoint`. POST is chosen for an EHR launch where the server offers it (`post_allowed`, its capability
    `authorize-post`) and either the site's quirk `authorize_post` asks for it (Epic advises it) or the URL would
    be longer than MAX_GET_URL."""

    url: str
    endpoint: str
    params: Mapping[str, str]
    site_key: str
    frame_ancestors: tuple[str, ...]
    post_allowed: bool
    method: str = "GET"


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
    encounter_expected: bool = False  # the site's EHR launches carry an encounter ([launch] encounter_expected)

    @property
    def encounter_missing(self) -> bool:
        """An EHR launch at a site that launches from encounters, without one (write-back waits for one)."""
        return self.encounter_expected and not self.standalone and not self.encounter


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


def site_client(site: SmartSite, *, environ: Mapping[str, str] | None = None, clock: Clock = utc_now
                ) -> ClientAuthentication:  # fmt: skip
    """The client authentication a site's file describes, its secret or key read now (from the environment
    variable or file it names): call it at start-up. SmartConfigError names the site and what is missing."""
    spec = site.client_auth
    try:
        if spec.method in ("client_secret_basic", "client_secret_post"):
            assert spec.secret is not None
            return ClientAuthentication(site.client_id, spec.method, secret=spec.secret.read(environ))
        if spec.method == "private_key_jwt":
            assert spec.key is not None
            signer = AssertionSigner(spec.key.read(environ), spec.kid, spec.alg, jku=spec.jku or None, clock=clock)
            return ClientAuthentication(site.client_id, spec.method, signer=signer)
    except (SiteFileError, SmartConfigError) as exc:
        raise SmartConfigError(f"site {site.key}: [smart] client_auth {spec.method}: {exc}") from None
    return ClientAuthentication(site.client_id)


class SmartClient:
    """SMART App Launch for the BFF (see the module docstring)."""

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
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.registry = registry
        # Each site's client authentication, its secret or key read once, here (start-up): a site whose
        # secret is missing stops the app with the reason, not the first clinician who launches.
        self._clients = {site.key: site_client(site, environ=environ, clock=clock) for site in registry}
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
        launch_iss = normalise_iss(iss)
        if standalone and launch:
            raise LaunchRequestError("a standalone launch has no `launch` parameter")
        if not standalone and not launch:
            raise LaunchRequestError("an EHR launch needs the `launch` parameter")
        async with self._for_site(site):
            config = await self._configuration(site, launch_iss)
            config.require_user_launch()
        now = self._clock()
        state, verifier, nonce = random_token(), pkce_verifier(), random_token()
        scopes = site.launch_scopes(standalone=standalone)
        await self._store.add_prelogin(
            PreLogin(
                state=state,
                site_key=site.key,
                iss=launch_iss,
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
        extra = {
            "aud": launch_iss,
            **({"launch": launch} if launch else {}),
            "code_challenge": s256_challenge(verifier),
            "code_challenge_method": "S256",
            "nonce": nonce,
        }
        url = authorize_url(config.authorization_endpoint, site.client_id, site.redirect_uri, scopes, state, extra)
        params = {"response_type": "code", "client_id": site.client_id, "redirect_uri": site.redirect_uri,
                  "scope": " ".join(scopes), "state": state, **extra}  # fmt: skip
        post_allowed = not standalone and "authorize-post" in config.capabilities
        post = post_allowed and ("authorize_post" in site.quirks or len(url) > MAX_GET_URL)
        return AuthorizeRedirect(
            url=url,
            endpoint=config.authorization_endpoint,
            params=params,
            site_key=site.key,
            frame_ancestors=site.frame_ancestors,
            post_allowed=post_allowed,
            method="POST" if post else "GET",
        )

    async def abandon(self, state: str) -> str | None:
        """Take the pre-login of a callback that brought an error instead of a code: the state is spent, and the
        site it was for is returned (None when the state is unknown), for the audit."""
        if not state or len(state) > MAX_STATE_LENGTH:
            return None
        prelogin = await self._store.take_prelogin(state)
        return None if prelogin is None else prelogin.site_key

    async def complete(self, state: str, code: str) -> Launch:
        """Finish a launch at the callback. The `state` is usable once, before it expires (StateError)."""
        if not state or len(state) > MAX_STATE_LENGTH:
            raise StateError("the callback has no usable state")
        prelogin = await self._store.take_prelogin(state)
        if prelogin is None:
            raise StateError("unknown or already used state")
        site = self.registry.get(prelogin.site_key)
        async with self._for_site(site, prelogin.site_key):
            return await self._complete(prelogin, site, code)

    async def _complete(self, prelogin: PreLogin, site: SmartSite | None, code: str) -> Launch:
        now = self._clock()
        if now >= prelogin.expires_at:
            raise StateError("the sign-in took too long (state expired): launch again")
        if not code:
            raise TokenExchangeError("the callback has no authorization code")
        if site is None or prelogin.iss not in site.issuers:
            raise StateError("the site of this sign-in is no longer on the allow-list")
        config = await self._configuration(site, prelogin.iss)
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": prelogin.redirect_uri,
            "code_verifier": self._cipher.decrypt(prelogin.code_verifier_enc),
        }
        tokens = await request_token(
            self._http, config.token_endpoint, form, TokenExchangeError, auth=self._clients[site.key]
        )
        user = None
        if tokens.id_token is not None:
            claims = await self._verify_id_token(tokens.id_token, site, prelogin.iss, config, prelogin.nonce)
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
            iss=prelogin.iss,
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
        self, id_token: str, site: SmartSite, iss: str, config: SmartConfiguration, nonce: str
    ) -> dict[str, Any]:
        if config.jwks_uri is None:
            raise IdTokenError("the EHR returned an id_token but its smart-configuration has no jwks_uri")
        keys = await self.discovery.jwks(config.jwks_uri)
        kid = id_token_kid(id_token)
        if kid is not None and not key_set_has(keys, kid):
            keys = await self.discovery.jwks(config.jwks_uri, refresh=True)  # the EHR may have rotated its keys
        # The OIDC issuer may differ from the FHIR base (Epic: .../oauth2 vs .../api/FHIR/R4).
        issuers = {iss} | ({config.issuer} if config.issuer else set())
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
        record, site = await self._record(handle)
        if not self._refresh_due(record.tokens, site):
            return self._cipher.decrypt(record.tokens.access_token_enc)
        async with self._lock.hold(digest(handle)):
            record, site = await self._record(handle)  # someone may have refreshed while we waited
            if not self._refresh_due(record.tokens, site):
                return self._cipher.decrypt(record.tokens.access_token_enc)
            async with self._for_site(site):
                return await self._refresh(record, site)

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The public keys of the sites' `private_key_jwt` client assertions (each `kid` once), for the app's JWKS."""
        keys: dict[str, dict[str, Any]] = {}
        for client in self._clients.values():
            if client.signer is not None:
                keys.setdefault(client.signer.kid, client.signer.public_jwk())
        return {"keys": list(keys.values())}

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
        if site is None or record.iss not in site.issuers:
            raise LaunchNotFoundError("the site of this launch is no longer on the allow-list")
        return record, site

    async def _configuration(self, site: SmartSite, iss: str) -> SmartConfiguration:
        """The smart-configuration of the launch's `iss`, with the endpoints the site's file names."""
        overrides = {"authorization_endpoint": site.authorization_endpoint, "token_endpoint": site.token_endpoint}
        return await self.discovery.configuration(iss, overrides=overrides)

    @asynccontextmanager
    async def _for_site(self, site: SmartSite | None, key: str | None = None) -> AsyncIterator[None]:
        """SmartErrors raised inside name the site (for the audit and /admin)."""
        try:
            yield
        except SmartError as exc:
            if exc.site_key is None:
                exc.site_key = site.key if site is not None else key
            raise

    def _fresh(self, tokens: StoredTokens) -> bool:
        """Enough time left? The margin is the leeway, or half the lifetime for very short-lived tokens."""
        lifetime = (tokens.expires_at - tokens.issued_at).total_seconds()
        margin = min(self._leeway_s, lifetime / 2)
        return (tokens.expires_at - self._clock()).total_seconds() > margin

    def _refresh_due(self, tokens: StoredTokens, site: SmartSite) -> bool:
        """Refresh now? Not while the token is fresh; nor, while it is still valid, sooner after the last token was
        issued than the site allows (`refresh_min_interval_s`: Oracle throttles refreshes under a minute apart)."""
        if self._fresh(tokens):
            return False
        now = self._clock()
        since = (now - tokens.issued_at).total_seconds()
        return not (now < tokens.expires_at and since < site.refresh_min_interval_s)

    async def _refresh(self, record: LaunchRecord, site: SmartSite) -> str:
        tokens = record.tokens
        if tokens.refresh_token_enc is None:
            if self._clock() < tokens.expires_at:
                return self._cipher.decrypt(tokens.access_token_enc)  # nothing to refresh with; still valid
            raise RefreshError("the access token has expired and the EHR gave no refresh token: launch again")
        try:
            config = await self._configuration(site, record.iss)
        except DiscoveryError as exc:
            raise RefreshError(f"cannot refresh: {exc}") from exc
        form = {"grant_type": "refresh_token", "refresh_token": self._cipher.decrypt(tokens.refresh_token_enc)}
        client = self._clients[site.key]
        answer = await request_token(self._http, config.token_endpoint, form, RefreshError, auth=client)
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
            encounter_expected=site.encounter_expected,
        )

    async def _maybe_purge(self, now: datetime) -> None:
        if self._last_purge is None or now - self._last_purge >= self._purge_every:
            self._last_purge = now
            await self._store.purge_expired(now)


__all__ = ["AuthorizeRedirect", "Launch", "LaunchContext", "SmartClient"]
