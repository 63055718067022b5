"""fetch → map → evaluate → draft: the one call a view or the CLI makes (DESIGN.md, "One launch")."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from smart_app.clinical import PatientRecord, assess
from smart_app.clinical.drafting import AssessmentAs, build_transaction
from smart_app.fhir.client import FhirClient
from smart_app.fhir.record import FetchResult, fetch_patient_record
from smart_app.smart.scopes import ScopeSet


@dataclass
class Review:
    """Everything the review page shows for one launched patient."""

    patient_id: str
    fetch: FetchResult
    assessment: dict[str, Any] | None
    drafts: dict[str, Any] | None
    missing_write_scopes: list[str] = field(default_factory=list)
    as_of: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def can_write(self) -> bool:
        return self.drafts is not None and not self.missing_write_scopes


def now() -> datetime:
    """The evaluation time: UTC, whole seconds (so reproductions can quote it exactly)."""
    return datetime.now(UTC).replace(microsecond=0)


def unavailable_types(fetched: FetchResult) -> dict[str, str]:
    """Resource types the record lacks because they were not granted or their read failed.

    The criteria then treat what those types would decide as unknown, never as absent.
    """
    unavailable = {resource_type: reason for resource_type, reason in fetched.skipped}
    for failure in fetched.failures:
        status = f" (HTTP {failure.status})" if failure.status else ""
        unavailable[failure.resource_type] = f"read failed{status}: {failure.message}"
    return unavailable


def missing_write_scopes(
    scopes: ScopeSet, assessment: dict[str, Any], assessment_as: AssessmentAs
) -> list[str]:
    """Resource types the drafts need to create but the granted scopes do not allow."""
    needed = [assessment_as, "Provenance", "Device"]
    if assessment.get("procedure_suggestion"):
        needed.append("ServiceRequest")
    if assessment.get("red_flags"):
        needed.append("DetectedIssue")
    return [t for t in needed if not scopes.can_write(t)]


def review_patient(
    client: FhirClient,
    patient_id: str,
    scopes: ScopeSet,
    *,
    author: str | None,
    encounter: str | None,
    assessment_as: AssessmentAs = "ClinicalImpression",
    as_of: datetime | None = None,
    readable: Callable[[str], bool] | None = None,
    extra_resources: Sequence[dict[str, Any]] = (),
) -> Review:
    """Read the patient's record over FHIR, assess it and draft the write-back.

    ``extra_resources`` are added to what was read: an exam recorded in this session but not saved.
    """
    as_of = as_of or now()
    fetched = fetch_patient_record(client, patient_id, readable or scopes.can_read)
    if fetched.patient is None:
        return Review(patient_id=patient_id, fetch=fetched, assessment=None, drafts=None, as_of=as_of)
    record = PatientRecord(
        patient=fetched.patient,
        resources=[*fetched.resources, *extra_resources],
        unavailable=unavailable_types(fetched),
    )
    assessment = assess(record, as_of).to_json()
    drafts = build_transaction(
        assessment, author=author, encounter=encounter, recorded=as_of, assessment_as=assessment_as
    )
    return Review(
        patient_id=patient_id,
        fetch=fetched,
        assessment=assessment,
        drafts=drafts,
        missing_write_scopes=missing_write_scopes(scopes, assessment, assessment_as),
        as_of=as_of,
    )
