"""Dexcom Developer API v3 `/egvs` responses, streamed with ijson's C backend.

A response is `{"recordType": "egv", "recordVersion": "3.0", "userId": ..., "records": [...]}`. The top-level
fields before `records` are read first (that is where the API puts them); the records are then built one by one
(`bff.ingest.jsonstream`: bounded in depth and size, checked as UTF-8) and never held all at once.

Per record: `recordId` is the record key; the time is `systemTime` (UTC-based; records from receivers carry no
offset, so an offset-less systemTime is taken as UTC and marked `extra["system_time_offset"] = "none"`);
`status` low/high makes a LOW/HIGH reading with `value` as the bound; `transmitterId` is the stream and
`transmitterGeneration` the device. A record that cannot be read becomes a `FeedProblem` whose payload is the
record's JSON and whose context is `{"userId": ..., "recordVersion": ...}`. Identifiers kept (recordId,
transmitterId) are held to `MAX_KEY_CHARS` and details (trend, displayTime, ...) to `MAX_TEXT_CHARS`: a record
with a longer one is a problem, never a reading that carries it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from typing import IO, Any

from bff.ingest.bounds import MAX_KEY_CHARS, MAX_RECORD_BYTES, MAX_TEXT_CHARS, cut, loads_bounded, shorten, too_long
from bff.ingest.jsonstream import CONTAINER, LIST_START, JsonInputError, JsonItem, TopField, stream_list
from bff.ingest.localtime import iso_year_problem, offset_evidence
from bff.ingest.records import (
    Feed,
    FeedFormatError,
    FeedItem,
    FeedProblem,
    FeedReading,
    ParseOptions,
    PatientRef,
)
from engine import GlucoseUnit, SensorFlag

#: Dexcom's transmitterGeneration → our device keys (engine.devices); anything else is an unknown device.
GENERATIONS = {"g4": "dexcom-g4", "g5": "dexcom-g5", "g6": "dexcom-g6", "g6+": "dexcom-g6", "g7": "dexcom-g7"}
_UNITS = {"mg/dl": GlucoseUnit.MG_DL, "mmol/l": GlucoseUnit.MMOL_L}
_STATUS = {"ok": SensorFlag.NONE, "low": SensorFlag.LOW, "high": SensorFlag.HIGH, "unknown": SensorFlag.NONE}
_EXTRA_FIELDS = ("displayTime", "trend", "trendRate", "transmitterGeneration", "transmitterTicks", "displayDevice")
_TOP_FIELDS = ("recordType", "recordVersion", "userId")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_OFFSET_LABELS: dict[tzinfo, str] = {}
#: The top-level fields come first; a response whose `records` list has not started by then is not an EGV one.
PRELUDE_LIMIT = 1024 * 1024


class _RecordError(ValueError):
    """A record that cannot become a reading; the message is the quarantine reason."""


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _compact(record: Any) -> str:
    return cut(_ENCODER.encode(record), MAX_RECORD_BYTES)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _time_ms(record: Mapping[str, Any]) -> tuple[int, str]:
    """systemTime as UTC ms, and the offset it carried ("none" when it had none: taken as UTC)."""
    raw = record.get("systemTime")
    if not isinstance(raw, str) or not raw:
        raise _RecordError("systemTime missing")
    year = iso_year_problem(raw)
    if year:
        raise _RecordError(f"systemTime {shorten(raw)}: {year}")
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise _RecordError(f"systemTime {shorten(raw)} is not an ISO 8601 date-time") from None
    if raw.find("T") < 0 and raw.find(" ") < 0:
        raise _RecordError(f"systemTime {shorten(raw)} has no time of day")
    zone = moment.tzinfo
    if zone is None:
        return (moment.replace(tzinfo=UTC) - _EPOCH) // _ONE_MS, "none"
    label = _OFFSET_LABELS.get(zone)
    if label is None:
        offset = moment.utcoffset()
        seconds = 0 if offset is None else int(offset.total_seconds())
        hours, rest = divmod(abs(seconds), 3600)
        label = f"{'-' if seconds < 0 else '+'}{hours:02d}:{rest // 60:02d}"
        if len(_OFFSET_LABELS) < 256:
            _OFFSET_LABELS[zone] = label
    return (moment - _EPOCH) // _ONE_MS, label


def _display_offset(display_time: Any) -> int | None:
    """displayTime is the receiver's local clock with its UTC offset: evidence of the patient's zone (never a
    reading time: Dexcom's displayTime can be changed by the user)."""
    if not isinstance(display_time, str) or len(display_time) > 40 or iso_year_problem(display_time):
        return None
    try:
        return offset_evidence(datetime.fromisoformat(display_time))
    except ValueError:
        return None


def _reading(
    record: Any, index: int, patient: PatientRef | None, context: str, keep_payload: bool
) -> FeedReading | FeedProblem:
    locator = f"record {index}"
    try:
        if not isinstance(record, dict):
            raise _RecordError(f"record is a JSON {type(record).__name__}, not an object")
        record_id = record.get("recordId")
        if not isinstance(record_id, str) or not record_id.strip():
            raise _RecordError("recordId missing")
        if len(record_id) > MAX_KEY_CHARS:
            _check_length("recordId", record_id, MAX_KEY_CHARS)
        time_ms, offset = _time_ms(record)
        unit_text = record.get("unit")
        unit = _UNITS.get(unit_text.strip().lower()) if isinstance(unit_text, str) else None
        if unit is None:
            raise _RecordError(
                f"unknown unit {shorten(unit_text)}: Dexcom gave no glucose unit (expected mg/dL or mmol/L)"
            )
        value = record.get("value")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _RecordError(f"value {shorten(value)} is not a number")
        if not math.isfinite(value) or value <= 0:
            raise _RecordError(f"value {value!r} must be a finite number above 0")
        status = record.get("status")
        flag = SensorFlag.NONE if status is None else _STATUS.get(status) if isinstance(status, str) else None
        if flag is None:
            raise _RecordError(f"unknown status {shorten(status)} (expected ok, low, high or unknown)")
        transmitter = record.get("transmitterId")
        if transmitter is not None and not isinstance(transmitter, str):
            raise _RecordError(f"transmitterId {shorten(transmitter)} is not a string")
        if transmitter and len(transmitter) > MAX_KEY_CHARS:
            _check_length("transmitterId", transmitter, MAX_KEY_CHARS)
        generation = record.get("transmitterGeneration")
        device = GENERATIONS.get(generation.lower(), "") if isinstance(generation, str) else ""
        extra: dict[str, str] = {"system_time_offset": offset}
        for name in _EXTRA_FIELDS:
            given = record.get(name)
            if given is not None:
                text = extra[name] = _text(given)
                if len(text) > MAX_TEXT_CHARS:
                    _check_length(name, text, MAX_TEXT_CHARS)
        if status == "unknown":
            extra["status"] = "unknown"
    except _RecordError as bad:
        return FeedProblem(locator, str(bad), _compact(record), context, patient)
    return FeedReading(
        patient=patient,
        time_ms=time_ms,
        value=float(value),
        unit=unit,
        flag=flag,
        device=device,
        stream=transmitter or "",
        record_key=record_id,
        utc_offset_min=_display_offset(record.get("displayTime")),
        sender="" if patient is None else patient.value,  # the Dexcom account the recordId belongs to
        locator=locator,
        payload=_compact(record) if keep_payload else "",
        extra=extra,
    )


def _check_length(what: str, value: str, limit: int) -> None:
    problem = too_long(what, value, limit)
    if problem:
        raise _RecordError(problem)


def _context(top: Mapping[str, Any]) -> str:
    return _compact({"userId": top.get("userId"), "recordVersion": top.get("recordVersion")})


def _patient(user_id: Any) -> PatientRef | None:
    if isinstance(user_id, str) and user_id.strip():
        return PatientRef("dexcom-user", user_id.strip())
    return None


class DexcomParser:
    """Parser for Dexcom API v3 `/egvs` JSON responses (`Parser` protocol).

    `keep_payload=False` leaves `FeedReading.payload` empty (problems always carry theirs), for bulk loads
    that do not keep raw records.
    """

    feed = Feed.DEXCOM

    def __init__(self, *, keep_payload: bool = True) -> None:
        self.keep_payload = keep_payload
        self.skipped: dict[str, int] = {}  # always empty: every EGV record is a reading or a problem

    def parse(self, stream: IO[bytes], options: ParseOptions) -> Iterator[FeedItem]:
        del options  # Dexcom times are instants: no zone or date order is needed.
        top: dict[str, Any] = {}
        patient: PatientRef | None = None
        context = ""
        started = checked = False
        index = 0
        try:
            for event in stream_list(stream, "records", prelude_limit=PRELUDE_LIMIT):
                if isinstance(event, JsonItem):
                    index = event.number
                    if not checked:
                        _check_first_record(event.value)
                        checked = True
                    if event.problem:
                        yield FeedProblem(f"record {index}", event.problem, _compact(event.value), context, patient)
                    else:
                        yield _reading(event.value, index, patient, context, self.keep_payload)
                elif event is LIST_START:
                    started = True
                    _check_top(top)
                    patient, context = _patient(top.get("userId")), _context(top)
                    checked = checked or "recordType" in top
                elif isinstance(event, TopField) and not started:
                    _top_field(top, event)
        except JsonInputError as exc:
            if exc.kind == "encoding":
                raise FeedFormatError(str(exc)) from None
            if exc.kind == "syntax" and started:
                raise FeedFormatError(f"invalid JSON after record {index}: {exc}") from None
            detail = f"invalid JSON ({exc})" if exc.kind == "syntax" else str(exc)
            raise FeedFormatError(f"not a Dexcom EGV response: {detail}") from None
        if not started:
            raise FeedFormatError("not a Dexcom EGV response: no 'records' list")

    def parse_quarantined(self, payload: str, context: str, options: ParseOptions) -> Iterator[FeedItem]:
        del options
        try:
            top = loads_bounded(context) if context.strip() else {}
        except ValueError:
            raise FeedFormatError("the context of a quarantined Dexcom record is not JSON") from None
        if not isinstance(top, dict):
            raise FeedFormatError("the context of a quarantined Dexcom record is not a JSON object")
        try:
            record = loads_bounded(payload[: MAX_RECORD_BYTES + 1])
        except ValueError as exc:
            yield FeedProblem("record 1", f"record: {exc}", payload, context)
            return
        yield _reading(record, 1, _patient(top.get("userId")), _context(top), self.keep_payload)


def _top_field(top: dict[str, Any], field: TopField) -> None:
    """A top-level member before the records: the v2 marker, or recordType, recordVersion or userId."""
    if field.name == "egvs":
        raise FeedFormatError("a Dexcom API v2 response ('egvs'): only v3 /egvs responses are read")
    if field.name not in _TOP_FIELDS or field.value is CONTAINER:
        return
    value = field.value
    if isinstance(value, str):
        problem = too_long(field.name, value, MAX_KEY_CHARS)
        if "\x00" in value:
            problem = f"{field.name} holds a NUL character"
        if problem:
            raise FeedFormatError(f"not a Dexcom EGV response: {problem}")
    top[field.name] = value
    if field.name == "recordType":
        _check_top(top)


def _check_top(top: Mapping[str, Any]) -> None:
    record_type = top.get("recordType")
    if "recordType" in top and record_type != "egv":
        raise FeedFormatError(f"not a Dexcom EGV response: recordType is {shorten(record_type)} (expected 'egv')")


def _check_first_record(record: Any) -> None:
    """Without a recordType before the records, the first record must look like an EGV."""
    if not isinstance(record, dict) or not ("systemTime" in record or "recordId" in record):
        raise FeedFormatError("not a Dexcom EGV response: no recordType, and the first record has no systemTime")
