"""read → findings → criteria → assessment → drafts: the one path for the web app and the command line
(docs/architecture.md#data-flow).

A view, the CLI and the CDS service call these functions; none of them assembles the steps itself.
The drafting models and the HTTP client are imported where they are used, so that assessing a file
(``smart-app assess --bundle``) loads only the clinical core.

A launch reads only what decides (:func:`read_and_assess`): the Patient and the types that decide the
classification first, in parallel (or as one batch Bundle where the server offers it); the types only
the treatment ladder reads when the classification leads there (the criteria's ``data_dependencies``,
:func:`smart_app.clinical.engine.read_plan`); and it sets aside, as pages are decoded, every resource
that can only be counted (:class:`smart_app.clinical.facts.Sieve`). The assessment is the one a read of
everything gives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from smart_app import fhirjson as fj
from smart_app.clinical import PatientRecord, assess, assess_bundle, load_bundle

TYPE_CHECKING = False  # true for type checkers only: see smart_app/__init__.py
if TYPE_CHECKING:
    from typing import Any

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
    """Everything the review page shows for one launched patient. ``extra_resources`` are those added to
    what was read (an exam recorded in this session and not saved)."""

    patient_id: str
    fetch: FetchResult
    assessment: dict[str, Any] | None
    drafts: dict[str, Any] | None
    missing_write_scopes: list[str] = field(default_factory=list)
    as_of: datetime = field(default_factory=now)
    extra_resources: Sequence[dict[str, Any]] = ()

    @property
    def can_write(self) -> bool:
        return self.drafts is not None and not self.missing_write_scopes

    def resources_for(self, references: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The resources named by ``references`` (``Type/id``, as the assessment names its evidence and
        what it set aside) among the Patient, what was kept of the read and ``extra_resources``; a
        reference with no resource is left out. Only the references asked for are looked up, so a page
        describes the evidence it shows and nothing else."""
        wanted = set(references)
        found: dict[str, dict[str, Any]] = {}
        patient = [self.fetch.patient] if self.fetch.patient is not None else []
        for resource in [*patient, *self.fetch.resources, *self.extra_resources]:
            ref = fj.reference(resource)
            if ref in wanted:
                found[ref] = resource
        return found


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
        unmatched=fetched.unmatched,
    )


