"""`glucobridge ingest` and `glucobridge outcomes` on the inputs an attacker sent (issue 10), end to end.

Each test names the row of the issue's table it answers (2, 3, 4, 5, 6, 8) or the CLI rule it holds: a bad
record is quarantined and the rest stored (exit 0); a file none of whose records can be stored exits 2 with
the summary; a file that cannot be read exits 2 with one line and writes nothing; a database that is down
exits 3. Never a traceback, never exit 1.
"""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from app.cli import main
from app.cli import store as store_cli
from bff.settings import get_settings
from tests.fuzz.feeds import (
    CASES,
    ENGINE_COLUMN,
    LIBRE_COLUMN,
    FeedCase,
    Raw,
    deep,
    engine_file,
    engine_rows,
    fhir_ndjson,
    fhir_observations,
    libreview_rows,
    with_value,
)

Run = Callable[..., tuple[int, str, str]]
STRING_PATH = {"dexcom": ("transmitterId",), "fhir-bundle": ("device", "display"), "fhir-ndjson": ("device", "display")}


@pytest.fixture(name="db")
def fx_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh embedded (SQLite) store for the CLI."""
    path = tmp_path / "cli.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{path}")
    get_settings.cache_clear()
    yield path
    get_settings.cache_clear()


@pytest.fixture(name="run")
def fx_run(db: Path) -> Run:
    def run(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(list(argv), out, err)
        return code, out.getvalue(), err.getvalue()

    return run


def ingest(run: Run, tmp_path: Path, case: FeedCase, data: bytes) -> tuple[int, dict[str, Any], str]:
    path = tmp_path / f"input.{case.name}"
    path.write_bytes(data)
    code, out, err = run("ingest", str(path), "--feed", case.feed, "--site", "s", *case.cli_args)
    assert "Traceback" not in err
    return code, json.loads(out) if out else {}, err


def quarantine(run: Run) -> list[tuple[str, str]]:
    """(locator, reason) of each open quarantine item."""
    code, out, _ = run("quarantine", "list")
    assert code == 0
    if out.startswith("no open"):
        return []
    return [(line.split("\t")[4], line.split("\t")[5]) for line in out.splitlines()]


def five(case: FeedCase) -> list[Any]:
    """Five readings' records of the feed."""
    if case.name == "libreview":
        return [r for r in libreview_rows(12) if r[3] == "0"][:5]
    return case.records(5)


# MARK: row 2


@pytest.mark.parametrize("case", CASES.values(), ids=CASES)
def test_row2_ingest_quarantines_a_year_1_record_and_stores_the_rest(run: Run, tmp_path: Path, case: FeedCase) -> None:
    data = case.file(with_value(five(case), 2, case.time_path, case.year_1))
    code, summary, err = ingest(run, tmp_path, case, data)
    assert code == 0, err
    assert (summary["added"], summary["quarantined"]) == (4, 1)
    ((locator, reason),) = quarantine(run)
    assert locator == case.locator(2)
    assert "year 1 is outside 1900–2200" in reason


