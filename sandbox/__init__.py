"""A simulated EHR for demos, tests and site rehearsals: several vendor-like sites from one Litestar app.

Nothing in app/, bff/ or engine/ imports this package. Each site under `/sites/{site}/` has a FHIR R4 server
(sandbox.fhir_api, in-memory sandbox.store, searches in sandbox.search), a SMART App Launch and Backend
Services authorization server (sandbox.smart_routes, sandbox.oauth, sandbox.assertion, sandbox.scopes) and a
personality (sandbox.personalities, sandbox.rules) that reproduces what a real EHR does differently, with the
section of /work/shared/reference/ehr-realities.md it comes from. The EHR shell (sandbox.shell, `/ehr/`) opens
the app in an iframe with a fresh launch. Seed data are synthetic and deterministic (sandbox.seed,
sandbox.glucose). The HL7 v2 side is an ACK-only MLLP listener (sandbox.mllp).

    python -m sandbox serve --port 8081          # the sandbox EHR at http://localhost:8081/ehr/
    python -m sandbox export-seed --site epic-like --out epic.ndjson
    python -m sandbox mllp --port 2575
"""

from sandbox.app import create_app
from sandbox.config import ClientRegistration, SandboxConfig

__all__ = ["ClientRegistration", "SandboxConfig", "create_app"]
