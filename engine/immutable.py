"""`immutable`: a value class that the type checker holds frozen and that is cheap to build at run time.

A frozen dataclass sets each field through `object.__setattr__`: a reading of 17 fields costs 2.2 µs to build where
a plain slotted one takes 0.7, paid for every reading of every feed. A class made with `immutable` is a slotted
dataclass with equality and a hash over its fields, as a frozen one has; mypy (`dataclass_transform` with
`frozen_default`) refuses any assignment to its fields, so nothing in the code base changes one after it is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, dataclass_transform

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True)
def immutable(cls: type[_T]) -> type[_T]:
    return dataclass(slots=True, unsafe_hash=True)(cls)
