"""FHIR R4 interactions over the store, independent of HTTP: the routes and the entries of batch and
transaction Bundles both call these ("RESTful API", "Search", "Bundle" §transaction / batch pages).

Every refusal is a :class:`FhirHttpError` carrying an OperationOutcome.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlencode

from .oauth import Grant
from .outcome import FhirHttpError, JsonDict, bad_request, not_found
from .paging import Snapshots
from .resource_types import RESOURCE_TYPES
from .scopes import Permissions
from .store import (
    CURSOR_PARAM,
    ID_RE,
    Store,
    patient_references,
    resolve_references,
    split_search_params,
    validate_resource,
)

#: RFC 6750 §3.1: a token that lacks the scope for the request.
INSUFFICIENT_SCOPE = {"WWW-Authenticate": 'Bearer error="insufficient_scope"'}


def status_line(status: int) -> str:
    """``201 Created`` style status for Bundle.entry.response.status."""
    return f"{status} {HTTPStatus(status).phrase}"


def location(resource: JsonDict, base: str = "") -> str:
    """``Type/id/_history/vid``, absolute when ``base`` is given (FHIR R4 "RESTful API" create/update)."""
    path = f"{resource['resourceType']}/{resource['id']}/_history/{resource['meta']['versionId']}"
    return f"{base.rstrip('/')}/{path}" if base else path


def etag(resource: JsonDict) -> str:
    return f'W/"{resource["meta"]["versionId"]}"'


class Access:
    """What the bearer token permits: SMART scopes per interaction, and for patient-level scopes the
    launch patient's compartment (SMART App Launch 2.x "Scopes and Launch Context")."""

    def __init__(self, grant: Grant) -> None:
        self.grant = grant
        self.permissions = Permissions(grant.scopes)

    def _compartment_only(self, resource_type: str, interaction: str) -> bool:
        contexts = self.permissions.contexts_for(resource_type, interaction)
        if not contexts:
            raise FhirHttpError(
                403,
                f"the granted scopes do not allow {interaction} on {resource_type}",
                code="forbidden",
                headers=INSUFFICIENT_SCOPE,
            )
        only_patient = contexts == {"patient"}
        if only_patient and not self.grant.patient:
            raise FhirHttpError(403, "patient-level scopes but no patient in context", code="forbidden")
        return only_patient

    def check(self, resource_type: str, interaction: str, resource: JsonDict | None = None) -> None:
        """Raise 403 unless ``interaction`` on ``resource_type`` (and ``resource``) is permitted."""
        if self._compartment_only(resource_type, interaction) and resource is not None:
            if not self.in_compartment(resource):
                raise FhirHttpError(
                    403, f"{resource_type} outside the launch patient's compartment", code="forbidden"
                )

    def search_filter_needed(self, resource_type: str) -> bool:
        return self._compartment_only(resource_type, "search")

    def in_compartment(self, resource: JsonDict) -> bool:
        """A resource tied to patients must be tied to the launch patient; one tied to none is allowed."""
        refs = patient_references(resource)
        return not refs or f"Patient/{self.grant.patient}" in refs


@dataclass(frozen=True)
class Target:
    """A parsed relative FHIR URL: ``Type``, ``Type/id``, ``Type/id/_history[/vid]``, ``Type?query``."""

    resource_type: str
    id: str | None = None
    history: bool = False
    version: str | None = None
    query: str | None = None


def parse_target(url: str, base: str) -> Target:
    if url.startswith(base + "/"):
        url = url[len(base) + 1 :]
    path, has_query, query = url.partition("?")
    parts = [p for p in path.split("/") if p]
    if not parts or parts[0] not in RESOURCE_TYPES:
        raise bad_request(f"url {url!r} does not name a known resource type", code="not-supported")
    target = Target(parts[0], query=query if has_query else None)
    if len(parts) == 1:
        return target
    if has_query or not ID_RE.match(parts[1]):
        raise bad_request(f"url {url!r} is not a supported FHIR interaction", code="not-supported")
    if len(parts) == 2:
        return Target(parts[0], parts[1])
    if parts[2] == "_history" and len(parts) in (3, 4):
        return Target(parts[0], parts[1], history=True, version=parts[3] if len(parts) == 4 else None)
    raise bad_request(f"url {url!r} is not a supported FHIR interaction", code="not-supported")


