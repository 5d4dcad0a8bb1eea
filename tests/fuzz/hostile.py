"""What the fuzz tests share: hostile values and byte mutations (hypothesis strategies), the checks every
parser's output must pass, and a fresh SQLite store per example for the CLI.

Settings: every test runs a fixed, derandomized set of examples (stable in CI, a few seconds each).
`GLUCOBRIDGE_FUZZ=long` runs fifty times as many, randomized, for a local hunt.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from app.cli import main
from bff.ingest.bounds import MAX_RECORD_BYTES
from bff.ingest.records import MAX_REASON_CHARS, FeedItem, FeedProblem, FeedReading
from bff.settings import get_settings
from bff.store.db import make_engine, upgrade
from tests.fuzz.feeds import LIBRE_HEADER, Raw, deep

LONG = os.environ.get("GLUCOBRIDGE_FUZZ") == "long"


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples * (50 if LONG else 1),
        deadline=None,
        derandomize=not LONG,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )


# MARK: hostile values

TIMES = [
    "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "0000-01-01T00:00:00Z", "1899-12-31T23:59:59Z",
    "2201-01-01T00:00:00Z", "1900-01-01T00:00:00-14:00", "2200-12-31T23:59:59+14:00", "99999-01-01T00:00:00Z",
    "2024-02-30T00:00:00Z", "2024-03-01T24:00:00Z", "2024-03-01T00:00:00+24:00", "2024-03-01", "20240301T000000Z",
    "2024-03-01T00:00:00.1234567890123+00:00", "1999-12-31T23:59:59Z", "2999-01-01T00:00:00Z",
]  # fmt: skip
LIBRE_TIMES = ["01-01-0001 12:00 AM", "12-31-9999 11:59 PM", "00-00-0000 00:00", "13-13-2024 10:00", "2024-03-13 25:00",
               "02-30-2024 10:00", "03-13-2024 13:00 PM", "03-13-1899 10:00", "03-13-2201 10:00"]  # fmt: skip
#: Bytes that are not UTF-8: Latin-1, overlong, an encoded surrogate, 0xFF, a lone continuation byte, a cut
#: sequence, a code point above U+10FFFF; and a NUL.
BAD_BYTES = [b"\xe9", b"\xc0\xaf", b"\xed\xa0\x80", b"\xff", b"\x80", b"\xe2\x82", b"\xf4\x90\x80\x80", b"\x00"]
HUGE = [1025, 131_073, MAX_RECORD_BYTES + 10]
#: In a CSV field: a line over MAX_RECORD_BYTES is cut, and what the cut part held (a quote) cannot be known, so
#: the line after it may be misread (as a problem of its own, never silently): tested apart from the counts.
HUGE_CSV = [1025, 131_073, 200_000]

text = st.text(max_size=40)
huge = st.sampled_from(HUGE).map(lambda n: "x" * n)
json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | text
)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=8
)
#: JSON values a parser must quarantine or refuse as a whole, written as raw bytes.
raw_json = st.one_of(
    st.sampled_from(BAD_BYTES).map(lambda bad: Raw(b'"ab' + bad + b'c"')),
    st.integers(65, 20_000).map(deep),
    st.sampled_from([b'"\\ud800"', b'"a\\u0000b"', b'"\\udfff\\ud800"', b"1" * 30, b"-1e400"]).map(Raw),
)
#: Raw JSON that breaks the syntax (the input is refused as a whole: a FeedFormatError, exit 2): integers past
#: 64 bits and numbers past a double overflow the tokeniser; a raw control character is not allowed in a string.
SYNTAX_BREAKERS = {b"1" * 30, b"-1e400", b'"ab\x00c"'}
json_hostile = st.one_of(json_values, st.sampled_from(TIMES), huge, raw_json)


def _full_width_line(value: str, width: int) -> bool:
    """A line inside `value` (neither its first nor its last) that reads as a whole record on its own: a field
    that holds one cannot be told from an unbalanced quote that swallowed a record (bff.ingest.csvrecords)."""
    return any(line.count(",") >= width - 1 for line in value.replace("\r", "\n").split("\n")[1:-1])


def csv_hostile(width: int, times: list[str]) -> st.SearchStrategy[Any]:
    """Values for one CSV field: any text (quoted as a writer would, so it may span lines), odd times, huge
    fields, bytes that are not UTF-8, NULs and stray or unbalanced quotes (raw, never quoted)."""
    return st.one_of(
        text.filter(lambda value: not _full_width_line(value, width)),
        text.map(lambda t: f"{t}\nsecond line"),
        st.sampled_from(times),
        st.sampled_from(HUGE_CSV).map(lambda n: "x" * n),
        st.sampled_from(BAD_BYTES).map(lambda bad: Raw(b"ab" + bad + b"c")),
        st.sampled_from([b'"', b'"abc', b'ab"c', b'"a""b', b'""', b'"x",y', b"\x00"]).map(Raw),
    )


# MARK: byte mutations


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> tuple[bytes, bool]:
    """`data` with 1–4 byte flips, inserts, deletes, truncations or duplications; and whether every change was
    in place (a flip or an insert: no record can vanish without a trace)."""
    in_place = True
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
        elif kind == "insert":
            piece = draw(
                st.sampled_from([b'"', b",", b"\n", b"\r", b"{", b"[", b"]", b"}", b"\\", b":", *BAD_BYTES])
                | st.binary(min_size=1, max_size=4)
            )
            data = data[:at] + piece + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 64)) :]
            in_place = False
        elif kind == "truncate":
            data = data[:at]
            in_place = False
        elif kind == "duplicate":
            data = data[:at] + data[at : at + draw(st.integers(1, 256))] + data[at:]
            in_place = False
    return data, in_place


# MARK: checks


EARLIEST_MS = int(datetime(1899, 12, 31, tzinfo=UTC).timestamp() * 1000)
LATEST_MS = int(datetime(2201, 1, 2, tzinfo=UTC).timestamp() * 1000)


def _text_ok(value: str, limit: int) -> None:
    assert len(value) <= limit, (limit, value[:80])
    assert "\x00" not in value
    value.encode("utf-8")  # no lone surrogate


def check_items(items: list[FeedItem]) -> None:
    """What every parser's output must be, whatever the input: bounded, encodable text and plausible times."""
    for item in items:
        if isinstance(item, FeedProblem):
            assert item.reason
            _text_ok(item.reason, MAX_REASON_CHARS)
            _text_ok(item.locator, 200)
            _text_ok(item.payload, MAX_RECORD_BYTES + 200)
            _text_ok(item.context, MAX_RECORD_BYTES + 200)
            continue
        assert isinstance(item, FeedReading)
        assert EARLIEST_MS <= item.time_ms <= LATEST_MS
        assert item.value is None or (math.isfinite(item.value) and item.value > 0)
        for key in (item.record_key, item.stream, item.session_key, item.sender):
            _text_ok(key, 1024)
        if item.patient is not None:
            _text_ok(item.patient.issuer, 300)
            _text_ok(item.patient.value, 300)
        for name, detail in item.extra.items():
            _text_ok(name, 64)
            _text_ok(detail, 1024)
        _text_ok(item.payload, MAX_RECORD_BYTES + 200)


