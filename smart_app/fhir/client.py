"""FHIR R4 REST client over ``requests`` (FHIR R4 "RESTful API": read, search, create, transaction).

Security rule, enforced in one place (``FhirClient._send``): a request, with or without the bearer
token, only goes to a URL under ``base_url`` (same scheme, host, port and path prefix). Paging links
and redirects elsewhere raise ``ForeignLinkError`` before anything is sent (SMART App Launch 2.x,
"Access token": the token is bound to the FHIR server it was issued for).

Only idempotent GETs are retried (429 honouring ``Retry-After``, 502/503/504, connection failures),
with exponential backoff; POSTs (create, transaction) are never retried here; a conditional create
keeps a retry by the caller from duplicating.

Budgets (:mod:`smart_app.fhir.budget`): every answer is streamed and its body, decompressed by the
client itself, is cut at ``max_response_bytes``; every request is cut off after ``max_request_seconds``
however slowly the server sends; within :meth:`FhirClient.budget` all requests, retries and
``Retry-After`` waits share one deadline. What is cut short raises ``FhirCutShort``.

Search pages are decoded one entry at a time (:func:`smart_app.fhirjson.iter_bundle_entries`, the
collector paused), so a page is never held as Python objects: :meth:`FhirClient.search_each` hands each
resource to the caller's ``take`` as it is decoded and keeps only what ``take`` returns.
"""

from __future__ import annotations

import email.utils
import functools
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import orjson
import requests
import urllib3.exceptions
from requests.structures import CaseInsensitiveDict

from smart_app import fhirjson as fj
from smart_app.fhir.budget import (
    DEFAULT_MAX_RESPONSE_BYTES,
    Cutoff,
    CutShort,
    ReadBudget,
    UnsupportedCoding,
    WatchedAdapter,
    cut_off_at,
    read_body,
)
from smart_app.fhir.errors import (
    FhirConnectionError,
    FhirCutShort,
    FhirError,
    FhirMalformedResponse,
    FhirTimeout,
    ForeignLinkError,
    error_for_status,
)

logger = logging.getLogger("smart_app.fhir")

FHIR_JSON = "application/fhir+json"
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_ID_RE = fj.ID_RE
_TYPE_RE = fj.TYPE_RE
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Error bodies are read for their OperationOutcome only, up to this size.
_MAX_ERROR_BODY_BYTES = 1024 * 1024

Token = Callable[[], str] | str | None
SearchParams = Mapping[str, str | int | Sequence[str]]
T = TypeVar("T")


@dataclass(frozen=True)
class WriteResult:
    """Outcome of a create (FHIR R4 http.html#create): HTTP status (201 created, 200 when
    ``If-None-Exist`` matched an existing resource), the ``Location``, the id and version parsed from
    it (or the ETag / returned body), and the returned resource or OperationOutcome, when any."""

    status: int
    location: str | None
    id: str | None
    version_id: str | None
    resource: dict[str, Any] | None
    outcome: dict[str, Any] | None


@dataclass(frozen=True)
class Searchset(Generic[T]):
    """One searchset Bundle already decoded (the answer to a search inside a batch): ``take`` of each
    matched resource, its ``next`` link, its ``total`` (when a non-negative integer) and the notes on
    entries skipped."""

    items: list[T]
    next_url: str | None
    total: int | None
    notes: list[str]


@dataclass(frozen=True)
class _Answer:
    """One HTTP answer, its body read whole within the budgets."""

    method: str
    url: str
    status: int
    reason: str
    headers: CaseInsensitiveDict[str]
    body: bytes | bytearray


class _Unanswered(Exception):
    """No answer at all (refused, reset, connect timeout): ``error`` is what to raise unless retried."""

    def __init__(self, kind: str, error: FhirError) -> None:
        super().__init__(kind)
        self.kind = kind
        self.error = error


@dataclass(frozen=True)
class _Deadline:
    """The instant (``time.monotonic()``) a budget's requests must be done by, its length, and what it
    is called in messages."""

    at: float
    seconds: float
    name: str = "budget for reading the record"

    def remaining(self) -> float:
        return self.at - time.monotonic()


@dataclass(frozen=True)
class _Base:
    scheme: str
    host: str
    port: int
    path: str  # no trailing slash; "" for a server root


