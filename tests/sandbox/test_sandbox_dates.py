"""Living demo data: the sandbox moves every FHIR date of its records by whole days at load time, so the
records keep their shape relative to "today" whenever they are loaded (setting ``DATES``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fhir.resources import fhirtypes, get_fhir_model_class

from launch.data import ANCHOR_DATE, DATA_DIR
from launch.sandbox import create_app, date_shift
from launch.sandbox.dates import shift_dates, shift_value

DATA_FILES = sorted(DATA_DIR.rglob("*.json"))
DATE_TYPES = (fhirtypes.Date, fhirtypes.DateTime, fhirtypes.Instant)
Path_ = tuple[str | int, ...]


@pytest.mark.parametrize(
    ("value", "days", "expected"),
    [
        ("2026-11-20", 10, "2026-11-30"),
        ("2026-11-20T10:30:00Z", 41, "2026-12-31T10:30:00Z"),
        ("2026-11-20T10:30:00.125+05:30", -365, "2025-11-20T10:30:00.125+05:30"),
        ("2024-02-29", 365, "2025-02-28"),
        ("1968-12-02", 365, "1969-12-02"),
        ("2016-02", 365, "2017-02"),  # a month stays a month: its middle is moved
        ("2016-02", 10, "2016-02"),
        ("2016", 200, "2017"),  # a year stays a year
        ("2016", 100, "2016"),
        ("MRN-100891", 10, "MRN-100891"),
        ("10:30:00", 10, "10:30:00"),
        ("2026-11-20T10:30", 10, "2026-11-20T10:30"),  # not a FHIR dateTime (no seconds, no zone)
    ],
)
def test_shift_value(value, days, expected):
    assert shift_value(value, days) == expected


def test_only_date_elements_move():
    resource = {
        "resourceType": "Observation",
        "identifier": [{"value": "2026-11-20"}],
        "valueString": "2026-11-20",
        "effectiveDateTime": "2026-11-20T10:30:00Z",
        "meta": {"lastUpdated": "2026-11-22T09:30:00Z", "versionId": "1"},
        "extension": [{"url": "https://x.test/when", "valueDate": "2026-11-20"}],
        "valueQuantity": {"value": 2026},
    }
    moved = shift_dates(resource, 1)
    assert moved["identifier"] == resource["identifier"] and moved["valueString"] == "2026-11-20"
    assert moved["effectiveDateTime"] == "2026-11-21T10:30:00Z"
    assert moved["meta"] == {"lastUpdated": "2026-11-23T09:30:00Z", "versionId": "1"}
    assert moved["extension"][0]["valueDate"] == "2026-11-21" and moved["valueQuantity"] == {"value": 2026}
    assert resource["effectiveDateTime"] == "2026-11-20T10:30:00Z"  # the input is not changed


def _date_paths(value: dict[str, Any], model: Any, path: Path_ = ()) -> Iterator[Path_]:
    """Where the R4 model (fhir.resources, generated from the specification) says a date, dateTime or
    instant is: the oracle for which values must move."""
    fields = {field.alias: field for field in model.__fields__.values()}
    for key, item in value.items():
        if key == "resourceType":
            continue
        field = fields[key]
        elements = list(enumerate(item)) if isinstance(item, list) else [(None, item)]
        for index, element in elements:
            where = (*path, key) if index is None else (*path, key, index)
            if isinstance(field.type_, type) and issubclass(field.type_, DATE_TYPES):
                yield where
            elif isinstance(element, dict):
                kind = element.get("resourceType") or field.type_.__resource_type__
                yield from _date_paths(element, get_fhir_model_class(kind), where)


def _get(value: Any, path: Path_) -> Any:
    for step in path:
        value = value[step]
    return value


def _moved_paths(before: Any, after: Any, path: Path_ = ()) -> Iterator[Path_]:
    if isinstance(before, dict):
        for key in before:
            yield from _moved_paths(before[key], after[key], (*path, key))
    elif isinstance(before, list):
        for index, item in enumerate(before):
            yield from _moved_paths(item, after[index], (*path, index))
    elif before != after:
        yield path


@pytest.mark.parametrize("path", DATA_FILES, ids=lambda p: str(p.relative_to(DATA_DIR)))
def test_every_date_of_the_records_moves_and_nothing_else(path: Path):
    bundle = json.loads(path.read_text(encoding="utf-8"))
    expected = set(_date_paths(bundle, get_fhir_model_class("Bundle")))
    assert any(p[-1] == "birthDate" for p in expected) or "encounters" in path.parts
    assert set(_moved_paths(bundle, shift_dates(bundle, 365))) == expected


def _as_instant(value: str) -> datetime:
    if "T" in value:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


@pytest.mark.parametrize("path", DATA_FILES, ids=lambda p: str(p.relative_to(DATA_DIR)))
def test_records_keep_their_shape_relative_to_the_anchor(path: Path):
    """Shifted to today and to a year from today, every date stands where it stood from the anchor."""
    bundle = json.loads(path.read_text(encoding="utf-8"))
    paths = list(_date_paths(bundle, get_fhir_model_class("Bundle")))
    today = datetime.now(UTC).date()
    for target in (today, today + timedelta(days=365)):
        moved = shift_dates(bundle, (target - ANCHOR_DATE).days)
        for where in paths:
            stored, shifted = _get(bundle, where), _get(moved, where)
            assert len(shifted) == len(stored) and shifted[10:] == stored[10:]  # precision, time and zone
            anchor = datetime.combine(ANCHOR_DATE, datetime.min.time(), UTC)
            goal = datetime.combine(target, datetime.min.time(), UTC)
            assert _as_instant(shifted) - goal == _as_instant(stored) - anchor, where


def _store_dates(app: Any) -> tuple[str, str, str]:
    store = app.extensions["sandbox"].store
    return (
        store.read("Patient", "lchen")["birthDate"],
        store.read("Observation", "lchen-obs-pain")["effectiveDateTime"],
        store.read("Encounter", "lchen-enc-20261122")["period"]["start"],
    )


def test_the_setting_chooses_today_the_stored_dates_or_a_given_day(signing_key_path):
    def app(dates: Any) -> Any:
        return create_app({"TESTING": True, "SIGNING_KEY_PATH": str(signing_key_path), "DATES": dates})

    assert _store_dates(app("stored")) == ("1968-12-02", "2026-11-22T09:15:00Z", "2026-11-22T09:00:00Z")
    pinned = app("2030-01-15")
    days = (date(2030, 1, 15) - ANCHOR_DATE).days
    assert _store_dates(pinned) == ("1972-01-24", "2030-01-13T09:15:00Z", "2030-01-13T09:00:00Z")
    assert pinned.extensions["sandbox"].store.read("Observation", "lchen-obs-pain")["meta"][
        "lastUpdated"
    ] == shift_value("2026-11-22T09:30:00Z", days)
    assert _store_dates(app(date(2030, 1, 15))) == _store_dates(pinned)
    today = datetime.now(UTC).date()
    assert (
        date_shift({"DATES": "today", "DATA_ANCHOR": ANCHOR_DATE.isoformat()}) == (today - ANCHOR_DATE).days
    )
    assert _store_dates(app("today"))[1] == shift_value("2026-11-22T09:15:00Z", (today - ANCHOR_DATE).days)
    with pytest.raises(ValueError, match="DATES"):
        app("yesterday")


def _patient_bundle(app: Any, patient_id: str) -> bytes:
    """The patient's record as the sandbox serves it (after the shift), as a collection Bundle."""
    store = app.extensions["sandbox"].store
    resources = [store.read("Patient", patient_id)]
    for rtype in ("Condition", "Observation", "Procedure", "MedicationStatement", "MedicationRequest"):
        resources += store.search(rtype, [("patient", patient_id)])
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}
    return json.dumps(bundle).encode()


def test_every_patient_is_assessed_the_same_now_and_a_year_from_now(signing_key_path):
    from smart_app.clinical import assess, load_bundle

    now = datetime.now(UTC)
    later = now + timedelta(days=365)
    readings: dict[datetime, dict[str, Any]] = {}
    for moment in (now, later):
        app = create_app(
            {"TESTING": True, "SIGNING_KEY_PATH": str(signing_key_path), "DATES": moment.date().isoformat()}
        )
        patients = sorted(p["id"] for p in app.extensions["sandbox"].store.all_of_type("Patient"))
        assert len(patients) >= 8
        readings[moment] = {}
        for patient_id in patients:
            result = assess(load_bundle(_patient_bundle(app, patient_id)), moment).to_json()
            readings[moment][patient_id] = (
                result["classification"],
                result["next_step"],
                sorted(flag["id"] for flag in result["red_flags"]),
                result["procedure_suggestion"] is not None,
            )
    assert readings[now] == readings[later]
    assert {reading[0] for reading in readings[now].values()} >= {"confirmed", "probable", "possible"}
