"""Write data/demo/patient-14d.csv: the bundled synthetic 14-day patient for `make demo`.

Deterministic (seeded). Dexcom G6 every 5 minutes, America/New_York, 2024-10-27 → 2024-11-10 so the window
crosses the fall-back DST change (a 25-hour day). It includes what the engine must handle: a sensor change
with a known session start and readings inside the warm-up, a 3-hour signal loss, a few nocturnal lows with a
sensor LOW, a HIGH after a missed bolus, and duplicate readings delivered by a second feed.

Run: .venv/bin/python scripts/make_demo_data.py
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "data" / "demo" / "patient-14d.csv"
START = datetime(2024, 10, 27, 4, 0, tzinfo=UTC)  # local midnight, New York (EDT)
STEP = timedelta(minutes=5)
SENSOR1 = START - timedelta(days=3)  # the first sensor was inserted three days before the window


def glucose(rng: np.random.Generator, n: int) -> np.ndarray:
    minutes = np.arange(n) * 5.0
    hour = ((minutes / 60.0) - 4.0) % 24.0  # local hour (EDT/EST is close enough for a shape)
    base = 135 + 25 * np.sin((hour - 9) / 24 * 2 * np.pi)
    meals = np.zeros(n)
    for meal_hour, size in ((7.5, 70), (12.5, 60), (19.0, 85)):
        since = (hour - meal_hour) % 24
        meals += size * np.where(since < 4, (since / 1.0) * np.exp(1 - since / 1.0), 0)
    noise = np.zeros(n)
    shocks = rng.normal(0, 4.0, n)
    for i in range(1, n):
        noise[i] = 0.93 * noise[i - 1] + shocks[i]
    return base + meals + noise * 3


def main() -> None:
    rng = np.random.default_rng(20241103)
    n = 14 * 288 + 12  # 14 days + the extra DST hour
    times = [START + i * STEP + timedelta(seconds=int(rng.integers(-20, 20))) for i in range(n)]
    values = glucose(rng, n)
    # Nocturnal lows on three nights, one reaching the sensor's LOW.
    for day, depth, length in ((2, 58, 9), (6, 48, 7), (11, 35, 8)):
        centre = day * 288 + 3 * 12
        dip = depth - values[centre - length : centre + length]
        values[centre - length : centre + length] += np.minimum(0, dip * np.hanning(2 * length))
    # A missed bolus: a long excursion above 250 that reaches HIGH.
    values[9 * 288 + 14 * 12 : 9 * 288 + 18 * 12] += np.hanning(48) * 260
    session_change = 8 * 288 + 10 * 12  # day 8, 10:00 local
    signal_loss = range(4 * 288 + 15 * 12, 4 * 288 + 18 * 12)  # 3 hours on day 4
    rows = []
    for i, (moment, value) in enumerate(zip(times, values, strict=True)):
        if i in signal_loss:
            continue
        if session_change <= i < session_change + 6:
            continue  # the sensor is being changed; nothing is sent
        session_start = START + session_change * STEP + timedelta(minutes=30) if i >= session_change else SENSOR1
        text = f"{round(float(value))}"
        if value < 40:
            text = "LOW"
        elif value > 400:
            text = "HIGH"
        rows.append(
            {
                "patient_id": "demo-001",
                "time": moment.isoformat().replace("+00:00", "Z"),
                "value": text,
                "unit": "mg/dL",
                "device": "dexcom-g6",
                "session_id": "s2" if i >= session_change else "s1",
                "session_start": session_start.isoformat().replace("+00:00", "Z"),
                "source": "vendor",
                "record_id": f"egv-{i:05d}",
                "tz": "America/New_York",  # the patient's zone, stated by the file (never a silent UTC)
            }
        )
    # The EHR's FHIR feed re-delivers a day of the same readings a few seconds later.
    for row in rows[3 * 288 : 3 * 288 + 60]:
        copy = dict(row)
        copy["time"] = (datetime.fromisoformat(row["time"]) + timedelta(seconds=7)).isoformat().replace("+00:00", "Z")
        copy["source"] = "fhir"
        copy["record_id"] = "obs-" + row["record_id"]
        rows.append(copy)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} readings to {OUT}")


if __name__ == "__main__":
    main()
