"""`create_app(config)`: the sandbox EHR as one Litestar app (FHIR, SMART, EHR shell) over several sites.

    /ehr/                                    the EHR shell (patient lists, charts with the app in an iframe)
    /sites/{site}/fhir                       FHIR R4 base (metadata, .well-known/smart-configuration, resources)
    /sites/{site}/auth/{authorize,token,jwks} SMART App Launch and Backend Services
    /sites/{site}/fhir/…/$export, /sites/{site}/bulk/…   Bulk Data export, status and files (sandbox.bulk)
    /sandbox/sites/{site}/journal            what each site's FHIR server received (sandbox.journal)
    /sandbox/sites/{site}/bulk/faults        the faults its Bulk Data export injects (sandbox.bulk)

No cookies are used anywhere, and no page sends X-Frame-Options: every response carries
`Content-Security-Policy: frame-ancestors 'self' <shell origin> <app origin> …`, so the sign-in pages work inside
the app's iframe in the shell, as in an embedded EHR browser (ehr-realities.md §1.2).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from litestar import Litestar, Request, Response
from litestar.config.cors import CORSConfig
from litestar.datastructures import MutableScopeHeaders, State
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.template.config import TemplateConfig
from litestar.types import Message, Scope

from sandbox import bulk, fhir_api, journal, shell, smart_routes
from sandbox.config import SandboxConfig
from sandbox.mllp import AckListener
from sandbox.oauth import OAuthError
from sandbox.outcome import FhirError, error_response
from sandbox.runtime import Sandbox, build_sandbox

TEMPLATES = Path(__file__).resolve().parent / "templates"


def _fhir_error(_: Request[Any, Any, Any], exc: FhirError) -> Response[Any]:
    return error_response(exc)


def _oauth_error(_: Request[Any, Any, Any], exc: OAuthError) -> Response[Any]:
    return Response(
        exc.body(),
        status_code=exc.status,
        headers={"Cache-Control": "no-store"} | exc.headers,
        media_type="application/json",
    )


def create_app(config: SandboxConfig | None = None) -> Litestar:
    """The sandbox app; the seed is generated here (well under 2 s), before the server starts."""
    config = config or SandboxConfig.local()
    sandbox = build_sandbox(config)
    fhir_journal = journal.Journal(tuple(sandbox.sites), config.clock)
    ancestors = " ".join(dict.fromkeys(["'self'", config.origin, config.app_origin, *config.frame_ancestors]))
    csp = f"frame-ancestors {ancestors}"

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        listener = None
        async with httpx.AsyncClient(timeout=5.0) as http:
            sandbox.jwks_cache.http = http
            hl7_site = sandbox.site("hl7-only")
            if config.mllp_port is not None and hl7_site is not None:
                listener = AckListener(on_message=hl7_site.hl7_inbox.append)
                await listener.start(config.mllp_host, config.mllp_port)
            try:
                yield
            finally:
                sandbox.jwks_cache.http = None
                if listener is not None:
                    await listener.close()

    # A before_send hook, not after_request: Litestar caches a handler's resolved after_request on the handler,
    # and the route handlers are module-level objects, so with two sandboxes in one process (the test suite) the
    # second would answer with the first one's CSP.
    async def security_headers(message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start":
            return
        headers = MutableScopeHeaders.from_message(message)
        headers["Content-Security-Policy"] = csp
        headers["Referrer-Policy"] = "no-referrer"

    app = Litestar(
        route_handlers=[*bulk.ROUTES, *fhir_api.ROUTES, *smart_routes.ROUTES, *shell.ROUTES, *journal.ROUTES],
        state=State({"sandbox": sandbox, "journal": fhir_journal, "bulk": bulk.BulkExports(list(sandbox.sites))}),
        template_config=TemplateConfig(directory=TEMPLATES, engine=JinjaTemplateEngine),
        exception_handlers={FhirError: _fhir_error, OAuthError: _oauth_error},
        before_send=[security_headers],
        lifespan=[lifespan],
        cors_config=CORSConfig(
            allow_origins=["*"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Accept",
                "Prefer",
                "If-None-Exist",
                "If-Match",
                "Epic-Client-ID",
            ],
            expose_headers=["Location", "ETag", "Last-Modified", "Retry-After", "Content-Location", "X-Progress"],
        ),
        openapi_config=None,
    )
    journal.install(app, fhir_journal)
    return app


def sandbox_of_app(app: Litestar) -> Sandbox:
    """The running sandbox behind an app made by create_app (for tests and tools)."""
    sandbox: Sandbox = app.state.sandbox
    return sandbox
