"""How an examination finding is recorded so that a criteria release reads it: the questions of the
focused exam and the Observations that answer them (docs/clinical-criteria.md#findings).

Every code comes from the release's own terminology: the code of a finding is the first concept its
ValueSet enumerates (the ValueSet's preferred code), its present and absent values those of the
release's ``reading`` ValueSets, the sites those of its ``typical_site`` ValueSet. A release that reads
other codes records other codes; nothing here names one. The exam form and its drafts
(:mod:`smart_app.drafts.exam`) and the re-evaluation of missing data (:mod:`smart_app.clinical.whatif`)
both record findings through this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from smart_app.clinical.criteria import Criteria
from smart_app.vocabulary import EXAM_CATEGORY, UCUM

Coding = dict[str, str]
Kind = Literal["presence", "signs", "relief"]
PRESENT = "present"
ABSENT = "absent"


def preferred_coding(criteria: Criteria, valueset: str) -> Coding | None:
    """The first concept ``valueset`` enumerates in the release's terminology (with its display), or
    ``None`` when it enumerates none (a ValueSet defined by a filter only)."""
    codings = enumerated_codings(criteria, valueset)
    return codings[0] if codings else None


def enumerated_codings(criteria: Criteria, valueset: str) -> tuple[Coding, ...]:
    """Every concept ``valueset`` enumerates, in the ValueSet's order."""
    vs = criteria.terminology.valuesets.get(valueset) or {}
    out: list[Coding] = []
    for include in (vs.get("compose") or {}).get("include") or []:
        system = include.get("system")
        for concept in include.get("concept") or []:
            if isinstance(system, str) and isinstance(concept.get("code"), str):
                coding = {"system": system, "code": concept["code"]}
                if concept.get("display"):
                    coding["display"] = str(concept["display"])
                out.append(coding)
    return tuple(out)


@dataclass(frozen=True)
class Sign:
    """One sign of a finding read sign by sign (NEURO_DEFICIT: weakness, hypoesthesia, ...)."""

    id: str
    title: str
    coding: Coding


@dataclass(frozen=True)
class ExamQuestion:
    """One finding the criteria read from an examination Observation, as the exam form asks it.

    ``presence``: present or absent, coded ``coding``; ``signs``: each of ``signs`` present or absent;
    ``relief``: a percentage, relief from ``threshold`` % up. ``site_finding`` names the finding that
    judges this one's ``bodySite`` (the nodule's typical site), when one does.
    """

    finding: str
    title: str
    kind: Kind
    coding: Coding | None
    signs: tuple[Sign, ...] = ()
    site_finding: str | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class ExamTerms:
    """What recording an exam under one criteria release takes: its questions and codes."""

    canonical: str
    #: ``Observation.status`` of a record the criteria use (the first of ``observation_status_use``)
    status: str
    present: Coding
    absent: Coding
    questions: tuple[ExamQuestion, ...]
    #: the coded sites the release counts as typical, in its ValueSet's order
    sites: tuple[Coding, ...]

    def question(self, finding: str) -> ExamQuestion | None:
        return next((q for q in self.questions if q.finding == finding), None)

    def value(self, outcome: str) -> dict[str, Any]:
        """``valueCodeableConcept`` saying ``present`` or ``absent``."""
        coding = self.present if outcome == PRESENT else self.absent
        return {"valueCodeableConcept": {"coding": [dict(coding)], "text": coding.get("display", outcome)}}


def relief_value(percent: int | float) -> dict[str, Any]:
    """``valueQuantity`` of a relief percentage (UCUM ``%``, as the relief rule reads it)."""
    return {"valueQuantity": {"value": percent, "unit": "%", "system": UCUM, "code": "%"}}


_TERMS: dict[tuple[str, str], ExamTerms] = {}


def exam_terms(criteria: Criteria) -> ExamTerms:
    """The exam questions of ``criteria``, in its checklist order: every finding read from examination
    Observations whose ValueSet enumerates a code (a sign without one is not asked). Worked out once per
    release (a released version never changes)."""
    key = (criteria.canonical, criteria.source)
    terms = _TERMS.get(key)
    if terms is None:
        terms = _TERMS[key] = _exam_terms(criteria)
    return terms


def _exam_terms(criteria: Criteria) -> ExamTerms:
    reading = criteria.data["reading"]
    present = preferred_coding(criteria, reading["present_valueset"])
    absent = preferred_coding(criteria, reading["absent_valueset"])
    if present is None or absent is None:
        raise ValueError(f"criteria {criteria.canonical} enumerate no present/absent value")
    specs = {str(spec["id"]): spec for spec in criteria.findings}
    judged_by = {
        str(spec["finding"]): str(spec["id"]) for spec in criteria.findings if spec.get("rule") == "site_of"
    }
    questions: list[ExamQuestion] = []
    for finding in criteria.setting("checklist_order"):
        spec = specs.get(finding)
        if spec is None or not spec.get("observations"):
            continue
        coding = preferred_coding(criteria, spec["observations"][0]["valueset"])
        title = str(spec["title"])
        if spec.get("rule") == "relief":
            if coding is not None:
                threshold = criteria.threshold(spec["threshold"])
                questions.append(ExamQuestion(finding, title, "relief", coding, threshold=threshold))
        elif spec.get("signs"):
            signs = tuple(
                Sign(str(sign["id"]), str(sign["title"]), found)
                for sign in spec["signs"]
                if (found := preferred_coding(criteria, sign["valueset"])) is not None
            )
            if signs:
                questions.append(ExamQuestion(finding, title, "signs", None, signs=signs))
        elif spec.get("rule") == "exam" and coding is not None:
            questions.append(
                ExamQuestion(finding, title, "presence", coding, site_finding=judged_by.get(finding))
            )
    return ExamTerms(
        canonical=criteria.canonical,
        status=str(reading["observation_status_use"][0]),
        present=present,
        absent=absent,
        questions=tuple(questions),
        sites=enumerated_codings(criteria, criteria.data["typical_site"]["valueset"]),
    )


def exam_observation(
    terms: ExamTerms,
    coding: Mapping[str, str],
    value: Mapping[str, Any],
    *,
    subject: str,
    when: str,
    body_site: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The Observation recording one answer: category exam, ``coding`` as its code, ``value`` (from
    :meth:`ExamTerms.value` or :func:`relief_value`), effective ``when``, the status the criteria use."""
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "status": terms.status,
        "category": [{"coding": [dict(EXAM_CATEGORY)]}],
        "code": {"coding": [dict(coding)], "text": coding.get("display") or coding["code"]},
        "subject": {"reference": subject},
        "effectiveDateTime": when,
        **value,
    }
    if body_site:
        observation["bodySite"] = dict(body_site)
    return observation
