"""The sandbox's synthetic data: the patients' records (``patient-*.json``) and their visits
(``encounters/``).

The records keep fixed dates written around ``ANCHOR_DATE``. The sandbox shifts every FHIR date, dateTime
and instant in them by the same whole number of days when it loads them (setting ``DATES``), so that by
default the anchor falls on today and the records look the same whenever the demo runs.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent

#: The day the stored records treat as "today": their newest entries are a few days before it, and the
#: clinical cases made from them are evaluated on it.
ANCHOR_DATE = date(2026, 11, 24)
