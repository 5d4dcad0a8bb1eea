"""Build the same CGM readings as a FHIR NDJSON file and as HL7 v2 ORU^R01 messages (for cross-feed tests)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

START = datetime(2024, 3, 1, tzinfo=UTC)


def readings(n: int, *, seed: int = 3) -> list[tuple[datetime, int]]:
    """n readings 5 minutes apart with a few seconds of jitter, values covering every band."""
    out = []
    for i in range(n):
        moment = START + timedelta(minutes=5 * i, seconds=(i * seed) % 11)
        out.append((moment, 45 + (i * 29) % 300))
    return out


def fhir_ndjson(data: list[tuple[datetime, int]], patient: str = "Patient/fhir-1") -> bytes:
    lines = []
    for i, (moment, value) in enumerate(data):
        lines.append(json.dumps({
            "resourceType": "Observation", "id": f"obs-{i}", "status": "final",
            "identifier": [{"system": "urn:test:cgm", "value": f"obs-{i}"}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "99504-3"}]},
            "subject": {"reference": patient},
            "effectiveDateTime": moment.isoformat().replace("+00:00", "Z"),
            "valueQuantity": {"value": value, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"},
            "device": {"reference": "Device/g6-1", "display": "Dexcom G6"},
        }))  # fmt: skip
    return ("\n".join(lines) + "\n").encode()


def hl7_messages(
    data: list[tuple[datetime, int]],
    *,
    per_message: int = 12,
    control: str = "M",
    mrn: str = "MRN-1",
    offset_s: int = 2,
) -> list[str]:
    """ORU^R01 messages of `per_message` OBX each; the HL7 copy of a reading is `offset_s` later (another clock)."""
    messages = []
    for m, first in enumerate(range(0, len(data), per_message)):
        segments = [
            f"MSH|^~\\&|CGMHUB|HUB|GLUCOBRIDGE|SITE|20240301000000+0000||ORU^R01^ORU_R01|{control}{m:05d}|P|2.5.1",
            f"PID|1||{mrn}^^^SITE^MR||Test^Pat",
            "OBR|1|||99504-3^Glucose^LN",
        ]
        for k, (moment, value) in enumerate(data[first : first + per_message], start=1):
            stamp = (moment + timedelta(seconds=offset_s)).strftime("%Y%m%d%H%M%S") + "+0000"
            segments.append(f"OBX|{k}|NM|99504-3^Glucose^LN||{value}|mg/dL^mg/dL^UCUM|||||F|||{stamp}||||SN1^dexcom-g6")
        messages.append("\r".join(segments) + "\r")
    return messages
