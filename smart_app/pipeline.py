"""read → findings → criteria → assessment → drafts: the one path for the web app and the command line
(docs/architecture.md#data-flow).

A view, the CLI and the CDS service call these functions; none of them assembles the steps itself.
The drafting models and the HTTP client are imported where they are used, so that assessing a file
(``smart-app assess --bundle``) loads only the clinical core.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from smart_app.clinical import PatientRecord, assess, assess_bundle, load_bundle

if TYPE_CHECKING:
    from smart_app.drafts.build import AssessmentAs
    from smart_app.fhir.budget import ReadBudget
    from smart_app.fhir.client import FhirClient
    from smart_app.fhir.record import FetchResult
    from smart_app.smart.scopes import ScopeSet


def now() -> datetime:
    """The evaluation time: UTC, whole seconds (so reproductions can quote it exactly)."""
    return datetime.now(UTC).replace(microsecond=0)


@dataclass
class Review:
    """Everything the review page shows for one launched patient."""

    patient_id: str
    fetch: FetchResult
    assessment: dict[str, Any] | None
    drafts: dict[str, Any] | None
    missing_write_scopes: list[str] = field(default_factory=list)
    as_of: datetime = field(default_factory=now)

    @property
    def can_write(self) -> bool:
        return self.drafts is not None and not self.missing_write_scopes


def unavailable_types(fetched: FetchResult) -> dict[str, str]:
    """Resource types the record lacks because they were not granted, their read failed, or it was cut
    short by the read budget.

    The criteria then treat what those types would decide as unknown, never as absent.
    """
    unavailable = {resource_type: reason for resource_type, reason in fetched.skipped}
    for failure in fetched.failures:
        if failure.cut_short:
            unavailable[failure.resource_type] = f"not read, cut short: {failure.message}"
            continue
        status = f" (HTTP {failure.status})" if failure.status else ""
        unavailable[failure.resource_type] = f"read failed{status}: {failure.message}"
    return unavailable


def missing_write_scopes(scopes: ScopeSet, drafts: dict[str, Any]) -> list[str]:
    """Resource types the drafts create that the granted scopes do not allow creating."""
    from smart_app.drafts.written import types_in

    return [t for t in types_in(drafts) if not scopes.can_write(t)]


def record_of(
    fetched: FetchResult, extra_resources: Sequence[dict[str, Any]] = (), *, fhir_base: str | None = None
) -> PatientRecord:
    """The patient's record as read (the Patient must have been read), plus ``extra_resources``.
    ``fhir_base`` is the server it was read from: an absolute subject reference must name that base
    (docs/clinical-criteria.md#subjects)."""
    assert fetched.patient is not None
    return PatientRecord(
        patient=fetched.patient,
        resources=[*fetched.resources, *extra_resources],
        unavailable=unavailable_types(fetched),
        fhir_base=fhir_base,
    )


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
    criteria_version: str | None = None,
    page_size: int | None = None,
    budget: ReadBudget | None = None,
) -> Review:
    """Read the patient's record over FHIR within ``budget`` (default: :class:`ReadBudget`'s), assess it
    and draft the write-back.

    ``extra_resources`` are added to what was read: an exam recorded in this session but not saved.
    """
    from smart_app.drafts.build import build_transaction
    from smart_app.fhir.budget import ReadBudget
    from smart_app.fhir.record import DEFAULT_PAGE_SIZE, fetch_patient_record

    as_of = as_of or now()
    fetched = fetch_patient_record(
        client,
        patient_id,
        readable or scopes.can_read,
        page_size=page_size or DEFAULT_PAGE_SIZE,
        budget=budget or ReadBudget(),
    )
    if fetched.patient is None:
        return Review(patient_id=patient_id, fetch=fetched, assessment=None, drafts=None, as_of=as_of)
    record = record_of(fetched, extra_resources, fhir_base=client.base_url)
    assessment = assess(record, as_of, criteria_version).to_json()
    drafts = build_transaction(
        assessment, author=author, encounter=encounter, recorded=as_of, assessment_as=assessment_as
    )
    return Review(
        patient_id=patient_id,
        fetch=fetched,
        assessment=assessment,
        drafts=drafts,
        missing_write_scopes=missing_write_scopes(scopes, drafts),
        as_of=as_of,
    )


