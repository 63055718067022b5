"""Prefetch templates and prefetched data (CDS Hooks 2.0 "Providing FHIR Resources to a CDS Service").

The templates ask for what a launch reads (:func:`smart_app.fhir.record.fetch_patient_record`): the
Patient, and one ``patient=`` search per type of :data:`~smart_app.fhir.record.SEARCH_TYPES`, nothing
else. :func:`read_prefetch` turns the ``prefetch`` of a request into the same :class:`FetchResult` a
launch produces, and says which types were not supplied: a key left out, an OperationOutcome in place
of the data (the client's prefetch failed), or a search Bundle with a ``next`` link (the client paged
it). The service reads those types over FHIR when it was given access, and otherwise reports them as
unavailable (their silence is then not evidence of absence, docs/clinical-criteria.md#reading-decisions).
A ``null`` value means the client has no data for the template: an empty search.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from smart_app.cds.errors import bad_request
from smart_app.fhir.record import SEARCH_TYPES, FetchResult

PATIENT_KEY = "patient"
#: prefetch key → the resource type it searches.
SEARCH_KEYS: dict[str, str] = {f"{t[0].lower()}{t[1:]}s": t for t in SEARCH_TYPES}
#: Without these the criteria conclude nothing: not supplied and not readable → 412 Precondition Failed.
REQUIRED_TYPES: tuple[str, ...] = ("Patient", "Observation", "Condition")

NOT_PREFETCHED = "not prefetched"
PAGED = "prefetched in pages (only the first page was given)"


def templates() -> dict[str, str]:
    """The discovery document's ``prefetch``: key → FHIR read or search with ``{{context.patientId}}``."""
    out = {PATIENT_KEY: "Patient/{{context.patientId}}"}
    out.update({key: f"{rtype}?patient={{{{context.patientId}}}}" for key, rtype in SEARCH_KEYS.items()})
    return out


@dataclass
class Prefetched:
    """The prefetched record as a launch's read would give it, and the types it lacks with the reason."""

    fetch: FetchResult
    unsupplied: dict[str, str] = field(default_factory=dict)

    def unavailable_without_access(self) -> FetchResult:
        """The record with every unsupplied type reported as unavailable (no FHIR access to read it)."""
        self.fetch.skipped = [*self.fetch.skipped, *sorted(self.unsupplied.items())]
        return self.fetch


def read_prefetch(prefetch: Mapping[str, Any] | None, patient_id: str) -> Prefetched:
    """The ``prefetch`` object of a request for ``patient_id`` as a :class:`Prefetched`. Raises
    ``CdsError`` 400 when a value is not what its template returns."""
    prefetch = prefetch or {}
    unsupplied: dict[str, str] = {}
    notes: list[str] = []
    patient = _patient(prefetch, patient_id, unsupplied)
    resources: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for key, rtype in SEARCH_KEYS.items():
        if key not in prefetch:
            unsupplied[rtype] = NOT_PREFETCHED
            continue
        found = _search_value(key, rtype, prefetch[key], unsupplied, notes)
        seen: set[str] = set()
        kept = 0
        for resource in found:
            rid = resource.get("id")
            if isinstance(rid, str):
                if rid in seen:
                    continue
                seen.add(rid)
            resources.append(resource)
            kept += 1
        if len(found) > kept:
            notes.append(f"prefetch.{key}: {len(found) - kept} resource(s) given twice were kept once")
        if kept:
            counts[rtype] = kept
    fetch = FetchResult(
        patient=patient,
        resources=resources,
        counts=counts,
        failures=[],
        skipped=[],
        round_trips=0,
        notes=notes,
    )
    return Prefetched(fetch=fetch, unsupplied=unsupplied)


def _patient(
    prefetch: Mapping[str, Any], patient_id: str, unsupplied: dict[str, str]
) -> dict[str, Any] | None:
    value = prefetch.get(PATIENT_KEY)
    if value is None:
        unsupplied["Patient"] = NOT_PREFETCHED
        return None
    if not isinstance(value, dict):
        raise bad_request(f"prefetch.{PATIENT_KEY} must be a Patient resource or null")
    if value.get("resourceType") == "OperationOutcome":
        unsupplied["Patient"] = _outcome_reason(value)
        return None
    if value.get("resourceType") != "Patient" or value.get("id") != patient_id:
        raise bad_request(f"prefetch.{PATIENT_KEY} is not the Patient of context.patientId")
    return value


def _search_value(
    key: str, rtype: str, value: Any, unsupplied: dict[str, str], notes: list[str]
) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise bad_request(f"prefetch.{key} must be a searchset Bundle, an OperationOutcome or null")
    kind = value.get("resourceType")
    if kind == "OperationOutcome":
        unsupplied[rtype] = _outcome_reason(value)
        return []
    if kind != "Bundle":
        raise bad_request(f"prefetch.{key} must be a searchset Bundle, an OperationOutcome or null")
    if any(isinstance(link, dict) and link.get("relation") == "next" for link in _list(value.get("link"))):
        unsupplied[rtype] = PAGED
        return []
    found: list[dict[str, Any]] = []
    skipped = 0
    for entry in _list(value.get("entry")):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            skipped += 1
            continue
        if resource.get("resourceType") == "OperationOutcome":
            if _is_error(resource):
                unsupplied[rtype] = _outcome_reason(resource)
                return []
            notes.append(f"prefetch.{key}: a server message was skipped")
            continue
        if resource.get("resourceType") != rtype:
            skipped += 1
            continue
        found.append(resource)
    if skipped:
        notes.append(f"prefetch.{key}: {skipped} entr{'y' if skipped == 1 else 'ies'} not a {rtype} skipped")
    return found


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _is_error(outcome: Mapping[str, Any]) -> bool:
    return any(
        isinstance(issue, dict) and issue.get("severity") in ("error", "fatal")
        for issue in _list(outcome.get("issue"))
    )


def _outcome_reason(outcome: Mapping[str, Any]) -> str:
    """Why the client could not prefetch: the issue codes of its OperationOutcome (never its free text)."""
    codes = sorted(
        {
            str(issue.get("code"))
            for issue in _list(outcome.get("issue"))
            if isinstance(issue, dict) and isinstance(issue.get("code"), str)
        }
    )
    return f"the CDS client's prefetch failed ({', '.join(codes) or 'no issue code'})"
