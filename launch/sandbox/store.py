"""In-memory, versioned FHIR R4 resource store with the search semantics the sandbox offers.

FHIR R4 "RESTful API" (read, vread, history, create, update) and "Search" (token, reference and
result parameters) pages. Thread-safe: reads share a readers-writer lock, writes hold it alone.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson

from .locks import ReadWriteLock
from .outcome import FhirHttpError, JsonDict, bad_request
from .resource_types import RESOURCE_TYPES

ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")

#: Elements searched by the ``code`` parameter, per type (R4 search parameter definitions).
CODE_PATHS: dict[str, tuple[str, ...]] = {
    "MedicationRequest": ("medicationCodeableConcept",),
    "MedicationStatement": ("medicationCodeableConcept",),
    "MedicationAdministration": ("medicationCodeableConcept",),
    "MedicationDispense": ("medicationCodeableConcept",),
    "DocumentReference": ("type",),
}
#: Elements searched by ``category``.
CATEGORY_PATHS: dict[str, tuple[str, ...]] = {"DocumentReference": ("category",)}
#: Reference elements that put a resource in a patient's compartment (R4 "CompartmentDefinition-patient").
PATIENT_PATHS: tuple[str, ...] = ("subject", "patient", "beneficiary", "individual", "for")
#: Token search parameters on plain elements, beyond code/category/identifier/_tag.
TOKEN_PATHS: dict[str, tuple[str, ...]] = {
    "clinical-status": ("clinicalStatus",),
    "verification-status": ("verificationStatus",),
    "type": ("type",),
}
#: The result parameter of the sandbox's ``next`` links that names a search snapshot (its paging cursor).
CURSOR_PARAM = "_cursor"
#: Parameters this store understands; others are ignored (lenient handling) or refused (strict).
SEARCH_PARAMS = frozenset(
    {"patient", "subject", "code", "category", "_id", "identifier", "_tag", "status"} | set(TOKEN_PATHS)
)
RESULT_PARAMS = frozenset(
    {"_count", "_offset", "_sort", "_format", "_pretty", "_total", "_summary", "_elements", CURSOR_PARAM}
)
#: Reference elements indexed per type, and the elements each reference search parameter looks at.
INDEXED_REFERENCE_PATHS: tuple[str, ...] = ("subject", "patient")
INDEXED_ELEMENTS: dict[str, tuple[str, ...]] = {"patient": ("subject", "patient"), "subject": ("subject",)}
#: ``meta.versionId`` styles: "integer" (1, 2, 3, ...) or "opaque" (a UUID per version).
VERSION_ID_STYLES = ("integer", "opaque")


def now_instant() -> str:
    """An R4 ``instant`` for the present moment, UTC, millisecond precision."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def validate_resource(resource: Any, *, expected_type: str | None = None, where: str = "") -> JsonDict:
    """Minimal R4 JSON checks ("JSON Representation" page): an object, a known resourceType, a legal id,
    and no null, empty string, empty object or empty array values."""
    prefix = f"{where}: " if where else ""
    if not isinstance(resource, dict):
        raise bad_request(f"{prefix}the resource must be a JSON object", code="structure")
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or rtype not in RESOURCE_TYPES:
        raise bad_request(f"{prefix}unknown or missing resourceType {rtype!r}", code="structure")
    if expected_type is not None and rtype != expected_type:
        raise bad_request(f"{prefix}resourceType {rtype} does not match the URL type {expected_type}")
    rid = resource.get("id")
    if rid is not None and (not isinstance(rid, str) or not ID_RE.match(rid)):
        raise bad_request(f"{prefix}invalid id {rid!r} (1-64 of A-Z a-z 0-9 - .)", expression=f"{rtype}.id")
    meta = resource.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise bad_request(f"{prefix}meta must be an object", expression=f"{rtype}.meta")
    _check_values(resource, rtype, prefix)
    return resource


