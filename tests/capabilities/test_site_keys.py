"""Every documented site key does what its documentation says, or is refused on load.

The documentation is the sample site file in `bff.capabilities`' docstring (it is itself a valid file, read here)
plus its alternatives in comments. Each key has one check below (`@effect("table.key")`) that loads site files
differing in that key and shows the difference where the key is used: the plan, the guard, the SMART client's
requests, the Backend Services assertion, the searches, the outbox's bucket, the correction policy... A key
added to the documentation without a check, or a check for a key that is not documented, fails
`test_every_documented_key_has_a_check`. Keys that are refused (secrets written into the file, moved keys,
quirks that are how every site is treated) are checked at the end.

`[bulk]` keys are checked here where the Bulk Data client reads them (bff/bulk: the exports it starts, the kick-off
URL, the polling delay, the run window, the concurrent-job slots); tests/bulk proves them end to end against the
sandbox's $export.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import textwrap
import tomllib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from joserfc.jwk import ECKey, RSAKey
from joserfc.jws import extract_compact

import bff.capabilities
from bff.broker.broker import Broker, scopes_for, static_token_source
from bff.broker.plan import PlanError, PlannedWrite, WriteContext, plan_writes
from bff.capabilities import CapabilityError, SiteCapabilities, parse_capabilities
from bff.hl7.ack import Ack
from bff.outbox.retry import Outcome, classify
from bff.outbox.worker import OutboxWorker
from bff.smart import FernetCipher, MemoryLaunchStore, SiteRegistry, SmartClient, SmartConfigError, SmartSettings
from bff.smart.backends import SiteBackends
from bff.smart.launch import site_client
from bff.smart.sites import site_from_mapping
from bff.vendors import ResultsShape, Vendor, profile_for
from bff.writeback import needs_new_signoff
from tests.resources.samples import sample_record
from tests.smart.fakes import AUTHORIZE_URL, CLIENT_ID, ISS, REDIRECT_URI, TOKEN_URL, FakeClock, FakeEhr, run

# MARK: the documentation

_DOC = bff.capabilities.__doc__ or ""
SAMPLE: dict[str, Any] = tomllib.loads(
    textwrap.dedent(_DOC.split("only where to find them.\n", 1)[1].split("Run-time overrides", 1)[0])
)
#: Keys documented as alternatives in comments (`or:`), which one file cannot hold together with the sample's.
ALTERNATIVES = {"smart.client_secret_env", "smart.client_secret_file", "smart.private_key_env", "backend.key_env"}
#: Tables whose keys are read by another part of the system, whose own tests prove them.
ELSEWHERE: set[str] = set()
#: Values that are tables of the user's own keys (metric -> row, unit -> row): one key each.
LEAF_TABLES = {"write.flowsheet_rows", "read.flowsheet_rows"}


def documented() -> set[str]:
    keys = set(ALTERNATIVES)

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, Mapping) and path not in LEAF_TABLES and path != "bulk.params":
                walk(value, path + ".")
            else:
                keys.add(path)

    walk(SAMPLE, "")
    return keys


EFFECTS: dict[str, Callable[[Path], None]] = {}


def effect(*keys: str) -> Callable[[Callable[[Path], None]], Callable[[Path], None]]:
    def register(check: Callable[[Path], None]) -> Callable[[Path], None]:
        for key in keys:
            assert key not in EFFECTS, key
            EFFECTS[key] = check
        return check

    return register


def test_the_documented_sample_is_a_valid_site_file() -> None:
    caps = parse_capabilities("sample", SAMPLE, source="bff/capabilities.py docstring")
    assert caps.vendor is Vendor.EPIC
    assert site_from_mapping("sample", SAMPLE).client_auth.method == "private_key_jwt"


# MARK: helpers


def changed(data: Mapping[str, Any], **paths: Any) -> dict[str, Any]:
    """A deep copy of `data` with each dotted path (`__` for `.`) set, or removed when the value is ...ellipsis."""
    out = copy.deepcopy(dict(data))
    for dotted, value in paths.items():
        parts = dotted.split("__")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if value is ...:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    return out


def caps_of(data: Mapping[str, Any], key: str = "site-a") -> SiteCapabilities:
    return parse_capabilities(key, data, source=f"sites/{key}.toml")


#: A generic site that writes everything over FHIR (the base of the write checks).
GENERIC: dict[str, Any] = {
    "version": 1, "vendor": "generic", "time_zone": "America/Chicago",
    "write": {"mode": "full", "channel": "fhir", "observation_category": "laboratory", "note_type": "cgm-note",
              "encounter_policy": "launch", "pdf_path": "none"},
    "hl7v2": {"host": "127.0.0.1", "port": 2575},
}  # fmt: skip
ORACLE = changed(GENERIC, vendor="oracle")
EPIC = changed(GENERIC, vendor="epic", write__mode="flowsheet_only", write__observation_category="vital-signs",
               write__flowsheet_system="urn:oid:1.2.3", write__flowsheet_rows={"tir": "R-TIR"})  # fmt: skip
PDF = b"%PDF-1.4\n%%EOF\n"
EHR_KEY = RSAKey.generate_key(2048, parameters={"kid": "ehr-key-1"})  # signs the fake EHR's id_tokens


def fake_ehr(**options: Any) -> FakeEhr:
    return FakeEhr(EHR_KEY, FakeClock(), **options)


def plan(data: Mapping[str, Any], **context: Any) -> list[PlannedWrite]:
    return plan_writes(caps_of(data), sample_record(), WriteContext(**{"encounter": "Encounter/e1", **context}))


def smart_data(**smart: Any) -> dict[str, Any]:
    """A site file for the fake EHR (tests/smart/fakes.py); `[smart]` keys changed by `smart`."""
    table = {"iss": ISS, "client_id": CLIENT_ID, "scopes": ["launch", "openid", "fhirUser"]}
    table.update(smart)
    return {"version": 1, "vendor": "generic", "smart": {k: v for k, v in table.items() if v is not ...}}


def smart_client(data: Mapping[str, Any], ehr: FakeEhr, http: httpx.AsyncClient, **options: Any) -> SmartClient:
    site = site_from_mapping("site-a", data, default_redirect_uri=REDIRECT_URI)
    return SmartClient(SiteRegistry([site]), http, MemoryLaunchStore(), FernetCipher([FernetCipher.generate_key()]),
                       ehr.clock, **options)  # fmt: skip


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def begin(data: Mapping[str, Any], iss: str = ISS, ehr: FakeEhr | None = None) -> Any:
    ehr = ehr or fake_ehr()

    async def scenario() -> Any:
        async with ehr.client() as http:
            return await smart_client(data, ehr, http).begin(iss, "launch-1")

    return run(scenario())


def ec_pem(tmp_path: Path, name: str, kid: str = "k1") -> tuple[Path, ECKey]:
    key = ECKey.generate_key("P-384", parameters={"kid": kid})
    path = tmp_path / name
    path.write_bytes(key.as_pem(private=True))
    return path, key


def header_and_claims(assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
    compact = extract_compact(assertion.encode())
    return dict(compact.protected), json.loads(compact.payload)


# MARK: top level


@effect("version")
def _version(tmp_path: Path) -> None:
    with pytest.raises(CapabilityError, match="top-level version must be a whole number"):
        caps_of(changed(GENERIC, version=...))
    assert caps_of(changed(GENERIC, version=7)).version == 7


@effect("vendor")
def _vendor(tmp_path: Path) -> None:
    assert profile_for(caps_of(GENERIC)).results is ResultsShape.TRANSACTION
    assert profile_for(caps_of(ORACLE)).results is ResultsShape.SINGLE_OBSERVATIONS
    assert {w.kind for w in plan(GENERIC)} == {"bundle", "note"}
    assert {w.kind for w in plan(ORACLE)} == {"observations", "note"}


@effect("time_zone")
def _time_zone(tmp_path: Path) -> None:
    from app.cli import store  # noqa: PLC0415

    (tmp_path / "site-a.toml").write_text('version = 1\ntime_zone = "Europe/Berlin"\n')
    original = store.get_settings
    store.get_settings = lambda: cast(Any, type("S", (), {"sites_dir": tmp_path}))  # type: ignore[assignment]
    try:
        assert store.site_zone("site-a") == "Europe/Berlin"  # what `glucobridge ingest` gives the readings
    finally:
        store.get_settings = original  # type: ignore[assignment]


# MARK: [smart]


@effect("smart.iss")
def _smart_iss(tmp_path: Path) -> None:
    site = site_from_mapping("site-a", smart_data(), default_redirect_uri=REDIRECT_URI)
    assert SiteRegistry([site]).for_iss(ISS) is site
    assert query(begin(smart_data()).url)["aud"] == ISS


@effect("smart.client_id")
def _client_id(tmp_path: Path) -> None:
    assert query(begin(smart_data(client_id="other-id")).url)["client_id"] == "other-id"


@effect("smart.redirect_uri")
def _redirect_uri(tmp_path: Path) -> None:
    assert query(begin(smart_data()).url)["redirect_uri"] == REDIRECT_URI
    url = begin(smart_data(redirect_uri="https://cgm.example.test/elsewhere")).url
    assert query(url)["redirect_uri"] == "https://cgm.example.test/elsewhere"


@effect("smart.scopes")
def _scopes(tmp_path: Path) -> None:
    scopes = query(begin(smart_data(scopes=["launch", "patient/Observation.rs"])).url)["scope"].split()
    assert scopes == ["launch", "patient/Observation.rs"]


@effect("smart.frame_ancestors")
def _frame_ancestors(tmp_path: Path) -> None:
    redirect = begin(smart_data(frame_ancestors=["https://powerchart.example.test"]))
    assert redirect.frame_ancestors == ("https://powerchart.example.test",)


def _token_request(data: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    site = site_from_mapping("site-a", data, default_redirect_uri=REDIRECT_URI)
    _, headers, body = site_client(site, environ=environ).token_request(TOKEN_URL, "authorization_code", code="c")
    return headers, parse_qs(body)


@effect("smart.client_auth", "smart.client_secret_env")
def _client_auth(tmp_path: Path) -> None:
    headers, body = _token_request(smart_data(), {})
    assert "Authorization" not in headers
    assert body["client_id"] == [CLIENT_ID]
    basic = smart_data(client_auth="client_secret_basic", client_secret_env="GB_SECRET")
    headers, body = _token_request(basic, {"GB_SECRET": "s3cret"})
    assert base64.b64decode(headers["Authorization"].split()[1]) == f"{CLIENT_ID}:s3cret".encode()
    assert "client_secret" not in body


@effect("smart.client_secret_file")
def _client_secret_file(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("from-a-file\n")
    data = smart_data(client_auth="client_secret_post", client_secret_file=str(tmp_path / "secret"))
    _, body = _token_request(data, {})
    assert body["client_secret"] == ["from-a-file"]


@effect("smart.private_key_file", "smart.kid", "smart.alg", "smart.jku")
def _private_key_file(tmp_path: Path) -> None:
    path, _ = ec_pem(tmp_path, "launch.pem", "launch-7")
    data = smart_data(client_auth="private_key_jwt", private_key_file=str(path), kid="launch-7", alg="ES384",
                      jku="https://cgm.example.test/jwks.json")  # fmt: skip
    _, body = _token_request(data, {})
    header, claims = header_and_claims(body["client_assertion"][0])
    assert header == {"alg": "ES384", "kid": "launch-7", "typ": "JWT", "jku": "https://cgm.example.test/jwks.json"}
    assert (claims["iss"], claims["aud"]) == (CLIENT_ID, TOKEN_URL)
    rsa = RSAKey.generate_key(2048)
    (tmp_path / "rsa.pem").write_bytes(rsa.as_pem(private=True))
    data = changed(data, smart__alg="RS384", smart__private_key_file=str(tmp_path / "rsa.pem"))
    header, _ = header_and_claims(_token_request(data, {})[1]["client_assertion"][0])
    assert header["alg"] == "RS384"


@effect("smart.private_key_env")
def _private_key_env(tmp_path: Path) -> None:
    key = ECKey.generate_key("P-384")
    data = smart_data(client_auth="private_key_jwt", private_key_env="GB_LAUNCH_KEY", kid="k9")
    _, body = _token_request(data, {"GB_LAUNCH_KEY": key.as_pem(private=True).decode()})
    assert header_and_claims(body["client_assertion"][0])[0]["kid"] == "k9"


@effect("smart.authorization_endpoint")
def _authorization_endpoint(tmp_path: Path) -> None:
    assert begin(smart_data()).url.startswith(AUTHORIZE_URL + "?")
    redirect = begin(smart_data(authorization_endpoint="https://other.example.test/authorize"))
    assert redirect.url.startswith("https://other.example.test/authorize?")


@effect("smart.token_endpoint")
def _token_endpoint(tmp_path: Path) -> None:
    other = "https://other.example.test/oauth2/token"
    ehr = fake_ehr()
    posted: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        posted.append(f"{request.method} {request.url.copy_with(query=None)}")
        if str(request.url) == other:  # the override reaches the same fake token endpoint
            request = httpx.Request("POST", TOKEN_URL, headers=request.headers, content=request.content)
        return await ehr.handle(request)

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            client = smart_client(smart_data(token_endpoint=other), ehr, http)
            redirect = await client.begin(ISS, "launch-1")
            await client.complete(query(redirect.url)["state"], ehr.authorize(redirect.url))

    run(scenario())
    assert f"POST {other}" in posted
    assert f"POST {TOKEN_URL}" not in posted


# MARK: [backend]


def _backends(backend: Mapping[str, Any], tmp_path: Path, settings: SmartSettings | None = None) -> Any:
    data = {"version": 1, "vendor": "generic", "smart": smart_data()["smart"], "backend": dict(backend)}
    caps = caps_of(data)

    async def scenario() -> tuple[str, str]:
        ehr = fake_ehr()
        async with ehr.client() as http:
            backends = SiteBackends(settings or SmartSettings(), http=http, environ={"GB_BACKEND_KEY": _ENV_PEM})
            auth = backends.auth_for(caps.key, caps.backend, caps.expected_token_lifetime_s)
            endpoint = await auth.endpoint(ISS)
            return auth.assertion(endpoint), endpoint

    return asyncio.run(scenario())


_ENV_PEM = ECKey.generate_key("P-384").as_pem(private=True).decode()


@effect("backend.client_id", "backend.key_file", "backend.kid", "backend.alg", "backend.jku")
def _backend_registration(tmp_path: Path) -> None:
    path, _ = ec_pem(tmp_path, "backend.pem")
    assertion, _ = _backends({"client_id": "gb-site-a", "key_file": str(path), "kid": "b-1", "alg": "ES384",
                              "jku": "https://cgm.example.test/jwks.json"}, tmp_path)  # fmt: skip
    header, claims = header_and_claims(assertion)
    assert claims["iss"] == claims["sub"] == "gb-site-a"
    assert (header["kid"], header["alg"], header["jku"]) == ("b-1", "ES384", "https://cgm.example.test/jwks.json")
    default = SmartSettings(backend_client_id="gb-deployment", backend_key_file=str(path), backend_kid="d-1")
    header, claims = header_and_claims(_backends({}, tmp_path, default)[0])
    assert (claims["iss"], header["kid"]) == ("gb-deployment", "d-1")  # without [backend]: the deployment's


@effect("backend.key_env")
def _backend_key_env(tmp_path: Path) -> None:
    header, _ = header_and_claims(_backends({"key_env": "GB_BACKEND_KEY", "kid": "env-1"}, tmp_path)[0])
    assert header["kid"] == "env-1"


@effect("backend.token_endpoint")
def _backend_token_endpoint(tmp_path: Path) -> None:
    path, _ = ec_pem(tmp_path, "backend.pem")
    other = "https://other.example.test/backend/token"
    assertion, endpoint = _backends({"key_file": str(path), "kid": "b", "token_endpoint": other}, tmp_path)
    assert endpoint == other
    assert header_and_claims(assertion)[1]["aud"] == other


@effect("backend.scopes", "backend.scope_version")
def _backend_scopes(tmp_path: Path) -> None:
    assert scopes_for(caps_of(ORACLE))[:2] == ("system/Patient.read", "system/Observation.read")
    assert scopes_for(caps_of(changed(ORACLE, backend__scope_version="v2")))[:2] == (
        "system/Patient.rs", "system/Observation.crs"
    )  # fmt: skip
    listed = changed(ORACLE, backend__scopes=["system/Observation.rs"])
    assert scopes_for(caps_of(listed)) == ("system/Observation.rs",)


# MARK: [fhir]


@effect("fhir.version")
def _fhir_version(tmp_path: Path) -> None:
    r4 = next(w for w in plan(GENERIC) if w.kind == "note").body or {}
    r5 = next(w for w in plan(changed(GENERIC, fhir__version="R5")) if w.kind == "note").body or {}
    assert "period" in r4["context"]
    assert "period" in r5  # R5 DocumentReference.period
    assert "period" not in r5.get("context", {})


@effect("fhir.iss_allow")
def _iss_allow(tmp_path: Path) -> None:
    alias = "https://ehr-alias.example.test/r4"
    data = changed(smart_data(iss="https://ehr-main.example.test/r4"), fhir={"iss_allow": [alias]})
    ehr = fake_ehr(iss=alias)  # the EHR launches from its other door
    redirect = begin(data, alias, ehr)
    assert query(redirect.url)["aud"] == alias
    assert caps_of(data).allows_iss(alias)
    with pytest.raises(Exception, match="allow-list"):
        begin(changed(data, fhir=...), alias, ehr)


@effect("fhir.cgm_ig_receiver")
def _cgm_ig_receiver(tmp_path: Path) -> None:
    assert caps_of(changed(GENERIC, fhir={"cgm_ig_receiver": True})).vendor is Vendor.CGM_IG_RECEIVER
    with pytest.raises(CapabilityError, match="contradicts"):
        caps_of(changed(ORACLE, fhir={"cgm_ig_receiver": True}))


# MARK: [write]


@effect("write.mode")
def _write_mode(tmp_path: Path) -> None:
    assert {w.kind for w in plan(GENERIC)} == {"bundle", "note"}
    assert {w.kind for w in plan(changed(GENERIC, write__mode="observations"))} == {"bundle"}
    assert {w.kind for w in plan(changed(GENERIC, write__mode="notes_only"))} == {"note"}
    assert plan(changed(GENERIC, write__mode="read_only")) == []


@effect("write.channel")
def _write_channel(tmp_path: Path) -> None:
    assert {w.channel for w in plan(GENERIC)} == {"fhir"}
    assert [(w.channel, w.kind) for w in plan(changed(GENERIC, write__channel="hl7v2"))] == [("hl7v2", "hl7v2")]


@effect("write.observation_category")
def _observation_category(tmp_path: Path) -> None:
    for category in ("laboratory", "vital-signs"):
        first = plan(changed(ORACLE, write__observation_category=category))[0]
        assert first.body is not None
        assert first.body["category"][0]["coding"][0]["code"] == category


@effect("write.note_type")
def _note_type(tmp_path: Path) -> None:
    note = next(w for w in plan(changed(GENERIC, write__note_type="site-42")) if w.kind == "note")
    assert note.body is not None
    assert note.body["type"]["coding"][0]["code"] == "site-42"
    assert "note" not in {w.kind for w in plan(changed(EPIC, write__mode="full", write__note_type=""))}  # Epic: none


@effect("write.encounter_policy")
def _encounter_policy(tmp_path: Path) -> None:
    def encounter(policy: str, **context: Any) -> Any:
        return (plan(changed(ORACLE, write__encounter_policy=policy), **context)[0].body or {}).get("encounter")

    assert encounter("launch") == {"reference": "Encounter/e1"}
    assert encounter("none") is None
    assert encounter("hl7_creates") is None
    assert encounter("open_visit_lookup") == {"reference": "Encounter/e1"}  # the visit the lookup found
    with pytest.raises(PlanError, match="open visit: the patient has 2 open visits"):
        encounter("open_visit_lookup", encounter=None, visit_note="the patient has 2 open visits")
    with pytest.raises(PlanError, match="only to an open encounter"):
        plan(EPIC, encounter=None)


@effect("write.pdf_path")
def _pdf_path(tmp_path: Path) -> None:
    def items(path: str) -> list[tuple[str, str, str]]:
        writes = plan(changed(GENERIC, write__pdf_path=path), pdf=PDF)
        return [(w.kind, w.channel, (w.message or "").split("|")[8] if w.message else "") for w in writes]

    assert ("pdf", "fhir", "") in items("cerner_docref")
    assert ("hl7v2", "hl7v2", "ORU^R01^ORU_R01") in items("hl7_ed")
    assert ("pdf", "hl7v2", "MDM^T02^MDM_T02") in items("hl7_mdm")
    assert {k for k, _, _ in items("none")} == {"bundle", "note"}


@effect("write.flowsheet_rows", "write.flowsheet_system")
def _flowsheet(tmp_path: Path) -> None:
    [row] = plan(EPIC)
    assert row.body is not None
    assert row.body["code"]["coding"][0]["system"] == "urn:oid:1.2.3"
    assert row.body["code"]["coding"][0]["code"] == "R-TIR"
    two = plan(changed(EPIC, write__flowsheet_rows={"tir": "R-TIR", "gmi": "R-GMI"}, write__flowsheet_system="urn:x"))
    assert sorted((w.body or {})["code"]["coding"][0]["code"] for w in two) == ["R-GMI", "R-TIR"]
    assert {(w.body or {})["code"]["coding"][0]["system"] for w in two} == {"urn:x"}


@effect("write.glucose_unit")
def _glucose_unit(tmp_path: Path) -> None:
    def mean_unit(unit: str) -> str:
        writes = plan(changed(ORACLE, write__glucose_unit=unit))
        mean = next(w for w in writes if w.metrics == ("mean_glucose",))
        return str((mean.body or {})["valueQuantity"]["code"])

    assert (mean_unit("mg/dL"), mean_unit("mmol/L")) == ("mg/dL", "mmol/L")


# MARK: [read]


@effect("read.category", "read.flowsheet_rows")
def _read(tmp_path: Path) -> None:
    from datetime import UTC, datetime  # noqa: PLC0415

    since = datetime(2026, 11, 1, tzinfo=UTC)
    [epic] = profile_for(caps_of(changed(EPIC, read={"flowsheet_rows": {"mg/dL": "R-CGM"}}))).cgm_search("p1", since)
    params = dict(epic.params)
    assert "urn:oid:1.2.3|R-CGM" in params["code"].split(",")
    assert "http://loinc.org|99504-3" in params["code"].split(",")
    assert params["category"].endswith("|vital-signs")  # Epic's default
    [lab] = profile_for(caps_of(changed(EPIC, read={"category": "laboratory"}))).cgm_search("p1", since)
    assert dict(lab.params)["category"].endswith("|laboratory")
    [any_] = profile_for(caps_of(changed(EPIC, read={"category": "any"}))).cgm_search("p1", since)
    assert "category" not in dict(any_.params)
    assert "R-CGM" not in dict(lab.params)["code"]


# MARK: [hl7v2]


@effect("hl7v2.version", "hl7v2.sending_facility", "hl7v2.receiving_application", "hl7v2.receiving_facility")
def _hl7v2_header(tmp_path: Path) -> None:
    data = changed(GENERIC, write__channel="hl7v2", hl7v2__version="2.3", hl7v2__sending_facility="GB-FAC",
                   hl7v2__receiving_application="EPIC", hl7v2__receiving_facility="HOSP-A")  # fmt: skip
    [oru] = plan(data)
    msh = (oru.message or "").split("\r")[0].split("|")
    assert (msh[3], msh[4], msh[5], msh[11]) == ("GB-FAC", "EPIC", "HOSP-A", "2.3")


@effect("hl7v2.host", "hl7v2.port")
def _hl7v2_address(tmp_path: Path) -> None:
    data = changed(GENERIC, write__channel="hl7v2", hl7v2__host="10.1.2.3", hl7v2__port=3001)
    called: list[tuple[str, int]] = []

    class Client:
        def __init__(self, host: str, port: int, timeout: float) -> None:
            called.append((host, port))

        def send(self, message: str) -> Ack:
            return Ack("AA", "", "x", "")

        def close(self) -> None:
            pass

    broker = Broker(httpx.AsyncClient(), static_token_source({}), mllp=cast(Any, Client))
    result = asyncio.run(broker.send(caps_of(data), plan(data)[0]))
    assert result.status == 201
    assert called == [("10.1.2.3", 3001)]


# MARK: [rate_limit], [token], [corrections]


@effect("rate_limit.rps", "rate_limit.burst")
def _rate_limit(tmp_path: Path) -> None:
    worker = OutboxWorker(cast(Any, None), cast(Any, None), cast(Any, None), writeback=cast(Any, object()))
    bucket = cast(Any, worker.bucket(caps_of(changed(GENERIC, rate_limit={"rps": 0.5, "burst": 3}))))
    assert (bucket.rate, bucket.burst) == (0.5, 3)


def _refreshes(interval: int | None, ehr: FakeEhr) -> int:
    data = smart_data(scopes=["launch", "openid", "fhirUser", "online_access"])
    if interval is not None:
        data["rate_limit"] = {"refresh_min_interval_s": interval}

    async def scenario() -> int:
        async with ehr.client() as http:
            client = smart_client(data, ehr, http)
            redirect = await client.begin(ISS, "launch-1")
            done = await client.complete(query(redirect.url)["state"], ehr.authorize(redirect.url))
            ehr.clock.advance(50)  # 40 s left of 90: inside the refresh margin (45 s)
            await client.access_token(done.handle)
            return len(ehr.refresh_requests)

    return run(scenario())


@effect("rate_limit.refresh_min_interval_s")
def _refresh_interval(tmp_path: Path) -> None:
    assert _refreshes(None, fake_ehr(expires_in=90)) == 1
    assert _refreshes(60, fake_ehr(expires_in=90)) == 0  # 50 s < 60 s


@effect("token.expected_lifetime_s")
def _expected_lifetime(tmp_path: Path) -> None:
    ehr = fake_ehr(expires_in=cast(int, None))  # no expires_in sent
    store = MemoryLaunchStore()

    async def scenario() -> timedelta:
        async with ehr.client() as http:
            site = site_from_mapping("site-a", changed(smart_data(), token={"expected_lifetime_s": 570}),
                                     default_redirect_uri=REDIRECT_URI)  # fmt: skip
            client = SmartClient(SiteRegistry([site]), http, store, FernetCipher([FernetCipher.generate_key()]),
                                 ehr.clock)  # fmt: skip
            redirect = await client.begin(ISS, "launch-1")
            done = await client.complete(query(redirect.url)["state"], ehr.authorize(redirect.url))
            tokens = store.launches[done.handle].tokens
            return tokens.expires_at - tokens.issued_at

    assert run(scenario()) == timedelta(seconds=570)


@effect("corrections.resign_pp", "corrections.resign_tbr_pp", "corrections.resign_mean_mg_dl")
def _corrections(tmp_path: Path) -> None:
    old = {"tir": 70.0, "tbr_l1": 2.0, "mean_glucose": 150.0}
    strict = caps_of(changed(GENERIC, corrections={"resign_pp": 1.0, "resign_tbr_pp": 0.5, "resign_mean_mg_dl": 2}))
    lax = caps_of(changed(GENERIC, corrections={"resign_pp": 9.0, "resign_tbr_pp": 9.0, "resign_mean_mg_dl": 50}))
    for moved in ({"tir": 72.0}, {"tbr_l1": 2.6}, {"mean_glucose": 154.0}):
        new = {**old, **moved}
        assert needs_new_signoff(strict, old, new), moved
        assert not needs_new_signoff(lax, old, new), moved


# MARK: [launch], [filter]


@effect("launch.encounter_expected")
def _encounter_expected(tmp_path: Path) -> None:
    def missing(expected: bool) -> bool:
        ehr = fake_ehr(encounter=None)

        async def scenario() -> bool:
            async with ehr.client() as http:
                client = smart_client(changed(smart_data(), launch={"encounter_expected": expected}), ehr, http)
                redirect = await client.begin(ISS, "launch-1")
                done = await client.complete(query(redirect.url)["state"], ehr.authorize(redirect.url))
                return done.context.encounter_missing

        return run(scenario())

    assert missing(True)  # audited at the callback (launch.no_encounter) and said on the review
    assert not missing(False)


@effect("launch.quirks")
def _quirks(tmp_path: Path) -> None:
    ehr = fake_ehr()
    plain = ehr.smart_configuration
    ehr.smart_configuration = lambda: {**plain(), "capabilities": ["launch-ehr", "authorize-post"]}  # type: ignore[method-assign]
    assert begin(changed(smart_data(), launch={"quirks": ["authorize_post"]}), ehr=ehr).method == "POST"
    assert begin(changed(smart_data(), launch={"quirks": []}), ehr=ehr).method == "GET"
    epic_duplicate = {"resourceType": "OperationOutcome", "issue": [{"details": {"coding": [{"code": "59189"}]}}]}
    for quirks, outcome in ((["dedupe_59189"], Outcome.CONFIRMED), ([], Outcome.FAILED)):
        quirks_now = profile_for(caps_of(changed(EPIC, launch={"quirks": quirks}))).quirks
        assert classify(400, sent=True, error=None, body=epic_duplicate, quirks=quirks_now) is outcome
    required = {"resourceType": "OperationOutcome", "issue": [{"code": "required"}]}
    assert classify(500, sent=True, error=None, body=required, quirks=caps_of(ORACLE).launch.quirks) is Outcome.FAILED
    assert classify(500, sent=True, error=None, body=required, quirks=()) is Outcome.UNKNOWN
    with pytest.raises(CapabilityError, match="unknown quirk 'dedupe_59198'"):
        caps_of(changed(EPIC, launch={"quirks": ["dedupe_59198"]}))


@effect("filter.departments", "filter.patients")
def _filter(tmp_path: Path) -> None:
    caps = caps_of(changed(GENERIC, filter={"departments": ["ENDO"], "patients": ["p1", "p2"]}))
    assert caps.shows_patient("p1", "ENDO")
    assert not caps.shows_patient("p1", "CARDIO")
    assert not caps.shows_patient("p3", "ENDO")
    assert caps_of(GENERIC).shows_patient("p3", "CARDIO")


# MARK: [bulk] (bff/bulk)


def _bulk_runner(tmp_path: Path, caps: SiteCapabilities) -> Any:
    from bff.bulk import BulkRunner  # noqa: PLC0415

    class _Caps:
        def get(self, site: str) -> SiteCapabilities:
            del site
            return caps

    store = SimpleNamespace(dialect="sqlite")  # the runner's ingestor asks the dialect; nothing here reaches a store
    return BulkRunner(cast(Any, store), cast(Any, _Caps()), cast(Any, None), work_dir=tmp_path)


BULK = changed(GENERIC, smart={"iss": "https://fhir.example.test/r4", "client_id": "c", "scopes": ["launch"]},
               bulk={"available": True})  # fmt: skip


@effect("bulk.available")
def _bulk_available(tmp_path: Path) -> None:
    from bff.bulk import BulkError  # noqa: PLC0415

    runner = _bulk_runner(tmp_path, caps_of(changed(BULK, bulk__available=False)))
    with pytest.raises(BulkError, match=r"does not offer Bulk Data \(\[bulk\] available = false\)"):
        runner._caps("site-a")
    assert _bulk_runner(tmp_path, caps_of(BULK))._caps("site-a").bulk.available


@effect("bulk.group_ids")
def _bulk_group_ids(tmp_path: Path) -> None:
    from bff.bulk import Level  # noqa: PLC0415

    patient_level = _bulk_runner(tmp_path, caps_of(BULK)).scopes(caps_of(BULK))
    grouped_caps = caps_of(changed(BULK, bulk__group_ids=["g1", "g2"]))
    grouped = _bulk_runner(tmp_path, grouped_caps).scopes(grouped_caps)
    assert [s.level for s in patient_level] == [Level.PATIENT]
    assert [(s.level, s.group_id) for s in grouped] == [(Level.GROUP, "g1"), (Level.GROUP, "g2")]


@effect("bulk.params")
def _bulk_params(tmp_path: Path) -> None:
    from bff.bulk.protocol import BulkProtocolError, ExportScope, Level, kickoff_url  # noqa: PLC0415

    del tmp_path
    plain = caps_of(BULK).bulk.params
    typed = caps_of(changed(BULK, bulk__params={"_type": "Observation", "_typeFilter": "Observation?code=x"})).bulk
    base = "https://fhir.example.test/r4"
    assert "_typeFilter" not in kickoff_url(base, ExportScope(Level.PATIENT), plain, None)
    url = kickoff_url(base, ExportScope(Level.PATIENT), typed.params, None)
    assert "_type=Observation&_typeFilter=Observation%3Fcode%3Dx" in url
    with pytest.raises(BulkProtocolError, match="may not set _since"):
        kickoff_url(base, ExportScope(Level.PATIENT), {"_since": "2020-01-01"}, None)


@effect("bulk.max_concurrent")
def _bulk_max_concurrent(tmp_path: Path) -> None:
    del tmp_path
    assert caps_of(changed(BULK, bulk__max_concurrent=3)).bulk.max_concurrent == 3
    with pytest.raises(CapabilityError, match="max_concurrent"):
        caps_of(changed(BULK, bulk__max_concurrent=0))
    # The slots it gives (a second job while one holds the only slot is refused): tests/bulk/test_cli_kill.py and
    # tests/bulk/test_sandbox_export.py::test_at_most_max_concurrent_jobs_per_site.


@effect("bulk.poll_floor_s")
def _bulk_poll_floor(tmp_path: Path) -> None:
    from bff.bulk.protocol import poll_delay  # noqa: PLC0415

    del tmp_path
    now = datetime.now(UTC)
    floor = caps_of(changed(BULK, bulk__poll_floor_s=30)).bulk.poll_floor_s
    assert poll_delay("1", now, floor_s=floor, waits=0) == 30  # a server asking for 1 s still waits the floor
    assert poll_delay("1", now, floor_s=caps_of(changed(BULK, bulk__poll_floor_s=2)).bulk.poll_floor_s, waits=0) == 2


@effect("bulk.run_window")
def _bulk_run_window(tmp_path: Path) -> None:
    from bff.bulk.protocol import in_run_window  # noqa: PLC0415

    del tmp_path
    caps = caps_of(changed(BULK, bulk__run_window="01:00-05:00"))  # America/Chicago (the site's zone)
    night = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)  # 03:00 in Chicago
    noon = datetime(2026, 12, 7, 18, 0, tzinfo=UTC)  # 12:00 in Chicago
    assert in_run_window(caps.bulk.run_window, caps.time_zone, night)
    assert not in_run_window(caps.bulk.run_window, caps.time_zone, noon)
    assert in_run_window(caps_of(BULK).bulk.run_window, caps.time_zone, noon)  # "" any time
    with pytest.raises(CapabilityError, match="run_window must be HH:MM-HH:MM"):
        caps_of(changed(BULK, bulk__run_window="nightly"))


# MARK: the tests


def test_every_documented_key_has_a_check() -> None:
    keys = {k for k in documented() if k.split(".")[0] not in ELSEWHERE}
    assert keys == set(EFFECTS), (sorted(keys - set(EFFECTS)), sorted(set(EFFECTS) - keys))


@pytest.mark.parametrize("key", sorted(EFFECTS))
def test_the_key_does_what_its_documentation_says(key: str, tmp_path: Path) -> None:
    EFFECTS[key](tmp_path)


@pytest.mark.parametrize(
    ("table", "text", "message"),
    [
        ("smart", 'client_secret = "hunter2"', "secrets are never stored in a site file"),
        ("smart", 'private_key = "-----BEGIN"', "keys are never stored in a site file"),
        ("smart", "expected_token_lifetime_s = 570", r"moved to \[token\] expected_lifetime_s"),
        ("smart", 'client_auth = "client_secret_basic"', "needs client_secret_env or client_secret_file"),
        ("smart", 'client_auth = "private_key_jwt"', "needs private_key_file"),
        ("smart", 'client_secret_env = "A"\nclient_secret_file = "/x"', "not both"),
        ("smart", 'kid = "k"', "are for client_auth"),
        ("smart", 'frame_ancestors = ["https://x.example.test/path"]', "must be origins"),
        ("backend", 'private_key = "-----BEGIN"', "keys are never stored"),
        ("backend", 'key_file = "/k.pem"', "a key needs its kid"),
        ("backend", 'scopes = ["patient/Observation.rs"]', "is not a system/ scope"),
        ("launch", 'quirks = ["need_patient_banner_string"]', "is not needed"),
        ("launch", 'quirks = ["refresh_keeps_refresh_token"]', "is not needed"),
        ("smart", 'cliend_id = "typo"', "unknown keys: cliend_id"),
    ],
)  # fmt: skip
def test_what_is_refused_on_load(table: str, text: str, message: str) -> None:
    smart = 'iss = "https://fhir.example.test/r4"\nclient_id = "c"\nscopes = ["launch"]\n'
    body = f'version = 1\nvendor = "generic"\n[smart]\n{smart}'
    body += f"{text}\n" if table == "smart" else f"[{table}]\n{text}\n"
    with pytest.raises(CapabilityError, match=message):
        parse_capabilities("site-a", tomllib.loads(body), source="sites/site-a.toml")
    with pytest.raises(SmartConfigError, match=message):  # the SMART view of the same file says the same
        site_from_mapping("site-a", tomllib.loads(body), default_redirect_uri=REDIRECT_URI)


def test_wildcards_are_refused_where_the_site_refuses_them() -> None:
    with pytest.raises(CapabilityError, match="no_wildcard_scopes"):
        caps_of(changed(ORACLE, smart={"iss": ISS, "client_id": "c", "scopes": ["user/*.rs"]}))
    assert caps_of(changed(GENERIC, smart={"iss": ISS, "client_id": "c", "scopes": ["user/*.rs"]}))


def test_a_key_in_a_table_nobody_reads_is_refused() -> None:
    with pytest.raises(CapabilityError, match=r"\[backend\] unknown keys: scope"):
        caps_of(changed(GENERIC, backend={"scope": ["system/*.rs"]}))