def test_row2_outcomes_with_a_year_9999_time_exits_2_naming_the_row(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(engine_file(with_value(engine_rows(5), 2, (1,), "9999-12-31T23:59:59-14:00")))
    code, out, err = run("outcomes", str(path))
    assert (code, out) == (2, "")
    assert err == "glucobridge: row 4: time '9999-12-31T23:59:59-14:00': year 9999 is outside 1900–2200: a device " \
        "clock that was never set, or a damaged date\n"  # fmt: skip
    code, out, err = run("outcomes", str(path), "--skip-invalid")
    assert code == 0
    assert err.startswith("skipped 1 invalid row(s); first: row 4: time")
    assert json.loads(out)["patients"][0]["metrics"]["readings_used"] == 4


# MARK: row 3


def test_row3_ingest_of_a_1500_row_export_with_an_unbalanced_quote_stores_every_other_row(
    run: Run, tmp_path: Path
) -> None:
    case = CASES["libreview"]
    rows = with_value(libreview_rows(1500), 9, (LIBRE_COLUMN["Notes"],), Raw(b'"an unbalanced quote'))
    code, summary, err = ingest(run, tmp_path, case, case.file(rows))
    assert code == 0, err
    notes = 150
    assert summary["added"] == 1500 - notes
    assert summary["quarantined"] == 1
    assert summary["skipped"] == {"note or time change": notes - 1}
    assert summary["added"] + summary["quarantined"] + sum(summary["skipped"].values()) == 1500
    ((locator, reason),) = quarantine(run)
    assert locator == "line 12"
    assert reason.startswith('unbalanced quote: a field opened with " runs into the lines after it')


# MARK: row 4


@pytest.mark.parametrize("case", [CASES[n] for n in STRING_PATH], ids=list(STRING_PATH))
def test_row4_ingest_of_json_nested_16000_deep_quarantines_that_record(
    run: Run, tmp_path: Path, case: FeedCase
) -> None:
    data = case.file(with_value(five(case), 2, STRING_PATH[case.name], deep(16_000)))
    code, summary, err = ingest(run, tmp_path, case, data)
    assert code == 0, err
    assert (summary["added"], summary["quarantined"]) == (4, 1)
    ((locator, reason),) = quarantine(run)
    assert locator == case.locator(2)
    assert reason.startswith("nested more than 64 levels deep")


# MARK: row 5


@pytest.mark.parametrize("case", CASES.values(), ids=CASES)
@pytest.mark.parametrize("bad", [b"\xe9", b"\xc0\xaf"], ids=["latin1", "overlong"])
def test_row5_ingest_of_bytes_that_are_not_utf8_quarantines_their_record(
    run: Run, tmp_path: Path, case: FeedCase, bad: bytes
) -> None:
    if case.name in STRING_PATH:
        path: tuple[Any, ...] = STRING_PATH[case.name]
        value = Raw(b'"caf' + bad + b'"')
    else:
        path, value = (0 if case.name == "libreview" else ENGINE_COLUMN["device"],), Raw(b"caf" + bad)
    data = case.file(with_value(five(case), 2, path, value))
    code, summary, err = ingest(run, tmp_path, case, data)
    assert code == 0, err
    assert (summary["added"], summary["quarantined"]) == (4, 1)
    ((locator, reason),) = quarantine(run)
    assert locator == case.locator(2)
    assert f"byte 0x{bad[0]:02X} at byte offset {data.index(b'caf' + bad) + 3:,} is not UTF-8" in reason


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (Raw(b"dexcom-g\xe9"), "row 4: byte 0xE9 at byte offset "),
        (Raw(b"dexcom-g\xc0\xaf"), "row 4: byte 0xC0 at byte offset "),
        ("x" * 131_073, "row 4: a field is 131,073 characters (at most 131,072)"),
        (Raw(b'"unbalanced'), 'row 4: unbalanced quote: a field opened with " runs into the lines after it'),
    ],
    ids=["latin1", "overlong", "field-over-the-csv-limit", "unbalanced-quote"],
)
def test_row5_outcomes_of_a_row_that_cannot_be_read_exits_2_naming_it(
    run: Run, tmp_path: Path, value: Any, message: str
) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(engine_file(with_value(engine_rows(5), 2, (ENGINE_COLUMN["device"],), value)))
    code, out, err = run("outcomes", str(path))
    assert (code, out) == (2, "")
    assert err.startswith(f"glucobridge: {message}")
    assert err.count("\n") == 1
    assert len(err) < 400
    code, out, err = run("outcomes", str(path), "--skip-invalid")
    assert code == 0
    assert err.startswith(f"skipped 1 invalid row(s); first: {message}")
    assert json.loads(out)["patients"][0]["metrics"]["readings_used"] == 4


# MARK: row 6