def count_out(items: list[FeedItem], skipped: dict[str, int] | None) -> int:
    return len(items) + sum((skipped or {}).values())


# MARK: the CLI against a fresh store


@dataclass
class Outcome:
    code: int
    out: str
    err: str
    readings: int  # rows in the readings table afterwards

    @property
    def summary(self) -> dict[str, Any] | None:
        return json.loads(self.out) if self.out.startswith("{") else None

    def accounted(self) -> int:
        """Records the summary accounts for: stored, already present, quarantined, skipped."""
        s = self.summary
        assert s is not None
        return s["added"] + s["already_present"] + s["quarantined"] + sum(s["skipped"].values())


class Stores:
    """One migrated SQLite file, copied for each example (migrating takes longer than a small ingest)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.template = root / "template.db"
        engine = make_engine(f"sqlite:///{self.template}")
        upgrade(engine)
        engine.dispose()
        self.count = 0

    @contextmanager
    def fresh(self) -> Iterator[Path]:
        self.count += 1
        path = self.root / f"example-{self.count}.db"
        shutil.copy(self.template, path)
        previous = os.environ.get("DATABASE_URL")
        os.environ["DATABASE_URL"] = f"sqlite:///{path}"
        get_settings.cache_clear()
        try:
            yield path
        finally:
            if previous is None:
                os.environ.pop("DATABASE_URL", None)
            else:
                os.environ["DATABASE_URL"] = previous
            get_settings.cache_clear()
            path.unlink(missing_ok=True)

    def run(self, argv: list[str]) -> Outcome:
        with self.fresh() as path:
            out, err = io.StringIO(), io.StringIO()
            code = main(argv, out, err)
            with sqlite3.connect(path) as connection:
                (readings,) = connection.execute("SELECT count(*) FROM readings").fetchone()
        outcome = Outcome(code, out.getvalue(), err.getvalue(), readings)
        assert "Traceback" not in outcome.err
        assert "a defect in the" not in outcome.err, outcome.err  # the parser raised something unexpected
        assert outcome.code in (0, 2), outcome.err
        if outcome.code == 2:
            assert outcome.err.startswith("glucobridge: ")
            assert outcome.err.count("\n") == 1, outcome.err
        return outcome


LIBRE_WIDTH = len(LIBRE_HEADER)