def _check_values(value: Any, path: str, prefix: str) -> None:
    if isinstance(value, dict):
        if not value:
            raise bad_request(f"{prefix}empty object at {path}", code="structure", expression=path)
        for key, item in value.items():
            if item is None:
                raise bad_request(f"{prefix}null value at {path}.{key}", code="structure", expression=path)
            _check_values(item, f"{path}.{key}", prefix)
    elif isinstance(value, list):
        if not value:
            raise bad_request(f"{prefix}empty array at {path}", code="structure", expression=path)
        if all(item is None for item in value):
            raise bad_request(f"{prefix}array of nulls at {path}", code="structure", expression=path)
        for index, item in enumerate(value):
            if item is not None:
                _check_values(item, f"{path}[{index}]", prefix)
    elif isinstance(value, str) and not value.strip():
        raise bad_request(f"{prefix}empty string at {path}", code="structure", expression=path)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def codings_of(value: Any) -> Iterator[JsonDict]:
    """Codings of a CodeableConcept, a Coding, or lists of either."""
    for item in _as_list(value):
        if not isinstance(item, dict):
            continue
        if "coding" in item:
            yield from (c for c in _as_list(item["coding"]) if isinstance(c, dict))
        elif "code" in item or "system" in item:
            yield item


def token_matches(system: str | None, code: str | None, token: str) -> bool:
    """FHIR R4 "Search" token forms: ``code``, ``system|code``, ``|code`` and ``system|``."""
    if "|" not in token:
        return code == token
    want_system, want_code = token.split("|", 1)
    if want_system == "":
        return system is None and code == want_code
    if want_code == "":
        return system == want_system
    return system == want_system and code == want_code


def reference_of(value: Any) -> str | None:
    if isinstance(value, dict):
        ref = value.get("reference")
        return ref if isinstance(ref, str) else None
    return None


def local_reference(ref: str) -> str:
    """``http://base/fhir/Patient/1/_history/2`` or ``Patient/1`` → ``Patient/1``."""
    parts = ref.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return "/".join(parts[-2:]) if len(parts) >= 2 else ref


def patient_references(resource: JsonDict) -> set[str]:
    """``Patient/<id>`` references that place ``resource`` in patient compartments."""
    if resource.get("resourceType") == "Patient":
        return {f"Patient/{resource.get('id')}"}
    found: set[str] = set()
    for path in PATIENT_PATHS:
        for item in _as_list(resource.get(path)):
            ref = reference_of(item)
            if ref:
                local = local_reference(ref)
                if local.startswith("Patient/"):
                    found.add(local)
    return found


def _element_values(resource: JsonDict, paths: Iterable[str]) -> Iterator[Any]:
    for path in paths:
        yield from _as_list(resource.get(path))


def _matches_param(resource: JsonDict, name: str, value: str) -> bool:
    rtype = str(resource.get("resourceType"))
    alternatives = [v for v in value.split(",") if v != ""]
    if not alternatives:
        return True
    if name == "_id":
        return resource.get("id") in alternatives
    if name in ("patient", "subject"):
        ref_paths = ("subject", "patient") if name == "patient" else ("subject",)
        if rtype == "Patient" and name == "patient":
            refs = {f"Patient/{resource.get('id')}"}
        else:
            raw = (reference_of(v) for v in _element_values(resource, ref_paths))
            refs = {local_reference(r) for r in raw if r}
        for alt in alternatives:
            want = local_reference(alt)
            if "/" not in want:
                if name == "patient":
                    want = f"Patient/{want}"
                elif any(r.split("/")[-1] == want for r in refs):
                    return True
            if want in refs:
                return True
        return False
    if name == "identifier":
        idents = [i for i in _as_list(resource.get("identifier")) if isinstance(i, dict)]
        return any(
            token_matches(i.get("system"), i.get("value"), alt) for i in idents for alt in alternatives
        )
    if name == "status":
        return resource.get("status") in alternatives
    if name == "_tag":
        tags = [t for t in _as_list((resource.get("meta") or {}).get("tag")) if isinstance(t, dict)]
        return any(token_matches(t.get("system"), t.get("code"), alt) for t in tags for alt in alternatives)
    if name == "code":
        paths: tuple[str, ...] = CODE_PATHS.get(rtype, ("code",))
    elif name == "category":
        paths = CATEGORY_PATHS.get(rtype, ("category",))
    else:
        paths = TOKEN_PATHS[name]
    codings = [c for v in _element_values(resource, paths) for c in codings_of(v)]
    return any(token_matches(c.get("system"), c.get("code"), alt) for c in codings for alt in alternatives)


