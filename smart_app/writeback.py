"""Validate the drafts and write them to the EHR: the one write path (docs/architecture.md#data-flow;
FHIR R4 http.html).

``transaction`` mode sends the Bundle from :func:`smart_app.drafts.build.build_transaction` as one
transaction (http.html#transaction): all-or-nothing, each entry a conditional create
(``ifNoneExist``, http.html#ccreate), so a retry, a double click or a second tab finds what the first
write created. ``sequential`` mode, for EHRs without transactions (per registration), sends the same
entries as conditional creates in Bundle order (Device, assessment, ServiceRequest, DetectedIssues,
Provenance last), rewriting ``urn:uuid`` references to the ids the server gave, and stops at the first
failure, reporting what was written. Servers that cap the entries of a transaction with conditional
creates (Medplum: 8) get sequential writes when ``max_transaction_entries`` says so.

No Flask here: the web layer and the CLI call :func:`write_drafts`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from smart_app import fhirjson as fj
from smart_app.drafts.profiles import ProfileIssue, check_bundle
from smart_app.fhir.client import WriteResult
from smart_app.fhir.errors import FhirError, FhirMalformedResponse, FhirTimeout

Mode = Literal["transaction", "sequential"]


class Writer(Protocol):
    """What the write-back needs of :class:`smart_app.fhir.client.FhirClient`."""

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]: ...

    def create(self, resource: dict[str, Any], if_none_exist: str | None = None) -> WriteResult: ...


class InvalidDraft(ValueError):
    """A draft does not conform to the app's profiles; nothing was sent."""

    def __init__(self, issues: list[ProfileIssue] | list[str]) -> None:
        self.issues = [str(i) for i in issues]
        super().__init__("draft does not conform to the back-mice profiles: " + "; ".join(self.issues[:5]))


@dataclass(frozen=True)
class WrittenEntry:
    """One resource the server holds after the write: ``created`` False when ``ifNoneExist`` matched
    one that already existed (HTTP 200 rather than 201)."""

    resource_type: str
    id: str | None
    version: str | None
    location: str | None
    created: bool
    status: str
    full_url: str | None = None

    @property
    def reference(self) -> str | None:
        return f"{self.resource_type}/{self.id}" if self.id else None


@dataclass
class WriteOutcome:
    """What happened: ``ok`` only when every entry is on the server. ``errors`` are the server's
    OperationOutcome issues (or the client's message); ``failed`` names the entry that failed in
    sequential mode and ``not_written`` what was not attempted after it."""

    ok: bool
    mode: Mode
    written: list[WrittenEntry] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    status: int | None = None
    failed: str | None = None
    not_written: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def created(self) -> int:
        return sum(1 for w in self.written if w.created)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["created"] = self.created
        data["existing"] = len(self.written) - self.created
        for row, entry in zip(data["written"], self.written, strict=True):
            row["reference"] = entry.reference
        return data


def validate_drafts(bundle: Mapping[str, Any]) -> list[str]:
    """Problems that forbid sending: not a transaction Bundle, an entry without resource or POST
    request with ``ifNoneExist``, or a resource that does not conform to the app's profiles."""
    if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
        return ["not a transaction Bundle"]
    problems: list[str] = []
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        return ["the Bundle has no entries"]
    for index, entry in enumerate(entries):
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            problems.append(f"Bundle.entry[{index}]: no resource")
        elif (
            not isinstance(request, dict) or request.get("method") != "POST" or not request.get("ifNoneExist")
        ):
            problems.append(f"Bundle.entry[{index}]: not a conditional create (POST with ifNoneExist)")
    problems.extend(str(issue) for issue in check_bundle(bundle))
    return problems


def write_drafts(
    client: Writer,
    bundle: dict[str, Any],
    mode: Mode = "transaction",
    *,
    max_transaction_entries: int | None = None,
) -> WriteOutcome:
    """Validate ``bundle`` against the profiles (raising :class:`InvalidDraft`, nothing sent) and
    write it in ``mode``. Server refusals, 5xx, timeouts and malformed answers are returned in the
    outcome, never raised."""
    problems = validate_drafts(bundle)
    if problems:
        raise InvalidDraft(problems)
    entries = bundle["entry"]
    notes: list[str] = []
    if (
        mode == "transaction"
        and max_transaction_entries is not None
        and len(entries) > max_transaction_entries
    ):
        notes.append(
            f"{len(entries)} entries exceed this server's limit of {max_transaction_entries} per "
            "transaction with conditional creates: written as sequential conditional creates instead"
        )
        mode = "sequential"
    outcome = _transaction(client, bundle) if mode == "transaction" else _sequential(client, entries)
    outcome.notes[:0] = notes
    return outcome


