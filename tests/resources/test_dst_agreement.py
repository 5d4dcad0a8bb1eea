"""A window across a DST change (America/New_York, 27 Oct – 9 Nov 2024, DST ends 3 Nov): the view, the PDF, the note,
the FHIR resources and the ORU^R01 name the same local days and zone, and the 25-hour day holds 25 hours."""

from __future__ import annotations

import io

from pypdf import PdfReader

from app.web.presenters import ZoneView, summary_view
from bff.hl7 import parse_message
from bff.resources.fhir import outcome_bundle
from bff.resources.note import outcome_note
from bff.resources.oru import build_oru
from bff.resources.report_pdf import agp_report_pdf
from tests.resources.samples import sample_record


def test_view_pdf_note_fhir_and_oru_agree_on_local_days_across_dst() -> None:
    record = sample_record()
    assert record.tz == "America/New_York"
    daily = {d["date"]: d["readings"] for d in record.document["daily"]}
    assert len(daily) == 14
    assert daily["2024-11-03"] == 300  # 25 local hours × 12 readings: the fall-back day is 25 hours long
    assert daily["2024-11-02"] <= 288  # a 24-hour day (a few readings missing)

    view = summary_view(record.document, 14, "mg/dL", ZoneView(record.tz, record.tz_source))
    assert view.period_text == "27 Oct – 9 Nov 2024 (14 days)"
    assert view.zone.label == "America/New_York (from the EHR)"
    assert view.daily is not None
    dates = [panel.date for panel in view.daily.panels]
    assert (len(dates), dates[0], dates[-1]) == (14, "2024-10-27", "2024-11-09")  # local days, one panel each

    note = outcome_note(record)
    assert "Period:    2024-10-27 to 2024-11-09 (14 days)" in note
    assert "Time zone: America/New_York (from the EHR)" in note

    pdf = "".join(page.extract_text() for page in PdfReader(io.BytesIO(agp_report_pdf(record))).pages)
    assert "2024-10-27 to 2024-11-09" in pdf
    assert "America/New_York (from the EHR)" in pdf

    bundle = outcome_bundle(record)
    summary = next(e["resource"] for e in bundle["entry"]
                   if e["resource"]["resourceType"] == "Observation" and e["resource"]["code"]["coding"][0]["code"]
                   == "107931-8")  # fmt: skip
    # Local midnights with their own offsets: EDT (−04:00) at the start, EST (−05:00) after the change.
    assert summary["effectivePeriod"] == {"start": "2024-10-27T00:00:00-04:00", "end": "2024-11-10T00:00:00-05:00"}

    obr = parse_message(build_oru(record).text).segment("OBR")
    assert obr is not None
    assert (obr.field(7), obr.field(8)) == ("20241027000000-0400", "20241110000000-0500")
