"""The one set of accessors over plain FHIR R4 JSON (no models, no FHIRPath), usable by every layer.

- Decoding: :func:`decode_json` is the only way the app turns outside bytes into Python (size cap, depth
  guard, the collector paused), for discovery, token, JWKS, FHIR, style and CDS payloads alike.
  :func:`iter_bundle_entries` reads a Bundle one entry at a time; whatever it cannot vouch for (depth,
  malformed JSON) it hands back as :class:`NotStreamable`, and the caller decodes with :func:`decode_json`.
- Elements: concepts and codings, values, dates as intervals (R4 Datatypes: date, dateTime, instant),
  references (R4 references.html, literal references, relative or absolute, versioned or not), and the
  id and version a server gives in ``Location`` and ``ETag`` (R4 http.html#create, #versioning).

Every accessor tolerates malformed input: a wrong type yields ``None`` or an empty result, never an
exception. The clinical read rules built on them are in docs/clinical-criteria.md#reading-the-record.
"""

from __future__ import annotations

import gc
import re
import threading
from collections.abc import Generator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from urllib.parse import urlsplit

import orjson

TYPE_CHECKING = False  # true for type checkers only: see smart_app/__init__.py
if TYPE_CHECKING:
    from typing import Any

JSON = Mapping[str, "Any"]  # "Any": typing is imported for type checkers only
#: FHIR R4 datatypes.html#id, and the resource type names of resourcelist.html.
ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")
TYPE_RE = re.compile(r"[A-Z][A-Za-z]{1,63}")

_ONE_US = timedelta(microseconds=1)
_DATE_RE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


@dataclass(frozen=True, slots=True)
class When:
    """A FHIR date/dateTime/instant as the interval its precision covers (R4 Datatypes: dateTime).

    ``start`` orders resources ("newest"); ``start > as_of`` means future-dated; ``last`` (the latest
    instant of the interval) is what recency windows compare, so a date-only value counts for its
    whole day.
    """

    start: datetime
    end: datetime
    text: str

    @property
    def last(self) -> datetime:
        return self.end - _ONE_US


class BadTime(ValueError):
    """A date/time string that is not a valid FHIR date, dateTime or instant."""