def test_row6_ingest_quarantines_a_multi_line_record_with_its_line_range_and_whole_text(
    run: Run, tmp_path: Path
) -> None:
    rows = with_value(engine_rows(4), 1, (ENGINE_COLUMN["device"],), "dexcom\nline")
    code, summary, err = ingest(run, tmp_path, CASES["csv"], engine_file(rows))
    assert code == 0, err
    assert (summary["added"], summary["quarantined"]) == (3, 1)
    code, out, _ = run("quarantine", "list")
    item_id, *_, locator, _reason = out.strip().split("\t")
    assert locator == "lines 3–4"
    code, out, _ = run("quarantine", "show", item_id)
    assert json.loads(out)["payload"] == 'P-fuzz,2024-03-01T00:05:00+00:00,87,mg/dL,"dexcom\nline",r-1'


# MARK: row 8


def test_row8_ingest_of_an_8_mb_trend_quarantines_the_record_and_stores_no_large_extra(
    run: Run, tmp_path: Path, db: Path
) -> None:
    case = CASES["dexcom"]
    data = case.file(with_value(case.records(5), 2, ("trend",), "u" * (8 * 2**20)))
    code, summary, err = ingest(run, tmp_path, case, data)
    assert code == 0, err
    assert (summary["added"], summary["quarantined"]) == (4, 1)
    code, out, _ = run("quarantine", "show", "1")
    assert len(json.loads(out)["payload"]) < 8 * 1024
    with sqlite3.connect(db) as connection:
        (longest,) = connection.execute("SELECT max(length(extra)) FROM readings").fetchone()
    assert longest < 1024


# MARK: exit codes


def test_a_file_whose_every_record_is_quarantined_exits_2_with_the_summary(run: Run, tmp_path: Path) -> None:
    not_cgm = [with_value([o], 0, ("code", "coding", 0, "code"), "2339-0")[0] for o in fhir_observations(20)]
    code, summary, err = ingest(run, tmp_path, CASES["fhir-ndjson"], fhir_ndjson(not_cgm))
    assert code == 2
    assert (summary["added"], summary["quarantined"]) == (0, 20)
    assert err.count("\n") == 1
    assert "none of its records could be stored: all 20 quarantined (first: line 1: code is not a CGM" in err
    assert len(quarantine(run)) == 20  # kept for review: the batch is committed


def test_a_file_that_cannot_be_read_exits_2_with_one_line_and_writes_nothing(
    run: Run, tmp_path: Path, db: Path
) -> None:
    case = CASES["dexcom"]
    data = case.file(case.records(30))[:-100]  # cut inside the last records
    code, summary, err = ingest(run, tmp_path, case, data)
    assert (code, summary) == (2, {})
    assert err.count("\n") == 1
    assert err.startswith("glucobridge: ")
    assert "invalid JSON after record 29" in err
    assert err.endswith("nothing from it was written\n")
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT count(*) FROM readings").fetchone() == (0,)


def test_a_parser_defect_exits_2_with_one_line_never_a_traceback(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken:
        feed = "csv"
        skipped: ClassVar[dict[str, int]] = {}

        def parse(self, stream: Any, options: Any) -> Iterator[Any]:
            yield from CASES["csv"].parser().parse(stream, options)
            raise KeyError("a bug")

    monkeypatch.setattr(store_cli, "parser_for", lambda feed: Broken())
    code, _, err = ingest(run, tmp_path, CASES["csv"], engine_file(engine_rows(3)))
    assert code == 2
    assert err == (
        f"glucobridge: {tmp_path / 'input.csv'}: the input could not be read after line 4 (KeyError): a defect in "
        "the csv parser, please report it with the file; nothing from it was written\n"
    )


def test_a_database_that_is_down_exits_3_with_one_line(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/nothing?connect_timeout=2")
    get_settings.cache_clear()
    code, summary, err = ingest(run, tmp_path, CASES["csv"], engine_file(engine_rows(3)))
    assert (code, summary) == (3, {})
    assert err == (
        "glucobridge: cannot open the database (OperationalError): nothing was done; run the command again once "
        "it is reachable\n"
    )
