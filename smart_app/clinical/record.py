"""One patient's record from a FHIR R4 Bundle (R4 Bundle page: entry.resource, entry.fullUrl).

Accepts any Bundle type (collection, searchset, transaction, batch, *-response, document); entries without
a ``resource`` are skipped. Decoding goes through :func:`smart_app.fhirjson.decode_json` (depth guard, the
collector paused: the collector, not the parser, makes decode time grow faster than the input).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from smart_app import fhirjson as fj
from smart_app.fhirjson import NotStreamable, iter_bundle_entries

TYPE_CHECKING = False  # true for type checkers only: see smart_app/__init__.py
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "NotStreamable",
    "PatientRecord",
    "UnusableInput",
    "iter_bundle_entries",
    "load_bundle",
    "record_from_entries",
    "record_from_patients",
    "stream_bundle",
]


class UnusableInput(ValueError):
    """The input cannot be assessed at all (CLI exit status 2). ``reason`` is one line, safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PatientRecord:
    """The launched Patient and the other resources read for them.

    ``patient_aliases`` are extra references that denote the same Patient in this Bundle (its
    ``fullUrl``, e.g. ``urn:uuid:…`` in a transaction). ``fhir_base`` is the FHIR base the record was
    read from; ``None`` for a record from a file, whose absolute references may name any base.
    ``unavailable`` names resource types that could not be read, with the reason in words ("scope not
    granted", "read failed: 503"): their silence is not evidence of absence (docs/clinical-criteria.md
    #data-that-could-not-be-read; criteria ``data_dependencies``). ``load_bundle`` leaves it empty.
    ``unmatched`` counts resources that were read but set aside before extraction because they can only
    be counted (:class:`smart_app.clinical.facts.Sieve`): they are in the assessment's resource count.
    """

    patient: dict[str, Any]
    resources: list[dict[str, Any]]
    patient_aliases: tuple[str, ...] = field(default=())
    unavailable: Mapping[str, str] = field(default_factory=dict)
    fhir_base: str | None = None
    unmatched: int = 0

    @property
    def patient_reference(self) -> str:
        pid = self.patient.get("id")
        if isinstance(pid, str) and pid:
            return f"Patient/{pid}"
        return self.patient_aliases[0] if self.patient_aliases else "Patient/(no id)"

    def subject_matches(self, ref: str) -> bool:
        """True if ``ref`` denotes the launched Patient (docs/clinical-criteria.md#subjects):
        ``Patient/<id>`` or ``Patient/<id>/_history/<v>`` (R4 references.html#literal, #versions), either
        as an absolute URL on the base the record was read from (any base for a file), or the fullUrl
        of the Patient's own entry in the Bundle."""
        if ref in self.patient_aliases:
            return True
        pid = self.patient.get("id")
        if not isinstance(pid, str) or not pid:
            return False
        if ref == f"Patient/{pid}":
            return True
        parsed = fj.Ref.parse(ref)
        if parsed is None:
            return False
        if (parsed.type, parsed.id) != ("Patient", pid):
            return False
        return parsed.base is None or self.fhir_base is None or fj.same_base(parsed.base, self.fhir_base)


def load_bundle(data: bytes | str) -> PatientRecord:
    """Decode a Bundle holding one patient's resources.

    Raises ``UnusableInput`` when the data is not JSON, not a Bundle, has no Patient or several Patients.
    """
    with fj.gc_paused():
        try:
            doc = fj.decode_json(data)
        except fj.JsonInputError as exc:
            raise UnusableInput(f"not usable JSON: {exc.reason}") from None
        if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
            found = doc.get("resourceType") if isinstance(doc, dict) else type(doc).__name__
            raise UnusableInput(f"not a FHIR Bundle (resourceType {found!r})"[:200])
        return record_from_entries(doc.get("entry"))


def record_from_entries(entries: object) -> PatientRecord:
    """Split Bundle entries into the single Patient and the other resources."""
    patients: list[tuple[dict[str, Any], str | None]] = []
    resources: list[dict[str, Any]] = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        res = entry.get("resource")
        if not isinstance(res, dict):
            continue
        full_url = entry.get("fullUrl")
        if res.get("resourceType") == "Patient":
            patients.append((res, full_url if isinstance(full_url, str) else None))
        else:
            resources.append(res)
    return record_from_patients(patients, resources)


def record_from_patients(
    patients: Sequence[tuple[dict[str, Any], str | None]], resources: list[dict[str, Any]]
) -> PatientRecord:
    distinct: dict[str, tuple[dict[str, Any], str | None]] = {}
    for pat, full_url in patients:
        pid = pat.get("id")
        key = f"id:{pid}" if isinstance(pid, str) and pid else f"url:{full_url}"
        distinct.setdefault(key, (pat, full_url))
    if not distinct:
        raise UnusableInput("the Bundle holds no Patient")
    if len(distinct) > 1:
        raise UnusableInput(f"the Bundle holds {len(distinct)} different Patients; one is expected")
    patient, full_url = next(iter(distinct.values()))
    aliases = tuple(u for u in (full_url,) if u)
    return PatientRecord(patient=patient, resources=resources, patient_aliases=aliases)


def stream_bundle(data: bytes, consume: Callable[[dict[str, Any]], None]) -> PatientRecord:
    """Stream a Bundle's non-Patient resources into ``consume``; return the record (resources empty).

    Falls back to a whole decode when the document cannot be streamed; ``consume`` may then have seen some
    resources already, so callers must be able to start over (see ``smart_app.clinical.engine``).
    """
    patients: list[tuple[dict[str, Any], str | None]] = []
    with fj.gc_paused():
        for entry in iter_bundle_entries(data):
            res = entry.get("resource")
            if not isinstance(res, dict):
                continue
            if res.get("resourceType") == "Patient":
                full_url = entry.get("fullUrl")
                patients.append((res, full_url if isinstance(full_url, str) else None))
            else:
                consume(res)
    return record_from_patients(patients, [])
