"""The running sandbox: one `Site` per configured personality, each with its store and authorization server.

`build_sandbox(config)` generates the readings once (sandbox.glucose, about 0.1 s for the six people), builds
each site's seed with its own ids (sandbox.seed), loads the stores and makes each site an RS256 signing key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sandbox.assertion import JwksCache
from sandbox.config import SandboxConfig
from sandbox.oauth import AuthState, new_signing_key
from sandbox.personalities import Personality, personality
from sandbox.seed import SeededPatient, SiteSeed, build_site, people, traces_for
from sandbox.store import FhirStore


@dataclass(slots=True)
class Site:
    key: str
    personality: Personality
    config: SandboxConfig
    store: FhirStore
    auth: AuthState
    seed: SiteSeed
    hl7_inbox: list[dict[str, Any]] = field(default_factory=list)
    #: (patient, flowsheet row, instant ms) of every reading filed through the API (Epic's duplicate check).
    filed_readings: set[tuple[str, str, int]] = field(default_factory=set)
    #: The FHIR release the site speaks: "R4" (4.0.1) or "R5" (5.0.0), for writes' structure and the
    #: CapabilityStatement. A test may switch a site to R5 (a generic SMART R5 server).
    fhir_version: str = "R4"

    @property
    def fhir_base(self) -> str:
        return self.config.fhir_base(self.key)

    @property
    def auth_base(self) -> str:
        return self.config.auth_base(self.key)

    @property
    def token_endpoint(self) -> str:
        return self.config.token_endpoint(self.key)

    def patient(self, patient_id: str) -> SeededPatient | None:
        return next((p for p in self.seed.patients if p.patient_id == patient_id), None)

    def now(self) -> float:
        return self.config.clock()


@dataclass(slots=True)
class Sandbox:
    config: SandboxConfig
    sites: dict[str, Site]
    jwks_cache: JwksCache = field(default_factory=JwksCache)

    def site(self, key: str) -> Site | None:
        return self.sites.get(key)


def build_sandbox(config: SandboxConfig) -> Sandbox:
    now = config.seed_now()
    persons = people(config.population, config.seed)
    traces = traces_for(persons, now, config.days, config.seed)
    sites: dict[str, Site] = {}
    for key in config.sites:
        p = personality(key)
        seed = build_site(key, p, traces, now, persons)
        store = FhirStore(key, p.id_style, config.clock)
        store.load(seed)
        auth = AuthState(
            p,
            config.auth_base(key),
            config.fhir_base(key),
            f"{config.public_base}/ehr/smart-style.json",
            new_signing_key(),
        )
        sites[key] = Site(key, p, config, store, auth, seed)
    return Sandbox(config, sites)