def split_search_params(
    params: Sequence[tuple[str, str]], *, strict: bool = False
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Separate filters from result parameters. Modifiers are refused (FHIR R4 "Search" §3.1.1.5.1
    requires it); unknown parameters are ignored unless ``strict`` (``Prefer: handling=strict``)."""
    filters: list[tuple[str, str]] = []
    result: dict[str, str] = {}
    for name, value in params:
        if name in RESULT_PARAMS:
            result[name] = value
            continue
        base, _, modifier = name.partition(":")
        if base in SEARCH_PARAMS:
            if modifier:
                raise bad_request(
                    f"search modifier :{modifier} is not supported on {base}", code="not-supported"
                )
            filters.append((base, value))
        elif strict:
            raise bad_request(f"unknown search parameter {name}", code="not-supported")
    return filters, result


class Store:
    """Versioned resources, ``{type: {id: [v1, v2, ...]}}``, with indexes for the searches apps make.

    Readers get the stored dicts and must not change them (a version, once stored, never changes, so a
    search result stays valid as a snapshot). Reads and searches share the lock's read side and run
    side by side; writes take ``lock`` (the write side, re-entrant), which also serialises the
    read-then-write steps of conditional creates and transactions.

    Indexes, kept per resource type: the ids whose current version refers to ``Type/id`` in
    ``subject`` or ``patient`` (the ``patient`` and ``subject`` search parameters), in creation order,
    and each current version's patient compartments (SMART patient-level scopes).
    """

    def __init__(self, *, version_ids: str = "integer") -> None:
        if version_ids not in VERSION_ID_STYLES:
            raise ValueError(f"version_ids must be one of {VERSION_ID_STYLES}, not {version_ids!r}")
        self.version_ids = version_ids
        self.lock = ReadWriteLock()
        self._data: dict[str, dict[str, list[JsonDict]]] = {}
        self._created: dict[tuple[str, str], int] = {}  # (type, id) -> creation sequence number
        self._sequence = 0
        # (type, element, "Type/id") -> {id: creation sequence}, ordered by creation.
        self._by_reference: dict[tuple[str, str, str], dict[str, int]] = {}
        # (type, id) -> index keys of the current version, and its patient compartments.
        self._indexed: dict[tuple[str, str], tuple[frozenset[tuple[str, str]], frozenset[str]]] = {}

    # -- reads -----------------------------------------------------------------------------------------
    def read(self, rtype: str, rid: str) -> JsonDict | None:
        with self.lock.read():
            versions = self._data.get(rtype, {}).get(rid)
            return versions[-1] if versions else None

    def vread(self, rtype: str, rid: str, vid: str) -> JsonDict | None:
        with self.lock.read():
            for version in self._data.get(rtype, {}).get(rid, []):
                if version["meta"]["versionId"] == vid:
                    return version
            return None

    def history(self, rtype: str, rid: str) -> list[JsonDict]:
        """All versions, newest first (FHIR R4 "RESTful API" §3.1.0.4 history)."""
        with self.lock.read():
            return list(reversed(self._data.get(rtype, {}).get(rid, [])))

    def all_of_type(self, rtype: str) -> list[JsonDict]:
        with self.lock.read():
            return [versions[-1] for versions in self._data.get(rtype, {}).values()]

    def count(self) -> int:
        with self.lock.read():
            return sum(len(by_id) for by_id in self._data.values())

    def search(
        self,
        rtype: str,
        filters: Sequence[tuple[str, str]],
        sort: str | None = None,
        *,
        compartment: str | None = None,
    ) -> list[JsonDict]:
        """Current versions of ``rtype`` matching every filter (AND; comma-separated values are OR), in
        creation order unless sorted. ``compartment``: only resources in that patient's compartment
        (or in no patient's). A ``patient``/``subject`` filter is answered from the index, so a search
        costs the patient's resources of that type, not the store."""
        with self.lock.read():
            by_id = self._data.get(rtype, {})
            ids, refs, rest = self._candidates(rtype, filters)
            if compartment is not None:
                member = f"Patient/{compartment}"
                # Every resource found by its subject/patient reference to the member is in its compartment.
                if refs != [member]:
                    indexed = self._indexed
                    ids = [rid for rid in ids if not (comps := indexed[(rtype, rid)][1]) or member in comps]
            candidates = [by_id[rid][-1] for rid in ids]
            if rest:
                candidates = [r for r in candidates if all(_matches_param(r, n, v) for n, v in rest)]
        if sort in ("_lastUpdated", "-_lastUpdated"):
            candidates.sort(key=lambda r: str(r["meta"]["lastUpdated"]), reverse=sort.startswith("-"))
        elif sort in ("_id", "-_id"):
            candidates.sort(key=lambda r: str(r["id"]), reverse=sort.startswith("-"))
        return candidates

    def _candidates(
        self, rtype: str, filters: Sequence[tuple[str, str]]
    ) -> tuple[Iterable[str], list[str] | None, list[tuple[str, str]]]:
        """The ids one indexed filter selects (in creation order), the references it asked for, and the
        filters still to apply; without an indexed filter, every id of the type."""
        if rtype != "Patient":
            for position, (name, value) in enumerate(filters):
                refs = _indexable_references(name, value)
                if refs is None:
                    continue
                found: list[dict[str, int]] = [
                    ids
                    for ref in refs
                    for element in INDEXED_ELEMENTS[name]
                    if (ids := self._by_reference.get((rtype, element, ref)))
                ]
                if len(found) == 1:
                    ordered: Iterable[str] = found[0]
                else:
                    merged = {rid: seq for ids in found for rid, seq in ids.items()}
                    ordered = sorted(merged, key=merged.__getitem__)
                return ordered, refs, [*filters[:position], *filters[position + 1 :]]
        return self._data.get(rtype, {}), None, list(filters)

    def conditional_matches(self, rtype: str, query: str) -> list[JsonDict]:
        """Resolve an ``If-None-Exist`` / ``ifNoneExist`` query (FHIR R4 "RESTful API" §3.1.0.8)."""
        query = query.split("?", 1)[1] if "?" in query else query
        params = parse_qsl(query, keep_blank_values=True)
        filters, _ = split_search_params(params, strict=True)
        if not filters:
            raise bad_request(f"conditional create query {query!r} has no usable search criteria")
        return self.search(rtype, filters)

    # -- writes ----------------------------------------------------------------------------------------
    def new_id(self) -> str:
        return str(uuid.uuid4())

    def _version_id(self, previous: int) -> str:
        """Integer ids count versions (1, 2, ...); opaque ids are UUIDs, as some servers use (FHIR R4
        leaves ``meta.versionId`` to the server: clients must not assume a format)."""
        return str(previous + 1) if self.version_ids == "integer" else str(uuid.uuid4())

    def put_version(self, resource: JsonDict, *, when: str | None = None, adopt: bool = False) -> JsonDict:
        """Store ``resource`` (which has an id) as the next version, setting meta.versionId/lastUpdated.
        ``adopt``: the store takes the dict itself instead of a copy (the caller hands it over)."""
        rtype, rid = str(resource["resourceType"]), str(resource["id"])
        with self.lock:
            versions = self._data.setdefault(rtype, {}).setdefault(rid, [])
            stored = resource if adopt else copy.deepcopy(resource)
            meta = dict(stored.get("meta") or {})
            meta["versionId"] = self._version_id(len(versions))
            meta["lastUpdated"] = when or now_instant()
            stored["meta"] = meta
            versions.append(stored)
            if (rtype, rid) not in self._created:
                self._sequence += 1
                self._created[(rtype, rid)] = self._sequence
            self._reindex(rtype, rid, stored)
            return stored

    def drop_version(self, rtype: str, rid: str) -> None:
        """Undo the latest ``put_version`` (transaction rollback)."""
        with self.lock:
            by_id = self._data.get(rtype, {})
            versions = by_id.get(rid)
            if versions:
                versions.pop()
                if not versions:
                    del by_id[rid]
                self._reindex(rtype, rid, versions[-1] if versions else None)
                if not versions:
                    del self._created[(rtype, rid)]

    def _reindex(self, rtype: str, rid: str, current: JsonDict | None) -> None:
        old_keys, _ = self._indexed.pop((rtype, rid), (frozenset(), frozenset()))
        new_keys: frozenset[tuple[str, str]] = frozenset()
        if current is not None:
            new_keys = frozenset(
                (element, local_reference(ref))
                for element in INDEXED_REFERENCE_PATHS
                for item in _as_list(current.get(element))
                if (ref := reference_of(item))
            )
            self._indexed[(rtype, rid)] = (new_keys, frozenset(patient_references(current)))
        for element, ref in old_keys - new_keys:
            key = (rtype, element, ref)
            ids = self._by_reference[key]
            del ids[rid]
            if not ids:
                del self._by_reference[key]
        seq = self._created[(rtype, rid)]
        for element, ref in new_keys - old_keys:
            key = (rtype, element, ref)
            ids = self._by_reference.setdefault(key, {})
            later = bool(ids) and ids[next(reversed(ids))] > seq
            ids[rid] = seq
            if later:  # keep creation order when an update moves an older resource here
                self._by_reference[key] = dict(sorted(ids.items(), key=lambda item: item[1]))

    def create(self, resource: JsonDict) -> JsonDict:
        """Create with a server-assigned id (an id in the body is ignored, per "RESTful API" create)."""
        body = dict(resource)
        body["id"] = self.new_id()
        return self.put_version(body)

    def update(self, resource: JsonDict, *, if_match: str | None = None) -> tuple[JsonDict, bool]:
        """Update (or create at a client-chosen id); returns the stored version and whether it was new."""
        with self.lock:
            current = self.read(str(resource["resourceType"]), str(resource["id"]))
            if if_match is not None:
                have = f'W/"{current["meta"]["versionId"]}"' if current else None
                if have is None or if_match.strip() not in (have, have[2:]):
                    raise FhirHttpError(
                        412, f"If-Match {if_match} does not match the current version {have}", code="conflict"
                    )
            return self.put_version(resource), current is None

    # -- loading ---------------------------------------------------------------------------------------
    def load_bundle(self, bundle: Any, source: str) -> int:
        """Load a collection or transaction Bundle as version 1 of each resource (urn:uuid fullUrls
        become the resources' references). Returns the number of resources loaded."""
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise ValueError(f"{source}: not a FHIR Bundle")
        entries = [
            e
            for e in _as_list(bundle.get("entry"))
            if isinstance(e, dict) and isinstance(e.get("resource"), dict)
        ]
        ids: dict[str, str] = {}
        prepared: list[JsonDict] = []
        for index, entry in enumerate(entries):
            resource = copy.deepcopy(entry["resource"])
            rtype = resource.get("resourceType")
            if not isinstance(rtype, str) or rtype not in RESOURCE_TYPES:
                raise ValueError(f"{source}: entry[{index}] has unknown resourceType {rtype!r}")
            if "id" not in resource:
                url = str((entry.get("request") or {}).get("url") or "")
                parts = url.split("?")[0].split("/")
                resource["id"] = parts[1] if len(parts) == 2 and parts[0] == rtype else self.new_id()
            full_url = entry.get("fullUrl")
            if isinstance(full_url, str) and full_url.startswith("urn:"):
                ids[full_url] = f"{rtype}/{resource['id']}"
            prepared.append(resource)
        with self.lock:
            for resource in prepared:
                resolve_references(resource, ids)
                if self.read(resource["resourceType"], resource["id"]) is not None:
                    raise ValueError(
                        f"{source}: duplicate resource {resource['resourceType']}/{resource['id']}"
                    )
                when = (resource.get("meta") or {}).get("lastUpdated")
                self.put_version(resource, when=when if isinstance(when, str) else None, adopt=True)
        return len(prepared)

    def load_file(self, path: Path) -> int:
        try:
            data = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON ({exc})") from exc
        return self.load_bundle(data, str(path))


def _indexable_references(name: str, value: str) -> list[str] | None:
    """The ``Type/id`` references a ``patient``/``subject`` filter asks for, or ``None`` when it cannot
    be answered from the index (another parameter, or a bare ``subject`` id of unknown type)."""
    if name not in INDEXED_ELEMENTS:
        return None
    refs: list[str] = []
    for alternative in value.split(","):
        if not alternative:
            continue
        ref = local_reference(alternative)
        if "/" not in ref:
            if name != "patient":
                return None
            ref = f"Patient/{ref}"
        refs.append(ref)
    return refs or None


def resolve_references(value: Any, ids: dict[str, str]) -> Any:
    """Replace ``urn:uuid:`` / ``urn:oid:`` references by the ``Type/id`` they were given, in Reference
    elements and in narrative links (FHIR R4 "Bundle" §2.36.4.1, resolving references in transactions).
    Unresolvable ``urn:`` references raise 400."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str) and item.startswith("urn:"):
                if item not in ids:
                    raise bad_request(f"reference {item} does not match any fullUrl in the Bundle")
                value[key] = ids[item]
            elif key == "div" and isinstance(item, str) and "urn:" in item:
                for urn, target in ids.items():
                    item = item.replace(urn, target)
                value[key] = item
            else:
                resolve_references(item, ids)
    elif isinstance(value, list):
        for item in value:
            resolve_references(item, ids)
    return value
