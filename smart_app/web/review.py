"""The review page: read, assess and draft for the launched patient, laid out to be read in five seconds
(blueprint ``main``; docs/architecture.md#web).

Top to bottom: the headline and the next step; what is urgent (blocking red flags, and a finding the
criteria mark as dangerous, such as an objective neurological deficit, with prompt work-up wording);
warnings; whether drafts of this assessment are already in the chart (loaded after the page, so the
headline never waits); the criteria checklist in plain words, each with its evidence one click away; the
missing data that could change the conclusion (found by re-evaluating, :mod:`smart_app.clinical.whatif`),
each with how to record it; the focused-exam form; the rule trace behind a "why" toggle; the draft and the
write button; differentials, sources and what could not be read. Every EHR string goes through the
template's ``ehr`` filter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from flask import redirect, render_template, url_for
from werkzeug.wrappers import Response as BaseResponse

from smart_app import fhirjson as fj
from smart_app import pipeline
from smart_app.auditlog import audit_event
from smart_app.clinical.engine import criteria_for
from smart_app.clinical.whatif import Change, Decisive, decisive_missing
from smart_app.drafts.written import summary_lines
from smart_app.fhir.errors import FhirError
from smart_app.smart.launch import Launch
from smart_app.vocabulary import ENTERED_CODE, WORKFLOW_SYSTEM, classifications, next_steps
from smart_app.web.common import (
    REVIEW_KEY,
    _digest,
    _pop,
    _pretty,
    _set,
    bp,
    current_terms,
    patient_banner,
    run_review,
    unsaved_exams,
)
from smart_app.web.exam import exam_form, exam_write_problem, pending_exam
from smart_app.web.session import launch_required, require_launch
from smart_app.web.theme import load_style
from smart_app.web.write import status_query, write_state

# --- evidence description ---------------------------------------------------------------------------------
_DATE_KEYS = (
    "effectiveDateTime",
    "effectiveInstant",
    "onsetDateTime",
    "performedDateTime",
    "recordedDate",
    "authoredOn",
    "dateAsserted",
    "issued",
    "birthDate",
)


def _value_text(resource: dict[str, Any]) -> str:
    quantity = fj.as_dict(resource.get("valueQuantity"))
    if quantity is not None:
        return f"{quantity.get('value', '')} {quantity.get('unit') or quantity.get('code') or ''}".strip()
    if "valueCodeableConcept" in resource:
        return fj.concept_label(resource["valueCodeableConcept"])
    for key in ("valueBoolean", "valueInteger", "valueString", "valueDateTime"):
        if key in resource:
            value = resource[key]
            return ("yes" if value else "no") if isinstance(value, bool) else str(value)
    if "dataAbsentReason" in resource:
        return f"not available ({fj.concept_label(resource['dataAbsentReason'])})"
    return ""


def _date_text(resource: dict[str, Any]) -> str:
    for key in _DATE_KEYS:
        if resource.get(key):
            return str(resource[key])
    for key in ("effectivePeriod", "onsetPeriod", "performedPeriod"):
        period = fj.as_dict(resource.get(key))
        if period and (period.get("end") or period.get("start")):
            return str(period.get("end") or period.get("start"))
    return ""


def _status_text(resource: dict[str, Any]) -> str:
    parts = [str(resource["status"])] if resource.get("status") else []
    parts += [fj.concept_label(resource.get(k)) for k in ("clinicalStatus", "verificationStatus")]
    return ", ".join(p for p in parts if p)


def _entered_here(resource: Mapping[str, Any]) -> bool:
    """Whether the resource carries the tag of what a clinician entered through this app."""
    tags = (resource.get("meta") or {}).get("tag") if isinstance(resource.get("meta"), dict) else None
    return any(
        isinstance(t, dict) and t.get("system") == WORKFLOW_SYSTEM and t.get("code") == ENTERED_CODE
        for t in tags or []
    )


def describe(reference: str, resource: dict[str, Any] | None, preliminary: bool = False) -> dict[str, Any]:
    """A one-line view of one evidence resource: type, what, date, value, status and its raw JSON."""
    rtype = reference.split("/", 1)[0]
    if resource is None:
        return {
            "reference": reference,
            "type": rtype,
            "what": "",
            "date": "",
            "value": "",
            "status": "",
            "json": None,
            "preliminary": preliminary,
        }
    what = fj.concept_label(resource.get("code")) or fj.concept_label(fj.medication_concept(resource))
    return {
        "reference": reference,
        "type": rtype,
        "what": what,
        "site": ", ".join(s for s in (fj.concept_label(site) for site in fj.body_sites(resource)) if s),
        "date": _date_text(resource),
        "value": _value_text(resource),
        "status": _status_text(resource),
        "json": _pretty(resource),
        "preliminary": preliminary,
        "entered_here": _entered_here(resource),
        "unsaved": str(resource.get("id", "")).startswith("unsaved-exam-"),
    }


def _references(assessment: dict[str, Any]) -> set[str]:
    refs: set[str] = set()
    for finding in (assessment.get("findings") or {}).values():
        refs.update(finding.get("evidence") or [])
    for item in [*(assessment.get("red_flags") or []), *(assessment.get("differentials") or [])]:
        refs.update(item.get("evidence") or [])
    for item in assessment.get("ignored") or []:
        if item.get("reference"):
            refs.add(item["reference"])
    pain = assessment.get("latest_pain") or {}
    if pain.get("reference"):
        refs.add(pain["reference"])
    return refs


def evidence_index(assessment: dict[str, Any] | None, resources: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Describe every resource the assessment cites, in one pass over the fetched resources."""
    if not assessment:
        return {}
    wanted = _references(assessment)
    preliminary = set(assessment.get("preliminary_evidence") or [])
    found: dict[str, dict[str, Any]] = {}
    for resource in resources:
        ref = fj.reference(resource)
        if ref in wanted:
            found[ref] = resource
    return {ref: describe(ref, found.get(ref), ref in preliminary) for ref in sorted(wanted)}


