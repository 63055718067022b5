"""Where the auditor reads from: a live FHIR server or a Bundle export (FHIR R4 "RESTful API": read, vread,
search; "Bundle")."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import orjson

from smart_app.audit.errors import AuditInputError
from smart_app.fhirjson import ID_RE as _ID_RE
from smart_app.fhirjson import BadTime, Ref, as_dict, parse_time, version_id


class NotFound(Exception):
    """The resource (or that version of it) is not there: 404 or 410 Gone (deleted)."""


class NotAccessible(NotFound):
    """403: the token does not allow reading it (e.g. another patient under a patient-level launch)."""


class UnsupportedSearch(Exception):
    """The server refused a search parameter (a 400 on an unknown parameter)."""


class Source(Protocol):
    """The few read interactions the auditor needs."""

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]: ...

    def vread(self, resource_type: str, resource_id: str, version_id: str) -> dict[str, Any]: ...

    def search(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]: ...

    def history(self, resource_type: str, resource_id: str) -> list[dict[str, Any]]:
        """Every version the source holds of one resource, newest first; empty when it cannot say."""
        ...


class FhirReader(Protocol):
    """What ``smart_app.fhir.FhirClient`` offers (:class:`smart_app.fhir.client.FhirClient`)."""

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]: ...

    def vread(self, resource_type: str, resource_id: str, version_id: str) -> dict[str, Any]: ...

    def search_all(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]: ...

    def history(self, resource_type: str, resource_id: str) -> list[dict[str, Any]]: ...


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


@contextmanager
def _not_found_as(target: str) -> Iterator[None]:
    """404/410 from the server become :class:`NotFound`, 403 :class:`NotAccessible`, naming ``target``."""
    try:
        yield
    except Exception as exc:
        if _status(exc) in (404, 410):
            raise NotFound(target) from exc
        if _status(exc) == 403:
            raise NotAccessible(target) from exc
        raise


class FhirSource:
    """Reads through a FhirClient; 404/410 become :class:`NotFound`, another 4xx on a search
    :class:`UnsupportedSearch`."""

    def __init__(self, client: FhirReader) -> None:
        self.client = client

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        target = f"{resource_type}/{resource_id}"
        with _not_found_as(target):
            return self.client.read(resource_type, resource_id)

    def vread(self, resource_type: str, resource_id: str, version_id: str) -> dict[str, Any]:
        """FHIR R4 "vread": ``GET [base]/[type]/[id]/_history/[vid]``."""
        target = f"{resource_type}/{resource_id}/_history/{version_id}"
        if not (_ID_RE.fullmatch(resource_id) and _ID_RE.fullmatch(version_id)):
            raise NotFound(target)
        with _not_found_as(target):
            result = self.client.vread(resource_type, resource_id, version_id)
        if not isinstance(result, dict):
            raise NotFound(target)
        return result

    def search(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]:
        try:
            found = self.client.search_all(resource_type, params)
        except Exception as exc:
            status = _status(exc)
            if status is not None and 400 <= status < 500 and status not in (401, 403):
                raise UnsupportedSearch(f"{resource_type}?{sorted(params)}: {status}") from exc
            raise
        return [r for r in found if isinstance(r, dict) and r.get("resourceType") == resource_type]

    def history(self, resource_type: str, resource_id: str) -> list[dict[str, Any]]:
        """FHIR R4 "history" of one resource, newest first (http.html#history); empty when the server does
        not offer it (a 4xx other than 401/403, e.g. 405 or 501), so the caller knows it cannot say."""
        target = f"{resource_type}/{resource_id}/_history"
        if not _ID_RE.fullmatch(resource_id):
            raise NotFound(target)
        try:
            with _not_found_as(target):
                versions = self.client.history(resource_type, resource_id)
        except NotFound:
            raise
        except Exception as exc:
            status = _status(exc)
            if status is not None and status not in (401, 403) and (400 <= status < 500 or status == 501):
                return []
            raise
        return newest_first(
            r for r in versions if isinstance(r, dict) and r.get("resourceType") == resource_type
        )


def newest_first(versions: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Versions of one resource ordered newest first by ``meta.lastUpdated`` (FHIR instants, compared as
    instants), then by an integer ``versionId``; a version id's format is never assumed otherwise."""

    def key(res: dict[str, Any]) -> tuple[float, int]:
        try:
            when = parse_time((as_dict(res.get("meta")) or {}).get("lastUpdated"))
        except BadTime:
            when = None
        vid = version_id(res) or ""
        return (
            when.start.timestamp() if when is not None else float("-inf"),
            int(vid) if vid.isdigit() else -1,
        )

    return sorted(versions, key=key, reverse=True)


class BundleSource:
    """An offline export: any Bundle whose entries hold the written resources and the source versions.

    Several versions of one resource may be present (``meta.versionId``, or a ``fullUrl`` ending in
    ``/_history/<vid>``); ``read`` answers with the newest (:func:`newest_first`), ``vread`` with the one
    asked for, ``history`` with all of them.
    """

    def __init__(self, resources: Iterable[dict[str, Any]]) -> None:
        self._versions: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._unversioned: dict[tuple[str, str], dict[str, Any]] = {}
        for res in resources:
            rtype, rid = res.get("resourceType"), res.get("id")
            if not isinstance(rtype, str) or not isinstance(rid, str):
                continue
            vid = version_id(res)
            if vid is None:
                self._unversioned[(rtype, rid)] = res
            else:
                self._versions.setdefault((rtype, rid), {})[vid] = res

    @classmethod
    def from_bytes(cls, data: bytes) -> BundleSource:
        try:
            bundle = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise AuditInputError(f"the export is not JSON ({exc})") from exc
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise AuditInputError("the export is not a FHIR Bundle")
        resources: list[dict[str, Any]] = []
        for entry in bundle.get("entry") or []:
            res = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(res, dict):
                continue
            ref = Ref.parse(str(entry.get("fullUrl") or ""))
            if ref and ref.version and version_id(res) is None:
                res = {**res, "meta": {**(res.get("meta") or {}), "versionId": ref.version}}
            resources.append(res)
        return cls(resources)

    def _all_current(self, resource_type: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        keys = {k for k in (*self._versions, *self._unversioned) if k[0] == resource_type}
        for rtype, rid in sorted(keys):
            out.append(self.read(rtype, rid))
        return out

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        versions = self._versions.get((resource_type, resource_id))
        if versions:
            return newest_first(versions.values())[0]
        res = self._unversioned.get((resource_type, resource_id))
        if res is None:
            raise NotFound(f"{resource_type}/{resource_id}")
        return res

    def vread(self, resource_type: str, resource_id: str, version_id: str) -> dict[str, Any]:
        res = (self._versions.get((resource_type, resource_id)) or {}).get(version_id)
        if res is None:
            raise NotFound(f"{resource_type}/{resource_id}/_history/{version_id}")
        return res

    def search(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """Every current resource of the type; callers filter (the export is already the selection)."""
        return self._all_current(resource_type)

    def history(self, resource_type: str, resource_id: str) -> list[dict[str, Any]]:
        versions = self._versions.get((resource_type, resource_id))
        return newest_first(versions.values()) if versions else []