def parse_time(value: object) -> When | None:
    """Parse a FHIR date/dateTime/instant. ``None`` when absent; raises ``BadTime`` when malformed."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise BadTime(f"not a date/time: {value!r}"[:80])
    m = _DATE_RE.match(value)
    try:
        if m:
            y = int(m.group(1))
            if m.group(3):
                start = datetime(y, int(m.group(2)), int(m.group(3)), tzinfo=UTC)
                return When(start, _add(start, days=1), value)
            if m.group(2):
                mo = int(m.group(2))
                start = datetime(y, mo, 1, tzinfo=UTC)
                end = datetime(y + (mo == 12), mo % 12 + 1, 1, tzinfo=UTC) if y < 9999 or mo < 12 else _MAX
                return When(start, end, value)
            start = datetime(y, 1, 1, tzinfo=UTC)
            return When(start, datetime(y + 1, 1, 1, tzinfo=UTC) if y < 9999 else _MAX, value)
        if "T" not in value:
            raise BadTime(f"not a date/time: {value!r}"[:80])
        dt = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except (ValueError, OverflowError) as exc:
        raise BadTime(f"not a date/time: {value!r}"[:80]) from exc
    dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    return When(dt, _add(dt, microseconds=1), value)


_MAX = datetime.max.replace(tzinfo=UTC)


def _add(dt: datetime, **kw: int) -> datetime:
    try:
        return dt + timedelta(**kw)
    except OverflowError:
        return _MAX


def parse_date(value: object) -> date | None:
    """``Patient.birthDate`` (R4 date; partial dates take the first day). ``None`` if absent or bad."""
    try:
        when = parse_time(value)
    except BadTime:
        return None
    return when.start.date() if when else None


def as_dict(value: object) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def as_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def codings(concept: object) -> Iterator[tuple[str, str]]:
    """``(system, code)`` of every well-formed coding of a CodeableConcept (R4 Datatypes)."""
    cc = as_dict(concept)
    if cc is None:
        return
    for c in as_list(cc.get("coding")):
        if isinstance(c, dict):
            system, code = c.get("system"), c.get("code")
            if isinstance(system, str) and isinstance(code, str) and code:
                yield system, code


def coding_items(concepts: object) -> Iterator[dict[str, Any]]:
    """Every Coding object of a CodeableConcept, or of a list of them, as written (any shape of
    ``system``/``code``; callers decide what a malformed one means)."""
    for cc in concepts if isinstance(concepts, list) else [concepts]:
        if isinstance(cc, dict):
            for c in as_list(cc.get("coding")):
                if isinstance(c, dict):
                    yield c


def coding_display(concept: object, system: str, code: str) -> str | None:
    cc = as_dict(concept)
    for c in as_list(cc.get("coding")) if cc else []:
        if isinstance(c, dict) and c.get("system") == system and c.get("code") == code:
            return as_str(c.get("display"))
    return None


def concept_text(concept: object) -> str | None:
    cc = as_dict(concept)
    return as_str(cc.get("text")) if cc else None


def concept_label(concept: object) -> str:
    """Human label for a CodeableConcept: its text, else the first display, else the first code."""
    cc = as_dict(concept)
    if not cc:
        return ""
    text = as_str(cc.get("text"))
    if text:
        return text
    first = ""
    for c in as_list(cc.get("coding")):
        if isinstance(c, dict):
            disp = as_str(c.get("display"))
            if disp:
                return disp
            first = first or (as_str(c.get("code")) or "")
    return first


def status_code(concept: object) -> str | None:
    """First code of a status CodeableConcept (Condition.clinicalStatus / verificationStatus)."""
    for _, code in codings(concept):
        return code
    return None


def reference(resource: JSON) -> str | None:
    """``Type/id`` of a resource, or ``None`` without a usable id."""
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if isinstance(rtype, str) and isinstance(rid, str) and rid:
        return f"{rtype}/{rid}"
    return None


def version_id(resource: JSON) -> str | None:
    meta = as_dict(resource.get("meta"))
    return as_str(meta.get("versionId")) if meta else None


def subject_ref(resource: JSON) -> str | None:
    subj = as_dict(resource.get("subject"))
    return as_str(subj.get("reference")) if subj else None


def observation_time(obs: JSON) -> When | None:
    """Observation time: effectiveDateTime, effectiveInstant, effectivePeriod.end (else .start), issued."""
    for key in ("effectiveDateTime", "effectiveInstant"):
        if key in obs:
            return parse_time(obs[key])
    period = as_dict(obs.get("effectivePeriod"))
    if period is not None:
        when = parse_time(period.get("end")) or parse_time(period.get("start"))
        if when is not None:
            return when
    return parse_time(obs.get("issued"))


def condition_onset(cond: JSON) -> When | None:
    """Condition onset: onsetDateTime, onsetPeriod.start, else recordedDate
    (docs/clinical-criteria.md#age-new-onset)."""
    if "onsetDateTime" in cond:
        return parse_time(cond["onsetDateTime"])
    period = as_dict(cond.get("onsetPeriod"))
    if period is not None:
        when = parse_time(period.get("start"))
        if when is not None:
            return when
    return parse_time(cond.get("recordedDate"))


def condition_abatement(cond: JSON) -> When | None:
    if "abatementDateTime" in cond:
        return parse_time(cond["abatementDateTime"])
    period = as_dict(cond.get("abatementPeriod"))
    if period is not None:
        return parse_time(period.get("end")) or parse_time(period.get("start"))
    return None


def procedure_time(proc: JSON) -> When | None:
    """Procedure.performed[x]: performedDateTime, performedPeriod.end (else .start)."""
    if "performedDateTime" in proc:
        return parse_time(proc["performedDateTime"])
    period = as_dict(proc.get("performedPeriod"))
    if period is not None:
        return parse_time(period.get("end")) or parse_time(period.get("start"))
    return None


def medication_time(med: JSON) -> When | None:
    """MedicationStatement.effective[x] / dateAsserted, MedicationRequest.authoredOn."""
    if "effectiveDateTime" in med:
        return parse_time(med["effectiveDateTime"])
    period = as_dict(med.get("effectivePeriod"))
    if period is not None:
        when = parse_time(period.get("start")) or parse_time(period.get("end"))
        if when is not None:
            return when
    if "authoredOn" in med:
        return parse_time(med["authoredOn"])
    return parse_time(med.get("dateAsserted"))


def medication_concept(med: JSON) -> object:
    """medicationCodeableConcept, or the code of a contained Medication referenced as ``#id``."""
    if "medicationCodeableConcept" in med:
        return med["medicationCodeableConcept"]
    ref = as_dict(med.get("medicationReference"))
    target = as_str(ref.get("reference")) if ref else None
    if target and target.startswith("#"):
        for contained in as_list(med.get("contained")):
            if isinstance(contained, dict) and contained.get("id") == target[1:]:
                return contained.get("code")
    return None


def body_sites(resource: JSON) -> list[dict[str, Any]]:
    """Observation.bodySite (0..1) or Condition.bodySite (0..*) as a list of CodeableConcepts."""
    raw = resource.get("bodySite")
    if isinstance(raw, dict):
        return [raw]
    return [s for s in as_list(raw) if isinstance(s, dict)]


# -- references ------------------------------------------------------------------------------------

_REFERENCE = re.compile(
    r"^(?:(?P<base>.*)/)?(?P<type>[A-Z][A-Za-z]{1,63})/(?P<id>[A-Za-z0-9\-.]{1,64})"
    r"(?:/_history/(?P<version>[A-Za-z0-9\-.]{1,64}))?/?$"
)


@dataclass(frozen=True, slots=True)
class Ref:
    """A literal reference ``[base/]Type/id[/_history/vid]`` (R4 references.html#literal), parsed.

    ``base`` is the absolute service base of an absolute reference (``https://ehr.example/fhir``), else
    ``None``. Contained (``#id``), ``urn:`` and logical references do not parse.
    """

    type: str
    id: str
    version: str | None = None
    base: str | None = None

    @classmethod
    def parse(cls, reference: object) -> Ref | None:
        if not isinstance(reference, str) or not reference or reference.startswith(("#", "urn:")):
            return None
        m = _REFERENCE.match(reference.strip())
        if m is None:
            return None
        base = m.group("base")
        if base is not None and "://" not in base:
            return None  # a relative path with more segments is not a literal reference
        return cls(m.group("type"), m.group("id"), m.group("version"), base.rstrip("/") if base else None)

    @property
    def plain(self) -> str:
        """``Type/id``: the reference without base or version."""
        return f"{self.type}/{self.id}"

    def versioned(self, version: str | None) -> str:
        """``Type/id/_history/v`` (R4 references.html#versions) when a version is given, else ``Type/id``."""
        return f"{self.plain}/_history/{version}" if version else self.plain

    def __str__(self) -> str:
        return self.versioned(self.version)


def reference_of(element: object) -> str | None:
    """``element.reference`` of a Reference datatype, when it is a string."""
    ref = as_dict(element)
    return as_str(ref.get("reference")) if ref else None


def same_base(a: str, b: str) -> bool:
    """Whether two service base URLs name the same server and path (scheme and host case-insensitive,
    default ports implied, trailing slash ignored)."""
    return _base_key(a) == _base_key(b)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _base_key(url: str) -> tuple[str, str, int | None, str]:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return ("", url, None, "")
    scheme = parts.scheme.lower()
    return (
        scheme,
        (parts.hostname or "").lower(),
        port or _DEFAULT_PORTS.get(scheme),
        parts.path.rstrip("/"),
    )


def location_parts(
    location: object, resource_type: str | None = None
) -> tuple[str | None, str | None, str | None]:
    """``(type, id, version)`` named by a ``Location``/``Content-Location`` header or a transaction
    response's ``location`` (R4 http.html#create: ``[base]/[type]/[id]/_history/[vid]``, absolute or
    relative, on any base: proxies rewrite it). With ``resource_type`` the last segment of that type is
    used. ``(None, None, None)`` when nothing usable is there."""
    if not isinstance(location, str) or not location.strip():
        return None, None, None
    try:
        path = urlsplit(location.strip()).path
    except ValueError:
        return None, None, None
    segments = [s for s in path.split("/") if s]
    indices = [
        i
        for i, s in enumerate(segments)
        if (s == resource_type if resource_type else TYPE_RE.fullmatch(s) and s != "_history")
    ]
    for index in reversed(indices):
        rest = segments[index + 1 :]
        if not rest or not ID_RE.fullmatch(rest[0]):
            continue
        version = rest[2] if len(rest) >= 3 and rest[1] == "_history" and ID_RE.fullmatch(rest[2]) else None
        return segments[index], rest[0], version
    return None, None, None


def etag_version(etag: object) -> str | None:
    """The version in an ``ETag`` (R4 http.html#versioning: ``W/"3"``), any id-shaped value."""
    if not isinstance(etag, str):
        return None
    value = etag.strip()
    if value.startswith("W/"):
        value = value[2:]
    value = value.strip('"')
    return value if value and ID_RE.fullmatch(value) else None


# -- decoding ----------------------------------------------------------------------------------------


class JsonInputError(ValueError):
    """Bytes from outside that are not usable JSON: too large, too deep, or not JSON. ``reason`` is one
    line, safe to show and to log (it never quotes the input)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


#: orjson refuses documents nested deeper than this (its fixed depth limit); FHIR resources need far less.
MAX_DEPTH = 1024


class _GcPause:
    """Pause the cyclic garbage collector while decoding large JSON: the collector, not parsing,
    dominates decode cost. Re-entrant across threads: the collector is re-enabled when the last
    decoder finishes, and only if it was enabled before."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._was_enabled = False

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0 and self._was_enabled:
                    gc.enable()


#: The one collector pause of the app (decode, assessment).
gc_paused = _GcPause()


def decode_json(data: bytes | bytearray | memoryview | str, *, max_bytes: int | None = None) -> Any:
    """Decode JSON from outside the app, with the collector paused.

    Raises :class:`JsonInputError` when the input is larger than ``max_bytes``, nested deeper than
    :data:`MAX_DEPTH`, or not JSON; never ``RecursionError`` or a parser's own exception.
    """
    size = len(data)
    if max_bytes is not None and size > max_bytes:
        raise JsonInputError(f"larger than the {max_bytes:,}-byte limit")
    with gc_paused():
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            if "depth" in str(exc).lower() or "recursion" in str(exc).lower():
                raise JsonInputError(f"nested deeper than {MAX_DEPTH} levels") from None
            raise JsonInputError("not valid JSON") from None


# -- a Bundle entry by entry ---------------------------------------------------------------------------


class NotStreamable(Exception):
    """The entry splitter cannot vouch for this document; decode it whole (:func:`decode_json`) instead."""


_ENTRY_ARRAY = re.compile(rb'"entry"\s*:\s*\[\s*')
# Candidate end of a Bundle entry: "}" "," then an object whose first key is a BundleEntry key.
_ENTRY_GAP = re.compile(
    rb'\}\s*,\s*(?=\{\s*"(?:fullUrl|resource|search|request|response|link|id|extension|modifierExtension)"\s*:)'
)
_ARRAY_END = re.compile(rb"\}\s*\]")
_MAX_MISSES = 32  # false candidates tolerated inside one entry before giving up streaming


def iter_bundle_entries(data: bytes | bytearray) -> Generator[dict[str, Any], None, dict[str, Any]]:
    """Decode a Bundle's entries one at a time, so the whole Bundle is never held as Python objects; the
    generator's return value is the rest of the Bundle (every element but ``entry``).

    Entry boundaries are found by a byte pattern and each candidate is verified by decoding it: the
    shortest prefix of an entry that decodes is exactly that entry, so a false candidate (inside a
    resource) only costs a failed decode. The rest of the Bundle is decoded at the end to check it is a
    well-formed Bundle. Raises :class:`NotStreamable` when any of this fails, possibly after entries were
    yielded: the caller then discards them and decodes the document whole (and reports it if broken).
    orjson refuses nesting deeper than :data:`MAX_DEPTH` like :func:`decode_json`, so such an entry
    also ends in :class:`NotStreamable`.
    """
    view = memoryview(data)
    head = _ENTRY_ARRAY.search(data)
    if head is None:
        raise NotStreamable
    cur = head.end()
    array_open = head.end() - 1
    while data[array_open : array_open + 1] != b"[":
        array_open -= 1
    if data[cur : cur + 1] == b"]":
        array_close = cur
    else:
        if data[cur : cur + 1] != b"{":
            raise NotStreamable
        misses = 0
        for gap in _ENTRY_GAP.finditer(data, cur):
            end = gap.start() + 1
            try:
                entry = orjson.loads(view[cur:end])
            except orjson.JSONDecodeError:
                misses += 1  # the gap was inside the entry
                if misses > _MAX_MISSES:
                    raise NotStreamable from None  # keep the work linear: decode whole instead
                continue
            if not isinstance(entry, dict):
                raise NotStreamable
            yield entry
            cur = gap.end()
            misses = 0
        for tail in _ARRAY_END.finditer(data, cur):
            try:
                entry = orjson.loads(view[cur : tail.start() + 1])
            except orjson.JSONDecodeError:
                misses += 1
                if misses > _MAX_MISSES:
                    raise NotStreamable from None
                continue
            if not isinstance(entry, dict):
                raise NotStreamable
            yield entry
            array_close = tail.end() - 1
            break
        else:
            raise NotStreamable
    try:
        envelope = orjson.loads(bytes(data[: array_open + 1]) + bytes(data[array_close:]))
    except orjson.JSONDecodeError:
        raise NotStreamable from None
    if not isinstance(envelope, dict) or envelope.get("resourceType") != "Bundle":
        raise NotStreamable
    if envelope.pop("entry", None) != []:
        raise NotStreamable
    return envelope
