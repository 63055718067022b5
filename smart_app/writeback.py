"""Validate the drafts and write them to the EHR: the one write path (FHIR R4 http.html).

``transaction`` mode sends the Bundle from :func:`smart_app.drafts.build.build_transaction` as one
transaction (http.html#transaction): all-or-nothing, each entry a conditional create
(``ifNoneExist``, http.html#ccreate), so a retry, a double click or a second tab finds what the first
write created. ``sequential`` mode, for EHRs without transactions (per registration), sends the same
entries as conditional creates in Bundle order (Device, assessment, ServiceRequest, DetectedIssues,
Provenance last), rewriting ``urn:uuid`` references to the ids the server gave. Servers that cap the
entries of a transaction with conditional creates (Medplum: 8) get sequential writes when
``max_transaction_entries`` says so.

The outcome says what the EHR holds, not what its answer suggested. Whenever the answer does not
settle it (an error status, a timeout, a malformed or partial answer, a ``201 Created`` without
``Location``), each unsettled entry is read back by the search its ``ifNoneExist`` names (the draft's
identifier; ``_tag`` for the Provenance, which has no identifier in R4), so the page can say "3 of 4
drafts are in the chart; the Provenance is not". Versions are taken as the server gives them: the
``Location`` with ``_history``, the ``etag`` (http.html#versioning), the returned resource, else a read
of the resource; never assumed. A retry sends the same conditional creates and completes what is
missing without duplicates; sequential mode goes on past a resource it had to find by reading back.

No Flask here: the web layer and the CLI call :func:`write_drafts`.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl

from smart_app import fhirjson as fj
from smart_app.drafts import r4
from smart_app.drafts.profiles import ProfileIssue, check_bundle
from smart_app.fhir.budget import ReadBudget
from smart_app.fhir.client import WriteResult
from smart_app.fhir.errors import (
    FhirConnectionError,
    FhirCutShort,
    FhirError,
    FhirMalformedResponse,
    FhirTimeout,
)

Mode = Literal["transaction", "sequential"]
#: What a write came to, for the page and the audit log.
Result = Literal["written", "partly-written", "refused", "not-written", "unknown"]
#: Time for reading back what the EHR holds after an unsettled answer.
READ_BACK_BUDGET = ReadBudget(seconds=15.0, max_response_bytes=8 * 1024 * 1024)
#: Written by every write but not a draft itself.
APP_DEVICE_TYPE = "Device"


class Writer(Protocol):
    """What the write-back needs of :class:`smart_app.fhir.client.FhirClient`."""

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]: ...

    def create(self, resource: dict[str, Any], if_none_exist: str | None = None) -> WriteResult: ...

    def search_all(
        self, resource_type: str, params: Mapping[str, str] | None = None, *, notes: list[str] | None = None
    ) -> list[dict[str, Any]]: ...

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]: ...

    def budget(self, budget: ReadBudget) -> AbstractContextManager[None]: ...


class InvalidDraft(ValueError):
    """A draft does not conform to the app's profiles; nothing was sent."""

    def __init__(self, issues: list[ProfileIssue] | list[str]) -> None:
        self.issues = [str(i) for i in issues]
        super().__init__("draft does not conform to the back-mice profiles: " + "; ".join(self.issues[:5]))


@dataclass(frozen=True)
class WrittenEntry:
    """One resource the server holds after the write. ``created``: True for ``201 Created``, False
    when ``ifNoneExist`` matched one that already existed (``200 OK``), None when it was found by
    reading back (whether this write or an earlier one created it is not known)."""

    resource_type: str
    id: str | None
    version: str | None
    location: str | None
    created: bool | None
    status: str
    full_url: str | None = None

    @property
    def reference(self) -> str | None:
        return f"{self.resource_type}/{self.id}" if self.id else None


