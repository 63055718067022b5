"""Builders of small FHIR R4 records for the clinical unit tests (no tests here)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from smart_app.clinical import assess, load_bundle

AS_OF = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
FIRST_RELEASE = "1.0.0"
SCT = "http://snomed.info/sct"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
APP = "https://smart-app.example/fhir/CodeSystem/back-mice-finding"
PRESENT = {"coding": [{"system": SCT, "code": "52101004", "display": "Present"}]}
ABSENT = {"coding": [{"system": SCT, "code": "2667000", "display": "Absent"}]}
SUBJECT = {"reference": "Patient/p1"}


def patient(birth: str | None = "1980-05-01", pid: str = "p1") -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "Patient", "id": pid}
    if birth:
        res["birthDate"] = birth
    return res


def cond(
    cid: str,
    code: str,
    system: str = ICD,
    clinical: str | None = "active",
    verification: str | None = "confirmed",
    **extra: Any,
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Condition",
        "id": cid,
        "subject": SUBJECT,
        "code": {"coding": [{"system": system, "code": code}]},
    }
    if clinical:
        res["clinicalStatus"] = {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": clinical}
            ]
        }
    if verification:
        res["verificationStatus"] = {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": verification}
            ]
        }
    res.update(extra)
    return res


def obs(
    oid: str,
    code: str,
    system: str = SCT,
    value: Any = "present",
    when: str | None = "2026-11-20T09:00:00Z",
    status: str = "final",
    site: str | dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": status,
        "subject": SUBJECT,
        "code": {"coding": [{"system": system, "code": code}]},
    }
    if when:
        res["effectiveDateTime"] = when
    if value == "present":
        res["valueCodeableConcept"] = PRESENT
    elif value == "absent":
        res["valueCodeableConcept"] = ABSENT
    elif isinstance(value, bool):
        res["valueBoolean"] = value
    elif isinstance(value, dict):
        res.update(value)
    if isinstance(site, str):
        res["bodySite"] = {"text": site}
    elif site is not None:
        res["bodySite"] = site
    res.update(extra)
    return res


def pain(oid: str, score: Any, when: str = "2026-11-22T09:00:00Z", **extra: Any) -> dict[str, Any]:
    return obs(oid, "72514-3", LOINC, value={"valueInteger": score}, when=when, **extra)


def proc(pid: str, code: str, when: str | None = "2026-10-01", status: str = "completed") -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Procedure",
        "id": pid,
        "status": status,
        "subject": SUBJECT,
        "code": {"coding": [{"system": APP, "code": code}]},
    }
    if when:
        res["performedDateTime"] = when
    return res


def lbp(cid: str = "c-lbp", **kw: Any) -> dict[str, Any]:
    return cond(cid, "M54.50", **kw)


def nodule(
    oid: str = "o-nod", value: Any = "present", site: Any = "left posterior iliac crest", **kw: Any
) -> dict[str, Any]:
    return obs(oid, "95325000", value=value, site=site, **kw)


def repro(oid: str = "o-rep", value: Any = "present", **kw: Any) -> dict[str, Any]:
    return obs(oid, "nodule-pain-reproduced", APP, value=value, **kw)


def relief(
    oid: str = "o-rel", percent: float | None = 90, code: str | None = None, **kw: Any
) -> dict[str, Any]:
    if code is not None:
        value: dict[str, Any] = {"valueCodeableConcept": {"coding": [{"system": APP, "code": code}]}}
    else:
        value = {
            "valueQuantity": {
                "value": percent,
                "unit": "%",
                "system": "http://unitsofmeasure.org",
                "code": "%",
            }
        }
    return obs(oid, "diagnostic-injection-relief", APP, value=value, **kw)


def probable() -> list[dict[str, Any]]:
    return [lbp(), nodule(), repro()]


def confirmed() -> list[dict[str, Any]]:
    return [*probable(), relief()]


def bundle_bytes(
    *resources: dict[str, Any], pat: dict[str, Any] | None = None, btype: str = "collection"
) -> bytes:
    entries = [{"resource": pat or patient()}] + [{"resource": r} for r in resources]
    return orjson.dumps({"resourceType": "Bundle", "type": btype, "entry": entries})


def run(
    *resources: dict[str, Any],
    pat: dict[str, Any] | None = None,
    as_of: datetime = AS_OF,
    criteria: str = FIRST_RELEASE,
) -> dict[str, Any]:
    """The assessment JSON under criteria ``criteria`` (default 1.0.0, the release the unit tests of the
    engine were written against; 1.1.0 differences are tested by name)."""
    record = load_bundle(bundle_bytes(*resources, pat=pat))
    out: dict[str, Any] = assess(record, as_of, criteria).to_json()
    return out


def ignored(out: dict[str, Any]) -> dict[str, str]:
    return {i["reference"]: i["reason"] for i in out["ignored"]}


def flags(out: dict[str, Any]) -> dict[str, str]:
    return {f["id"]: f["level"] for f in out["red_flags"]}