class FhirClient:
    """A FHIR R4 server at ``base_url``, reached with an optional bearer token.

    ``token`` is a string or a zero-argument callable returning the current access token; the callable
    is invoked for every request sent, so a refreshed token is used at once. ``round_trips`` counts the
    HTTP requests handed to the transport (retries and pages included; refused links are not).
    ``max_response_bytes`` caps each answer's decompressed body; ``max_request_seconds`` cuts off any
    one request, however slowly its answer arrives.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: Token = None,
        session: requests.Session | None = None,
        timeout: Sequence[float] | float = (3.05, 30),
        max_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_retry_after: float = 10.0,
        max_pages: int = 1000,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_request_seconds: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._base = _parse_base(self.base_url)
        self._origin = urlsplit(self.base_url)
        self._token = token
        self._owns_session = session is None
        self.session = session if session is not None else requests.Session()
        # The base's origin goes through a transport whose requests can be cut off mid-answer.
        self.session.mount(
            urlunsplit((self._origin.scheme, self._origin.netloc, "", "", "")), WatchedAdapter()
        )
        _settle_environment(self.session, self.base_url)
        self.timeout: tuple[float, float] | float = (
            (float(timeout[0]), float(timeout[1])) if isinstance(timeout, Sequence) else float(timeout)
        )
        self.max_retries = max(0, int(max_retries))
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.max_pages = max_pages
        self.max_response_bytes = int(max_response_bytes)
        self.max_request_seconds = float(max_request_seconds)
        self._deadline: _Deadline | None = None
        self._sleep = sleep
        self._count_lock = threading.Lock()
        self._round_trips = 0

    # -- public interactions ---------------------------------------------------------------------

    @property
    def round_trips(self) -> int:
        return self._round_trips

    def close(self) -> None:
        if self._owns_session:
            self.session.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def budget(self, budget: ReadBudget) -> Iterator[None]:
        """Within this block every request (from any thread) shares one deadline ``budget.seconds``
        from now, retries and ``Retry-After`` waits included, and each answer may hold at most
        ``budget.max_response_bytes`` decompressed."""
        previous = self._deadline, self.max_response_bytes
        self._deadline = _Deadline(time.monotonic() + budget.seconds, budget.seconds)
        self.max_response_bytes = int(budget.max_response_bytes)
        try:
            yield
        finally:
            self._deadline, self.max_response_bytes = previous

    @contextmanager
    def budget_share(self, fraction: float, name: str) -> Iterator[None]:
        """Within this block requests must end once ``fraction`` of the time the budget has left is gone
        (called ``name`` in messages), so a first try leaves time for what follows it; without a
        budget, nothing changes."""
        previous = self._deadline
        if previous is not None:
            share = max(0.0, previous.remaining()) * fraction
            self._deadline = _Deadline(time.monotonic() + share, share, name)
        try:
            yield
        finally:
            self._deadline = previous

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        """FHIR R4 http.html#read: ``GET [base]/[type]/[id]``."""
        _check_type(resource_type)
        if not _ID_RE.fullmatch(resource_id):
            raise ValueError("resource id is not a valid FHIR id")
        return self._get_resource("read", resource_type, f"{resource_type}/{resource_id}")

    def vread(self, resource_type: str, resource_id: str, version_id: str) -> dict[str, Any]:
        """FHIR R4 http.html#vread: ``GET [base]/[type]/[id]/_history/[vid]``."""
        _check_type(resource_type)
        if not (_ID_RE.fullmatch(resource_id) and _ID_RE.fullmatch(version_id)):
            raise ValueError("resource id or version id is not a valid FHIR id")
        return self._get_resource(
            "vread", resource_type, f"{resource_type}/{resource_id}/_history/{version_id}"
        )

    def _get_resource(self, interaction: str, resource_type: str, path: str) -> dict[str, Any]:
        """GET ``[base]/path`` and check the answer is a ``resource_type`` resource."""
        response = self._request("GET", f"{self.base_url}/{path}")
        resource = self._json_body(response)
        if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
            raise FhirMalformedResponse(
                f"{interaction} {resource_type}: the server did not return a {resource_type} resource",
                status=response.status,
            )
        return resource

    def search(
        self,
        resource_type: str,
        params: SearchParams | None = None,
        *,
        notes: list[str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """FHIR R4 search.html: ``GET [base]/[type]?params``, yielding the matched resources page by
        page (search.html#paging: ``Bundle.link`` relation ``next``, followed only under the base).

        Entries without a resource, and ``search.mode = outcome`` entries (server warnings), are
        skipped; a line saying so is appended to ``notes`` when given.
        """
        return self.search_each(resource_type, params, _itself, notes=notes)

    def search_each(
        self,
        resource_type: str,
        params: SearchParams | None,
        take: Callable[[dict[str, Any]], T],
        *,
        notes: list[str] | None = None,
    ) -> Iterator[T]:
        """:meth:`search`, with ``take`` called on each matched resource as its entry is decoded: what
        ``take`` returns is kept, the resource itself is not. A page's results are yielded once the whole
        page is read and checked (a page found malformed yields nothing and raises), so ``take`` may run
        twice on an entry (see :meth:`_page_items`) and must have no effect of its own.
        """
        _check_type(resource_type)
        url: str | None = f"{self.base_url}/{resource_type}"
        query: SearchParams | None = params
        seen: set[str] = set()
        pages = 0
        while url is not None:
            if pages >= self.max_pages:
                _note(notes, f"{resource_type} search: stopped after {self.max_pages} pages")
                return
            pages += 1
            response = self._request("GET", url, params=query)
            items, next_url, page_notes = self._page_items(response, resource_type, take)
            del response
            for text in page_notes:
                _note(notes, text)
            yield from items
            del items
            query = None  # a next link carries the whole query
            if next_url is None:
                return
            absolute = urljoin(self.base_url + "/", next_url)
            if absolute in seen:
                _note(notes, f"{resource_type} search: paging link repeated; stopped")
                return
            seen.add(absolute)
            if not self._is_under_base(absolute):
                raise ForeignLinkError(
                    f"{resource_type} search: the next-page link points outside the FHIR base; not followed"
                )
            url = absolute

    def _page_items(
        self, response: _Answer, resource_type: str, take: Callable[[dict[str, Any]], T]
    ) -> tuple[list[T], str | None, list[str]]:
        """``take`` of each resource of one searchset page, its ``next`` link and its notes.

        The page is decoded entry by entry with the collector paused; when the splitter cannot vouch
        for it (:class:`~smart_app.fhirjson.NotStreamable`), what it gave is dropped and the page is
        decoded whole through the guarded decode, which reports a body that is not usable JSON.
        """
        with fj.gc_paused():
            sorter = _EntrySorter(resource_type, take)
            entries = fj.iter_bundle_entries(response.body)
            try:
                while True:
                    try:
                        sorter.add(next(entries))
                    except StopIteration as done:
                        envelope: Any = done.value
                        break
            except fj.NotStreamable:
                page = self.searchset(self._json_body(response), resource_type, take, status=response.status)
                return page.items, page.next_url, page.notes
            _, next_url = self._parse_search_bundle(envelope, resource_type, response.status)
            return sorter.items, next_url, sorter.notes()

    def search_all(
        self,
        resource_type: str,
        params: SearchParams | None = None,
        *,
        notes: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        """All pages of ``search`` as one list."""
        return list(self.search(resource_type, params, notes=notes))

    def history(self, resource_type: str, resource_id: str) -> list[dict[str, Any]]:
        """FHIR R4 http.html#history: every version of one resource, ``GET [base]/[type]/[id]/_history``,
        in the server's order (newest first) across ``next`` pages under the base; entries without a
        resource (deletions) are skipped."""
        _check_type(resource_type)
        if not _ID_RE.fullmatch(resource_id):
            raise ValueError("resource id is not a valid FHIR id")
        url = f"{self.base_url}/{resource_type}/{resource_id}/_history"
        versions: list[dict[str, Any]] = []
        seen = {url}
        for _ in range(self.max_pages):
            response = self._request("GET", url)
            page = self.searchset(self._json_body(response), resource_type, _itself, status=response.status)
            versions += [r for r in page.items if r["resourceType"] == resource_type]
            absolute = urljoin(self.base_url + "/", page.next_url) if page.next_url else None
            if absolute is None or absolute in seen:
                break
            if not self._is_under_base(absolute):
                raise ForeignLinkError(
                    f"{resource_type} history: the next-page link points outside the FHIR base"
                )
            seen.add(absolute)
            url = absolute
        return versions

    def capabilities(self) -> dict[str, Any]:
        """FHIR R4 http.html#capabilities: ``GET [base]/metadata``."""
        response = self._request("GET", f"{self.base_url}/metadata")
        statement = self._json_body(response)
        if not isinstance(statement, dict) or statement.get("resourceType") != "CapabilityStatement":
            raise FhirMalformedResponse(
                "metadata: the server did not return a CapabilityStatement", status=response.status
            )
        return statement

    def batch_get(self, urls: Sequence[str]) -> list[tuple[str, Any]]:
        """FHIR R4 http.html#transaction, a batch of reads: one ``POST [base]`` of a ``batch`` Bundle
        whose entries ``GET`` each of ``urls`` (relative to the base, e.g. ``Observation?patient=1``);
        the answer to each, in the order asked (http.html#brules: the response entries follow the
        request entries), as ``(response.status, resource)``. Raises a FhirError when the batch as a
        whole fails; a failed entry is only its status. Never retried."""
        bundle = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"request": {"method": "GET", "url": url}} for url in urls],
        }
        result = self.transaction(bundle)
        return [(str(entry["response"]["status"]), entry.get("resource")) for entry in result["entry"]]

    def searchset(
        self, bundle: Any, resource_type: str, take: Callable[[dict[str, Any]], T], *, status: int = 200
    ) -> Searchset[T]:
        """A decoded searchset (or history) Bundle of ``resource_type``, read as a search page is
        (:meth:`search_each`): ``take`` of each matched resource. Raises FhirMalformedResponse, naming
        the answer's HTTP ``status``, when it is no Bundle."""
        entries, next_url = self._parse_search_bundle(bundle, resource_type, status)
        sorter = _EntrySorter(resource_type, take)
        for entry in entries:
            sorter.add(entry)
        total = bundle.get("total")
        counted = total if isinstance(total, int) and not isinstance(total, bool) and total >= 0 else None
        return Searchset(sorter.items, next_url, counted, sorter.notes())

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """FHIR R4 http.html#transaction: ``POST [base]`` with a transaction (or batch) Bundle; the
        answer must be the matching ``transaction-response`` (``batch-response``) with one entry per
        request entry, each carrying ``response.status``. Never retried."""
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise ValueError("transaction() needs a Bundle")
        kind = bundle.get("type")
        if kind not in ("transaction", "batch"):
            raise ValueError("transaction() needs a Bundle of type transaction or batch")
        sent_entries = bundle.get("entry") or []
        response = self._request(
            "POST",
            self.base_url,
            body=orjson.dumps(bundle),
            headers={"Content-Type": FHIR_JSON, "Prefer": "return=representation"},
        )
        result = self._json_body(response)
        expected = f"{kind}-response"
        if (
            not isinstance(result, dict)
            or result.get("resourceType") != "Bundle"
            or result.get("type") != expected
        ):
            raise FhirMalformedResponse(
                f"{kind}: the server did not answer with a {expected} Bundle", status=response.status
            )
        entries = result.get("entry") or []
        if not isinstance(entries, list) or len(entries) != len(sent_entries):
            raise FhirMalformedResponse(
                f"{kind}: {len(sent_entries)} entries sent but the response has "
                f"{len(entries) if isinstance(entries, list) else 'no'} entries",
                status=response.status,
            )
        for index, entry in enumerate(entries):
            answer = entry.get("response") if isinstance(entry, dict) else None
            status = answer.get("status") if isinstance(answer, dict) else None
            if not isinstance(status, str) or not status.strip():
                raise FhirMalformedResponse(
                    f"{kind}: response entry {index} has no response.status", status=response.status
                )
            if kind == "transaction" and not status.strip().startswith("2"):
                # A transaction is all-or-nothing (http.html#trules): a failed entry contradicts success.
                raise FhirMalformedResponse(
                    f"transaction: response entry {index} reports {status.strip()[:40]!r} in a successful "
                    "transaction-response",
                    status=response.status,
                )
        return result

    def create(self, resource: dict[str, Any], if_none_exist: str | None = None) -> WriteResult:
        """FHIR R4 http.html#create (and #ccreate): ``POST [base]/[type]``, with ``If-None-Exist`` set
        to the given search query (e.g. ``identifier=system|value``) for a conditional create."""
        if not isinstance(resource, dict):
            raise ValueError("create() needs a resource")
        resource_type = resource.get("resourceType")
        if not isinstance(resource_type, str):
            raise ValueError("create() needs a resource with a resourceType")
        _check_type(resource_type)
        headers = {"Content-Type": FHIR_JSON, "Prefer": "return=representation"}
        if if_none_exist:
            headers["If-None-Exist"] = if_none_exist.lstrip("?")
        response = self._request(
            "POST", f"{self.base_url}/{resource_type}", body=orjson.dumps(resource), headers=headers
        )
        body: Any = None
        if response.body.strip():
            try:
                body = fj.decode_json(response.body, max_bytes=self.max_response_bytes)
            except ValueError as exc:
                raise FhirMalformedResponse(
                    f"create {resource_type}: the response body is not JSON", status=response.status
                ) from exc
        returned = body if isinstance(body, dict) else None
        outcome = returned if returned and returned.get("resourceType") == "OperationOutcome" else None
        created = returned if returned and returned.get("resourceType") == resource_type else None
        location = response.headers.get("Location") or response.headers.get("Content-Location")
        new_id, version_id = _parse_location(location, resource_type)
        if created is not None:
            new_id = new_id or _str_or_none(created.get("id"))
            meta = created.get("meta")
            if version_id is None and isinstance(meta, dict):
                version_id = _str_or_none(meta.get("versionId"))
        if version_id is None:
            version_id = _etag_version(response.headers.get("ETag"))
        return WriteResult(
            status=response.status,
            location=location,
            id=new_id,
            version_id=version_id,
            resource=created,
            outcome=outcome,
        )

    # -- transport -------------------------------------------------------------------------------

    def _is_under_base(self, url: str) -> bool:
        """Same scheme, host and port as the base, and a path at or below the base path, without
        user info or dot segments that could climb out of it."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return False
        scheme = parts.scheme.lower()
        if scheme != self._base.scheme or parts.username is not None or parts.password is not None:
            return False
        if (parts.hostname or "").lower() != self._base.host:
            return False
        if (port if port is not None else _DEFAULT_PORTS.get(scheme)) != self._base.port:
            return False
        path = parts.path
        segments = unquote(path).split("/")
        if any(segment in (".", "..") for segment in segments):
            return False
        base_path = self._base.path
        return path == base_path or path.startswith(base_path + "/")

    def _headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = {"Accept": FHIR_JSON, "Accept-Encoding": "gzip, deflate"}
        token = self._token() if callable(self._token) else self._token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if extra:
            headers.update(extra)
        return headers

    def _request(
        self,
        method: str,
        url: str,
        *,
        params: SearchParams | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> _Answer:
        """Send, following same-base redirects for GET, and turn any non-2xx answer into a FhirError."""
        response = self._send(method, url, params=params, body=body, headers=headers)
        redirects = 0
        while response.status in _REDIRECT_STATUSES and method == "GET":
            location = response.headers.get("Location")
            if not location or redirects >= _MAX_REDIRECTS:
                break
            redirects += 1
            target = urljoin(response.url or url, location)
            if not self._is_under_base(target):
                raise ForeignLinkError(
                    f"GET {_label(self._base, url)}: redirect outside the FHIR base; not followed"
                )
            response = self._send(method, target, params=None, body=None, headers=headers)
        if not 200 <= response.status < 300:
            raise self._error_from_response(method, url, response)
        return response

    def _send(
        self,
        method: str,
        url: str,
        *,
        params: SearchParams | None,
        body: bytes | None,
        headers: Mapping[str, str] | None,
    ) -> _Answer:
        """The single exit to the network: refuses URLs outside the base, retries idempotent GETs, and
        keeps every attempt, and every wait between attempts, within the budgets (module docstring)."""
        if not self._is_under_base(url):
            raise ForeignLinkError(f"{method}: refusing to send a request outside the FHIR base")
        # Spell scheme and authority exactly as the base does (host case, default port); drop fragments.
        parts = urlsplit(url)
        url = urlunsplit((self._origin.scheme, self._origin.netloc, parts.path, parts.query, ""))
        label = _label(self._base, url, params)
        retry = method == "GET"
        attempt = 0
        while True:
            status: int | None = None
            try:
                answer = self._attempt(method, url, label, params=params, body=body, headers=headers)
            except _Unanswered as exc:
                if not (retry and attempt < self.max_retries):
                    raise exc.error from None
                what, wait = exc.kind, self._backoff_delay(attempt)
            else:
                if not (retry and answer.status in _RETRY_STATUSES and attempt < self.max_retries):
                    return answer
                retry_after = _retry_after_seconds(answer.headers.get("Retry-After"))
                if retry_after is not None and retry_after > self.max_retry_after:
                    logger.warning(
                        "FHIR %s %s -> %d; Retry-After %.0f s exceeds the %.0f s cap, giving up",
                        method,
                        label,
                        answer.status,
                        retry_after,
                        self.max_retry_after,
                    )
                    return answer
                status, what = answer.status, f"HTTP {answer.status}"
                wait = retry_after if retry_after is not None else self._backoff_delay(attempt)
            deadline = self._deadline
            if deadline is not None and wait >= deadline.remaining():
                message = (
                    f"{method} {label}: {what}, and a retry in {wait:.0f} s would pass the "
                    f"{deadline.seconds:.0f} s {deadline.name}"
                )
                logger.warning("FHIR %s; stopped", message)
                raise FhirCutShort(message, limit="time", status=status)
            logger.warning("FHIR %s %s %s; retry %d in %.2f s", method, label, what, attempt + 1, wait)
            self._sleep(wait)
            attempt += 1

    def _attempt(
        self,
        method: str,
        url: str,
        label: str,
        *,
        params: SearchParams | None,
        body: bytes | None,
        headers: Mapping[str, str] | None,
    ) -> _Answer:
        """One request and its whole answer, cut off at the request's or the budget's deadline.
        Raises ``_Unanswered`` when no answer came (connection refused or reset, connect timeout)."""
        instant, limit_name = self._cutoff()
        if instant - time.monotonic() <= 0:
            raise self._cut_short_in_time(method, label, limit_name, sent=False)
        request_headers = self._headers(headers)
        with self._count_lock:
            self._round_trips += 1
        started = time.monotonic()
        with cut_off_at(instant) as cutoff:
            try:
                response = self.session.request(
                    method,
                    url,
                    params=params,
                    data=body,
                    headers=request_headers,
                    timeout=self._timeouts(cutoff.remaining()),
                    allow_redirects=False,
                    stream=True,
                )
            except requests.exceptions.ConnectionError as exc:
                # ConnectTimeout is both a ConnectionError and a Timeout: nothing was answered.
                if cutoff.passed:
                    raise self._cut_short_in_time(method, label, limit_name) from None
                timed_out = isinstance(exc, requests.exceptions.Timeout)
                kind = "connect timeout" if timed_out else "connection failed"
                logger.warning("FHIR %s %s %s after %.0f ms", method, label, kind, _ms(started))
                error = (FhirTimeout if timed_out else FhirConnectionError)(f"{method} {label}: {kind}")
                raise _Unanswered(kind, error) from None
            except requests.exceptions.Timeout:
                # A read timeout: the server may still be working; retrying would multiply the wait.
                if cutoff.passed:
                    raise self._cut_short_in_time(method, label, limit_name) from None
                logger.warning("FHIR %s %s read timeout after %.0f ms", method, label, _ms(started))
                raise FhirTimeout(f"{method} {label}: no answer within the read timeout") from None
            except requests.exceptions.RequestException as exc:
                logger.warning("FHIR %s %s request failed: %s", method, label, type(exc).__name__)
                raise FhirConnectionError(
                    f"{method} {label}: request failed ({type(exc).__name__})"
                ) from None
            status = response.status_code
            content: bytes | bytearray = b""
            if status in _REDIRECT_STATUSES:
                response.close()
            else:
                ok = 200 <= status < 300
                limit = self.max_response_bytes if ok else _MAX_ERROR_BODY_BYTES
                content = self._read(response, method, label, limit, cutoff, limit_name, ok=ok)
        log = logger.debug if status < 400 else logger.warning
        log("FHIR %s %s -> %d in %.0f ms", method, label, status, _ms(started))
        return _Answer(
            method=method,
            url=response.url or url,
            status=status,
            reason=response.reason or "",
            headers=response.headers,
            body=content,
        )

    def _read(
        self,
        response: requests.Response,
        method: str,
        label: str,
        limit: int,
        cutoff: Cutoff,
        limit_name: str,
        *,
        ok: bool,
    ) -> bytes | bytearray:
        """The body within ``limit`` bytes and the cut-off; an error body that cannot be read is empty
        (the status still tells what happened)."""
        try:
            return read_body(response, limit)
        except CutShort as exc:
            if not ok:
                return b""
            logger.warning("FHIR %s %s cut short: %s", method, label, exc.reason)
            raise FhirCutShort(
                f"{method} {label}: {exc.reason}", limit=exc.limit, status=response.status_code
            ) from None
        except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError) as exc:
            if cutoff.passed:
                raise self._cut_short_in_time(method, label, limit_name) from None
            if not ok:
                return b""
            logger.warning("FHIR %s %s: the answer broke off (%s)", method, label, type(exc).__name__)
            if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
                raise FhirTimeout(f"{method} {label}: the answer stopped arriving (read timeout)") from None
            raise FhirConnectionError(f"{method} {label}: the answer broke off before its end") from None
        except (UnsupportedCoding, zlib.error) as exc:
            if not ok:
                return b""
            raise FhirMalformedResponse(
                f"{method} {label}: the body could not be decoded ({exc})"[:200], status=response.status_code
            ) from None

    def _cutoff(self) -> tuple[float, str]:
        """When the next request must be done: the budget's deadline or ``max_request_seconds`` from
        now, whichever comes first; with that limit named, for messages."""
        own = time.monotonic() + self.max_request_seconds
        deadline = self._deadline
        if deadline is not None and deadline.at <= own:
            return deadline.at, f"{deadline.seconds:.0f} s {deadline.name}"
        return own, f"{self.max_request_seconds:.0f} s limit for one request"

    def _timeouts(self, remaining: float) -> tuple[float, float] | float:
        """The configured (connect, read) timeouts, none longer than what is left."""
        cap = max(remaining, 0.001)
        if isinstance(self.timeout, tuple):
            return (min(self.timeout[0], cap), min(self.timeout[1], cap))
        return min(self.timeout, cap)

    def _cut_short_in_time(self, method: str, label: str, limit: str, *, sent: bool = True) -> FhirCutShort:
        what = "the answer was still arriving when" if sent else "not sent:"
        message = f"{method} {label}: {what} the {limit} ran out"
        logger.warning("FHIR %s", message)
        return FhirCutShort(message, limit="time")

    def _backoff_delay(self, attempt: int) -> float:
        return float(min(self.max_backoff, self.backoff * (2**attempt)))

    # -- bodies ----------------------------------------------------------------------------------

    def _json_body(self, response: _Answer) -> Any:
        label = _label(self._base, response.url or self.base_url)
        try:
            return fj.decode_json(response.body, max_bytes=self.max_response_bytes)
        except ValueError as exc:
            reason = getattr(exc, "reason", "not valid JSON")
            what = "not JSON" if reason == "not valid JSON" else f"not usable JSON ({reason})"
            raise FhirMalformedResponse(
                f"{response.method} {label}: the response body is {what}", status=response.status
            ) from None

    def _error_from_response(self, method: str, url: str, response: _Answer) -> FhirError:
        outcome: dict[str, Any] | None = None
        if response.body:
            try:
                body = fj.decode_json(response.body, max_bytes=_MAX_ERROR_BODY_BYTES)
            except ValueError:
                body = None
            if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
                outcome = body
        status = response.status
        reason = response.reason or ""
        message = f"{method} {_label(self._base, url)}: HTTP {status}{' ' + reason if reason else ''}"
        error = error_for_status(
            status,
            message,
            outcome,
            retry_after=_retry_after_seconds(response.headers.get("Retry-After")),
        )
        issues = error.issues()
        if issues:
            error.message = f"{message} ({'; '.join(issues[:3])})"
            error.args = (error.message,)
        return error

    def _parse_search_bundle(
        self, bundle: Any, resource_type: str, status: int
    ) -> tuple[list[Any], str | None]:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            got = bundle.get("resourceType") if isinstance(bundle, dict) else type(bundle).__name__
            raise FhirMalformedResponse(
                f"{resource_type} search: expected a Bundle, got {str(got)[:40]!r}", status=status
            )
        entries = bundle.get("entry", [])
        if entries is None:
            entries = []
        if not isinstance(entries, list):
            raise FhirMalformedResponse(f"{resource_type} search: Bundle.entry is not a list", status=status)
        next_url: str | None = None
        links = bundle.get("link")
        if isinstance(links, list):
            for link in links:
                if isinstance(link, dict) and link.get("relation") == "next":
                    candidate = link.get("url")
                    if isinstance(candidate, str) and candidate.strip():
                        next_url = candidate.strip()
                    break
        return entries, next_url


# -- helpers -------------------------------------------------------------------------------------


def _parse_base(base_url: str) -> _Base:
    parts = urlsplit(base_url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError("base_url must be an absolute http(s) URL")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("base_url must not carry a query, fragment or user info")
    port = parts.port if parts.port is not None else _DEFAULT_PORTS[scheme]
    return _Base(scheme=scheme, host=parts.hostname.lower(), port=port, path=parts.path.rstrip("/"))


def _settle_environment(session: requests.Session, base_url: str) -> None:
    """Read once what ``requests`` reads from the environment on every request: the proxy for the base
    (``HTTPS_PROXY``, ``NO_PROXY``...) and a CA bundle (``REQUESTS_CA_BUNDLE``). The client only sends to
    its base, so one reading holds for all its requests, and ~0.5 ms of work per request is saved. A
    ``.netrc`` entry is no longer looked up: its Basic credentials would replace the bearer token."""
    settings = _environment_settings(base_url)
    session.proxies = dict(settings["proxies"])
    session.verify = settings["verify"]
    session.cert = settings["cert"]
    session.trust_env = False


#: The environment variables ``requests`` reads for a request's proxy and CA bundle.
_REQUESTS_ENVIRONMENT = frozenset(
    {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "requests_ca_bundle", "curl_ca_bundle"}
)


def _environment_settings(base_url: str) -> dict[str, Any]:
    """What the environment says for requests to ``base_url``, worked out once per base and
    environment in a process (a client is made for every page a clinician opens)."""
    relevant = tuple(sorted((k, v) for k, v in os.environ.items() if k.lower() in _REQUESTS_ENVIRONMENT))
    return _settings_for(base_url, relevant)


@functools.lru_cache(maxsize=64)
def _settings_for(base_url: str, _environment: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    return dict(requests.Session().merge_environment_settings(base_url, {}, None, None, None))


def _check_type(resource_type: str) -> None:
    if not isinstance(resource_type, str) or not _TYPE_RE.fullmatch(resource_type):
        raise ValueError("not a FHIR resource type name")


def _label(base: _Base, url: str, params: SearchParams | None = None) -> str:
    """A log-safe name for a request: the resource type and interaction, with ids replaced and only
    the names of query parameters (their values can hold identifiers or PHI)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    path = parts.path
    if path.startswith(base.path):
        path = path[len(base.path) :]
    segments = [segment for segment in path.split("/") if segment]
    if not segments:
        name = "[base]"
    elif segments[0] == "metadata":
        name = "metadata"
    elif len(segments) == 1:
        name = segments[0] if _TYPE_RE.fullmatch(segments[0]) else "[path]"
    else:
        head = segments[0] if _TYPE_RE.fullmatch(segments[0]) else "[path]"
        name = f"{head}/[id]" + ("/..." if len(segments) > 2 else "")
    keys: list[str] = []
    for pair in parts.query.split("&") if parts.query else []:
        key = pair.split("=", 1)[0]
        if key and key not in keys:
            keys.append(key)
    for key in params or {}:
        if key not in keys:
            keys.append(key)
    safe_keys = [unquote(key)[:40] for key in keys]
    return name + ("?" + "&".join(safe_keys) if safe_keys else "")