def assess_file(data: bytes, as_of: datetime, criteria_version: str | None = None) -> dict[str, Any]:
    """The Assessment JSON of a Bundle file holding one patient's record (streamed: bytes to assessment
    without holding the whole Bundle). Raises ``UnusableInput``."""
    return assess_bundle(data, as_of, criteria_version).to_json()


def assess_server(
    client: FhirClient,
    patient_id: str,
    as_of: datetime,
    criteria_version: str | None = None,
    budget: ReadBudget | None = None,
) -> tuple[dict[str, Any] | None, FetchResult]:
    """The Assessment JSON of a patient read from a FHIR server with every type readable, within
    ``budget`` (default: :class:`ReadBudget`'s); ``None`` when the Patient itself could not be read."""
    from smart_app.fhir.budget import ReadBudget
    from smart_app.fhir.record import fetch_patient_record

    fetched = fetch_patient_record(client, patient_id, lambda _type: True, budget=budget or ReadBudget())
    if fetched.patient is None:
        return None, fetched
    return assess(record_of(fetched, fhir_base=client.base_url), as_of, criteria_version).to_json(), fetched


def draft_file(
    data: bytes,
    *,
    as_of: datetime,
    recorded: datetime,
    author: str | None = None,
    encounter: str | None = None,
    assessment_as: AssessmentAs = "ClinicalImpression",
    criteria_version: str | None = None,
) -> dict[str, Any]:
    """The transaction Bundle the write-back would send for the patient in a Bundle file. Raises
    ``UnusableInput`` or ``DraftingError``."""
    assessment = assess(load_bundle(data), as_of, criteria_version).to_json()
    from smart_app.drafts.build import build_transaction

    return build_transaction(
        assessment, author=author, encounter=encounter, recorded=recorded, assessment_as=assessment_as
    )


def assess_prefetched(
    patient_id: str,
    prefetched: FetchResult,
    *,
    as_of: datetime,
    read: Sequence[str] = (),
    client: FhirClient | None = None,
    readable: Callable[[str], bool] | None = None,
    criteria_version: str | None = None,
    page_size: int | None = None,
) -> tuple[dict[str, Any] | None, FetchResult]:
    """The Assessment JSON for a CDS Hooks call (docs/cds-hooks.md#reading-the-record): the record the
    CDS client prefetched, completed by reading the types in ``read`` ("Patient" and search types) from
    its FHIR server with ``client``, which carries the ``fhirAuthorization`` token, exactly as a launch
    reads (:func:`fetch_patient_record`: same budgets, paging and decoding). ``readable`` says which of
    them the token's scopes allow. ``prefetched.skipped`` names what is neither prefetched nor read.
    ``None`` when the Patient was neither prefetched nor read. Raises ``FhirUnauthorized`` when the
    server refused the token for every read."""
    from smart_app.fhir.record import DEFAULT_PAGE_SIZE, FetchResult, fetch_patient_record

    fetched = prefetched
    if read:
        if client is None:
            raise ValueError("reading the record needs a FHIR client")
        wanted = frozenset(read)
        allowed = readable or (lambda _type: True)
        more = fetch_patient_record(
            client, patient_id, lambda t: t in wanted and allowed(t), page_size=page_size or DEFAULT_PAGE_SIZE
        )
        fetched = FetchResult(
            patient=prefetched.patient or more.patient,
            resources=[*prefetched.resources, *more.resources],
            counts={
                t: prefetched.counts.get(t, 0) + more.counts.get(t, 0)
                for t in sorted({*prefetched.counts, *more.counts})
            },
            failures=[*prefetched.failures, *more.failures],
            skipped=[s for s in prefetched.skipped if s[0] not in wanted]
            + [s for s in more.skipped if s[0] in wanted],
            round_trips=prefetched.round_trips + more.round_trips,
            notes=[*prefetched.notes, *more.notes],
        )
    if fetched.patient is None:
        return None, fetched
    base = client.base_url if client is not None else None
    return assess(record_of(fetched, fhir_base=base), as_of, criteria_version).to_json(), fetched
