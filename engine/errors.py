"""Typed errors raised by the engine.

EngineError
 ├── InvalidReadingError        a reading the engine cannot use (non-finite value, bad flag, unknown stream)
 │    └── UnknownUnitError      a unit other than mg/dL or mmol/L
 ├── LocalTimeError             a naive local time that cannot be placed on the UTC line
 │    └── NonexistentLocalTimeError
 ├── UnknownZoneError           not an IANA time zone
 ├── UnknownDeviceError         not a key of the device table
 └── PolicyError                an outcome policy that is not valid

Each error names what is wrong in words a person can act on; `index` (when set) is the position of the
offending reading in the input, so callers can point at the row.
"""

from __future__ import annotations


class EngineError(ValueError):
    """Base class of every error the engine raises on bad input."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.index = index


class InvalidReadingError(EngineError):
    """A reading that cannot be used as given."""


class UnknownUnitError(InvalidReadingError):
    """A glucose unit other than mg/dL or mmol/L: units are never guessed."""


class LocalTimeError(EngineError):
    """A local (naive) time that cannot be converted to an instant."""


class NonexistentLocalTimeError(LocalTimeError):
    """A local time skipped by a daylight-saving change (it never happened)."""


class UnknownZoneError(EngineError):
    """A time zone name that is not in the IANA database."""


class UnknownDeviceError(EngineError):
    """A device key that is not in the device table."""


class PolicyError(EngineError):
    """An outcome policy with values outside what the method allows."""
