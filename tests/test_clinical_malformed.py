"""Malformed input (``load_bundle``; docs/clinical-criteria.md#reading-the-record).

Unusable input raises `UnusableInput` with a one-line reason. A bad resource inside a usable Bundle never
stops the assessment: it is listed in `ignored` with a reason, and nothing raises.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime
from typing import Any

import orjson
import pytest

from smart_app.clinical import UnusableInput, assess, load_bundle

AS_OF = datetime.fromisoformat("2026-11-24T12:00:00+00:00")
SCT = "http://snomed.info/sct"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
APP = "https://smart-app.example/fhir/CodeSystem/back-mice-finding"
PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "birthDate": "1980-03-15",
    "name": [{"family": "Hartmann", "given": ["Clara"]}],
}
PRESENT = {"coding": [{"system": SCT, "code": "52101004", "display": "Present"}]}
ABSENT = {"coding": [{"system": SCT, "code": "2667000", "display": "Absent"}]}
LBP: dict[str, Any] = {
    "resourceType": "Condition",
    "id": "c-lbp",
    "clinicalStatus": {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
    },
    "code": {"coding": [{"system": ICD, "code": "M54.50"}]},
    "subject": {"reference": "Patient/p1"},
}
NODULE: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "o-nodule",
    "status": "final",
    "code": {"coding": [{"system": SCT, "code": "95325000"}]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2026-11-20T10:00:00Z",
    "valueCodeableConcept": PRESENT,
    "bodySite": {"coding": [{"system": SCT, "code": "77568009"}], "text": "left posterior iliac crest"},
}
REPRO: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "o-repro",
    "status": "final",
    "code": {"coding": [{"system": APP, "code": "nodule-pain-reproduced"}]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2026-11-20T10:00:00Z",
    "valueCodeableConcept": PRESENT,
}
BASE = [LBP, NODULE, REPRO]  # probable / diagnostic-injection


def bundle(*resources: Any, patient: Any = PATIENT) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": patient}, *({"resource": r} for r in resources)],
    }


def one_line_reason(data: bytes) -> str:
    with pytest.raises(UnusableInput) as info:
        load_bundle(data)
    reason = str(info.value)
    assert reason.strip() and "\n" not in reason.strip() and "Traceback" not in reason
    return reason


# ---------------------------------------------------------------------------------------------------
# Unusable input


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"   ",
        b'{"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Pat',
        b"\xff\xfe\x00garbage",
        b'<Bundle xmlns="http://hl7.org/fhir"/>',
        b"null",
        b"42",
        b'"Bundle"',
        b"[1, 2, 3]",
    ],
    ids=["empty", "blank", "truncated", "not-utf8", "xml", "null", "number", "string", "list"],
)
def test_not_json_or_not_an_object(data: bytes) -> None:
    one_line_reason(data)


@pytest.mark.parametrize(
    "doc",
    [
        PATIENT,
        {"resourceType": "Bundl", "type": "collection", "entry": [{"resource": PATIENT}]},
        {"resourceType": "bundle", "type": "collection", "entry": [{"resource": PATIENT}]},
        {"type": "collection", "entry": [{"resource": PATIENT}]},
        {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing"}]},
    ],
    ids=["patient-not-bundle", "misspelt", "lowercase", "no-resource-type", "operation-outcome"],
)
def test_not_a_bundle(doc: dict[str, Any]) -> None:
    one_line_reason(orjson.dumps(doc))


@pytest.mark.parametrize(
    "doc",
    [
        {"resourceType": "Bundle", "type": "collection"},
        {"resourceType": "Bundle", "type": "collection", "entry": []},
        {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": LBP}, {"resource": NODULE}]},
        {"resourceType": "Bundle", "type": "searchset", "entry": [{"fullUrl": "urn:x"}]},
    ],
    ids=["no-entry", "empty-entry", "only-clinical", "entries-without-resource"],
)
def test_no_patient(doc: dict[str, Any]) -> None:
    one_line_reason(orjson.dumps(doc))


def test_two_patients() -> None:
    other = {**PATIENT, "id": "p2"}
    reason = one_line_reason(orjson.dumps(bundle(LBP, other)))
    assert reason


# ---------------------------------------------------------------------------------------------------
# Usable Bundle, bad resources: assessment produced, bad resource reported


def assess_doc(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = assess(load_bundle(orjson.dumps(doc)), AS_OF).to_json()
    json.dumps(out, sort_keys=True)  # serialisable
    assert out["classification"] in {
        "red-flags",
        "not-consistent",
        "unlikely",
        "confirmed",
        "probable",
        "possible",
        "insufficient-data",
    }
    return out


def ignored_reason(out: dict[str, Any], reference: str) -> str:
    reasons = [i.get("reason") for i in out["ignored"] if i.get("reference") == reference]
    assert reasons, f"{reference} not in ignored: {out['ignored']}"
    assert all(isinstance(r, str) and r.strip() for r in reasons)
    return str(reasons[0])


def without(resource: dict[str, Any], *keys: str) -> dict[str, Any]:
    out = copy.deepcopy(resource)
    for key in keys:
        out.pop(key, None)
    return out


def drop_none(resource: Any) -> Any:
    """Top-level None marks an element removed from the template (nested None values are kept as junk)."""
    if not isinstance(resource, dict):
        return resource
    return {k: v for k, v in resource.items() if v is not None}


def pain(
    rid: str, value: Any, when: str = "2026-11-22T09:00:00Z", unit: str | None = "{score}"
) -> dict[str, Any]:
    quantity: dict[str, Any] = {"value": value}
    if unit:
        quantity.update({"unit": unit, "system": "http://unitsofmeasure.org", "code": unit})
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": when,
        "valueQuantity": quantity,
    }


BAD_REPORTED: list[tuple[str, dict[str, Any], str]] = [
    (
        "observation-no-status",
        {**without(NODULE, "status"), "id": "o-bad", "valueCodeableConcept": ABSENT},
        "Observation/o-bad",
    ),
    ("observation-no-code", {**without(NODULE, "code"), "id": "o-bad"}, "Observation/o-bad"),
    ("condition-no-subject", {**without(LBP, "subject"), "id": "c-bad"}, "Condition/c-bad"),
    (
        "observation-no-subject",
        {**without(NODULE, "subject"), "id": "o-bad", "valueCodeableConcept": ABSENT},
        "Observation/o-bad",
    ),
    ("pain-57", pain("o-pain", 57), "Observation/o-pain"),
    ("pain-negative", pain("o-pain", -1), "Observation/o-pain"),
    ("pain-string", pain("o-pain", "seven"), "Observation/o-pain"),
    ("pain-wrong-unit", pain("o-pain", 6, unit="mm[Hg]"), "Observation/o-pain"),
    (
        "year-9999",
        {
            **NODULE,
            "id": "o-bad",
            "effectiveDateTime": "9999-01-01T00:00:00Z",
            "valueCodeableConcept": ABSENT,
        },
        "Observation/o-bad",
    ),
    ("pain-year-9999", pain("o-pain", 9, when="9999-12-31"), "Observation/o-pain"),
]


@pytest.mark.parametrize(
    "bad,reference", [(b, r) for _, b, r in BAD_REPORTED], ids=[n for n, _, _ in BAD_REPORTED]
)
def test_bad_resource_is_reported_and_assessment_continues(bad: dict[str, Any], reference: str) -> None:
    out = assess_doc(bundle(*BASE, bad))
    ignored_reason(out, reference)
    # The bad resource decides nothing: the base record stays probable.
    assert out["classification"] == "probable"
    assert out["next_step"] == "diagnostic-injection"
    assert out["red_flags"] == []


ODD: list[tuple[str, Any]] = [
    (
        "date-garbage",
        {**NODULE, "id": "o-odd", "effectiveDateTime": "not-a-date", "valueCodeableConcept": ABSENT},
    ),
    (
        "date-feb-30",
        {**NODULE, "id": "o-odd", "effectiveDateTime": "2026-02-30", "valueCodeableConcept": ABSENT},
    ),
    ("date-number", {**NODULE, "id": "o-odd", "effectiveDateTime": 20261120, "valueCodeableConcept": ABSENT}),
    ("coding-not-list", {**NODULE, "id": "o-odd", "code": {"coding": {"system": SCT, "code": "2667000"}}}),
    ("coding-strings", {**NODULE, "id": "o-odd", "code": {"coding": ["95325000", None, 7]}}),
    ("code-string", {**NODULE, "id": "o-odd", "code": "95325000"}),
    ("value-cc-list", {**NODULE, "id": "o-odd", "valueCodeableConcept": [ABSENT]}),
    ("value-boolean-string", {**NODULE, "id": "o-odd", "valueBoolean": "no", "valueCodeableConcept": None}),
    ("bodysite-string", {**NODULE, "id": "o-odd", "bodySite": "lumbar"}),
    ("subject-int", {**NODULE, "id": "o-odd", "subject": {"reference": 1}}),
    ("subject-string", {**NODULE, "id": "o-odd", "subject": "Patient/p1"}),
    ("component-not-list", {**NODULE, "id": "o-odd", "component": {"code": "x"}}),
    (
        "component-junk",
        {**NODULE, "id": "o-odd", "component": [None, 3, {"code": None}, {"valueBoolean": True}]},
    ),
    ("status-int", {**NODULE, "id": "o-odd", "status": 1}),
    ("clinical-status-junk", {**LBP, "id": "c-odd", "clinicalStatus": {"coding": [{"code": "zzz"}]}}),
    ("verification-string", {**LBP, "id": "c-odd", "verificationStatus": "confirmed"}),
    ("onset-junk", {**LBP, "id": "c-odd", "clinicalStatus": None, "onsetDateTime": "yesterday"}),
    ("period-junk", {**without(NODULE, "effectiveDateTime"), "id": "o-odd", "effectivePeriod": "2026"}),
    ("meta-junk", {**NODULE, "id": "o-odd", "meta": {"versionId": 3, "lastUpdated": []}}),
    ("no-id", without(NODULE, "id")),
    ("id-int", {**NODULE, "id": 17}),
    ("no-resource-type", without(NODULE, "resourceType")),
    (
        "unknown-type",
        {
            "resourceType": "Encounter",
            "id": "e1",
            "status": "finished",
            "subject": {"reference": "Patient/p1"},
        },
    ),
    (
        "procedure-junk",
        {
            "resourceType": "Procedure",
            "id": "pr-odd",
            "status": "completed",
            "code": {"coding": [{"system": APP, "code": "therapeutic-nodule-injection"}]},
            "subject": {"reference": "Patient/p1"},
            "performedDateTime": "soon",
        },
    ),
    (
        "medication-junk",
        {
            "resourceType": "MedicationStatement",
            "id": "ms-odd",
            "status": "active",
            "medicationCodeableConcept": "ibuprofen",
            "subject": {"reference": "Patient/p1"},
        },
    ),
    (
        "relief-junk",
        {
            "resourceType": "Observation",
            "id": "o-relief",
            "status": "final",
            "code": {"coding": [{"system": APP, "code": "diagnostic-injection-relief"}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2026-11-18",
            "valueQuantity": {"value": "lots", "unit": "%"},
        },
    ),
    ("pain-huge", pain("o-pain", 1e308)),
    (
        "pain-answer-junk",
        {
            **pain("o-pain", 0),
            "valueQuantity": None,
            "valueCodeableConcept": {"coding": [{"system": "http://loinc.org", "code": "LA0000-0"}]},
        },
    ),
]


@pytest.mark.parametrize("odd", [o for _, o in ODD], ids=[n for n, _ in ODD])
def test_odd_resource_never_raises(odd: Any) -> None:
    out = assess_doc(bundle(*BASE, drop_none(odd)))
    # An undatable or unreadable resource never turns the probable base into something else.
    assert out["classification"] == "probable", out["ignored"]


@pytest.mark.parametrize(
    "entry",
    [
        None,
        "text",
        7,
        [],
        {"resource": None},
        {"resource": "Patient"},
        {"resource": []},
        {"fullUrl": "urn:uuid:1"},
        {"resource": {}},
    ],
    ids=[
        "null",
        "string",
        "number",
        "list",
        "resource-null",
        "resource-string",
        "resource-list",
        "no-resource",
        "resource-empty",
    ],
)
def test_non_dict_entries_are_skipped(entry: Any) -> None:
    doc = bundle(*BASE)
    doc["entry"].insert(1, entry)
    out = assess_doc(doc)
    assert out["classification"] == "probable"


@pytest.mark.parametrize("birth", ["19xx", "", "2030-01-01", 1980, None, "1950-02-30"])
def test_odd_birth_date(birth: Any) -> None:
    patient = drop_none({**PATIENT, "birthDate": birth})
    out = assess_doc(bundle(*BASE, patient=patient))
    assert out["classification"] == "probable"
    malformed = birth not in (None, "2030-01-01")
    paths = [(i["reference"], i.get("path")) for i in out["ignored"]]
    assert (("Patient/p1", "Patient.birthDate") in paths) is malformed
    if malformed:  # no age can be counted: age-new-onset is not raised, even with a recent onset
        recent = {**LBP, "onsetDateTime": "2026-11-10"}
        assert assess_doc(bundle(recent, NODULE, REPRO, patient=patient))["red_flags"] == []


def test_malformed_dates_are_reported_with_their_path_and_cost_nothing() -> None:
    """docs/clinical-criteria.md#malformed-dates: the element is treated as absent and reported; the
    resource is kept (a cancer history still blocks), even when it is used as evidence."""
    cancer = {
        "resourceType": "Condition",
        "id": "c-ca",
        "code": {"coding": [{"system": ICD, "code": "Z85.3"}]},
        "subject": {"reference": "Patient/p1"},
        "onsetPeriod": {"start": "2010-02-30", "end": "2011-01-01"},
        "recordedDate": "unknown",
    }
    nodule = {
        **without(NODULE, "effectiveDateTime"),
        "effectiveInstant": "now",
        "effectivePeriod": "2026",
        "issued": "2026-11-20T10:00:00Z",  # the time falls back to issued
    }
    out = assess_doc(bundle(LBP, nodule, REPRO, cancer))
    assert out["classification"] == "red-flags" and out["red_flags"][0]["evidence"] == ["Condition/c-ca"]
    assert out["findings"]["NODULE"]["status"] == "present"
    paths = sorted((i["reference"], i["path"]) for i in out["ignored"] if "path" in i)
    assert paths == [
        ("Condition/c-ca", "Condition.onsetPeriod.start"),
        ("Condition/c-ca", "Condition.recordedDate"),
        ("Observation/o-nodule", "Observation.effectiveInstant"),
        ("Observation/o-nodule", "Observation.effectivePeriod"),
    ]
    assert all("treated as absent" in i["reason"] for i in out["ignored"] if "path" in i)
    assert out["counts"]["ignored"] == len(out["ignored"])


@pytest.mark.parametrize(
    "bundle_type",
    ["collection", "searchset", "transaction", "batch", "batch-response", "transaction-response", "document"],
)
def test_any_bundle_type(bundle_type: str) -> None:
    doc = bundle(*BASE)
    doc["type"] = bundle_type
    if bundle_type.endswith("-response"):
        for entry in doc["entry"]:
            entry["response"] = {"status": "200 OK"}
        doc["entry"].append({"response": {"status": "404 Not Found"}})
    out = assess_doc(doc)
    assert out["classification"] == "probable"
