"""A window's raw data: the canonical NDJSON of exactly the readings an outcome used, and what names it.

The NDJSON is the input digest's input (docs/outcomes-method.md, bff.store.outcomes.readings_ndjson): one line per
reading, sorted by time then reading key, keys sorted, no spaces. Materialized standard outcomes keep only its
`RawDigest` (the NDJSON is made again from the readings when asked for), so an export names the raw data without
reading it. No database here: the FHIR builders use this too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import json.encoder
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

_json_text = json.encoder.encode_basestring_ascii  # what json.dumps writes for a str (ensure_ascii)


def canonical_line(key: str, t: int, value: float, unit: str, flag: int, device: str, feed: str, record: str) -> str:
    """One reading's canonical NDJSON line: exactly `json.dumps(StoredReading.canonical(), sort_keys=True,
    separators=(",", ":"))`, written out by hand (a recompute writes tens of thousands per patient)."""
    return (
        f'{{"device":{_json_text(device)},"feed":{_json_text(feed)},"flag":{int(flag)},"key":{_json_text(key)},'
        f'"record":{_json_text(record)},"t":{int(t)},"unit":{_json_text(unit)},"value":{_number(value)}}}'
    )


def _number(value: float) -> str:
    """A number as json.dumps writes it: an int as an int, a float by its repr (numpy scalars as Python's)."""
    if type(value) is int:
        return repr(value)
    number = float(value)
    return repr(number) if math.isfinite(number) else json.dumps(number)


def canonical_lines(
    keys: Sequence[str],
    times: NDArray[np.int64],
    values: NDArray[np.float64],
    units: Sequence[str],
    flags: NDArray[np.integer[Any]],
    devices: Sequence[str],
    feeds: Sequence[str],
    records: Sequence[str],
) -> list[str]:
    """`canonical_line` of many readings at once, the same text: each repeated string (unit, device, feed) is
    escaped once and the numbers are converted in C (`tests/store/test_rawdata.py` holds the two equal)."""
    if not np.isfinite(values).all():  # never, in practice: bounds refuse NaN and infinities
        return [canonical_line(*row) for row in zip(keys, times.tolist(), values.tolist(), units, flags.tolist(),
                                                    devices, feeds, records, strict=True)]  # fmt: skip

    def escaped(column: Sequence[str]) -> Iterator[str]:
        table = {v: _json_text(v) for v in set(column)}
        return map(table.__getitem__, column)

    return [
        f'{{"device":{d},"feed":{f},"flag":{g},"key":{k},"record":{r},"t":{t},"unit":{u},"value":{v}}}'
        for d, f, g, k, r, t, u, v in zip(
            escaped(devices), escaped(feeds), map(int.__repr__, flags.tolist()), map(_json_text, keys),
            map(_json_text, records), map(int.__repr__, times.tolist()), escaped(units),
            map(float.__repr__, values.astype(np.float64, copy=False).tolist()), strict=True,
        )
    ]  # fmt: skip


def ndjson_of_lines(lines: Sequence[str]) -> bytes:
    """Lines (already in canonical order) as the NDJSON document: one newline after each; empty for none."""
    return ("\n".join(lines) + "\n").encode() if lines else b""


@dataclass(frozen=True, slots=True)
class RawDigest:
    """What names a window's raw data without holding it: the SHA-256 of its canonical NDJSON (the input digest),
    the SHA-1 a FHIR Attachment carries (base64) and the size in bytes."""

    sha256: str
    sha1: str
    size: int

    @classmethod
    def of(cls, ndjson: bytes) -> RawDigest:
        sha1 = base64.b64encode(hashlib.sha1(ndjson).digest()).decode()  # FHIR Attachment.hash is SHA-1
        return cls(hashlib.sha256(ndjson).hexdigest(), sha1, len(ndjson))
