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


# -- reading only what decides ---------------------------------------------------------------------------
LADDER_TYPES = ("Procedure", "MedicationStatement", "MedicationRequest")


def searched(mock: responses.RequestsMock) -> list[str]:
    """The resource types the read asked the server for, in request order."""
    return [c.request.url.split("/fhir/", 1)[1].split("?")[0].split("/")[0] for c in mock.calls]


def test_a_patient_off_the_ladder_costs_three_round_trips() -> None:
    """jkowalski is 'probable': the Procedure and medication searches decide nothing for them."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        serve(mock)
        review = run(f"{ALL_READ} {WRITES}")
        asked = searched(mock)
    assert sorted(asked) == ["Condition", "Observation", "Patient"]
    assert review.fetch.round_trips == 3
    assert review.fetch.not_needed == list(LADDER_TYPES)
    assert review.assessment is not None and review.assessment["unavailable"] == []


def serve_record(
    mock: responses.RequestsMock, patient: dict[str, Any], resources: list[dict[str, Any]]
) -> None:
    mock.get(f"{BASE}/Patient/{patient['id']}", json=patient)
    for resource_type in ("Observation", "Condition", *LADDER_TYPES):
        found = [r for r in resources if r["resourceType"] == resource_type]
        bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in found]}
        mock.get(f"{BASE}/{resource_type}", json=bundle)


def test_a_patient_on_the_ladder_has_the_ladder_types_read_after_the_classification() -> None:
    """A confirmed back mouse (case 024): the ladder's types are read in a second step, and the NSAID
    they hold decides the step."""
    case = json.loads(
        (Path(__file__).parent / "cases" / "024-ladder-nsaid-statement-active.json").read_text()
    )
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        serve_record(mock, case["patient"], case["resources"])
        client = FhirClient(BASE, token="t", max_retries=0)
        review = review_patient(
            client, "p1", ScopeSet.parse(f"{ALL_READ} {WRITES}"), author=None, encounter=None, as_of=AS_OF
        )
        asked = searched(mock)
    assert review.assessment is not None
    assert review.assessment["classification"] == "confirmed"
    assert review.assessment["next_step"] == case["expected"]["next_step"]
    assert sorted(asked[:3]) == ["Condition", "Observation", "Patient"]
    assert sorted(asked[3:]) == sorted(LADDER_TYPES)
    assert review.fetch.not_needed == [] and review.fetch.round_trips == 6
    assert review.fetch.counts["MedicationStatement"] == 1
    assert "MedicationStatement/ms-ibu" in [s["reference"] for s in review.assessment["sources"]]


def test_unread_ladder_types_without_scope_are_still_reported_unavailable() -> None:
    """A type not granted is unreadable whether or not the ladder is reached, as before."""
    scope = ALL_READ.replace("patient/Procedure.rs ", "")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        serve(mock)
        review = run(f"{scope} {WRITES}")
    assert ("Procedure", "scope not granted") in review.fetch.skipped
    assert review.fetch.not_needed == ["MedicationStatement", "MedicationRequest"]
    assert review.assessment is not None
    assert [u["resource_type"] for u in review.assessment["unavailable"]] == ["Procedure"]


def test_heart_rates_are_counted_not_kept() -> None:
    patient, resources = patient_resources()
    heart_rates = [
        {
            "resourceType": "Observation",
            "id": f"hr{i}",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/jkowalski"},
            "effectiveDateTime": "2026-11-01T08:00:00Z",
            "valueQuantity": {"value": 70, "unit": "/min"},
        }
        for i in range(50)
    ]
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        serve_record(mock, patient, [*resources, *heart_rates])
        review = run(f"{ALL_READ} {WRITES}")
    assert review.fetch.unmatched == 50
    assert not any(r["id"].startswith("hr") for r in review.fetch.resources)
    assert review.fetch.counts["Observation"] == 53
    assert review.assessment is not None and review.assessment["counts"]["resources"] == 55
    evidence = review.assessment["findings"]["NODULE"]["evidence"]
    assert set(review.resources_for([*evidence, "Patient/jkowalski", "Observation/hr1"])) == {
        *evidence,
        "Patient/jkowalski",
    }


def test_a_patient_read_answered_with_another_patient_reads_the_record_again_whole() -> None:
    """A redirect after a merge: the record's resources name a Patient that is not the one read, so
    each is reported as another patient's, as a read of everything reports it."""
    patient, resources = patient_resources()
    heart_rate = {
        "resourceType": "Observation",
        "id": "hr",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/jkowalski"},
    }
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(f"{BASE}/Patient/jkowalski", status=301, headers={"Location": f"{BASE}/Patient/survivor"})
        mock.get(f"{BASE}/Patient/survivor", json={**patient, "id": "survivor"})
        serve_record(mock, {**patient, "id": "unused"}, [*resources, heart_rate])
        review = run(f"{ALL_READ} {WRITES}")
    assert review.assessment is not None
    ignored = {i["reference"]: i["reason"] for i in review.assessment["ignored"]}
    assert ignored["Observation/hr"] == "subject is not the launched patient"
    assert review.fetch.unmatched == 0
