"""Who an audited change is recorded as: a person (a name), or one of glucobridge's own automatic actors.

The automatic actors are the members of `SystemActor`, and only code holding a member may act as one: a plain
string that spells a reserved name (from a form, a CLI option or an admin account) is refused, whatever its case
or surrounding spaces. So nobody can forge, say, the outbox worker's automatic degradation of a site.

    SystemActor.OUTBOX_WORKER   "outbox-worker"   degrades a site to read-only when its EHR refuses writes
"""

from __future__ import annotations

import enum


class SystemActor(enum.StrEnum):
    """glucobridge's automatic actors: the one list of reserved actor names."""

    OUTBOX_WORKER = "outbox-worker"


RESERVED_NAMES = frozenset(actor.value for actor in SystemActor)


class ReservedActorError(ValueError):
    """A person tried to act (or be created) under the name of one of glucobridge's automatic actors."""


def folded(name: str) -> str:
    """The form in which names are compared with the reserved ones: case-folded, inner spaces collapsed."""
    return " ".join(name.split()).casefold()


def is_reserved(name: str) -> bool:
    return folded(name) in RESERVED_NAMES


def check_actor(who: str) -> str:
    """`who`, when it may be recorded as the actor of a change: a SystemActor member, or a person's name that is
    not a reserved one (ReservedActorError otherwise)."""
    if not isinstance(who, SystemActor) and is_reserved(who):
        raise ReservedActorError(f"{who.strip()!r} is reserved for glucobridge's own automatic changes")
    return who


__all__ = ["RESERVED_NAMES", "ReservedActorError", "SystemActor", "check_actor", "folded", "is_reserved"]
