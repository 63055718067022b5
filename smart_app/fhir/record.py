"""Read what the criteria need about one patient (docs/architecture.md#data-flow).

The Patient read and one search per resource type asked for (FHIR R4 search.html, ``patient`` search
parameter of Observation, Condition, Procedure, MedicationStatement and MedicationRequest) run in
parallel, each asking for large pages (``_count``). Types the granted scopes do not cover are not
requested (SMART App Launch 2.x "Scopes for requesting clinical data"); a failed search is reported and
the rest is kept. All of it runs within one :class:`~smart_app.fhir.budget.ReadBudget`: a type whose
answers did not arrive in time or grew past the size cap is reported as not read
(``ReadFailure.cut_short``), none of its pages kept, so the criteria treat what it would decide as
unknown. Which types to ask for, and in how many steps, is the caller's (``smart_app.pipeline``).

Pages are decoded one entry at a time; a ``keep`` predicate may set a resource aside as it is decoded
(it is counted, never held), so a record of 10,000 heart rates costs one page of memory, not ten.

Where the server takes batch Bundles (``batch``, :mod:`smart_app.fhir.capability`), the first reads go
as one batch (FHIR R4 http.html#transaction): the Patient read and each search, asking for at most
:data:`BATCH_COUNT` entries. A search the batch answers whole is taken from it; one it does not (a
``next`` link, as many entries as asked or fewer than its ``total``: some servers drop the paging links
of a batch's searchsets), a failed entry, or every read when the batch itself fails (or answers no
entry), is sent on its own as above, so a batch never loses or repeats what the separate reads would
give. A batch may take half the time the budget has left (:data:`BATCH_SHARE`), so a server slow to
answer batches still has its reads sent one by one in time.

No server-side narrowing is used: ``code`` would need every code of every criteria ValueSet, prefix
rules (ICD-10-CM ``is-a``) included, and could not return what the criteria report as malformed or
uncoded; ``_elements`` and ``_summary`` are optional for servers and may drop what a rule reads (a
component, ``focus``, ``dataAbsentReason``); Observation ``category`` is often absent from examination
findings. Each would lose evidence the criteria read.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, TypeVar

from smart_app.fhir.budget import ReadBudget
from smart_app.fhir.capability import batch_failed
from smart_app.fhir.client import FhirClient
from smart_app.fhir.errors import FhirCutShort, FhirError, FhirMalformedResponse, FhirUnauthorized

logger = logging.getLogger("smart_app.fhir")

#: Searched in this order; the result keeps it, so output is deterministic.
SEARCH_TYPES: tuple[str, ...] = (
    "Observation",
    "Condition",
    "Procedure",
    "MedicationStatement",
    "MedicationRequest",
)
SCOPE_NOT_GRANTED = "scope not granted"
T = TypeVar("T")
#: Entries asked for per search page (``_count``); the ``FHIR_PAGE_SIZE`` setting overrides it.
DEFAULT_PAGE_SIZE = 1000
#: Entries a search inside a batch asks for (``_count``): a batch answer is decoded whole, so it stays
#: small; a type with more is read by its own search, streamed page by page.
BATCH_COUNT = 100
#: The share of the time the read budget has left that a batch may take: a batch too slow for it is
#: given up, and the reads sent on their own have the rest.
BATCH_SHARE = 0.5


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
    ``unmatched`` counts resources returned but set aside by the fetch's ``keep`` (in ``counts``, not in
    ``resources``). ``not_needed`` names granted types left unread because the criteria did not need
    them for this patient (``smart_app.pipeline``).
    """

    patient: dict[str, Any] | None
    resources: list[dict[str, Any]]
    counts: dict[str, int]
    failures: list[ReadFailure]
    skipped: list[tuple[str, str]]
    round_trips: int
    notes: list[str] = field(default_factory=list)
    unmatched: int = 0
    not_needed: list[str] = field(default_factory=list)

    def then(self, more: FetchResult, covered: Collection[str]) -> FetchResult:
        """This read followed by ``more``, which was asked to read the types ``covered`` ("Patient"
        included when it read the Patient): resources, counts, failures and notes of both, the Patient
        of whichever has it, and what this read says about a covered type (skipped, not needed) given
        way to what ``more`` says."""
        counts = dict(self.counts)
        for resource_type, count in more.counts.items():
            counts[resource_type] = counts.get(resource_type, 0) + count
        return FetchResult(
            patient=self.patient or more.patient,
            resources=[*self.resources, *more.resources],
            counts=counts,
            failures=[*self.failures, *more.failures],
            skipped=[s for s in self.skipped if s[0] not in covered]
            + [s for s in more.skipped if s[0] in covered],
            round_trips=self.round_trips + more.round_trips,
            notes=[*self.notes, *more.notes],
            unmatched=self.unmatched + more.unmatched,
            not_needed=[t for t in self.not_needed if t not in covered],
        )


