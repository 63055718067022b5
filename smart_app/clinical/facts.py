"""One linear pass over a patient's resources: keep what the criteria can use, say why the rest is ignored.

Reading rules: docs/clinical-criteria.md#reading-the-record. Each usable coded element becomes a ``Fact``
filed under every criteria ValueSet its code belongs to; rules later decide what each fact means.

A malformed date never costs a resource (docs/clinical-criteria.md#malformed-dates): the bad element is
treated as absent, reported with its path (``Facts.problems``), and the next element of the time order
(``smart_app.fhirjson``) is used. A date without a time is after the evaluation time only when it starts
after it in every time zone (docs/clinical-criteria.md#partial-dates).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson

from smart_app import fhirjson as fj
from smart_app.clinical.criteria import Criteria
from smart_app.clinical.record import PatientRecord
from smart_app.fhirjson import When
from smart_app.vocabulary import system_label

TYPE_CHECKING = False  # true for type checkers only: see smart_app/__init__.py
if TYPE_CHECKING:
    from typing import Any

_MIN = datetime.min.replace(tzinfo=UTC)
READ_TYPES = ("Observation", "Condition", "Procedure", "MedicationStatement", "MedicationRequest")
#: The earliest UTC offset in use (UTC+14:00): a calendar date begins there first.
_EARLIEST_OFFSET = timedelta(hours=14)
_MEDICATION_DATES = ("effectiveDateTime", "effectivePeriod", "authoredOn", "dateAsserted")
#: The date elements each read type may carry (R4), as ``element`` or ``period`` (a Period: start, end).
DATE_ELEMENTS: Mapping[str, tuple[str, ...]] = {
    "Observation": ("effectiveDateTime", "effectiveInstant", "effectivePeriod", "issued"),
    "Condition": (
        "onsetDateTime",
        "onsetPeriod",
        "recordedDate",
        "abatementDateTime",
        "abatementPeriod",
    ),
    "Procedure": ("performedDateTime", "performedPeriod"),
    "MedicationStatement": _MEDICATION_DATES,
    "MedicationRequest": _MEDICATION_DATES,
}
#: abatement[x] of R4 Condition (any of them says the Condition abated; con-4)
_ABATEMENT = ("abatementDateTime", "abatementAge", "abatementPeriod", "abatementRange", "abatementString")


def starts_after(when: When, moment: datetime) -> bool:
    """Whether ``when`` is after ``moment`` (docs/clinical-criteria.md#partial-dates): its interval starts
    after it. A value without a time of day names a calendar date in no particular zone, so it starts
    when that date begins anywhere (at UTC+14:00): a date-only value on the evaluation day is never after
    the evaluation time, whatever the evaluation time's offset."""
    start = when.start if "T" in when.text else when.start - _EARLIEST_OFFSET
    return start > moment


def without_bad_dates(
    resource: Mapping[str, Any], rtype: str, report: Callable[[str, str], None]
) -> dict[str, Any]:
    """A copy of ``resource`` without its unparseable date elements, each reported as
    ``report(path, reason)``; a Period left without start and end is dropped with them."""
    clean = dict(resource)
    for name in DATE_ELEMENTS.get(rtype, ()):
        if name not in clean:
            continue
        value = clean[name]
        if not name.endswith("Period"):
            if not _parses(value):
                report(f"{rtype}.{name}", _bad(value))
                del clean[name]
            continue
        if not isinstance(value, dict):
            report(f"{rtype}.{name}", "malformed Period treated as absent")
            del clean[name]
            continue
        period = dict(value)
        for part in ("start", "end"):
            if part in period and not _parses(period[part]):
                report(f"{rtype}.{name}.{part}", _bad(period[part]))
                del period[part]
        if "start" in period or "end" in period:
            clean[name] = period
        else:
            del clean[name]
    return clean


def _parses(value: object) -> bool:
    try:
        return fj.parse_time(value) is not None
    except fj.BadTime:
        return False


def _bad(value: object) -> str:
    return f"malformed date {str(value)[:40]!r} treated as absent"


@dataclass(slots=True)
class Fact:
    """A coded element of one resource that belongs to at least one criteria ValueSet."""

    ref: str
    rtype: str
    valuesets: frozenset[str]
    code_key: str
    label: str
    when: When | None = None
    #: "present" | "absent" | None (says nothing). A Condition says "present"; whether it counts is the
    #: rules' call (clinical and verification status).
    polarity: str | None = None
    note: str | None = None  # why it says nothing
    status: str | None = None
    preliminary: bool = False
    clinical: str | None = None
    verification: str | None = None
    #: a Condition without clinicalStatus whose abatement[x] says it abated by the evaluation time
    abated: bool = False
    element: Mapping[str, Any] = field(default_factory=dict)  # the Observation or component carrying value[x]
    resource: Mapping[str, Any] = field(default_factory=dict)

    @property
    def sort_time(self) -> datetime:
        """Ordering time ("newest wins"); undated facts sort oldest."""
        return self.when.start if self.when else _MIN

    @property
    def supporting_status(self) -> str | None:
        """clinicalStatus as supporting findings read it: an abated Condition without one is inactive
        (R4 con-4). Red flags and danger findings read ``clinical`` itself: abatement never removes
        them (docs/clinical-criteria.md#abatement)."""
        return "inactive" if self.clinical is None and self.abated else self.clinical


@dataclass(slots=True)
class Facts:
    by_valueset: dict[str, list[Fact]]
    ignored: dict[str, str]  # ref -> first reason
    resources: dict[str, Mapping[str, Any]]  # ref -> resource (for versionId)
    #: (ref, element path) -> why that element was set aside; the resource itself is still read
    problems: dict[tuple[str, str], str] = field(default_factory=dict)

    def of(self, url: str, rtype: str | None = None) -> list[Fact]:
        found = self.by_valueset.get(url, [])
        return found if rtype is None else [f for f in found if f.rtype == rtype]

    def ignore(self, ref: str, reason: str) -> None:
        self.ignored.setdefault(ref, reason)


def _label(system: str, code: str, criteria: Criteria, concept: object) -> str:
    """``SNOMED 95325000 Subcutaneous nodule``: the coding's display, else ours, else the concept text."""
    name = system_label(system)
    display = fj.coding_display(concept, system, code) or criteria.terminology.display(system, code)
    display = display or fj.concept_text(concept) or ""
    return f"{name} {code} {display}".strip()


# Elements the rules read; a kept resource is slimmed to these (notes, performers, ranges are dropped).
_KEEP = frozenset(
    {
        "resourceType",
        "id",
        "meta",
        "status",
        "code",
        "bodySite",
        "component",
        "dataAbsentReason",
        "effectiveDateTime",
        "effectiveInstant",
        "effectivePeriod",
        "issued",
        "clinicalStatus",
        "verificationStatus",
        "onsetDateTime",
        "onsetPeriod",
        "recordedDate",
        "abatementDateTime",
        "abatementAge",
        "abatementPeriod",
        "abatementRange",
        "abatementString",
        "intent",
        "performedDateTime",
        "performedPeriod",
        "subject",
    }
)


def _slim(res: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in res.items() if k in _KEEP or k.startswith("value")}


#: :meth:`Sieve._scan` results: a coding in a criteria ValueSet, or coded without one.
_MATCH, _CODED = 2, 1
_HITS_LIMIT = 100_000


class Sieve:
    """Which resources can matter to the criteria, decided before any fact is built.

    A resource is *inert* when the :class:`Extractor` would do nothing with it but count it: a read type,
    an id, a subject, coded, and no coding in a criteria ValueSet where the criteria look (the code, an
    Observation's component codes, and its valueCodeableConcept against the finding ValueSets). Such a
    resource is neither evidence nor listed in ``ignored`` (docs/clinical-criteria.md#ignored-and-missing),
    so it can be set aside unread. Anything else, well-formed or not, is not inert. Pure and thread-safe.
    """

    def __init__(self, criteria: Criteria) -> None:
        self.criteria = criteria
        self.term = criteria.terminology
        self.relevant = criteria.read_valuesets()
        reading = criteria.data["reading"]
        # ValueSets whose codes may also arrive as an Observation's value (value = finding pattern)
        value_sets: set[str] = set()
        for f in criteria.findings:
            value_sets.update(o["valueset"] for o in f.get("observations", []))
            value_sets.update(sign["valueset"] for sign in f.get("signs", []))
        value_sets.update(r["valueset"] for r in criteria.data["red_flags"] if "valueset" in r)
        value_sets.update(d["valueset"] for d in criteria.data["differentials"])
        value_sets.difference_update({reading["present_valueset"], reading["absent_valueset"]})
        self.value_sets = frozenset(value_sets)
        # (system, code) -> whether it is in ``relevant`` / ``value_sets``: the per-resource test is a lookup
        self._relevant_hits: dict[tuple[str, str], bool] = {}
        self._value_hits: dict[tuple[str, str], bool] = {}

    def matched(self, concept: object, only: frozenset[str] | None = None) -> tuple[frozenset[str], str, str]:
        """Criteria ValueSets of a CodeableConcept's codings, the first matching ``system|code``, a label."""
        urls: set[str] = set()
        key = ""
        label = ""
        pool = self.relevant if only is None else only
        for system, code in fj.codings(concept):
            hit = self.term.match(system, code) & pool
            if hit:
                urls |= hit
                if not key:
                    key = f"{system}|{code}"
                    label = _label(system, code, self.criteria, concept)
        return frozenset(urls), key, label

    def matches(self, res: Mapping[str, Any], rtype: str) -> bool:
        """Whether a coding of ``res`` is in a criteria ValueSet where the Extractor looks for it."""
        return self._scan(res, rtype) == _MATCH

    def inert(self, res: object, subject: str | None = None) -> bool:
        """Whether ``res`` would only be counted (see the class): safe to set aside before extraction.
        With ``subject``, only a resource whose ``subject.reference`` is exactly that is inert."""
        if not isinstance(res, dict):
            return False
        rtype = res.get("resourceType")
        if rtype not in READ_TYPES or fj.reference(res) is None:
            return False
        reference = fj.subject_ref(res)
        if reference is None or (subject is not None and reference != subject):
            return False
        return self._scan(res, rtype) == _CODED

    def _scan(self, res: Mapping[str, Any], rtype: str) -> int:
        """:data:`_MATCH` when a coding is in a criteria ValueSet where the Extractor looks, else
        :data:`_CODED` when the resource is coded as :meth:`Extractor.coded` requires, else 0."""
        if rtype == "Observation":
            state = self._codes(res.get("code"), self._relevant_hits, self.relevant)
            if state == _MATCH:
                return _MATCH
            for comp in fj.as_list(res.get("component")):
                if isinstance(comp, dict):
                    found = self._codes(comp.get("code"), self._relevant_hits, self.relevant)
                    if found == _MATCH:
                        return _MATCH
                    state = max(state, found)
            if "valueCodeableConcept" in res:
                value = res["valueCodeableConcept"]
                if self._codes(value, self._value_hits, self.value_sets) == _MATCH:
                    return _MATCH
            return state
        concept = fj.medication_concept(res) if rtype.startswith("Medication") else res.get("code")
        return self._codes(concept, self._relevant_hits, self.relevant)

    def _codes(self, concept: object, hits: dict[tuple[str, str], bool], pool: frozenset[str]) -> int:
        """Of one CodeableConcept's well-formed codings (those :func:`smart_app.fhirjson.codings` gives):
        :data:`_MATCH` if one is in ``pool``, :data:`_CODED` if there are any, else 0."""
        if not isinstance(concept, dict):
            return 0
        state = 0
        for coding in fj.as_list(concept.get("coding")):
            if not isinstance(coding, dict):
                continue
            system, code = coding.get("system"), coding.get("code")
            if isinstance(system, str) and isinstance(code, str) and code:
                key = (system, code)
                hit = hits.get(key)
                if hit is None:
                    if len(hits) >= _HITS_LIMIT:
                        hits.clear()
                    hit = hits[key] = bool(self.term.match(system, code) & pool)
                if hit:
                    return _MATCH
                state = _CODED
        return state


class Extractor:
    """Feed resources one at a time (``feed``), then ``finish`` with the launched patient's record.

    Only the resources a rule can use are kept (slimmed), so a streamed Bundle is never held whole.
    """

    def __init__(self, as_of: datetime, criteria: Criteria, sieve: Sieve | None = None) -> None:
        self.count = 0
        self.subjects: dict[str, str] = {}
        self.as_of = as_of
        self.criteria = criteria
        self.term = criteria.terminology
        self.sieve = sieve or Sieve(criteria)
        self.relevant = self.sieve.relevant
        self.value_sets = self.sieve.value_sets
        reading = criteria.data["reading"]
        self.present_vs: str = reading["present_valueset"]
        self.absent_vs: str = reading["absent_valueset"]
        self.use_status = frozenset(reading["observation_status_use"])
        self.listed_status = frozenset(reading["observation_status_listed"])
        self.drop_verification = frozenset(reading["condition_verification_drop"])
        self.facts = Facts(by_valueset={}, ignored={}, resources={})
        self._seen: dict[str, tuple[str, int, str]] = {}

    # -- helpers -------------------------------------------------------------------------------------
    def matched(self, concept: object, only: frozenset[str] | None = None) -> tuple[frozenset[str], str, str]:
        """Criteria ValueSets of a CodeableConcept's codings, the first matching ``system|code``, a label."""
        return self.sieve.matched(concept, only)

    def add(self, fact: Fact) -> None:
        for url in fact.valuesets:
            self.facts.by_valueset.setdefault(url, []).append(fact)

    def future(self, when: When | None) -> bool:
        return when is not None and starts_after(when, self.as_of)

    def clean(self, res: Mapping[str, Any], rtype: str, ref: str) -> dict[str, Any]:
        """``res`` without its malformed dates, each reported under ``ref`` with its path."""

        def report(path: str, reason: str) -> None:
            self.facts.problems.setdefault((ref, path), reason)

        return without_bad_dates(res, rtype, report)

    def ignored_as_future(self, ref: str, *times: When | None) -> bool:
        """Report ``ref`` as ignored when any of its times is after the evaluation time
        (docs/clinical-criteria.md#windows-and-the-evaluation-time)."""
        for when in times:
            if when is not None and self.future(when):
                self.facts.ignore(ref, f"dated after the evaluation time ({when.text})")
                return True
        return False

    # -- per resource ----------------------------------------------------------------------------------
    def feed(self, res: Any) -> None:
        self.count += 1
        try:
            self.one(res)
        except Exception as exc:  # noqa: BLE001 - one malformed resource never fails an assessment
            ref = fj.reference(res) if isinstance(res, dict) else None
            ref = ref or "(resource without id)"
            self._drop(ref)
            self.facts.ignored[ref] = f"malformed: {type(exc).__name__}"

    def fork(self) -> Extractor:
        """A copy to feed more resources to, this one left as it is: the what-if re-evaluation
        (:func:`smart_app.clinical.engine.concluder`) feeds each hypothesis to a copy of one extraction."""
        twin = copy.copy(self)
        twin.subjects = dict(self.subjects)
        twin._seen = dict(self._seen)
        twin.facts = Facts(
            by_valueset={url: list(facts) for url, facts in self.facts.by_valueset.items()},
            ignored=dict(self.facts.ignored),
            resources=dict(self.facts.resources),
            problems=dict(self.facts.problems),
        )
        return twin

    def finish(self, record: PatientRecord) -> Facts:
        """Apply the subject check (docs/clinical-criteria.md#subjects: another patient's resource is
        ignored and reported) and check the Patient's birthDate."""
        verdicts = {subject: record.subject_matches(subject) for subject in set(self.subjects.values())}
        foreign = {ref for ref, subject in self.subjects.items() if not verdicts[subject]}
        if foreign:
            for url, facts in self.facts.by_valueset.items():
                self.facts.by_valueset[url] = [f for f in facts if f.ref not in foreign]
            for ref in foreign:
                self.facts.resources.pop(ref, None)
                self.facts.ignored[ref] = "subject is not the launched patient"
            self.facts.problems = {k: v for k, v in self.facts.problems.items() if k[0] not in foreign}
        birth = record.patient.get("birthDate")
        if birth is not None and not _parses(birth):
            self.facts.problems[(record.patient_reference, "Patient.birthDate")] = _bad(birth)
        return self.facts

    def one(self, res: Any) -> None:
        if not isinstance(res, dict):
            self.facts.ignore("(not a resource)", "malformed: entry resource is not an object")
            return
        rtype = res.get("resourceType")
        if not isinstance(rtype, str) or not rtype:
            self.facts.ignore(
                fj.as_str(res.get("id")) or "(resource without id)", "malformed: no resourceType"
            )
            return
        ref = fj.reference(res)
        if ref is None:
            self.facts.ignore(f"{rtype}/(no id)", "malformed: no id")
            return
        if rtype not in READ_TYPES:
            self.facts.ignore(ref, f"resourceType {rtype} is not read by the criteria")
            return
        subject = fj.subject_ref(res)
        if subject is None:
            self.facts.ignore(ref, "no subject")
            return
        self.subjects[ref] = subject
        key = self._version_key(res)
        if ref in self._seen:
            old = self.facts.resources.get(ref)
            if not self._newer(key, res, self._seen[ref], old):
                self.facts.ignore(ref, "duplicate entry (an equal or newer version is used)")
                return
            self._drop(ref)
        self._seen[ref] = key
        if not self.coded(res, rtype):
            self.facts.ignore(ref, "malformed: no coded code (nothing the criteria can read)")
            return
        getattr(self, f"_{rtype}")(res, ref)

    @staticmethod
    def coded(res: Mapping[str, Any], rtype: str) -> bool:
        """The element the criteria read is coded (Observation.code is required in R4; components count)."""
        if rtype.startswith("Medication"):
            return any(True for _ in fj.codings(fj.medication_concept(res)))
        if any(True for _ in fj.codings(res.get("code"))):
            return True
        components = [c for c in fj.as_list(res.get("component")) if isinstance(c, dict)]
        return rtype == "Observation" and any(
            any(True for _ in fj.codings(c.get("code"))) for c in components
        )

    @staticmethod
    def _version_key(res: Mapping[str, Any]) -> tuple[str, int, str]:
        meta = fj.as_dict(res.get("meta")) or {}
        vid = fj.as_str(meta.get("versionId")) or ""
        return (fj.as_str(meta.get("lastUpdated")) or "", int(vid) if vid.isdigit() else -1, vid)

    @staticmethod
    def _newer(
        key: tuple[str, int, str], res: Mapping[str, Any], old_key: tuple[str, int, str], old: object
    ) -> bool:
        """Duplicate ``Type/id``: keep the newer meta.lastUpdated/versionId; ties by content (order-free)."""
        if key != old_key:
            return key > old_key
        if not isinstance(old, dict):
            return False
        opt = orjson.OPT_SORT_KEYS
        return orjson.dumps(_slim(res), option=opt) > orjson.dumps(old, option=opt)

    def _drop(self, ref: str) -> None:
        for url, facts in self.facts.by_valueset.items():
            self.facts.by_valueset[url] = [f for f in facts if f.ref != ref]
        self.facts.ignored.pop(ref, None)
        self.facts.resources.pop(ref, None)
        self.facts.problems = {k: v for k, v in self.facts.problems.items() if k[0] != ref}

    # -- Observation (docs/clinical-criteria.md#observation-status) ---------------------------------------
    def _Observation(self, obs: dict[str, Any], ref: str) -> None:
        elements: list[tuple[frozenset[str], str, str, Mapping[str, Any], bool]] = []
        urls, key, label = self.matched(obs.get("code"))
        if urls:
            elements.append((urls, key, label, obs, False))
        for comp in fj.as_list(obs.get("component")):
            if isinstance(comp, dict):
                c_urls, c_key, c_label = self.matched(comp.get("code"))
                if c_urls:
                    elements.append((c_urls, c_key, c_label, comp, False))
        if not elements and "valueCodeableConcept" in obs:
            # pattern: code = a generic exam finding, value = the finding code (HL7 Symptoms IG)
            v_urls, v_key, v_label = self.matched(obs["valueCodeableConcept"], self.value_sets)
            if v_urls:
                elements.append((v_urls, v_key, v_label, obs, True))
        if not elements:
            return
        raw, obs = obs, self.clean(obs, "Observation", ref)
        slim = self.facts.resources[ref] = _slim(obs)
        status = fj.as_str(obs.get("status"))
        preliminary = status in self.listed_status
        if not preliminary and status not in self.use_status:
            self.facts.ignore(ref, f"status {status or 'missing'}")
            return
        if "focus" in obs:
            self.facts.ignore(ref, "Observation has a focus (it is about something other than the patient)")
            return
        when = fj.observation_time(obs)
        if self.ignored_as_future(ref, when):
            return
        for urls, key, label, element, value_is_code in elements:
            polarity, note = ("present", None) if value_is_code else self.polarity(element)
            self.add(
                Fact(
                    ref=ref,
                    rtype="Observation",
                    valuesets=urls,
                    code_key=key,
                    label=label,
                    when=when,
                    polarity=polarity,
                    note=note,
                    status=status,
                    preliminary=preliminary,
                    element=slim if element is raw else element,
                    resource=slim,
                )
            )

    def polarity(self, element: Mapping[str, Any]) -> tuple[str | None, str | None]:
        """Present/Absent of a finding from ``value[x]`` (docs/clinical-criteria.md#observation-values)."""
        dar = element.get("dataAbsentReason")
        if dar is not None:
            return None, f"dataAbsentReason {fj.status_code(dar) or fj.concept_label(dar) or 'given'}"
        if "valueCodeableConcept" in element:
            codes = list(fj.codings(element["valueCodeableConcept"]))
            if any(self.term.contains(self.present_vs, s, c) for s, c in codes):
                return "present", None
            if any(self.term.contains(self.absent_vs, s, c) for s, c in codes):
                return "absent", None
            return None, "value is neither Present nor Absent"
        if "valueBoolean" in element:
            value = element["valueBoolean"]
            if isinstance(value, bool):
                return ("present" if value else "absent"), None
            return None, "malformed valueBoolean"
        if any(k.startswith("value") for k in element):
            return None, "value of another type (a number, text...)"
        return "present", None

    # -- Condition (docs/clinical-criteria.md#condition-status-and-verification) ---------------------------
    def _Condition(self, cond: dict[str, Any], ref: str) -> None:
        urls, key, label = self.matched(cond.get("code"))
        if not urls:
            return
        cond = self.clean(cond, "Condition", ref)
        slim = self.facts.resources[ref] = _slim(cond)
        verification = fj.status_code(cond.get("verificationStatus"))
        if verification in self.drop_verification:
            self.facts.ignore(ref, f"verificationStatus {verification}")
            return
        onset = fj.condition_onset(cond)
        recorded = fj.parse_time(cond.get("recordedDate"))
        if self.ignored_as_future(ref, onset, recorded):
            return
        clinical = fj.status_code(cond.get("clinicalStatus"))
        abatement = fj.condition_abatement(cond)
        # con-4: an abated Condition is inactive/resolved/remission (for supporting findings only)
        abated = any(k in cond for k in _ABATEMENT) and (abatement is None or not self.future(abatement))
        self.add(
            Fact(
                ref=ref,
                rtype="Condition",
                valuesets=urls,
                code_key=key,
                label=label,
                when=onset,
                polarity="present",
                clinical=clinical,
                verification=verification,
                abated=clinical is None and abated,
                resource=slim,
            )
        )

    # -- Procedure / medications ----------------------------------------------------------------------
    def _Procedure(self, proc: dict[str, Any], ref: str) -> None:
        self._dated_event(proc, ref, "Procedure", proc.get("code"), fj.procedure_time)

    def _medication(self, med: dict[str, Any], ref: str, rtype: str) -> None:
        self._dated_event(med, ref, rtype, fj.medication_concept(med), fj.medication_time)

    def _dated_event(
        self,
        resource: dict[str, Any],
        ref: str,
        rtype: str,
        concept: Any,
        time_of: Callable[[dict[str, Any]], fj.When | None],
    ) -> None:
        """A Procedure or medication whose code is in a criteria ValueSet, with its time and status."""
        urls, key, label = self.matched(concept)
        if not urls:
            return
        resource = self.clean(resource, rtype, ref)
        slim = self.facts.resources[ref] = _slim(resource)
        when = time_of(resource)
        if self.ignored_as_future(ref, when):
            return
        self.add(
            Fact(
                ref=ref,
                rtype=rtype,
                valuesets=urls,
                code_key=key,
                label=label,
                when=when,
                status=fj.as_str(resource.get("status")),
                resource=slim,
            )
        )

    def _MedicationStatement(self, med: dict[str, Any], ref: str) -> None:
        self._medication(med, ref, "MedicationStatement")

    def _MedicationRequest(self, med: dict[str, Any], ref: str) -> None:
        self._medication(med, ref, "MedicationRequest")


def extract(record: PatientRecord, as_of: datetime, criteria: Criteria) -> Facts:
    """Facts of ``record`` at evaluation time ``as_of`` (timezone-aware), in one pass."""
    extractor = Extractor(as_of, criteria)
    for res in record.resources:
        extractor.feed(res)
    return extractor.finish(record)
