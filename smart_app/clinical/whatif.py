"""Which missing data could change the conclusion (docs/clinical-criteria.md#assessment-output).

An assessment's ``missing`` list names every finding the record leaves unknown, and the ladder's and the
red-flag screen's unread inputs. Only some of them matter: a confirmed back mouse does not wait for the
nodule's site, and nothing changes a red flag's urgent work-up. :func:`decisive_missing` finds out by
re-evaluating the criteria: each item is recorded, hypothetically, with the values it can take in turn
(present, then absent; relief, then none; the pain scores at the criteria's thresholds; an unread type
read and found empty), at the evaluation time, coded as the release reads it
(:mod:`smart_app.clinical.recording`); an item is kept as soon as one value changes the classification or
the next step. Nothing is listed from a table.

Pure: the record and the assessment in, the decisive items out. Each hypothesis is one evaluation of
the decision stages alone (:func:`~smart_app.clinical.engine.conclude`) over the resources the
assessment cites (the others decided nothing), or over the whole record when those alone do not give
the same conclusion and the record is small (at most :data:`MAX_WHOLE_RECORD` resources); for a larger
record every item is then kept, untested, rather than evaluating it many times over.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from smart_app import fhirjson as fj
from smart_app.clinical.criteria import Criteria, CriteriaRegistry
from smart_app.clinical.engine import conclude, concluder, criteria_for
from smart_app.clinical.record import PatientRecord
from smart_app.clinical.recording import (
    ABSENT,
    PRESENT,
    ExamTerms,
    exam_observation,
    exam_terms,
    preferred_coding,
    relief_value,
)
from smart_app.vocabulary import CONDITION_CLINICAL, CONDITION_VERIFICATION

#: The largest record re-evaluated whole when its cited resources alone conclude otherwise.
MAX_WHOLE_RECORD = 500
#: The bodySite text of a nodule recorded elsewhere than at a typical site (it names no typical site).
ANOTHER_SITE = "another site"


@dataclass(frozen=True)
class Change:
    """One way of recording a missing item and what the criteria conclude then."""

    recorded: str
    classification: str
    next_step: str


@dataclass(frozen=True)
class Decisive:
    """A missing item whose recording could change the conclusion, with the first value found to change
    it (``None``: the criteria give no way to record it, so it is kept untested)."""

    item: Mapping[str, Any]
    change: Change | None


@dataclass(frozen=True)
class _Hypothesis:
    recorded: str
    resources: tuple[dict[str, Any], ...]
    readable: frozenset[str]


def decisive_missing(
    record: PatientRecord,
    assessment: Mapping[str, Any],
    *,
    registry: CriteriaRegistry | None = None,
) -> list[Decisive]:
    """The items of ``assessment["missing"]`` (the Assessment JSON of ``record``) whose recording could
    change its classification or next step, in the assessment's order. An item the criteria give no
    way to record is kept: it is not known not to matter."""
    criteria = criteria_for(str(assessment["criteria"]["version"]), registry)
    as_of = datetime.fromisoformat(str(assessment["as_of"]).replace("Z", "+00:00"))
    conclusion = (str(assessment["classification"]), str(assessment["next_step"]))

    def evaluate(trial: PatientRecord) -> tuple[str, str]:
        return conclude(trial, as_of, criteria.version, registry=registry)

    base = cited_record(record, assessment)
    if evaluate(base) != conclusion:
        if len(record.resources) > MAX_WHOLE_RECORD:
            return [Decisive(item, None) for item in assessment.get("missing") or []]
        base = record
    conclude_with = concluder(base, as_of, criteria.version, registry=registry)
    statuses = {str(k): str(v.get("status")) for k, v in (assessment.get("findings") or {}).items()}
    out: list[Decisive] = []
    for item in assessment.get("missing") or []:
        hypotheses = hypotheses_for(
            criteria, str(item.get("finding")), statuses, record, str(assessment["as_of"])
        )
        if hypotheses is None:
            out.append(Decisive(item, None))
            continue
        for hypothesis in hypotheses:
            supposed = [{**r, "id": f"whatif-{n}"} for n, r in enumerate(hypothesis.resources, start=1)]
            unavailable = {t: r for t, r in base.unavailable.items() if t not in hypothesis.readable}
            got = conclude_with(supposed, unavailable)
            if got != conclusion:
                out.append(Decisive(item, Change(hypothesis.recorded, *got)))
                break
    return out


def cited_record(record: PatientRecord, assessment: Mapping[str, Any]) -> PatientRecord:
    """``record`` with only the resources the assessment cites as its sources."""
    cited = {str(s.get("reference")) for s in assessment.get("sources") or [] if isinstance(s, Mapping)}
    return dataclasses.replace(record, resources=[r for r in record.resources if fj.reference(r) in cited])


def hypotheses_for(
    criteria: Criteria, item: str, statuses: Mapping[str, str], record: PatientRecord, when: str
) -> list[_Hypothesis] | None:
    """Every way of recording the missing ``item`` (a finding id, the pain score, an unread input), or
    ``None`` when the criteria give none."""
    subject = record.patient_reference
    terms = exam_terms(criteria)
    deps = criteria.data.get("data_dependencies") or {}
    specs = {str(spec["id"]): spec for spec in criteria.findings}
    if item in specs:
        return _finding(criteria, terms, specs, item, statuses, deps, subject, when)
    if item == criteria.setting("pain_missing"):
        return _pain(criteria, terms, frozenset((deps.get("pain") or {}).get("types") or ()), subject, when)
    for entry in _unread_inputs(deps):
        if (entry.get("missing") or {}).get("id") == item:
            return [_Hypothesis("readable, nothing recorded", (), frozenset(entry.get("types") or ()))]
    return None


def _unread_inputs(deps: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    if isinstance(deps.get("red_flags"), Mapping):
        yield deps["red_flags"]
    for entry in (deps.get("ladder") or {}).values():
        if isinstance(entry, Mapping):
            yield entry


def _finding(
    criteria: Criteria,
    terms: ExamTerms,
    specs: Mapping[str, Mapping[str, Any]],
    finding: str,
    statuses: Mapping[str, str],
    deps: Mapping[str, Any],
    subject: str,
    when: str,
) -> list[_Hypothesis] | None:
    spec = specs[finding]
    readable = _types(deps, finding)
    if spec.get("rule") == "site_of":
        base = str(spec["finding"])
        question = terms.question(base)
        if question is None or question.coding is None or not terms.sites:
            return None
        if statuses.get(base) != PRESENT:
            return []  # a site without the finding it belongs to decides nothing
        return [
            _Hypothesis(
                f"{words}",
                (
                    exam_observation(
                        terms,
                        question.coding,
                        terms.value(PRESENT),
                        subject=subject,
                        when=when,
                        body_site=site,
                    ),
                ),
                readable | _types(deps, base),
            )
            for words, site in (
                ("at a typical site", {"coding": [dict(terms.sites[0])]}),
                ("elsewhere", {"text": ANOTHER_SITE}),
            )
        ]
    if spec.get("rule") == "diagnosis":
        coding = preferred_coding(criteria, spec["conditions"]["valueset"])
        if coding is None:
            return None
        return [_Hypothesis(PRESENT, (_condition(criteria, coding, subject, when),), readable)]
    question = terms.question(finding)
    if question is None:
        return None
    if question.kind == "relief":
        assert question.coding is not None and question.threshold is not None
        return [
            _Hypothesis(
                f"relief {percent} %",
                (
                    exam_observation(
                        terms, question.coding, relief_value(percent), subject=subject, when=when
                    ),
                ),
                readable,
            )
            for percent in (100, 0)
        ]
    if question.kind == "signs":
        first = question.signs[0]
        present = exam_observation(terms, first.coding, terms.value(PRESENT), subject=subject, when=when)
        absent = tuple(
            exam_observation(terms, sign.coding, terms.value(ABSENT), subject=subject, when=when)
            for sign in question.signs
        )
        return [
            _Hypothesis(f"{first.title} found", (present,), readable),
            _Hypothesis("none found", absent, readable),
        ]
    assert question.coding is not None
    site = {"coding": [dict(terms.sites[0])]} if question.site_finding and terms.sites else None
    return [
        _Hypothesis(
            outcome,
            (
                exam_observation(
                    terms,
                    question.coding,
                    terms.value(outcome),
                    subject=subject,
                    when=when,
                    body_site=site if outcome == PRESENT else None,
                ),
            ),
            readable,
        )
        for outcome in (PRESENT, ABSENT)
    ]


def _types(deps: Mapping[str, Any], finding: str) -> frozenset[str]:
    """The resource types ``finding`` is read from (those of the finding it is read via, if any)."""
    entry = (deps.get("findings") or {}).get(finding) or {}
    types = set(entry.get("types") or ())
    if entry.get("via"):
        types |= _types(deps, str(entry["via"]))
    return frozenset(types)


def _pain(
    criteria: Criteria, terms: ExamTerms, readable: frozenset[str], subject: str, when: str
) -> list[_Hypothesis] | None:
    spec = criteria.data["pain"]
    coding = preferred_coding(criteria, spec["valueset"])
    if coding is None:
        return None
    limits = {int(spec["min"]), int(spec["max"])}
    thresholds = {int(v) for v in (criteria.data.get("thresholds") or {}).values()}
    scores = sorted(s for s in limits | thresholds if spec["min"] <= s <= spec["max"])
    return [
        _Hypothesis(
            f"pain {score}/10",
            (exam_observation(terms, coding, {"valueInteger": score}, subject=subject, when=when),),
            readable,
        )
        for score in scores
    ]


def _condition(criteria: Criteria, coding: Mapping[str, str], subject: str, when: str) -> dict[str, Any]:
    reading = criteria.data["reading"]
    return {
        "resourceType": "Condition",
        "clinicalStatus": {
            "coding": [{"system": CONDITION_CLINICAL, "code": reading["condition_clinical_active"][0]}]
        },
        "verificationStatus": {
            "coding": [
                {"system": CONDITION_VERIFICATION, "code": reading["condition_verification_supporting"][0]}
            ]
        },
        "code": {"coding": [dict(coding)]},
        "subject": {"reference": subject},
        "onsetDateTime": when,
        "recordedDate": when,
    }
