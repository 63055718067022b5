"""fetch → map → evaluate → draft (smart_app.pipeline): what was not read is unknown, never absent."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import responses

from smart_app.fhir.client import FhirClient
from smart_app.pipeline import review_patient
from smart_app.smart.scopes import ScopeSet

BASE = "https://ehr.example/fhir"
AS_OF = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
PATIENT_FILE = Path(__file__).resolve().parents[1] / "launch" / "data" / "patient-jkowalski.json"
ALL_READ = (
    "patient/Patient.r patient/Observation.rs patient/Condition.rs patient/Procedure.rs "
    "patient/MedicationStatement.rs patient/MedicationRequest.rs"
)
WRITES = " ".join(
    f"patient/{t}.crs"
    for t in ("ClinicalImpression", "ServiceRequest", "DetectedIssue", "Provenance", "Device")
)


def patient_resources() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    bundle = json.loads(PATIENT_FILE.read_text())
    resources = [entry["resource"] for entry in bundle["entry"]]
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    return patient, [r for r in resources if r["resourceType"] != "Patient"]


def serve(mock: responses.RequestsMock, *, condition_status: int = 200) -> None:
    patient, resources = patient_resources()
    mock.get(f"{BASE}/Patient/{patient['id']}", json=patient)
    for resource_type in (
        "Observation",
        "Condition",
        "Procedure",
        "MedicationStatement",
        "MedicationRequest",
    ):
        matching = [r for r in resources if r["resourceType"] == resource_type]
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": r} for r in matching],
        }
        status = condition_status if resource_type == "Condition" else 200
        body: dict[str, Any] = bundle
        if status != 200:
            body = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "forbidden"}]}
        mock.get(f"{BASE}/{resource_type}", json=body, status=status)


def run(scope: str) -> Any:
    client = FhirClient(BASE, token="t", max_retries=0)
    return review_patient(
        client, "jkowalski", ScopeSet.parse(scope), author="Practitioner/dr-ada", encounter=None, as_of=AS_OF
    )


def test_full_read_gives_the_probable_suggestion_and_a_writable_draft() -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        serve(mock)
        review = run(f"{ALL_READ} {WRITES}")
    assert review.assessment is not None
    assert review.assessment["classification"] == "probable"
    assert review.assessment["procedure_suggestion"] is not None
    assert review.assessment["unavailable"] == []
    assert review.can_write


@pytest.mark.parametrize("how", ["scope not granted", "read failed"])
def test_condition_not_read_withholds_the_suggestion_and_says_why(how: str) -> None:
    scope = ALL_READ if how == "read failed" else ALL_READ.replace("patient/Condition.rs ", "")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        serve(mock, condition_status=403 if how == "read failed" else 200)
        review = run(f"{scope} {WRITES}")
        condition_requests = [c for c in mock.calls if "/Condition" in c.request.url]
    assert (condition_requests == []) == (how == "scope not granted")
    assessment = review.assessment
    assert assessment is not None
    assert [item["resource_type"] for item in assessment["unavailable"]] == ["Condition"]
    assert how in assessment["unavailable"][0]["reason"]
    assert assessment["findings"]["LBP"]["status"] != "absent"
    assert assessment["procedure_suggestion"] is None
    assert assessment["classification"] != "unlikely"
    drafts = review.drafts
    assert drafts is not None
    assert "ServiceRequest" not in {entry["resource"]["resourceType"] for entry in drafts["entry"]}


def test_missing_write_scopes_are_named_and_block_the_write() -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        serve(mock)
        review = run(ALL_READ)
    assert set(review.missing_write_scopes) >= {"ClinicalImpression", "Provenance", "ServiceRequest"}
    assert not review.can_write
