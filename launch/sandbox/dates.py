"""Shifting a record's FHIR dates by whole days, so stored demo data stays as recent as when written.

FHIR R4 "Data Types" §2.24.0.1: ``date`` is ``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD``; ``dateTime`` adds
``Thh:mm:ss[.fff]`` with a required time zone; ``instant`` is a full dateTime. Shifting the calendar
date by N days and keeping the time of day and the zone moves an instant by exactly N × 24 hours. A
partial date keeps its precision: the middle of its month or year is shifted and the result is the
month or year that middle falls in.

JSON carries no types, so a string is taken for a date when its element is one of the R4 date, dateTime
or instant elements (named ``...Date``, ``...DateTime``, ``...Instant``, or one of ``DATE_ELEMENTS``)
and it is lexically one; anything else (identifiers, codes, text) is left alone.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Any

#: R4 elements of type date, dateTime or instant whose names do not end in Date/DateTime/Instant.
DATE_ELEMENTS = frozenset(
    {
        "authored",  # QuestionnaireResponse
        "authoredOn",  # MedicationRequest, ServiceRequest, Task, DeviceRequest, ...
        "created",  # Claim, CarePlan, Appointment, ...
        "creation",  # Attachment
        "date",  # ClinicalImpression, Composition, DocumentReference, List, ...
        "dateTime",  # Consent
        "end",  # Period, Appointment, Slot
        "event",  # Timing
        "issued",  # Observation, DiagnosticReport, Media
        "lastModified",  # Task, Bundle.entry.response
        "lastOccurrence",  # AllergyIntolerance
        "lastUpdated",  # Meta
        "received",  # Communication
        "receivedTime",  # Specimen
        "recorded",  # Provenance, AuditEvent
        "sent",  # Communication
        "start",  # Period, Appointment, Slot
        "started",  # ImagingStudy
        "time",  # Annotation
        "timestamp",  # Bundle
        "when",  # Signature
        "whenHandedOver",  # MedicationDispense
        "whenPrepared",  # MedicationDispense
    }
)
DATE_SUFFIXES = ("Date", "DateTime", "Instant")
#: A FHIR date (any precision), optionally followed by a time with its zone (dateTime, instant).
DATE_VALUE = re.compile(
    r"^(?P<year>[0-9]{4})(?:-(?P<month>[0-9]{2})(?:-(?P<day>[0-9]{2})"
    r"(?P<time>T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:Z|[+-][0-9]{2}:[0-9]{2}))?)?)?$"
)


def is_date_element(name: str) -> bool:
    return name.endswith(DATE_SUFFIXES) or name in DATE_ELEMENTS


def shift_value(value: str, days: int) -> str:
    """``value`` (a FHIR date, dateTime or instant) moved by ``days``; other strings unchanged."""
    match = DATE_VALUE.match(value)
    if match is None or days == 0:
        return value
    year = int(match["year"])
    if match["day"] is not None:
        moved = date(year, int(match["month"]), int(match["day"])) + timedelta(days=days)
        return moved.isoformat() + (match["time"] or "")
    if match["month"] is not None:
        moved = date(year, int(match["month"]), 15) + timedelta(days=days)
        return f"{moved.year:04d}-{moved.month:02d}"
    moved = date(year, 7, 2) + timedelta(days=days)
    return f"{moved.year:04d}"


def shift_dates(value: Any, days: int, name: str = "") -> Any:
    """A copy of ``value`` (a resource, a Bundle, any JSON) with every date element moved by ``days``.
    Extensions' ``valueDate``/``valueDateTime``/``valueInstant`` are moved too; ``div`` narrative is not
    (the sandbox's records carry none)."""
    if isinstance(value, dict):
        return {key: shift_dates(item, days, key) for key, item in value.items()}
    if isinstance(value, list):
        return [shift_dates(item, days, name) for item in value]
    if isinstance(value, str) and is_date_element(name):
        return shift_value(value, days)
    return value


def parse_dates_setting(setting: str, today: date) -> date | None:
    """The day the anchor is moved to for the ``DATES`` setting: "today", "stored" (``None``: no
    shift) or an ISO date ``YYYY-MM-DD``."""
    if setting == "today":
        return today
    if setting == "stored":
        return None
    try:
        return date.fromisoformat(setting)
    except ValueError:
        raise ValueError(f'DATES must be "today", "stored" or a date YYYY-MM-DD, not {setting!r}') from None
