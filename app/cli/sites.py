"""Site commands: `site list | show | set | clear | history | probe` (the capability matrix, bff/capabilities.py)."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from app.cli.common import BadInputError, InfrastructureError, open_store
from bff.capabilities import CapabilityError, CapabilityService, as_dict, parse_capabilities
from bff.settings import get_settings
from bff.vendors import PROFILES, Vendor, vendor_profile

CGM_RECEIVER = "http://hl7.org/fhir/uv/cgm/CapabilityStatement/cgm-data-receiver"


def _service() -> CapabilityService:
    return CapabilityService(open_store(), get_settings().sites_dir)


def parse_value(text: str) -> Any:
    """VALUE as JSON (`true`, `5`, `["a"]`, `"x"`), falling back to the plain string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def cmd_site(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        return _run(args, out, err)
    except CapabilityError as exc:
        raise BadInputError(str(exc)) from None


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.action == "probe":
        return _probe(args, out, err)
    service = _service()
    try:
        if args.action == "list":
            for site in service.sites():
                try:
                    caps = service.get(site)
                    out.write(f"{site}\t{caps.vendor.value}\t{caps.write.mode.value}\t{caps.write.channel.value}\n")
                except CapabilityError as exc:
                    out.write(f"{site}\tINVALID\t{exc}\n")
            return 0
        site = args.site
        if not site:
            raise BadInputError(f"site {args.action} needs a SITE")
        if args.action == "show":
            caps = service.get(site)
            overridden = sorted(service.overrides(site))
            if args.json:
                json.dump({"site": site, "matrix": as_dict(caps), "overridden": overridden}, out, indent=2)
                out.write("\n")
            else:
                for path, value in _flatten(as_dict(caps)).items():
                    mark = "  (override)" if any(path == o or path.startswith(o + ".") for o in overridden) else ""
                    out.write(f"{path} = {json.dumps(value)}{mark}\n")
            return 0
        if args.action in ("set", "clear"):
            if not args.who or not args.reason:
                raise BadInputError(f"site {args.action} needs --who and --reason (the change is audited)")
            if not args.path:
                raise BadInputError(f"site {args.action} needs a PATH such as write.mode")
            if args.action == "set":
                if args.value is None:
                    raise BadInputError("site set needs a VALUE (JSON, or a plain string)")
                service.set(site, args.path, parse_value(args.value), who=args.who, reason=args.reason)
            else:
                service.clear(site, args.path, who=args.who, reason=args.reason)
            out.write(f"{site}: {args.path} {'set' if args.action == 'set' else 'cleared'}\n")
            return 0
        if args.action == "history":
            for event in service.history(site):
                d = event.detail
                out.write(f"{event.at.isoformat()}\t{event.event}\t{event.outcome}\t{event.actor}\t{d.get('path')}\t"
                          f"{json.dumps(d.get('old'))} -> {json.dumps(d.get('new', d.get('value')))}\t"
                          f"{d.get('reason')}\n")  # fmt: skip
            return 0
        raise BadInputError(f"unknown action {args.action}")
    finally:
        service.store.dispose()


# --- probe ---------------------------------------------------------------------------------------------------


@dataclass
class Proposal:
    """A proposed matrix and, per dotted key, what it was inferred from."""

    data: dict[str, Any]
    why: dict[str, str] = field(default_factory=dict)


def _creates(capability: Mapping[str, Any]) -> set[str]:
    types: set[str] = set()
    for rest in capability.get("rest", []) or []:
        for resource in rest.get("resource", []) or []:
            codes = {i.get("code") for i in resource.get("interaction", []) or []}
            if "create" in codes:
                types.add(str(resource.get("type")))
    return types


def _operations(capability: Mapping[str, Any]) -> set[str]:
    names: set[str] = set()
    for rest in capability.get("rest", []) or []:
        for op in rest.get("operation", []) or []:
            names.add(str(op.get("name", "")).lstrip("$"))
        for resource in rest.get("resource", []) or []:
            for op in resource.get("operation", []) or []:
                names.add(str(op.get("name", "")).lstrip("$"))
    return names


def propose(iss: str, smart: Mapping[str, Any], capability: Mapping[str, Any]) -> Proposal:
    """A matrix from a server's smart-configuration and CapabilityStatement (pure)."""
    why: dict[str, str] = {}
    software = capability.get("software") or {}
    hint = " ".join(str(x) for x in (software.get("name"), capability.get("publisher"), capability.get("name")) if x)
    instantiates = capability.get("instantiates") or []
    operations = _operations(capability)
    receiver = CGM_RECEIVER in instantiates or "submit-cgm-bundle" in operations
    if receiver:
        vendor = Vendor.CGM_IG_RECEIVER.value
        why["vendor"] = (
            f"CapabilityStatement instantiates {CGM_RECEIVER}" if CGM_RECEIVER in instantiates
            else "operation $submit-cgm-bundle"
        )  # fmt: skip
    else:
        vendor, why["vendor"] = Vendor.GENERIC.value, f"no vendor hint in software/publisher {hint!r}"
        for profile in PROFILES.values():  # each vendor profile says how its servers name themselves
            if profile.probe_pattern and re.search(profile.probe_pattern, hint, re.I):
                vendor, why["vendor"] = profile.vendor.value, f"software/publisher {hint!r} names {profile.title}"
                break
    fhir_version = str(capability.get("fhirVersion", ""))
    version = "R5" if fhir_version.startswith("5.") else "R4"
    why["fhir.version"] = f"fhirVersion {fhir_version!r}"

    creates = _creates(capability)
    obs, doc = "Observation" in creates, "DocumentReference" in creates
    profile = vendor_profile(vendor)
    write: dict[str, Any]
    if receiver:
        write = {"mode": "full", "channel": "fhir", "observation_category": "laboratory", "note_type": "cgm-summary",
                 "encounter_policy": "none"}  # fmt: skip
        why["write.mode"] = "a CGM IG receiver takes the CGM bundle"
    elif not creates or not (obs or doc):
        write = {"mode": "read_only", "channel": "none"}
        why["write.mode"] = "no resource supports create" if not creates else f"create only on {sorted(creates)}"
        why["write.channel"] = "set hl7v2 (and [hl7v2]) if the site takes results over an interface"
    elif profile.observations_are_flowsheet_rows and obs:
        write = {"mode": "flowsheet_only", "channel": "fhir", "observation_category": "vital-signs",
                 "encounter_policy": "launch", "flowsheet_rows": {"tir": "FILL-IN"}}  # fmt: skip
        why["write.mode"] = f"{profile.title} Observation.Create writes flowsheet rows (notes after validation)"
        why["write.flowsheet_rows"] = "ask the site's analyst for the row ids"
    elif obs and doc:
        write = {"mode": "full", "channel": "fhir", "note_type": "FILL-IN"}
        why["write.mode"] = "Observation and DocumentReference support create"
        if profile.pdf_path != "none":
            write |= {"observation_category": profile.reading_category, "pdf_path": profile.pdf_path}
    elif obs:
        write = {"mode": "observations", "channel": "fhir"}
        why["write.mode"] = "only Observation supports create"
    else:
        write = {"mode": "notes_only", "channel": "fhir", "note_type": "FILL-IN"}
        why["write.mode"] = "only DocumentReference supports create"

    bulk: dict[str, Any] = {"available": "export" in operations}
    why["bulk.available"] = "$export operation" + ("" if bulk["available"] else " not") + " in the CapabilityStatement"
    lifetime = profile.token_lifetime_s
    why["token.expected_lifetime_s"] = f"{vendor} default"
    scopes = smart.get("scopes_supported") or []
    data: dict[str, Any] = {
        "version": 1,
        "vendor": vendor,
        "smart": {"iss": iss.rstrip("/"), "client_id": "FILL-IN",
                  "scopes": ["launch", "openid", "fhirUser", "patient/Patient.read", "patient/Observation.read"]},
        "fhir": {"version": version},
        "write": write,
        "bulk": bulk,
        "token": {"expected_lifetime_s": lifetime},
    }  # fmt: skip
    if "launch/encounter" in scopes:
        data["launch"] = {"encounter_expected": True}
        why["launch.encounter_expected"] = "scopes_supported has launch/encounter"
    return Proposal(data, why)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def render_toml(proposal: Proposal, source: str) -> str:
    lines = [f"# Proposed by `glucobridge site probe {source}`: check every value, fill in FILL-IN, then commit."]

    def emit(table: Mapping[str, Any], prefix: str) -> None:
        subtables = []
        for key, value in table.items():
            if isinstance(value, Mapping):
                subtables.append((key, value))
                continue
            note = proposal.why.get(f"{prefix}{key}")
            lines.append(f"{key} = {_toml_value(value)}" + (f"  # {note}" if note else ""))
        for key, value in subtables:
            lines.append("")
            note = proposal.why.get(f"{prefix}{key}")
            if note:
                lines.append(f"# {note}")
            lines.append(f"[{prefix}{key}]")
            emit(value, f"{prefix}{key}.")

    emit(proposal.data, "")
    return "\n".join(lines) + "\n"


def _probe(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    base = args.url.rstrip("/")
    try:
        with httpx.Client(timeout=15.0, follow_redirects=True) as client:
            smart = client.get(f"{base}/.well-known/smart-configuration", headers={"Accept": "application/json"})
            meta = client.get(f"{base}/metadata", headers={"Accept": "application/fhir+json"})
    except httpx.HTTPError as exc:
        raise InfrastructureError(f"cannot reach {base}: {type(exc).__name__}: {exc}") from None
    if meta.status_code != 200:
        raise BadInputError(f"{base}/metadata answered {meta.status_code}")
    try:
        capability = meta.json()
        smart_config = smart.json() if smart.status_code == 200 else {}
    except ValueError:
        raise BadInputError(f"{base}: metadata or smart-configuration is not JSON") from None
    if not isinstance(capability, dict) or capability.get("resourceType") != "CapabilityStatement":
        raise BadInputError(f"{base}/metadata is not a CapabilityStatement")
    if smart.status_code != 200:
        err.write(f"glucobridge: {base}/.well-known/smart-configuration answered {smart.status_code}\n")
    proposal = propose(base, smart_config if isinstance(smart_config, dict) else {}, capability)
    text = render_toml(proposal, base)
    key = Path(args.write).stem if args.write else "proposed"
    try:  # the proposal must itself be a valid matrix (FILL-IN placeholders aside)
        parse_capabilities(key if re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", key) else "proposed", proposal.data)
    except CapabilityError as exc:
        err.write(f"glucobridge: the proposal does not validate: {exc}\n")
    out.write(text)
    if args.write:
        Path(args.write).write_text(text, encoding="utf-8")
    return 0


def add_parser(sub: Any) -> None:
    site = sub.add_parser("site", help="the sites' capability matrices: list, show, set, clear, history, probe")
    site.add_argument("action", choices=["list", "show", "set", "clear", "history", "probe"])
    site.add_argument("site", nargs="?", help="the site key (probe: the FHIR base URL)")
    site.add_argument("path", nargs="?", help="set/clear: a dotted key such as write.mode")
    site.add_argument("value", nargs="?", help="set: the value, as JSON or a plain string")
    site.add_argument("--json", action="store_true", help="show: JSON")
    site.add_argument("--who", help="set/clear: who makes the change")
    site.add_argument("--reason", help="set/clear: why")
    site.add_argument("--write", help="probe: also write the proposed TOML to this file")
    site.set_defaults(handler=_dispatch)


def _dispatch(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.action == "probe":
        if not args.site:
            raise BadInputError("site probe needs the FHIR base URL")
        args.url = args.site
    return cmd_site(args, out, err)
