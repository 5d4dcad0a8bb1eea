"""The one-page AGP PDF: well formed, one Letter page, byte-identical, and says what it must.

Text is read back with pypdf (a dev dependency, pure Python): the report uses the standard Helvetica font, so
pypdf extracts its text exactly, without depending on poppler being installed.
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
from typing import Any

import pytest
from pypdf import PdfReader

from bff.resources.record import OutcomeRecord
from bff.resources.report_pdf import agp_report_pdf
from tests.resources.samples import sample_record
from tests.resources.test_note import empty_record, policy_record


def page_text(pdf: bytes) -> str:
    reader = PdfReader(io.BytesIO(pdf))
    assert len(reader.pages) == 1
    return reader.pages[0].extract_text()


def page_objects(pdf: bytes) -> int:
    """`/Type /Page` dictionaries (not `/Pages`); the report writes no object streams, so they are all visible."""
    return len(re.findall(rb"/Type\s*/Page(?![A-Za-z])", pdf))


def synthetic_traces(record: OutcomeRecord) -> list[dict[str, Any]]:
    """One trace per daily date: a smooth day curve in mg/dL with one break, as the engine's `agp.days`."""
    out = []
    for k, day in enumerate(record.document["daily"]):
        minutes: list[float | None] = []
        values: list[float | None] = []
        for minute in range(0, 1440, 5):
            if minute == 600:
                minutes.append(None)
                values.append(None)
            if 600 <= minute < 660:
                continue
            minutes.append(float(minute))
            values.append(140.0 + 90.0 * math.sin((minute / 1440.0 + k / 7.0) * 2 * math.pi))
        out.append({"date": day["date"], "minute": minutes, "value": values})
    return out


@pytest.fixture(scope="module")
def sufficient_pdf() -> bytes:
    return agp_report_pdf(sample_record())


@pytest.fixture(scope="module")
def insufficient_pdf() -> bytes:
    return agp_report_pdf(sample_record(days=7))


def test_is_a_one_page_letter_pdf(sufficient_pdf: bytes) -> None:
    assert sufficient_pdf.startswith(b"%PDF-")
    assert sufficient_pdf.rstrip().endswith(b"%%EOF")
    assert page_objects(sufficient_pdf) == 1
    page = PdfReader(io.BytesIO(sufficient_pdf)).pages[0]
    assert [round(float(v)) for v in page.mediabox] == [0, 0, 612, 792]  # US Letter portrait, points


def test_is_byte_identical(sufficient_pdf: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    assert agp_report_pdf(sample_record()) == sufficient_pdf
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234567890")  # no date is written, so no date source matters
    assert agp_report_pdf(sample_record()) == sufficient_pdf
    assert b"CreationDate" not in sufficient_pdf
    assert b"ModDate" not in sufficient_pdf


def test_contents_of_the_sufficient_report(sufficient_pdf: bytes) -> None:
    record = sample_record()
    text = page_text(sufficient_pdf)
    for expected in (
        "AGP Report: Continuous Glucose Monitoring",
        "Dana Demo, born 1971-05-04, MRN MRN123456",
        "Time zone America/New_York (from the EHR)",
        "2024-10-27 to 2024-11-09 (14 days)",
        "America/New_York",
        "Version 1",
        "Time in ranges".upper(),
        "Ambulatory Glucose Profile (AGP)".upper(),
        "Daily glucose profiles".upper(),
        "61.2 %",  # in range
        "4.2 %",  # very high
        "161 mg/dL",  # mean
        "7.2 %",  # GMI
        "32.6 %",  # CV
        "96.2 %",  # sensor active
        "Goal: >70 %",
        "00:00",
        "24:00",
        f"policy {record.policy_hash[:12]}",
        f"input {record.input_digest[:12]}",
        f"glucobridge engine {record.engine_version}",
        "method time",
        "page 1 of 1",
        "Sun Oct 27",
        "Sat Nov 9",
    ):
        assert expected in text, expected
    assert "INSUFFICIENT" not in text
    assert "CORRECTION" not in text


def test_insufficient_report_says_so(insufficient_pdf: bytes) -> None:
    assert page_objects(insufficient_pdf) == 1
    text = page_text(insufficient_pdf)
    assert "INSUFFICIENT DATA - not a complete picture" in text
    assert "window of 7 days is shorter than 14 days" in text
    assert "Dana Demo, born 1971-05-04" in text
    assert "2024-11-03 to 2024-11-09 (7 days)" in text
    assert agp_report_pdf(sample_record(days=7)) == insufficient_pdf


def test_correction_badge_and_footer() -> None:
    text = page_text(agp_report_pdf(sample_record(corrected=True)))
    assert "CORRECTION v2 replaces v1" in " ".join(text.split())
    assert "CORRECTION of version 1" in text
    assert "outcome version 2" in text


def test_mmol_report() -> None:
    record = sample_record()
    pdf = agp_report_pdf(record, unit="mmol/L")
    text = page_text(pdf)
    assert f"{record.metrics['mean_mg_dl'] / 18.0156:.1f} mmol/L" in text
    assert "9.0 mmol/L" in text
    assert "19.4" in text  # the AGP's y axis top
    assert "3.9-10.0 mmol/L" in text
    assert "mg/dL" not in text
    assert pdf != agp_report_pdf(record)


def test_unknown_unit_is_refused() -> None:
    with pytest.raises(ValueError, match="unit"):
        agp_report_pdf(sample_record(), unit="mmol")


def test_traces_argument_and_document_traces_draw_the_same_page() -> None:
    record = sample_record()
    traces = synthetic_traces(record)
    with_arg = agp_report_pdf(record, traces=traces)
    assert page_objects(with_arg) == 1
    assert with_arg != agp_report_pdf(record)  # lines instead of the per-day bars
    assert "green band: target range" in page_text(with_arg)
    document = dict(record.document)
    document["agp"] = {**record.document["agp"], "days": traces}
    in_document = dataclasses.replace(record, document=document)
    assert agp_report_pdf(in_document) == with_arg
    assert agp_report_pdf(in_document) == agp_report_pdf(in_document)


def test_engine_traces_render() -> None:
    record = policy_record(traces=True)
    assert record.document["agp"]["days"]
    pdf = agp_report_pdf(record, unit="mmol/L")
    assert page_objects(pdf) == 1
    assert "Sat Nov 9" in page_text(pdf)


def test_long_window_shows_the_last_fourteen_days() -> None:
    record = sample_record(days=30)
    text = page_text(agp_report_pdf(record))
    assert "the last 14 of 30 days are shown" in text
    assert "INSUFFICIENT DATA" in text
    for reason in record.document["sufficiency"]["reasons"]:
        assert reason in text


@pytest.mark.parametrize("targets", ["pregnancy", "older"])
def test_other_target_sets(targets: str) -> None:
    record = policy_record(targets)
    text = page_text(agp_report_pdf(record))
    assert targets in text
    if targets == "pregnancy":
        assert "In target (63-140 mg/dL)" in text
        assert "Above target (>140 mg/dL)" in text


def test_empty_window_renders() -> None:
    pdf = agp_report_pdf(empty_record())
    assert page_objects(pdf) == 1
    text = page_text(pdf)
    assert "no readings used in the window" in text
    assert "No glucose data in this window" in text
