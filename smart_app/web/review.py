"""The review page: read, assess and draft for the launched patient, with the evidence behind each
criterion, the patient banner and the checklist (blueprint ``main``; docs/architecture.md#web)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flask import current_app, redirect, render_template, url_for
from werkzeug.wrappers import Response as BaseResponse

from smart_app import fhirjson as fj
from smart_app import pipeline
from smart_app.auditlog import audit_event
from smart_app.drafts.written import summary_lines
from smart_app.fhir.budget import ReadBudget
from smart_app.fhir.errors import FhirError
from smart_app.fhir.record import DEFAULT_PAGE_SIZE
from smart_app.smart.launch import Launch
from smart_app.vocabulary import classifications, next_steps
from smart_app.web.common import REVIEW_KEY, _digest, _pop, _pretty, _set, bp
from smart_app.web.exam import EXAM_SIDES, EXAM_SITES, _unsaved_exam
from smart_app.web.session import get_fhir, launch_required, require_launch
from smart_app.web.theme import load_style
from smart_app.web.write import _write_state, _writeback_options

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


def describe(reference: str, resource: dict[str, Any] | None) -> dict[str, Any]:
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
    found: dict[str, dict[str, Any]] = {}
    for resource in resources:
        ref = fj.reference(resource)
        if ref in wanted:
            found[ref] = resource
    return {ref: describe(ref, found.get(ref)) for ref in sorted(wanted)}


# --- patient banner and draft summary -----------------------------------------------------------------
def patient_banner(patient: dict[str, Any] | None) -> dict[str, str] | None:
    if not patient:
        return None
    names = [n for n in patient.get("name") or [] if isinstance(n, dict)]
    official = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    text = (
        official.get("text")
        or " ".join(
            [*(str(g) for g in official.get("given") or []), str(official.get("family") or "")]
        ).strip()
    )
    mrn = ""
    for ident in patient.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("value"):
            mrn = str(ident["value"])
            break
    return {
        "name": text or "(no name recorded)",
        "birth_date": str(patient.get("birthDate") or "unknown"),
        "gender": str(patient.get("gender") or "unknown"),
        "identifier": mrn,
        "reference": fj.reference(patient) or "Patient",
    }


def draft_summary(bundle: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Readable lines for each resource in the draft transaction Bundle."""
    items: list[dict[str, Any]] = []
    for entry in fj.as_list((bundle or {}).get("entry")):
        res = entry.get("resource") or {}
        items.append({"type": res.get("resourceType", ""), "lines": summary_lines(res), "json": _pretty(res)})
    return items


# --- review -----------------------------------------------------------------------------------------------
def _run_review(launch: Launch) -> tuple[pipeline.Review, list[dict[str, Any]]]:
    """``pipeline.review_patient`` for the launch, with the exam kept in this session added."""
    _, assessment_as = _writeback_options(launch)
    extra = _unsaved_exam()
    review = pipeline.review_patient(
        get_fhir(),
        launch.patient,
        launch.scopes,
        author=launch.fhir_user,
        encounter=launch.encounter,
        assessment_as=assessment_as,
        extra_resources=extra,
        page_size=int(current_app.config.get("FHIR_PAGE_SIZE", DEFAULT_PAGE_SIZE)),
        budget=read_budget(),
    )
    return review, [*review.fetch.resources, *extra] if review.fetch.patient is not None else []


def read_budget() -> ReadBudget:
    """The read budget of one review from the settings ``FHIR_READ_BUDGET_SECONDS`` and
    ``FHIR_MAX_RESPONSE_BYTES``."""
    config, default = current_app.config, ReadBudget()
    return ReadBudget(
        seconds=float(config.get("FHIR_READ_BUDGET_SECONDS", default.seconds)),
        max_response_bytes=int(config.get("FHIR_MAX_RESPONSE_BYTES", default.max_response_bytes)),
    )


def _cache_review(review: pipeline.Review, unsaved_exam: bool) -> dict[str, Any]:
    cached = {
        "patient_id": review.patient_id,
        "patient": review.fetch.patient,
        "assessment": review.assessment,
        "drafts": review.drafts,
        "draft_digest": _digest(review.drafts) if review.drafts else None,
        "missing_write_scopes": list(review.missing_write_scopes),
        "as_of": review.as_of.isoformat(),
        "unsaved_exam": unsaved_exam,
    }
    _set(REVIEW_KEY, cached)
    return cached


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
    cached: dict[str, Any],
    evidence: dict[str, Any],
    problems: dict[str, list[Any]],
    status: int = 200,
) -> tuple[str, int]:
    assessment = cached.get("assessment") or {}
    classification, step = assessment.get("classification"), assessment.get("next_step")
    page = render_template(
        "review.html",
        launch=launch,
        banner=patient_banner(cached.get("patient")) if launch.need_patient_banner else None,
        patient_ref=f"Patient/{cached.get('patient_id')}",
        assessment=assessment or None,
        classification_label=classifications().displays.get(str(classification), ""),
        next_step_label=next_steps().displays.get(str(step), ""),
        block_flags=[f for f in assessment.get("red_flags") or [] if f.get("level") == "block"],
        warn_flags=[f for f in assessment.get("red_flags") or [] if f.get("level") != "block"],
        criteria=assessment.get("checklist") or [],
        evidence=evidence,
        draft_items=draft_summary(cached.get("drafts")),
        draft_json=_pretty(cached.get("drafts")) if cached.get("drafts") else "",
        draft_digest=cached.get("draft_digest"),
        write=_write_state(launch, cached),
        problems=problems,
        exam_sites=EXAM_SITES,
        exam_sides=EXAM_SIDES,
        show_exam=_show_exam(assessment) and not launch.read_only,
    )
    return page, status


def _show_exam(assessment: dict[str, Any] | None) -> bool:
    if not assessment or assessment.get("classification") == "red-flags":
        return False
    return (
        any(row.get("verdict") == "unknown" for row in assessment.get("checklist") or [])
        or assessment.get("next_step") == "focused-exam"
    )


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
        result, resources = _run_review(launch)
    except FhirError as exc:
        audit_event("error", where="review", status=exc.status, error=type(exc).__name__)
        problems: dict[str, list[Any]] = {
            "failures": [{"type": "FHIR server", "message": exc.message, "status": exc.status}],
            "skipped": [],
            "notes": [],
        }
        cached: dict[str, Any] = {
            "patient_id": launch.patient,
            "patient": None,
            "assessment": None,
            "drafts": None,
            "missing_write_scopes": [],
            "unsaved_exam": False,
        }
        _pop(REVIEW_KEY)
        return render_review(launch, cached, {}, problems, status=502)
    audit_event("read", counts=result.fetch.counts, patient=result.patient_id)
    cached = _cache_review(result, unsaved_exam=bool(_unsaved_exam()))
    evidence = evidence_index(
        result.assessment, [*([result.fetch.patient] if result.fetch.patient else []), *resources]
    )
    return render_review(launch, cached, evidence, _read_problems(result))