def fetch_patient_record(
    client: FhirClient,
    patient_id: str,
    readable: Callable[[str], bool],
    *,
    types: Sequence[str] = SEARCH_TYPES,
    read_patient: bool = True,
    keep: Callable[[dict[str, Any]], bool] | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    budget: ReadBudget | None = None,
    batch: bool = False,
) -> FetchResult:
    """Read the Patient (unless ``read_patient`` is false) and search ``types`` for its resources in
    parallel (threads of the process's read pool), all within ``budget`` when given (one deadline for
    every request, a size cap per answer). With ``batch`` (the server takes batch Bundles), they are
    first asked for in one batch, and what it does not answer whole is read on its own (module
    docstring).

    ``keep``, when given, is asked about each resource of a searched type as its page is decoded: one it
    refuses is counted (``counts``, ``unmatched``) but not kept, and is never held with the rest. It must
    be pure: it runs in the search threads, and on an entry again when its page has to be decoded whole.

    Raises ``FhirUnauthorized`` when every request attempted was answered 401 (the token is no good:
    refresh or relaunch); any other failure lands in ``failures``. Resources whose subject is another
    patient are kept: the clinical layer reports them.
    """
    start_trips = client.round_trips
    skipped: list[tuple[str, str]] = []
    if read_patient and not readable("Patient"):
        skipped.append(("Patient", SCOPE_NOT_GRANTED))
        read_patient = False
    search_types: list[str] = []
    for resource_type in types:
        if readable(resource_type):
            search_types.append(resource_type)
        else:
            skipped.append((resource_type, SCOPE_NOT_GRANTED))

    params = {"patient": patient_id, "_count": str(page_size)}
    notes_by_type: dict[str, list[str]] = {resource_type: [] for resource_type in search_types}
    with client.budget(budget) if budget is not None else nullcontext():
        answered = (
            _read_batch(client, patient_id, read_patient, search_types, keep, page_size, notes_by_type)
            if batch and int(read_patient) + len(search_types) > 1  # a batch of one read saves nothing
            else _Batched()
        )
        pool = _pool()
        patient_future: Future[dict[str, Any] | None] = (
            _done(answered.patient)
            if answered.patient is not None or not read_patient
            else pool.submit(client.read, "Patient", patient_id)
        )
        search_futures: dict[str, Future[list[dict[str, Any] | str]]] = {
            resource_type: (
                _done(answered.searches[resource_type])
                if resource_type in answered.searches
                else pool.submit(_search, client, resource_type, params, keep, notes_by_type[resource_type])
            )
            for resource_type in search_types
        }
        running: list[Future[Any]] = [*search_futures.values(), patient_future]
        wait(running)

    failures: list[ReadFailure] = []
    unauthorized: list[FhirUnauthorized] = []
    attempted = 0

    patient: dict[str, Any] | None = None
    if read_patient:
        attempted += 1
        try:
            patient = patient_future.result()
        except FhirError as exc:
            _record_failure("Patient", exc, failures, unauthorized)

    resources: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    seen: dict[str, set[str]] = {}
    notes: list[str] = []
    duplicates = 0
    unmatched = 0
    for resource_type, future in search_futures.items():
        attempted += 1
        notes.extend(notes_by_type[resource_type])
        try:
            found = future.result()
        except FhirError as exc:
            _record_failure(resource_type, exc, failures, unauthorized)
            continue
        for item in found:
            # a str is the id of a resource of the searched type that ``keep`` set aside
            kind = resource_type if isinstance(item, str) else str(item.get("resourceType"))
            resource_id = item if isinstance(item, str) else item.get("id")
            if isinstance(resource_id, str):
                ids = seen.setdefault(kind, set())
                if resource_id in ids:
                    duplicates += 1
                    continue
                ids.add(resource_id)
            if isinstance(item, str):
                unmatched += 1
            else:
                resources.append(item)
            counts[kind] = counts.get(kind, 0) + 1
        del found
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
        unmatched=unmatched,
    )