def _itself(resource: dict[str, Any]) -> dict[str, Any]:
    return resource


class _EntrySorter(Generic[T]):
    """The resources of one page's entries, through ``take``; entries without a resource, and server
    messages (``search.mode`` outcome, or an OperationOutcome without a mode), are counted apart."""

    def __init__(self, resource_type: str, take: Callable[[dict[str, Any]], T]) -> None:
        self.resource_type = resource_type
        self.take = take
        self.items: list[T] = []
        self.missing = 0
        self.outcomes = 0

    def add(self, entry: Any) -> None:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            self.missing += 1
            return
        search = entry.get("search")
        mode = search.get("mode") if isinstance(search, dict) else None
        if mode == "outcome" or (mode is None and resource["resourceType"] == "OperationOutcome"):
            self.outcomes += 1
            return
        self.items.append(self.take(resource))

    def notes(self) -> list[str]:
        notes = []
        if self.missing:
            notes.append(f"{self.resource_type} search: {_entries(self.missing)} without a resource skipped")
        if self.outcomes:
            notes.append(f"{self.resource_type} search: {_entries(self.outcomes)} of server messages skipped")
        return notes


def _entries(count: int) -> str:
    return f"{count} entr{'y' if count == 1 else 'ies'}"


def _note(notes: list[str] | None, text: str) -> None:
    logger.info("FHIR %s", text)
    if notes is not None:
        notes.append(text)


def _retry_after_seconds(value: str | None) -> float | None:
    """RFC 9110 section 10.2.3: delay-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _parse_location(location: str | None, resource_type: str) -> tuple[str | None, str | None]:
    """``[base]/[type]/[id]/_history/[vid]`` (FHIR R4 http.html#create) → (id, version)."""
    _, resource_id, version = fj.location_parts(location, resource_type)
    return resource_id, version


def _etag_version(etag: str | None) -> str | None:
    return fj.etag_version(etag)


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
