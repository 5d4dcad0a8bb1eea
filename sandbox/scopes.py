"""SMART scopes, v1 and v2, and what a token may do with them.

v1: `patient/Observation.read`, `user/*.write`, `system/*.*`; v2: `patient/Observation.rs`,
`user/Observation.cruds`, with an optional query such as `patient/Observation.rs?category=laboratory`
(checked for `category` and `code`). A v1 `read` is v2 `rs`, `write` is `cud`, `*` is `cruds`.

Context: `patient/` scopes reach only the token's patient (anything else is 403), `user/` scopes reach every
patient the (simulated) user may see, which is all of them, and `system/` scopes are for backend services.
Epic grants in v1 spelling whatever the app asked for (ehr-realities.md §1.3): `to_v1_spelling` does that.
Oracle refuses wildcard scopes (§2): `has_wildcard` finds them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from sandbox.search import tokens_of, walk

_RESOURCE_SCOPE = re.compile(r"^(patient|user|system)/([A-Za-z]+|\*)\.([a-z*]+)(?:\?(.*))?$")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_OPS = "cruds"


@dataclass(frozen=True, slots=True)
class ResourceScope:
    """One parsed resource scope."""

    context: str  # patient | user | system
    resource: str  # a type or "*"
    ops: frozenset[str]  # subset of c, r, u, d, s
    query: tuple[tuple[str, str], ...]
    raw: str
    v1: bool

    def covers(self, rtype: str, op: str) -> bool:
        return self.resource in ("*", rtype) and op in self.ops

    def allows_resource(self, resource: dict[str, object]) -> bool:
        """Whether a v2 query restriction (category/code) admits the resource; no restriction admits all."""
        for name, value in self.query:
            if name not in ("category", "code"):
                continue
            pairs = [p for v in walk(resource, name) for p in tokens_of(v)]
            system, bar, code = value.rpartition("|")
            if bar:
                if not any(s == system and c == code for s, c in pairs):
                    return False
            elif not any(c == value for _, c in pairs):
                return False
        return True


def parse_scope(text: str) -> ResourceScope | None:
    """A resource scope, or None for other scopes (openid, launch, offline_access, ...) and malformed ones."""
    found = _RESOURCE_SCOPE.match(text)
    if found is None:
        return None
    context, resource, ops, query = found.groups()
    if ops in _V1:
        return ResourceScope(context, resource, frozenset(_V1[ops]), (), text, v1=True)
    if (
        not ops
        or any(c not in _OPS for c in ops)
        or list(ops) != sorted(ops, key=_OPS.index)
        or len(set(ops)) < len(ops)
    ):
        return None  # v2 letters must appear in the order c, r, u, d, s, once each
    return ResourceScope(context, resource, frozenset(ops), tuple(parse_qsl(query or "")), text, v1=False)


def split_scopes(scope: str) -> list[str]:
    return [s for s in scope.split() if s]


def resource_scopes(scope: str) -> list[ResourceScope]:
    return [p for s in split_scopes(scope) if (p := parse_scope(s)) is not None]


def has_wildcard(scope: str) -> bool:
    return any(p.resource == "*" or p.raw.endswith(".*") for p in resource_scopes(scope))


def to_v1_spelling(scope: str) -> str:
    """The granted scope as Epic writes it: v1 `read`/`write`, v2 queries dropped; other scopes unchanged."""
    out: list[str] = []
    for text in split_scopes(scope):
        parsed = parse_scope(text)
        if parsed is None or parsed.v1:
            out.append(text)
            continue
        prefix = f"{parsed.context}/{parsed.resource}"
        if parsed.ops & {"r", "s"}:
            out.append(f"{prefix}.read")
        if parsed.ops & {"c", "u", "d"}:
            out.append(f"{prefix}.write")
    return " ".join(dict.fromkeys(out))


def granting(scope: str, rtype: str, op: str) -> list[ResourceScope]:
    """The token's scopes that allow `op` (one of c r u d s) on `rtype`."""
    return [p for p in resource_scopes(scope) if p.covers(rtype, op)]