#: Threads of the reads of every launch of the process; made on demand, kept for the next launch.
MAX_READ_THREADS = 32
_shared: tuple[int, ThreadPoolExecutor] | None = None
_shared_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """The process's pool of read threads (a new one in a process forked from one that had it)."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared[0] != os.getpid():
            _shared = (os.getpid(), ThreadPoolExecutor(MAX_READ_THREADS, thread_name_prefix="fhir-fetch"))
        return _shared[1]


def _search(
    client: FhirClient,
    resource_type: str,
    params: dict[str, str],
    keep: Callable[[dict[str, Any]], bool] | None,
    notes: list[str],
) -> list[dict[str, Any] | str]:
    """Every page of one search: each resource, or the id of one ``keep`` set aside."""
    return list(client.search_each(resource_type, params, _taker(resource_type, keep), notes=notes))


def _taker(
    resource_type: str, keep: Callable[[dict[str, Any]], bool] | None
) -> Callable[[dict[str, Any]], dict[str, Any] | str]:
    """What a search of ``resource_type`` keeps of each resource: the resource, or the id of one ``keep``
    sets aside (only a resource of the searched type with an id is offered to ``keep``, so the id
    names it)."""

    def take(resource: dict[str, Any]) -> dict[str, Any] | str:
        if keep is None or resource.get("resourceType") != resource_type:
            return resource
        resource_id = resource.get("id")
        if not isinstance(resource_id, str) or keep(resource):
            return resource
        return resource_id

    return take


@dataclass
class _Batched:
    """What a batch answered whole: the Patient, and the results of the searches it holds complete."""

    patient: dict[str, Any] | None = None
    searches: dict[str, list[dict[str, Any] | str]] = field(default_factory=dict)


def _read_batch(
    client: FhirClient,
    patient_id: str,
    read_patient: bool,
    search_types: Sequence[str],
    keep: Callable[[dict[str, Any]], bool] | None,
    page_size: int,
    notes_by_type: dict[str, list[str]],
) -> _Batched:
    """The Patient read and the searches of ``search_types`` as one batch; what it answered whole (module
    docstring). Nothing when the batch fails: every read is then sent on its own."""
    count = min(page_size, BATCH_COUNT)
    urls = [f"Patient/{patient_id}"] if read_patient else []
    urls += [f"{resource_type}?patient={patient_id}&_count={count}" for resource_type in search_types]
    try:
        with client.budget_share(BATCH_SHARE, "share of the read budget for a batch"):
            answers = client.batch_get(urls)
        if not any(status.startswith("2") for status, _ in answers):
            # a server that lists batch but answers no read inside one (some take batches of writes only)
            raise FhirMalformedResponse("batch: no entry was answered")
    except FhirError as exc:
        logger.warning("FHIR batch read failed (%s); each read is sent on its own", exc.message)
        batch_failed(client.base_url, exc)
        return _Batched()
    batched = _Batched()
    if read_patient:
        status, resource = answers.pop(0)
        if (
            status.startswith("2")
            and isinstance(resource, dict)
            and resource.get("resourceType") == "Patient"
        ):
            batched.patient = resource
        else:
            logger.info("FHIR Patient read in a batch answered %s; sent on its own", status[:40])
    for resource_type, (status, resource) in zip(search_types, answers, strict=True):
        if not status.startswith("2"):
            logger.info("FHIR %s search in a batch answered %s; sent on its own", resource_type, status[:40])
            continue
        try:
            found = client.searchset(resource, resource_type, _taker(resource_type, keep))
        except FhirError as exc:
            logger.info("FHIR %s search in a batch: %s; sent on its own", resource_type, exc.message)
            continue
        whole = found.next_url is None and (
            len(found.items) == found.total if found.total is not None else len(found.items) < count
        )
        if not whole:
            logger.info("FHIR %s search: the batch did not answer it whole; sent on its own", resource_type)
            continue
        batched.searches[resource_type] = found.items
        notes_by_type[resource_type].extend(found.notes)
    return batched


def _done(value: T) -> Future[T]:
    """A future already holding ``value``."""
    future: Future[T] = Future()
    future.set_result(value)
    return future


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