def draft_summary(bundle: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Readable lines for each resource in the draft transaction Bundle."""
    items: list[dict[str, Any]] = []
    for entry in fj.as_list((bundle or {}).get("entry")):
        res = entry.get("resource") or {}
        items.append({"type": res.get("resourceType", ""), "lines": summary_lines(res)})
    return items


# --- the page, in plain words -----------------------------------------------------------------------------
def finding_sentence(spec: Mapping[str, Any], status: str) -> str:
    """What the record says of one finding, as a statement (never a negated criterion): "Palpable
    subcutaneous nodule: recorded", "No objective neurological deficit found", "Low back pain: not
    recorded"."""
    title = str(spec.get("title") or spec.get("id"))
    lower = title[:1].lower() + title[1:]
    if status == "present":
        return f"{title}: recorded"
    if status == "absent":
        text = str(spec.get("absent_text") or f"no {lower} found")
        return text[:1].upper() + text[1:]
    return f"{title}: not recorded"


def checklist_rows(
    assessment: Mapping[str, Any], specs: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The checklist: per criterion met / not met / unknown, the record's statement, the engine's reason
    and the evidence."""
    rows = []
    for row in assessment.get("checklist") or []:
        spec = specs.get(str(row.get("finding")), {"title": row.get("title")})
        rows.append(
            {
                "finding": row.get("finding"),
                "verdict": row.get("verdict"),
                "sentence": finding_sentence(spec, str(row.get("status"))),
                "reason": row.get("reason") or "",
                "evidence": list(row.get("evidence") or []),
            }
        )
    return rows


def dangers(assessment: Mapping[str, Any], specs: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Findings the criteria read safety first (``danger``) that the record shows present: an objective
    neurological deficit is not a back-mouse red flag, but it needs a prompt work-up of its cause."""
    out = []
    for finding_id, finding in (assessment.get("findings") or {}).items():
        spec = specs.get(str(finding_id)) or {}
        if spec.get("danger") and finding.get("status") == "present":
            out.append(
                {
                    "title": str(spec.get("title") or finding_id),
                    "reason": finding.get("reason") or "",
                    "evidence": list(finding.get("evidence") or []),
                }
            )
    return out


def next_step_text(assessment: Mapping[str, Any], urgent: list[dict[str, Any]]) -> str:
    """The next step in words; with a dangerous finding and no red flag, a prompt work-up of its cause."""
    step = str(assessment.get("next_step"))
    label = next_steps().displays.get(step, step)
    blocked = any(f.get("level") == "block" for f in assessment.get("red_flags") or [])
    if urgent and not blocked:
        title = urgent[0]["title"]
        return f"Prompt work-up for the cause of the {title[:1].lower() + title[1:]}"
    return label


def because(assessment: Mapping[str, Any]) -> str:
    """The criteria's own sentence for the classification reached (the rule trace is behind "why")."""
    criteria = criteria_for(str((assessment.get("criteria") or {}).get("version")))
    rule = next(
        (r for r in criteria.data["classification"] if r["id"] == assessment.get("classification")), None
    )
    return str(rule["rationale"]) if rule else ""


def change_words(change: Change | None) -> str:
    """What recording a missing item could change, in words."""
    if change is None:
        return "Recording it may change the conclusion."
    recorded = {
        "present": "if it is found",
        "absent": "if it is not found",
        "at a typical site": "if the nodule is at a typical site",
        "elsewhere": "if the nodule is elsewhere",
        "none found": "if none is found",
        "readable, nothing recorded": "if it can be read and shows nothing of concern",
    }.get(change.recorded, f"if {change.recorded}")
    classification = classifications().displays.get(change.classification, change.classification)
    step = next_steps().displays.get(change.next_step, change.next_step)
    return f"It could change the conclusion: {recorded}, {classification.lower()} ({step.lower()})."


def missing_rows(decisive: list[Decisive], exam_findings: set[str]) -> list[dict[str, Any]]:
    return [
        {
            "finding": str(d.item.get("finding")),
            "what": str(d.item.get("what") or ""),
            "how": str(d.item.get("how") or ""),
            "change": change_words(d.change),
            "in_exam": str(d.item.get("finding")) in exam_findings,
        }
        for d in decisive
    ]


def in_record(assessment: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per finding, what the record already says (for beside the exam form)."""
    out = {}
    for row in assessment.get("checklist") or []:
        out[str(row.get("finding"))] = {
            "status": row.get("status"),
            "evidence": list(row.get("evidence") or []),
        }
    return out


def show_exam(assessment: Mapping[str, Any] | None, launch: Launch, missing: list[dict[str, Any]]) -> bool:
    """The exam form is offered when an exam can change something: the next step is a focused exam, or
    a finding it records is among the missing data that could change the conclusion."""
    if launch.read_only or not assessment or assessment.get("classification") == "red-flags":
        return False
    return assessment.get("next_step") == "focused-exam" or any(item["in_exam"] for item in missing)


def _read_problems(review: pipeline.Review) -> dict[str, list[Any]]:
    return {
        "failures": [
            {"type": f.resource_type, "message": f.message, "status": f.status, "cut_short": f.cut_short}
            for f in review.fetch.failures
        ],
        "skipped": [{"type": t, "reason": r} for t, r in review.fetch.skipped],
        "notes": [str(n) for n in getattr(review.fetch, "notes", [])],
    }


def render_review(
    launch: Launch,
    review: pipeline.Review | None,
    resources: list[dict[str, Any]],
    problems: dict[str, list[Any]],
    status: int = 200,
) -> tuple[str, int]:
    assessment = (review.assessment if review is not None else None) or {}
    unsaved = bool(unsaved_exams())
    specs: dict[str, Mapping[str, Any]] = {}
    decisive: list[Decisive] = []
    if assessment and review is not None and review.fetch.patient is not None:
        criteria = criteria_for(str(assessment["criteria"]["version"]))
        specs = {str(spec["id"]): spec for spec in criteria.findings}
        extra = resources[len(review.fetch.resources) :]  # the exams kept in this session
        record = pipeline.record_of(review.fetch, extra, fhir_base=launch.fhir_base)
        decisive = decisive_missing(record, assessment)
    urgent = dangers(assessment, specs)
    terms = current_terms()
    missing = missing_rows(decisive, {q.finding for q in terms.questions})
    pending = pending_exam()
    drafts = review.drafts if review is not None else None
    classification = assessment.get("classification")
    flags = assessment.get("red_flags") or []
    page = render_template(
        "review.html",
        launch=launch,
        banner=patient_banner(review.fetch.patient if review else None)
        if launch.need_patient_banner
        else None,
        patient_ref=f"Patient/{launch.patient}",
        assessment=assessment or None,
        classification_label=classifications().displays.get(str(classification), ""),
        next_step_label=next_step_text(assessment, urgent) if assessment else "",
        because=because(assessment) if assessment else "",
        block_flags=[f for f in flags if f.get("level") == "block"],
        warn_flags=[f for f in flags if f.get("level") != "block"],
        urgent=urgent,
        checklist=checklist_rows(assessment, specs),
        missing=missing,
        evidence=evidence_index(
            assessment, [*([review.fetch.patient] if review and review.fetch.patient else []), *resources]
        ),
        draft_items=draft_summary(drafts),
        draft_json=_pretty(drafts) if drafts else "",
        draft_digest=_digest(drafts) if drafts else None,
        status_query=status_query(drafts) if drafts and not launch.read_only else None,
        write=write_state(launch, review, unsaved),
        problems=problems,
        show_exam=show_exam(assessment, launch, missing),
        exam=exam_form(terms, pending[0] if pending else None),
        exam_problem=exam_write_problem(launch),
        in_record=in_record(assessment),
    )
    return page, status


@bp.get("/")
def index() -> BaseResponse:
    return redirect(url_for("main.review"))


@bp.get("/review")
@launch_required
def review() -> tuple[str, int]:
    """Read, assess and draft for the launched patient."""
    launch = require_launch()
    load_style(launch)
    try:
        result, resources = run_review(launch)
    except FhirError as exc:
        audit_event("error", where="review", status=exc.status, error=type(exc).__name__)
        problems: dict[str, list[Any]] = {
            "failures": [{"type": "FHIR server", "message": exc.message, "status": exc.status}],
            "skipped": [],
            "notes": [],
        }
        _pop(REVIEW_KEY)
        return render_review(launch, None, [], problems, status=502)
    audit_event("read", counts=result.fetch.counts, patient=result.patient_id)
    if result.drafts:
        _set(
            REVIEW_KEY,
            {"patient": launch.patient, "as_of": result.as_of.isoformat(), "digest": _digest(result.drafts)},
        )
    else:
        _pop(REVIEW_KEY)
    return render_review(launch, result, resources, _read_problems(result))