def _failure(mode: Mode, exc: FhirError) -> WriteOutcome:
    errors = exc.issues() or [exc.message]
    outcome = WriteOutcome(ok=False, mode=mode, errors=errors, status=exc.status)
    if isinstance(exc, FhirTimeout | FhirMalformedResponse):
        outcome.notes.append(
            "The server may have committed the write before the answer was lost; writing again is safe: "
            "the conditional creates find what already exists."
        )
    return outcome


def _transaction(client: Writer, bundle: dict[str, Any]) -> WriteOutcome:
    try:
        response = client.transaction(bundle)
    except FhirError as exc:
        return _failure("transaction", exc)
    outcome = WriteOutcome(ok=True, mode="transaction")
    for sent, got in zip(bundle["entry"], response.get("entry") or [], strict=False):
        answer = got.get("response") or {}
        returned = got.get("resource") if isinstance(got.get("resource"), dict) else {}
        location = answer.get("location")
        rtype, rid, version = fj.location_parts(location)
        rtype = rtype or returned.get("resourceType") or sent["resource"]["resourceType"]
        rid = rid or returned.get("id")
        version = version or fj.etag_version(answer.get("etag")) or fj.version_id(returned)
        status = str(answer.get("status", "")).strip()
        outcome.written.append(
            WrittenEntry(
                resource_type=str(rtype),
                id=rid,
                version=version,
                location=location,
                created=status.startswith("201"),
                status=status,
                full_url=sent.get("fullUrl"),
            )
        )
    return outcome


def _rewrite(value: Any, ids: Mapping[str, str]) -> Any:
    """Copy of ``value`` with every ``reference`` that is a Bundle fullUrl replaced by the id the
    server gave it (R4 bundle.html#references, done client-side)."""
    if isinstance(value, dict):
        out = {k: _rewrite(v, ids) for k, v in value.items()}
        ref = out.get("reference")
        if isinstance(ref, str) and ref in ids:
            out["reference"] = ids[ref]
        return out
    if isinstance(value, list):
        return [_rewrite(v, ids) for v in value]
    return value


def _unresolved(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["reference"]] if str(value.get("reference", "")).startswith("urn:") else []
        return found + [r for v in value.values() for r in _unresolved(v)]
    if isinstance(value, list):
        return [r for v in value for r in _unresolved(v)]
    return []


def _sequential(client: Writer, entries: list[dict[str, Any]]) -> WriteOutcome:
    ordered = [e for e in entries if e["resource"]["resourceType"] != "Provenance"]
    ordered += [e for e in entries if e["resource"]["resourceType"] == "Provenance"]
    outcome = WriteOutcome(ok=True, mode="sequential")
    ids: dict[str, str] = {}
    for index, entry in enumerate(ordered):
        resource = _rewrite(copy.deepcopy(entry["resource"]), ids)
        label = f"{resource['resourceType']} (entry {index})"
        rest = [
            f"{e['resource']['resourceType']} {e.get('fullUrl', '')}".strip() for e in ordered[index + 1 :]
        ]
        dangling = _unresolved(resource)
        if dangling:
            outcome.ok = False
            outcome.failed = label
            outcome.errors = [f"{label} refers to entries not written yet: {', '.join(dangling)}"]
            outcome.not_written = [label, *rest]
            return outcome
        try:
            result = client.create(resource, if_none_exist=entry["request"]["ifNoneExist"])
        except FhirError as exc:
            failure = _failure("sequential", exc)
            failure.written = outcome.written
            failure.failed = label
            failure.not_written = rest
            failure.notes = outcome.notes + failure.notes
            return failure
        if not result.id:
            outcome.ok = False
            outcome.failed = label
            outcome.status = result.status
            outcome.errors = [f"{label}: the server answered {result.status} without the new id"]
            outcome.not_written = rest
            return outcome
        if entry.get("fullUrl"):
            ids[entry["fullUrl"]] = f"{resource['resourceType']}/{result.id}"
        outcome.written.append(
            WrittenEntry(
                resource_type=resource["resourceType"],
                id=result.id,
                version=result.version_id,
                location=result.location,
                created=result.status == 201,
                status=str(result.status),
                full_url=entry.get("fullUrl"),
            )
        )
    return outcome