@dataclass
class WriteOutcome:
    """What the EHR holds after the write. Every Bundle entry is in exactly one of ``written`` (in the
    chart), ``missing`` (read back and not there) or ``unknown`` (could not be checked); the last two
    name the entries by resource type. ``ok`` only when every entry is in the chart. ``errors`` are
    the server's OperationOutcome issues (or the client's message) and ``status`` its HTTP status;
    ``failed`` names the entry sequential mode stopped at; ``read_back`` tells whether the EHR was asked
    what it holds; ``duplicates`` names entries it holds more than once."""

    ok: bool
    mode: Mode
    written: list[WrittenEntry] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    status: int | None = None
    failed: str | None = None
    missing: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    read_back: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def created(self) -> int:
        return sum(1 for w in self.written if w.created)

    @property
    def result(self) -> Result:
        """``written`` (all in the chart), ``partly-written``, ``unknown`` (none confirmed, some could
        not be checked), ``refused`` (none in the chart after an HTTP error) or ``not-written``."""
        if not self.missing and not self.unknown:
            return "written"
        if self.written and any(w.resource_type != APP_DEVICE_TYPE for w in self.written):
            return "partly-written"
        if self.unknown:
            return "unknown"
        return "refused" if self.status is not None else "not-written"

    def summary(self) -> str:
        """One sentence on what the chart holds, e.g. "3 of 4 drafts are in the chart; the Provenance
        is not." (the app's Device is not a draft and is named only when it is missing)."""
        drafts_in = [w.resource_type for w in self.written if w.resource_type != APP_DEVICE_TYPE]
        missing = [t for t in self.missing if t != APP_DEVICE_TYPE]
        unknown = [t for t in self.unknown if t != APP_DEVICE_TYPE]
        total = len(drafts_in) + len(missing) + len(unknown)
        if not missing and not unknown:
            text = f"All {_count(total, 'draft')} {_are(total)} in the chart"
        elif not drafts_in and not unknown:
            text = f"None of the {_count(total, 'draft')} is in the chart"
        else:
            text = f"{len(drafts_in)} of {_count(total, 'draft')} {_are(len(drafts_in))} in the chart"
            if missing:
                text += f"; {_names(missing)} {_are(len(missing))} not"
            if unknown:
                text += f"; whether {_names(unknown)} {_are(len(unknown))} could not be checked"
        if APP_DEVICE_TYPE in self.missing:
            text += "; the app's Device record is not"
        elif APP_DEVICE_TYPE in self.unknown:
            text += "; whether the app's Device record is could not be checked"
        return text + "."

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["created"] = self.created
        data["existing"] = len(self.written) - self.created
        data["result"] = self.result
        data["summary"] = self.summary()
        for row, entry in zip(data["written"], self.written, strict=True):
            row["reference"] = entry.reference
        return data


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _are(n: int) -> str:
    return "is" if n == 1 else "are"