def read_and_assess(
    client: FhirClient,
    patient_id: str,
    readable: Callable[[str], bool],
    *,
    as_of: datetime,
    criteria_version: str | None = None,
    extra_resources: Sequence[dict[str, Any]] = (),
    page_size: int | None = None,
    budget: ReadBudget | None = None,
    batch_reads: bool = False,
) -> tuple[FetchResult, dict[str, Any] | None]:
    """Read what decides about the patient and assess it: the Assessment JSON (``None`` when the
    Patient could not be read) is the one reading every type would give, within one ``budget`` for
    all the reads (default: :class:`ReadBudget`'s).

    1. The Patient and the types of the criteria's first step (:func:`~smart_app.clinical.engine
       .read_plan`), in parallel; a granted type of the later step is ``not_needed`` for now, one not
       granted is skipped as unreadable as before.
    2. When the classification leads to the treatment ladder, the types still not needed are read and
       the record assessed again.

    With ``batch_reads``, each step's reads go as one batch Bundle when the server's CapabilityStatement
    offers ``batch`` (:mod:`smart_app.fhir.capability`; what the batch does not answer whole is read on
    its own, :mod:`smart_app.fhir.record`).

    Each resource of the launched patient (``subject`` ``Patient/<id>``) that can only be counted is set
    aside as it is decoded. When the server answers the Patient read with another Patient (a redirect
    after a merge), those would be another patient's, reported one by one: the record is then read again
    whole so the report stays the same.
    """
    from smart_app.clinical.engine import criteria_for, leads_to_ladder, read_plan
    from smart_app.clinical.facts import Sieve
    from smart_app.fhir.budget import ReadBudget
    from smart_app.fhir.capability import batch_offered
    from smart_app.fhir.record import (
        DEFAULT_PAGE_SIZE,
        SCOPE_NOT_GRANTED,
        SEARCH_TYPES,
        fetch_patient_record,
    )

    criteria = criteria_for(criteria_version)
    plan = read_plan(criteria)
    first = [t for t in SEARCH_TYPES if t in plan.first]
    later = [t for t in SEARCH_TYPES if t not in plan.first]
    sieve = Sieve(criteria)
    subject = f"Patient/{patient_id}"

    def keep(resource: dict[str, Any]) -> bool:
        return not sieve.inert(resource, subject)

    def record(fetched: FetchResult) -> PatientRecord:
        return record_of(fetched, extra_resources, fhir_base=client.base_url)

    size = page_size or DEFAULT_PAGE_SIZE
    with client.budget(budget or ReadBudget()):
        batch = batch_reads and batch_offered(client)
        fetched = fetch_patient_record(
            client, patient_id, readable, types=first, keep=keep, page_size=size, batch=batch
        )
        fetched.skipped += [(t, SCOPE_NOT_GRANTED) for t in later if not readable(t)]
        fetched.not_needed = [t for t in later if readable(t)]
        if fetched.patient is None:
            return fetched, None
        if fetched.unmatched and not record(fetched).subject_matches(subject):
            fetched = fetch_patient_record(client, patient_id, readable, page_size=size, batch=batch)
        assessment = assess(record(fetched), as_of, criteria.version)
        if fetched.not_needed and leads_to_ladder(criteria, assessment.classification):
            later_types = fetched.not_needed
            more = fetch_patient_record(
                client,
                patient_id,
                readable,
                types=later_types,
                read_patient=False,
                keep=keep,
                page_size=size,
                batch=batch,
            )
            fetched = fetched.then(more, covered=later_types)
            assessment = assess(record(fetched), as_of, criteria.version)
    return fetched, assessment.to_json()


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
    batch_reads: bool = False,
) -> Review:
    """Read the patient's record over FHIR within ``budget`` (default: :class:`ReadBudget`'s), by batch
    where the server offers it and ``batch_reads`` allows (:func:`read_and_assess`), assess it and
    draft the write-back.

    ``extra_resources`` are added to what was read: an exam recorded in this session but not saved.
    """
    from smart_app.drafts.build import build_transaction

    as_of = as_of or now()
    fetched, assessment = read_and_assess(
        client,
        patient_id,
        readable or scopes.can_read,
        as_of=as_of,
        criteria_version=criteria_version,
        extra_resources=extra_resources,
        page_size=page_size,
        budget=budget,
        batch_reads=batch_reads,
    )
    if assessment is None:
        return Review(
            patient_id=patient_id,
            fetch=fetched,
            assessment=None,
            drafts=None,
            as_of=as_of,
            extra_resources=extra_resources,
        )
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
        extra_resources=extra_resources,
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
    fetched, assessment = read_and_assess(
        client, patient_id, lambda _type: True, as_of=as_of, criteria_version=criteria_version, budget=budget
    )
    return assessment, fetched


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
    from smart_app.fhir.record import DEFAULT_PAGE_SIZE, SEARCH_TYPES, fetch_patient_record

    fetched = prefetched
    if read:
        if client is None:
            raise ValueError("reading the record needs a FHIR client")
        wanted = frozenset(read)
        more = fetch_patient_record(
            client,
            patient_id,
            readable or (lambda _type: True),
            types=[t for t in SEARCH_TYPES if t in wanted],
            read_patient="Patient" in wanted,
            page_size=page_size or DEFAULT_PAGE_SIZE,
        )
        fetched = prefetched.then(more, covered=wanted)
    if fetched.patient is None:
        return None, fetched
    base = client.base_url if client is not None else None
    return assess(record_of(fetched, fhir_base=base), as_of, criteria_version).to_json(), fetched
