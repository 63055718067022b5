"""Typed accessors over plain FHIR R4 JSON dicts (no models, no FHIRPath).

Every accessor tolerates malformed input: a wrong type yields ``None`` or an empty result, never an
exception. The read rules follow CLINICAL.md "Reading the record" and clinical-evidence.md §5.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

JSON = Mapping[str, Any]

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
    """Condition onset: onsetDateTime, onsetPeriod.start, else recordedDate (CLINICAL.md age-new-onset)."""
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