class Interactions:
    """One request's interactions: ``base`` is the FHIR base in links and fullUrls, ``location_base`` the
    base of ``location`` values in transaction and batch responses ("" = relative ``Type/id/...``)."""

    def __init__(
        self,
        store: Store,
        access: Access,
        base: str,
        *,
        snapshots: Snapshots,
        default_count: int,
        max_count: int,
        location_base: str = "",
    ) -> None:
        self.store = store
        self.access = access
        self.base = base
        self.snapshots = snapshots
        self.default_count = default_count
        self.max_count = max_count
        self.location_base = location_base

    # -- reads -----------------------------------------------------------------------------------------
    def read(self, rtype: str, rid: str) -> JsonDict:
        resource = self.store.read(rtype, rid)
        if resource is None:
            self.access.check(rtype, "read")
            raise not_found(f"{rtype}/{rid} is not known")
        self.access.check(rtype, "read", resource)
        return resource

    def vread(self, rtype: str, rid: str, vid: str) -> JsonDict:
        self.read(rtype, rid)
        resource = self.store.vread(rtype, rid, vid)
        if resource is None:
            raise not_found(f"{rtype}/{rid}/_history/{vid} is not known")
        self.access.check(rtype, "vread", resource)
        return resource

    def history(self, rtype: str, rid: str) -> JsonDict:
        """Instance history Bundle, newest first ("RESTful API" §history)."""
        current = self.read(rtype, rid)
        self.access.check(rtype, "history", current)
        versions = self.store.history(rtype, rid)
        entries = []
        for version in versions:
            first = version is versions[-1]
            entries.append(
                {
                    "fullUrl": f"{self.base}/{rtype}/{rid}",
                    "resource": version,
                    "request": {
                        "method": "POST" if first else "PUT",
                        "url": rtype if first else f"{rtype}/{rid}",
                    },
                    "response": {
                        "status": status_line(201 if first else 200),
                        "etag": etag(version),
                        "lastModified": version["meta"]["lastUpdated"],
                    },
                }
            )
        return {"resourceType": "Bundle", "type": "history", "total": len(entries), "entry": entries}

    def search(self, rtype: str, params: list[tuple[str, str]], *, strict: bool = False) -> JsonDict:
        """Type-level search → searchset Bundle with ``total`` and self/next/previous links. The first
        page of a longer result keeps the matches as a snapshot; its links carry the cursor, so later
        pages are slices of it (see ``paging.py``)."""
        filters, result = split_search_params(params, strict=strict)
        compartment = self.access.grant.patient if self.access.search_filter_needed(rtype) else None
        sort = result.get("_sort")
        key = (rtype, tuple(filters), sort, compartment)
        cursor = result.get(CURSOR_PARAM) or None
        matches = self.snapshots.get(cursor, key) if cursor else None
        if matches is None:
            cursor = None
            matches = self.store.search(rtype, filters, sort=sort, compartment=compartment)
        count = self._int_param(result, "_count", self.default_count)
        count = min(count, self.max_count)
        offset = self._int_param(result, "_offset", 0)
        summary_count = result.get("_summary") == "count"
        page = [] if summary_count else matches[offset : offset + count]
        has_next = not summary_count and count > 0 and offset + count < len(matches)
        if has_next and cursor is None:
            cursor = self.snapshots.put(key, matches)
        kept = [(n, v) for n, v in params if n not in ("_count", "_offset", CURSOR_PARAM)]
        if cursor:
            kept.append((CURSOR_PARAM, cursor))

        def link(relation: str, at: int) -> JsonDict:
            query = urlencode([*kept, ("_count", str(count)), ("_offset", str(at))])
            return {"relation": relation, "url": f"{self.base}/{rtype}?{query}"}

        links = [link("self", offset)]
        if has_next:
            links.append(link("next", offset + count))
        if not summary_count and offset > 0 and count > 0:
            links.append(link("previous", max(0, offset - count)))
        bundle: JsonDict = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(matches),
            "link": links,
        }
        if page:
            prefix = f"{self.base}/{rtype}/"
            bundle["entry"] = [
                {"fullUrl": prefix + r["id"], "resource": r, "search": {"mode": "match"}} for r in page
            ]
        return bundle

    @staticmethod
    def _int_param(result: dict[str, str], name: str, default: int) -> int:
        raw = result.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise bad_request(f"{name} must be a non-negative integer, not {raw!r}") from None
        if value < 0:
            raise bad_request(f"{name} must be a non-negative integer, not {raw!r}")
        return value

    # -- writes ----------------------------------------------------------------------------------------
    def create(self, rtype: str, body: Any, if_none_exist: str | None) -> tuple[int, JsonDict]:
        """Create, or conditional create: 0 matches → 201, 1 → 200 with it, more → 412."""
        resource = validate_resource(body, expected_type=rtype)
        self.access.check(rtype, "create", resource)
        with self.store.lock:
            if if_none_exist:
                existing = self._conditional(rtype, if_none_exist)
                if existing is not None:
                    return 200, existing
            return 201, self.store.create(resource)

    def _conditional(self, rtype: str, query: str) -> JsonDict | None:
        matches = self.store.conditional_matches(rtype, query)
        if len(matches) > 1:
            raise FhirHttpError(
                412, f"If-None-Exist {query!r} matched {len(matches)} resources", code="duplicate"
            )
        if matches:
            self.access.check(rtype, "read", matches[0])
            return matches[0]
        return None

    def update(self, rtype: str, rid: str, body: Any, if_match: str | None) -> tuple[int, JsonDict]:
        """Update, or create at a client-chosen id (update as create): 200 or 201."""
        if not ID_RE.match(rid):
            raise bad_request(f"invalid id {rid!r}")
        resource = validate_resource(body, expected_type=rtype)
        if resource.get("id") != rid:
            raise bad_request(
                f"the resource id {resource.get('id')!r} must equal the URL id {rid!r}",
                expression=f"{rtype}.id",
            )
        self.access.check(rtype, "update", resource)
        with self.store.lock:
            current = self.store.read(rtype, rid)
            if current is not None:
                self.access.check(rtype, "update", current)
            stored, created = self.store.update(resource, if_match=if_match)
        return (201 if created else 200), stored

    # -- Bundles ---------------------------------------------------------------------------------------
    def bundle(self, body: Any, *, minimal: bool) -> JsonDict:
        if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
            raise bad_request("POST to the base URL takes a Bundle of type transaction or batch")
        kind = body.get("type")
        entries = body.get("entry", [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise bad_request("Bundle.entry must be an array of objects", expression="Bundle.entry")
        if kind == "transaction":
            return self.transaction(entries, minimal=minimal)
        if kind == "batch":
            return self.batch(entries, minimal=minimal)
        raise bad_request(
            f"Bundle.type {kind!r} cannot be processed here (transaction or batch)", expression="Bundle.type"
        )

    def _entry_request(self, entry: JsonDict, where: str) -> tuple[str, Target, JsonDict]:
        request = entry.get("request")
        if not isinstance(request, dict):
            raise bad_request(f"{where}: request is required", expression=f"{where}.request")
        method = request.get("method")
        url = request.get("url")
        if method not in ("GET", "POST", "PUT") or not isinstance(url, str):
            raise bad_request(
                f"{where}: request method {method!r} / url {url!r} not supported",
                code="not-supported",
                expression=f"{where}.request",
            )
        return str(method), parse_target(url, self.base), request

    def transaction(self, entries: list[JsonDict], *, minimal: bool) -> JsonDict:
        """All or nothing ("Bundle" transaction processing rules): ids are assigned first, ``urn:uuid``
        references resolved, then POST, PUT and GET run in that order; any failure undoes every write."""
        with self.store.lock:
            steps: list[dict[str, Any]] = []
            ids: dict[str, str] = {}
            for index, entry in enumerate(entries):
                where = f"Bundle.entry[{index}]"
                try:
                    steps.append(self._plan(entry, where, ids))
                except FhirHttpError as exc:
                    raise _prefixed(exc, where) from None
            for step in steps:
                if step["resource"] is not None:
                    try:
                        resolve_references(step["resource"], ids)
                    except FhirHttpError as exc:
                        raise _prefixed(exc, step["where"]) from None
            undo: list[tuple[str, str]] = []
            results: dict[int, JsonDict] = {}
            order = sorted(
                range(len(steps)), key=lambda i: {"POST": 0, "PUT": 1, "GET": 2}[steps[i]["method"]]
            )
            try:
                for index in order:
                    results[index] = self._apply(steps[index], undo, minimal)
            except FhirHttpError as exc:
                for rtype, rid in reversed(undo):
                    self.store.drop_version(rtype, rid)
                raise _prefixed(exc, steps[index]["where"]) from None
        return {
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [results[i] for i in range(len(steps))],
        }

    def _plan(self, entry: JsonDict, where: str, ids: dict[str, str]) -> dict[str, Any]:
        method, target, request = self._entry_request(entry, where)
        step: dict[str, Any] = {
            "where": where,
            "method": method,
            "target": target,
            "resource": None,
            "existing": None,
            "id": None,
            "if_match": request.get("ifMatch"),
        }
        full_url = entry.get("fullUrl")
        if method == "GET":
            return step
        resource = copy.deepcopy(validate_resource(entry.get("resource"), expected_type=target.resource_type))
        if method == "POST":
            if target.id is not None or target.query is not None:
                raise bad_request("POST url must be the resource type", expression=f"{where}.request.url")
            if_none_exist = request.get("ifNoneExist")
            if if_none_exist:
                step["existing"] = self._conditional(target.resource_type, str(if_none_exist))
            step["id"] = step["existing"]["id"] if step["existing"] else self.store.new_id()
        else:
            if target.id is None or target.history:
                raise bad_request(
                    "PUT url must be Type/id (conditional update is not supported)",
                    code="not-supported",
                    expression=f"{where}.request.url",
                )
            if resource.setdefault("id", target.id) != target.id:
                raise bad_request("resource id must equal the PUT url id", expression=f"{where}.resource.id")
            step["id"] = target.id
        resource["id"] = step["id"]
        step["resource"] = resource
        if isinstance(full_url, str) and full_url:
            if full_url in ids:
                raise bad_request(f"duplicate fullUrl {full_url}", expression=f"{where}.fullUrl")
            ids[full_url] = f"{target.resource_type}/{step['id']}"
        return step

    def _apply(self, step: dict[str, Any], undo: list[tuple[str, str]], minimal: bool) -> JsonDict:
        target: Target = step["target"]
        rtype = target.resource_type
        if step["method"] == "GET":
            return {"resource": self.get(target), "response": {"status": status_line(200)}}
        resource: JsonDict = step["resource"]
        if step["method"] == "POST":
            if step["existing"] is not None:
                return self._write_entry(200, step["existing"], minimal)
            self.access.check(rtype, "create", resource)
            stored = self.store.put_version(resource)
            undo.append((rtype, stored["id"]))
            return self._write_entry(201, stored, minimal)
        self.access.check(rtype, "update", resource)
        current = self.store.read(rtype, resource["id"])
        if current is not None:
            self.access.check(rtype, "update", current)
        stored, created = self.store.update(resource, if_match=step["if_match"])
        undo.append((rtype, stored["id"]))
        return self._write_entry(201 if created else 200, stored, minimal)

    def _write_entry(self, status: int, stored: JsonDict, minimal: bool) -> JsonDict:
        entry: JsonDict = {
            "fullUrl": f"{self.base}/{stored['resourceType']}/{stored['id']}",
            "response": {
                "status": status_line(status),
                "location": location(stored, self.location_base),
                "etag": etag(stored),
                "lastModified": stored["meta"]["lastUpdated"],
            },
        }
        if not minimal:
            entry["resource"] = stored
        return entry

    def get(self, target: Target) -> JsonDict:
        """A GET entry: read, vread, history or search."""
        if target.query is not None or target.id is None:
            return self.search(target.resource_type, parse_qsl(target.query or "", keep_blank_values=True))
        if target.history and target.version:
            return self.vread(target.resource_type, target.id, target.version)
        if target.history:
            return self.history(target.resource_type, target.id)
        return self.read(target.resource_type, target.id)

    def batch(self, entries: list[JsonDict], *, minimal: bool) -> JsonDict:
        """Each entry on its own; failures become entry.response.outcome ("Bundle" batch rules)."""
        results: list[JsonDict] = []
        for index, entry in enumerate(entries):
            where = f"Bundle.entry[{index}]"
            try:
                with self.store.lock:
                    step = self._plan(entry, where, {})
                    if step["resource"] is not None:
                        resolve_references(step["resource"], {})
                    results.append(self._apply(step, [], minimal))
            except FhirHttpError as exc:
                failed = _prefixed(exc, where)
                results.append(
                    {"response": {"status": status_line(failed.status), "outcome": failed.outcome()}}
                )
        return {"resourceType": "Bundle", "type": "batch-response", "entry": results}


def _prefixed(exc: FhirHttpError, where: str) -> FhirHttpError:
    text = exc.diagnostics if exc.diagnostics.startswith("Bundle.entry[") else f"{where}: {exc.diagnostics}"
    return FhirHttpError(
        exc.status, text, code=exc.code, expression=exc.expression or where, headers=exc.headers
    )
