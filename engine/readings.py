"""Readings as the engine sees them: one frozen, columnar table sorted or not, any number of patients.

`Reading` is the row form for callers that build readings one by one (parsers, tests); `ReadingTable` is the
columnar form every computation runs on. Times are UTC instants in integer milliseconds since the epoch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engine.devices import device_profile
from engine.errors import InvalidReadingError
from engine.immutable import immutable
from engine.timezones import check_zone
from engine.units import GlucoseUnit

#: Marks "no known session start" in `ReadingTable.session_start_ms`.
NO_TIME = np.iinfo(np.int64).min


class Source(IntEnum):
    """The feed a reading came through; the lower the code, the higher the precedence for duplicates."""

    FHIR = 0
    VENDOR = 1
    HL7V2 = 2
    FILE = 3

    @classmethod
    def parse(cls, text: str) -> Source:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(s.name.lower() for s in cls)
            raise InvalidReadingError(f"unknown source {text!r}: use one of {names}") from None


class SensorFlag(IntEnum):
    """NONE for a measured value; LOW/HIGH when the sensor reported a value outside its range (at a bound)."""

    NONE = 0
    LOW = 1
    HIGH = 2


@immutable
class Reading:
    """One glucose reading. `value` may be None only for a LOW/HIGH reading of a known device (its bound)."""

    patient_id: str
    time_ms: int
    value: float | None
    unit: GlucoseUnit
    flag: SensorFlag = SensorFlag.NONE
    device: str = ""
    stream: str = ""
    session_start_ms: int | None = None
    source: Source = Source.FILE
    received: int = 0
    ambiguous: bool = False


def _frozen(array: NDArray[Any], dtype: Any) -> NDArray[Any]:
    """A read-only view (no copy when the dtype already fits): the table takes the arrays it is given."""
    out = np.asarray(array, dtype=dtype).view()
    out.flags.writeable = False
    return out


@dataclass(frozen=True, eq=False)
class ReadingTable:
    """Columnar readings of any number of patients.

    Per reading: `patient` (index into `patient_ids`), `time_ms`, `value` (in its own unit), `unit`
    (GlucoseUnit code), `flag` (SensorFlag code), `stream` (index into the stream tables),
    `session_start_ms` (NO_TIME when unknown), `source` (Source code), `received` (larger = later),
    `ambiguous` (the time came from an ambiguous local time).
    Per patient: `patient_ids`, `zones` (IANA names). Per stream: `stream_patient`, `stream_device` (device key,
    "" unknown), `stream_labels`.
    """

    patient: NDArray[np.int32]
    time_ms: NDArray[np.int64]
    value: NDArray[np.float64]
    unit: NDArray[np.int8]
    flag: NDArray[np.int8]
    stream: NDArray[np.int32]
    session_start_ms: NDArray[np.int64]
    source: NDArray[np.int8]
    received: NDArray[np.int64]
    ambiguous: NDArray[np.bool_]
    patient_ids: tuple[str, ...]
    zones: tuple[str, ...]
    stream_patient: NDArray[np.int32]
    stream_device: tuple[str, ...]
    stream_labels: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        columns = {
            "patient": np.int32,
            "time_ms": np.int64,
            "value": np.float64,
            "unit": np.int8,
            "flag": np.int8,
            "stream": np.int32,
            "session_start_ms": np.int64,
            "source": np.int8,
            "received": np.int64,
            "ambiguous": np.bool_,
            "stream_patient": np.int32,
        }
        for name, dtype in columns.items():
            object.__setattr__(self, name, _frozen(getattr(self, name), dtype))
        if not self.stream_labels:
            object.__setattr__(self, "stream_labels", ("",) * len(self.stream_device))
        self._validate()

    def __len__(self) -> int:
        return int(self.time_ms.shape[0])

    @property
    def n_patients(self) -> int:
        return len(self.patient_ids)

    def _validate(self) -> None:
        n = len(self)
        for name in (
            "patient",
            "value",
            "unit",
            "flag",
            "stream",
            "session_start_ms",
            "source",
            "received",
            "ambiguous",
        ):
            if getattr(self, name).shape != (n,):
                raise InvalidReadingError(f"column {name} has {getattr(self, name).shape} rows, expected {n}")
        if len(self.zones) != self.n_patients:
            raise InvalidReadingError("one time zone per patient is required")
        n_streams = len(self.stream_device)
        if self.stream_patient.shape != (n_streams,) or len(self.stream_labels) != n_streams:
            raise InvalidReadingError("stream tables differ in length")
        for zone in set(self.zones):
            check_zone(zone)
        for key in set(self.stream_device):
            device_profile(key)
        if n == 0:
            return
        _first_bad(~np.isfinite(self.value) | (self.value <= 0), "value must be a finite number above 0", self)
        _first_bad((self.unit < 0) | (self.unit > 1), "unit code must be 0 (mg/dL) or 1 (mmol/L)", self)
        _first_bad((self.flag < 0) | (self.flag > 2), "flag code must be 0, 1 (LOW) or 2 (HIGH)", self)
        _first_bad((self.source < 0) | (self.source > 3), "source code must be 0..3", self)
        _first_bad((self.patient < 0) | (self.patient >= self.n_patients), "patient index out of range", self)
        _first_bad((self.stream < 0) | (self.stream >= n_streams), "stream index out of range", self)
        _first_bad(self.stream_patient[self.stream] != self.patient, "stream belongs to another patient", self)

    @classmethod
    def from_records(
        cls,
        records: Iterable[Reading],
        *,
        zones: Mapping[str, str] | None = None,
        default_zone: str = "UTC",
    ) -> ReadingTable:
        """Build a table from rows. Patients and streams are numbered in order of first appearance."""
        zones = zones or {}
        patients: dict[str, int] = {}
        streams: dict[tuple[str, str, str], int] = {}
        stream_patient: list[int] = []
        cols: dict[str, list[Any]] = {
            k: []
            for k in (
                "patient",
                "time_ms",
                "value",
                "unit",
                "flag",
                "stream",
                "session_start_ms",
                "source",
                "received",
                "ambiguous",
            )
        }
        for index, r in enumerate(records):
            p = patients.setdefault(r.patient_id, len(patients))
            profile = device_profile(r.device)
            key = (r.patient_id, profile.key, r.stream)
            s = streams.get(key)
            if s is None:
                s = streams[key] = len(streams)
                stream_patient.append(p)
            value = r.value
            if value is None:
                if r.flag is SensorFlag.NONE:
                    raise InvalidReadingError("a reading needs a value", index=index)
                value = profile.bound(r.unit, high=r.flag is SensorFlag.HIGH)
                if value is None:
                    raise InvalidReadingError(
                        f"{r.flag.name} reading without a value and without a known device: give the value the "
                        "sensor reported at its bound, or the device",
                        index=index,
                    )
            cols["patient"].append(p)
            cols["time_ms"].append(r.time_ms)
            cols["value"].append(value)
            cols["unit"].append(int(r.unit))
            cols["flag"].append(int(r.flag))
            cols["stream"].append(s)
            cols["session_start_ms"].append(NO_TIME if r.session_start_ms is None else r.session_start_ms)
            cols["source"].append(int(r.source))
            cols["received"].append(r.received)
            cols["ambiguous"].append(r.ambiguous)
        ids = tuple(patients)
        return cls(
            patient=np.array(cols["patient"], dtype=np.int32),
            time_ms=np.array(cols["time_ms"], dtype=np.int64),
            value=np.array(cols["value"], dtype=np.float64),
            unit=np.array(cols["unit"], dtype=np.int8),
            flag=np.array(cols["flag"], dtype=np.int8),
            stream=np.array(cols["stream"], dtype=np.int32),
            session_start_ms=np.array(cols["session_start_ms"], dtype=np.int64),
            source=np.array(cols["source"], dtype=np.int8),
            received=np.array(cols["received"], dtype=np.int64),
            ambiguous=np.array(cols["ambiguous"], dtype=np.bool_),
            patient_ids=ids,
            zones=tuple(zones.get(pid, default_zone) for pid in ids),
            stream_patient=np.array(stream_patient, dtype=np.int32),
            stream_device=tuple(k[1] for k in streams),
            stream_labels=tuple(k[2] for k in streams),
        )

    def records(self) -> list[Reading]:
        """The rows back (value as stored, so a LOW/HIGH reading carries its bound)."""
        return [
            Reading(
                patient_id=self.patient_ids[int(self.patient[i])],
                time_ms=int(self.time_ms[i]),
                value=float(self.value[i]),
                unit=GlucoseUnit(int(self.unit[i])),
                flag=SensorFlag(int(self.flag[i])),
                device=self.stream_device[int(self.stream[i])],
                stream=self.stream_labels[int(self.stream[i])],
                session_start_ms=None if self.session_start_ms[i] == NO_TIME else int(self.session_start_ms[i]),
                source=Source(int(self.source[i])),
                received=int(self.received[i]),
                ambiguous=bool(self.ambiguous[i]),
            )
            for i in range(len(self))
        ]


def _first_bad(mask: NDArray[np.bool_], problem: str, table: ReadingTable) -> None:
    if mask.any():
        index = int(np.argmax(mask))
        raise InvalidReadingError(f"reading {index}: {problem}", index=index)
