"""Read what the criteria need about one patient (docs/architecture.md#data-flow).

The Patient read and one search per resource type (FHIR R4 search.html, ``patient`` search parameter
of Observation, Condition, Procedure, MedicationStatement and MedicationRequest) run in parallel, each
asking for large pages (``_count``). Types the granted scopes do not cover are not requested (SMART App
Launch 2.x "Scopes for requesting clinical data"); a failed search is reported and the rest is kept.
All of it runs within one :class:`~smart_app.fhir.budget.ReadBudget`: a type whose answers did not
arrive in time or grew past the size cap is reported as not read (``ReadFailure.cut_short``), none of
its pages kept, so the criteria treat what it would decide as unknown.
Observation ``category`` is deliberately not used as a filter: examination findings are often
recorded without a category.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from smart_app.fhir.budget import ReadBudget
from smart_app.fhir.client import FhirClient
from smart_app.fhir.errors import FhirCutShort, FhirError, FhirUnauthorized

#: Searched in this order; the result keeps it, so output is deterministic.
SEARCH_TYPES: tuple[str, ...] = (
    "Observation",
    "Condition",
    "Procedure",
    "MedicationStatement",
    "MedicationRequest",
)
SCOPE_NOT_GRANTED = "scope not granted"
#: Entries asked for per search page (``_count``); the ``FHIR_PAGE_SIZE`` setting overrides it.
DEFAULT_PAGE_SIZE = 1000


@dataclass(frozen=True)
class ReadFailure:
    """One read or search that failed; ``message`` is safe to show (no token, no query values).
    ``cut_short``: stopped by the read budget (time or size) rather than refused by the server."""

    resource_type: str
    message: str
    status: int | None
    cut_short: bool = False


@dataclass
class FetchResult:
    """What was read. ``resources`` excludes the Patient, is ordered by ``SEARCH_TYPES`` then server
    order, and holds each ``type/id`` once. ``counts`` is per resourceType of what was returned.
    ``notes`` lists oddities that did not fail a search (entries without a resource, server warnings).
    """

    patient: dict[str, Any] | None
    resources: list[dict[str, Any]]
    counts: dict[str, int]
    failures: list[ReadFailure]
    skipped: list[tuple[str, str]]
    round_trips: int
    notes: list[str] = field(default_factory=list)


def fetch_patient_record(
    client: FhirClient,
    patient_id: str,
    readable: Callable[[str], bool],
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
    max_workers: int = 4,
    budget: ReadBudget | None = None,
) -> FetchResult:
    """Read the Patient and search its clinical resources in parallel, all within ``budget`` when
    given (one deadline for every request, a size cap per answer).

    Raises ``FhirUnauthorized`` when every request attempted was answered 401 (the token is no good:
    refresh or relaunch); any other failure lands in ``failures``. Resources whose subject is another
    patient are kept: the clinical layer reports them.
    """
    start_trips = client.round_trips
    skipped: list[tuple[str, str]] = []
    read_patient = readable("Patient")
    if not read_patient:
        skipped.append(("Patient", SCOPE_NOT_GRANTED))
    search_types: list[str] = []
    for resource_type in SEARCH_TYPES:
        if readable(resource_type):
            search_types.append(resource_type)
        else:
            skipped.append((resource_type, SCOPE_NOT_GRANTED))

    params = {"patient": patient_id, "_count": str(page_size)}
    notes_by_type: dict[str, list[str]] = {resource_type: [] for resource_type in search_types}
    with (
        client.budget(budget) if budget is not None else nullcontext(),
        ThreadPoolExecutor(max_workers=max(1, max_workers), thread_name_prefix="fhir-fetch") as pool,
    ):
        patient_future: Future[dict[str, Any]] | None = (
            pool.submit(client.read, "Patient", patient_id) if read_patient else None
        )
        search_futures: dict[str, Future[list[dict[str, Any]]]] = {
            resource_type: pool.submit(
                client.search_all, resource_type, params, notes=notes_by_type[resource_type]
            )
            for resource_type in search_types
        }

    failures: list[ReadFailure] = []
    unauthorized: list[FhirUnauthorized] = []
    attempted = 0

    patient: dict[str, Any] | None = None
    if patient_future is not None:
        attempted += 1
        try:
            patient = patient_future.result()
        except FhirError as exc:
            _record_failure("Patient", exc, failures, unauthorized)

    resources: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    seen: set[tuple[str, str]] = set()
    notes: list[str] = []
    duplicates = 0
    for resource_type, future in search_futures.items():
        attempted += 1
        notes.extend(notes_by_type[resource_type])
        try:
            found = future.result()
        except FhirError as exc:
            _record_failure(resource_type, exc, failures, unauthorized)
            continue
        for resource in found:
            kind = str(resource.get("resourceType"))
            resource_id = resource.get("id")
            if isinstance(resource_id, str):
                key = (kind, resource_id)
                if key in seen:
                    duplicates += 1
                    continue
                seen.add(key)
            resources.append(resource)
            counts[kind] = counts.get(kind, 0) + 1
    if duplicates:
        notes.append(f"{duplicates} resource(s) returned twice across pages or searches were kept once")

    if attempted and len(unauthorized) == attempted:
        raise unauthorized[0]

    return FetchResult(
        patient=patient,
        resources=resources,
        counts=counts,
        failures=failures,
        skipped=skipped,
        round_trips=client.round_trips - start_trips,
        notes=notes,
    )


def _record_failure(
    resource_type: str,
    exc: FhirError,
    failures: list[ReadFailure],
    unauthorized: list[FhirUnauthorized],
) -> None:
    if isinstance(exc, FhirUnauthorized):
        unauthorized.append(exc)
    failures.append(
        ReadFailure(
            resource_type=resource_type,
            message=exc.message,
            status=exc.status,
            cut_short=isinstance(exc, FhirCutShort),
        )
    )