def _names(types: list[str]) -> str:
    """``the Provenance``, ``2 DetectedIssues``, ``the ServiceRequest and the Provenance``."""
    counts = Counter(types)
    parts = [f"the {t}" if n == 1 else f"{n} {t}s" for t, n in counts.items()]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def validate_drafts(bundle: Mapping[str, Any]) -> list[str]:
    """Problems that forbid sending: not a transaction Bundle, an entry without resource or POST
    request with ``ifNoneExist``, a resource that is not valid R4 (:mod:`smart_app.drafts.r4`) or does not
    conform to the app's profiles."""
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
    problems.extend(r4.problems(bundle))
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
    outcome, never raised, with what the EHR holds read back."""
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
    _learn_versions(client, outcome)
    outcome.notes[:0] = notes
    return outcome


# -- reading back ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Found:
    """What a read-back learned of one entry: ``state`` ``in-chart``, ``missing`` or ``unknown``."""

    state: Literal["in-chart", "missing", "unknown"]
    resource: dict[str, Any] | None = None
    copies: int = 0
    reason: str | None = None


class _ReadBack:
    """Reads entries back by their ``ifNoneExist`` search, within :data:`READ_BACK_BUDGET`; after a
    failure that says the EHR cannot be reached, the rest are unknown without asking again."""

    def __init__(self, client: Writer) -> None:
        self.client = client
        self.unreachable: str | None = None

    def find(self, entry: dict[str, Any]) -> _Found:
        if self.unreachable is not None:
            return _Found("unknown", reason=self.unreachable)
        resource_type = entry["resource"]["resourceType"]
        params = dict(parse_qsl(str(entry["request"]["ifNoneExist"]).lstrip("?"), keep_blank_values=True))
        try:
            with self.client.budget(READ_BACK_BUDGET):
                matches = self.client.search_all(resource_type, params)
        except FhirError as exc:
            reason = f"HTTP {exc.status}" if exc.status else exc.message
            if isinstance(exc, FhirConnectionError | FhirTimeout | FhirCutShort):
                self.unreachable = reason
            return _Found("unknown", reason=reason)
        found = [r for r in matches if r.get("resourceType") == resource_type and _fhir_id(r.get("id"))]
        if not found:
            return _Found("missing")
        return _Found("in-chart", resource=found[0], copies=len(found))


def _fhir_id(value: Any) -> str | None:
    """``value`` when it is a FHIR id (R4 datatypes.html#id), as ids and versions the app shows must be."""
    return value if isinstance(value, str) and fj.ID_RE.fullmatch(value) else None


def _from_read_back(entry: dict[str, Any], found: _Found) -> WrittenEntry:
    resource = found.resource or {}
    return WrittenEntry(
        resource_type=str(resource.get("resourceType")),
        id=_fhir_id(resource.get("id")),
        version=_fhir_id(fj.version_id(resource)),
        location=None,
        created=None,
        status="found by reading back",
        full_url=entry.get("fullUrl"),
    )


def _settle(outcome: WriteOutcome, reader: _ReadBack, entries: list[dict[str, Any]]) -> None:
    """Read ``entries`` back and file each under written, missing or unknown."""
    outcome.read_back = True
    unknown_reasons: set[str] = set()
    for entry in entries:
        found = reader.find(entry)
        _file(outcome, entry, found)
        if found.state == "unknown" and found.reason:
            unknown_reasons.add(found.reason)
    if unknown_reasons:
        outcome.notes.append(
            "The app could not check what the EHR holds for every resource ("
            + "; ".join(sorted(unknown_reasons))[:200]
            + "). Writing again is safe: the conditional creates find what already exists."
        )


def _file(outcome: WriteOutcome, entry: dict[str, Any], found: _Found) -> None:
    resource_type = entry["resource"]["resourceType"]
    if found.state == "in-chart":
        outcome.written.append(_from_read_back(entry, found))
        if found.copies > 1:
            outcome.duplicates.append(resource_type)
            outcome.notes.append(
                f"The EHR holds {found.copies} copies of the {resource_type} of this draft (same identifier)."
            )
    elif found.state == "missing":
        outcome.missing.append(resource_type)
    else:
        outcome.unknown.append(resource_type)


def _learn_versions(client: Writer, outcome: WriteOutcome) -> None:
    """Read the version of each written resource whose answer named none (R4 http.html#versioning:
    ``meta.versionId`` as the server gives it); left unknown when that read fails."""
    for index, entry in enumerate(outcome.written):
        if entry.version is not None or not entry.id:
            continue
        try:
            with client.budget(READ_BACK_BUDGET):
                resource = client.read(entry.resource_type, entry.id)
        except (FhirError, ValueError):
            continue
        version = _fhir_id(fj.version_id(resource))
        if version:
            outcome.written[index] = WrittenEntry(**{**asdict(entry), "version": version})


# -- transaction ---------------------------------------------------------------------------------------


def _errors_of(exc: FhirError) -> list[str]:
    return exc.issues() or [exc.message]


def _transaction(client: Writer, bundle: dict[str, Any]) -> WriteOutcome:
    entries: list[dict[str, Any]] = bundle["entry"]
    reader = _ReadBack(client)
    try:
        response = client.transaction(bundle)
    except FhirError as exc:
        outcome = WriteOutcome(ok=False, mode="transaction", errors=_errors_of(exc), status=exc.status)
        if isinstance(exc, FhirTimeout | FhirMalformedResponse | FhirConnectionError | FhirCutShort):
            outcome.notes.append("The EHR's answer was lost or unusable; what it holds was read back.")
        _settle(outcome, reader, entries)
        outcome.ok = not outcome.missing and not outcome.unknown
        return outcome
    outcome = WriteOutcome(ok=True, mode="transaction")
    for sent, got in zip(entries, response.get("entry") or [], strict=False):
        answer = got.get("response") or {}
        returned = got.get("resource") if isinstance(got.get("resource"), dict) else {}
        location = answer.get("location")
        rtype, rid, version = fj.location_parts(location, sent["resource"]["resourceType"])
        rid = rid or _fhir_id(returned.get("id"))
        status = str(answer.get("status", "")).strip()
        if not rid:
            # A 2xx without Location or resource: the entry is settled by reading it back.
            _settle(outcome, reader, [sent])
            continue
        outcome.written.append(
            WrittenEntry(
                resource_type=str(rtype or sent["resource"]["resourceType"]),
                id=rid,
                version=version or fj.etag_version(answer.get("etag")) or _fhir_id(fj.version_id(returned)),
                location=location,
                created=status.startswith("201"),
                status=status,
                full_url=sent.get("fullUrl"),
            )
        )
    outcome.ok = not outcome.missing and not outcome.unknown
    if not outcome.ok:
        outcome.errors.append("The EHR answered success without naming every resource it created.")
    return outcome


# -- sequential ----------------------------------------------------------------------------------------


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
    reader = _ReadBack(client)
    ids: dict[str, str] = {}
    for index, entry in enumerate(ordered):
        resource = _rewrite(copy.deepcopy(entry["resource"]), ids)
        label = f"{resource['resourceType']} (entry {index})"
        dangling = _unresolved(resource)
        if dangling:
            outcome.errors = [f"{label} refers to entries not written yet: {', '.join(dangling)}"]
            return _stop(outcome, reader, label, ordered[index:])
        error: FhirError | None = None
        result: WriteResult | None = None
        try:
            result = client.create(resource, if_none_exist=entry["request"]["ifNoneExist"])
        except FhirError as exc:
            error = exc
        written: WrittenEntry | None = None
        if result is not None and result.id:
            written = WrittenEntry(
                resource_type=resource["resourceType"],
                id=result.id,
                version=result.version_id,
                location=result.location,
                created=result.status == 201,
                status=str(result.status),
                full_url=entry.get("fullUrl"),
            )
        else:
            # An error, or a 2xx without the new id (no Location, no body): does the EHR hold it?
            found = reader.find(entry)
            outcome.read_back = True
            answered = _answered(error, result)
            if found.state != "in-chart":
                outcome.status = error.status if error is not None else result.status if result else None
                outcome.errors = (
                    _errors_of(error)
                    if error is not None
                    else [
                        f"{label}: the EHR answered {answered} without the new id, and holds no such resource"
                    ]
                )
                _file(outcome, entry, found)
                return _stop(outcome, reader, label, ordered[index + 1 :])
            written = _from_read_back(entry, found)
            outcome.notes.append(
                f"{label}: the EHR answered {answered}; found in the chart by reading it back."
            )
            if found.copies > 1:
                outcome.duplicates.append(resource["resourceType"])
        if entry.get("fullUrl") and written.id:
            ids[entry["fullUrl"]] = f"{resource['resourceType']}/{written.id}"
        outcome.written.append(written)
    return outcome


def _answered(error: FhirError | None, result: WriteResult | None) -> str:
    """How the EHR answered a create, for notes: its status or the client's message."""
    if error is not None:
        return f"HTTP {error.status}" if error.status else error.message
    return f"HTTP {result.status}" if result is not None else "nothing"


def _stop(outcome: WriteOutcome, reader: _ReadBack, label: str, rest: list[dict[str, Any]]) -> WriteOutcome:
    """End a sequential write at ``label``; the entries not attempted are read back (an earlier write
    may have stored them)."""
    outcome.ok = False
    outcome.failed = label
    _settle(outcome, reader, rest)
    return outcome
