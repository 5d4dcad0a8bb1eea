"""Glucose units. Only mg/dL and mmol/L exist here; anything else is refused, never guessed."""

from __future__ import annotations

from enum import IntEnum

from engine.errors import UnknownUnitError

#: mg/dL per mmol/L for glucose (molar mass 180.156 g/mol), as reported in every output.
MMOL_L_TO_MG_DL = 18.0156


class GlucoseUnit(IntEnum):
    """The unit a reading was given in. The integer is the code stored in a ReadingTable."""

    MG_DL = 0
    MMOL_L = 1

    @property
    def label(self) -> str:
        return "mg/dL" if self is GlucoseUnit.MG_DL else "mmol/L"


_UNIT_NAMES = {"mg/dl": GlucoseUnit.MG_DL, "mmol/l": GlucoseUnit.MMOL_L}


def parse_unit(text: str) -> GlucoseUnit:
    """Read a unit written `mg/dL` or `mmol/L` in any letter case (surrounding spaces allowed)."""
    unit = _UNIT_NAMES.get(text.strip().lower())
    if unit is None:
        raise UnknownUnitError(f"unknown glucose unit {text!r}: use mg/dL or mmol/L")
    return unit
