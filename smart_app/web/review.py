"""The review page (DESIGN.md steps 10-11): read, assess and draft for the launched patient, with the
evidence behind each finding, the patient banner and the criteria rows (blueprint ``main``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flask import redirect, render_template, url_for
from werkzeug.wrappers import Response as BaseResponse

from smart_app import pipeline
from smart_app.auditlog import audit_event
from smart_app.fhir.client import FhirClient
from smart_app.fhir.errors import FhirError
from smart_app.smart.scopes import ScopeSet
from smart_app.web.common import REVIEW_KEY, _client, _digest, _pop, _pretty, _ref, _scopes, _set, _smart, bp
from smart_app.web.exam import EXAM_SIDES, EXAM_SITES, _unsaved_exam
from smart_app.web.session import launch_required
from smart_app.web.theme import load_style
from smart_app.web.write import AssessmentAs, _write_state, _writeback_options

FINDING_ORDER = ("LBP", "NODULE", "TYPICAL_SITE", "PAIN_REPRODUCED", "NEURO_DEFICIT", "INJECTION_RELIEF")

#: Criteria whose finding must be *absent* for the criterion to be met (CLINICAL.md "Classification" 2).
NEGATIVE_CRITERIA = frozenset({"NEURO_DEFICIT"})

CLASSIFICATION_LABELS = {
    "red-flags": "Red flags present",
    "not-consistent": "Not consistent with back mice",
    "unlikely": "Back mice unlikely",
    "confirmed": "Confirmed by diagnostic injection",
    "probable": "Probable back mouse",
    "possible": "Possible back mouse",
    "insufficient-data": "Not enough data yet",
}

NEXT_STEP_LABELS = {
    "urgent-work-up": "Urgent work-up for the red flag; no procedure is suggested",
    "work-up": "Work up other causes of the back pain",
    "none": "No back-mice specific step",
    "focused-exam": "Do the focused exam and record it below",
    "diagnostic-injection": "Suggest a diagnostic local anaesthetic injection into the nodule",
    "therapeutic-injection": "Suggest a therapeutic injection (anaesthetic + corticosteroid) into the nodule",
    "surgical-referral": "Suggest referral for surgical excision",
    "conservative-care": "Conservative care: NSAIDs and heat; no procedure suggested",
}


# --- evidence description ---------------------------------------------------------------------------------
def _concept_text(concept: Any) -> str:
    if not isinstance(concept, dict):
        return ""
    if concept.get("text"):
        return str(concept["text"])
    for coding in concept.get("coding") or []:
        if isinstance(coding, dict) and (coding.get("display") or coding.get("code")):
            return str(coding.get("display") or coding.get("code"))
    return ""


def _value_text(resource: dict[str, Any]) -> str:
    if "valueQuantity" in resource and isinstance(resource["valueQuantity"], dict):
        q = resource["valueQuantity"]
        return f"{q.get('value', '')} {q.get('unit') or q.get('code') or ''}".strip()
    if "valueCodeableConcept" in resource:
        return _concept_text(resource["valueCodeableConcept"])
    for key in ("valueBoolean", "valueInteger", "valueString", "valueDateTime"):
        if key in resource:
            value = resource[key]
            if isinstance(value, bool):
                return "yes" if value else "no"
            return str(value)
    if "dataAbsentReason" in resource:
        return f"not available ({_concept_text(resource['dataAbsentReason'])})"
    return ""


def _date_text(resource: dict[str, Any]) -> str:
    for key in (
        "effectiveDateTime",
        "effectiveInstant",
        "onsetDateTime",
        "performedDateTime",
        "recordedDate",
        "authoredOn",
        "dateAsserted",
        "issued",
        "birthDate",
    ):
        if resource.get(key):
            return str(resource[key])
    for key in ("effectivePeriod", "onsetPeriod", "performedPeriod"):
        period = resource.get(key)
        if isinstance(period, dict) and (period.get("end") or period.get("start")):
            return str(period.get("end") or period.get("start"))
    return ""


def _status_text(resource: dict[str, Any]) -> str:
    parts = []
    if resource.get("status"):
        parts.append(str(resource["status"]))
    for key in ("clinicalStatus", "verificationStatus"):
        text = _concept_text(resource.get(key))
        if text:
            parts.append(text)
    return ", ".join(parts)


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
    what = _concept_text(resource.get("code")) or _concept_text(resource.get("medicationCodeableConcept"))
    raw_site = resource.get("bodySite")
    sites = raw_site if isinstance(raw_site, list) else [raw_site]
    site = [_concept_text(s) for s in sites if isinstance(s, dict)]
    return {
        "reference": reference,
        "type": rtype,
        "what": what,
        "site": ", ".join(s for s in site if s),
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
        ref = _ref(resource)
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
        "reference": _ref(patient),
    }


def draft_summary(bundle: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Readable lines for each resource in the draft transaction Bundle."""
    items: list[dict[str, Any]] = []
    for entry in (bundle or {}).get("entry") or []:
        res = entry.get("resource") or {}
        rtype = res.get("resourceType", "")
        lines: list[str] = []
        if rtype == "ClinicalImpression":
            lines += [str(res.get("summary") or res.get("description") or "")]
            lines += [str(n.get("text")) for n in res.get("note") or [] if n.get("text")]
        elif rtype == "ServiceRequest":
            lines.append(_concept_text(res.get("code")))
            lines += [f"Body site: {_concept_text(s)}" for s in res.get("bodySite") or []]
            lines.append(f"Status {res.get('status')}, intent {res.get('intent')}")
            lines += [str(n.get("text")) for n in res.get("note") or [] if n.get("text")]
        elif rtype == "DetectedIssue":
            detail = res.get("detail") or _concept_text(res.get("code"))
            lines.append(f"Severity {res.get('severity')}: {detail}")
        elif rtype == "Provenance":
            targets = [str(t.get("reference")) for t in res.get("target") or []]
            entities = res.get("entity") or []
            lines.append(f"Who and what produced {len(targets)} draft(s), citing {len(entities)} source(s)")
        elif rtype == "DocumentReference":
            lines.append(str(res.get("description") or "Assessment note"))
        elif rtype == "Device":
            lines.append("The app itself, created once if the EHR does not know it yet")
        items.append({"type": rtype, "lines": [line for line in lines if line], "json": _pretty(res)})
    return items


# --- review -----------------------------------------------------------------------------------------------
def _run_review(smart: dict[str, Any]) -> tuple[pipeline.Review, list[dict[str, Any]]]:
    """``pipeline.review_patient``, or the same steps with the unsaved exam added to the record."""
    scopes = _scopes(smart)
    _, assessment_as = _writeback_options(smart)
    with _client(smart) as client:
        return _review_with(client, smart, scopes, assessment_as)


def _review_with(
    client: FhirClient, smart: dict[str, Any], scopes: ScopeSet, assessment_as: AssessmentAs
) -> tuple[pipeline.Review, list[dict[str, Any]]]:
    extra = _unsaved_exam()
    review = pipeline.review_patient(
        client,
        str(smart["patient"]),
        scopes,
        author=smart.get("fhir_user"),
        encounter=smart.get("encounter"),
        assessment_as=assessment_as,
        extra_resources=extra,
    )
    return review, [*review.fetch.resources, *extra] if review.fetch.patient is not None else []


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
            {"type": f.resource_type, "message": f.message, "status": f.status} for f in review.fetch.failures
        ],
        "skipped": [{"type": t, "reason": r} for t, r in review.fetch.skipped],
        "notes": [str(n) for n in getattr(review.fetch, "notes", [])],
    }


def _criteria_rows(assessment: dict[str, Any]) -> list[dict[str, Any]]:
    findings = assessment.get("findings") or {}
    order = [f for f in FINDING_ORDER if f in findings] + sorted(set(findings) - set(FINDING_ORDER))
    rows = []
    for fid in order:
        f = findings[fid]
        status = f.get("status", "unknown")
        if status == "unknown":
            met = "unknown"
        elif fid in NEGATIVE_CRITERIA:
            met = "met" if status == "absent" else "not-met"
        else:
            met = "met" if status == "present" else "not-met"
        rows.append(
            {
                "id": fid,
                "title": f.get("title") or fid,
                "status": status,
                "met": met,
                "reason": f.get("reason") or "",
                "evidence": f.get("evidence") or [],
            }
        )
    return rows


def render_review(
    smart: dict[str, Any],
    cached: dict[str, Any],
    evidence: dict[str, Any],
    problems: dict[str, list[Any]],
    status: int = 200,
) -> tuple[str, int]:
    assessment = cached.get("assessment")
    page = render_template(
        "review.html",
        smart=smart,
        banner=patient_banner(cached.get("patient")) if smart.get("need_patient_banner") else None,
        patient_ref=f"Patient/{cached.get('patient_id')}",
        assessment=assessment,
        classification_label=CLASSIFICATION_LABELS.get((assessment or {}).get("classification", ""), ""),
        next_step_label=NEXT_STEP_LABELS.get((assessment or {}).get("next_step", ""), ""),
        block_flags=[f for f in (assessment or {}).get("red_flags") or [] if f.get("level") == "block"],
        warn_flags=[f for f in (assessment or {}).get("red_flags") or [] if f.get("level") != "block"],
        criteria=_criteria_rows(assessment) if assessment else [],
        evidence=evidence,
        draft_items=draft_summary(cached.get("drafts")),
        draft_json=_pretty(cached.get("drafts")) if cached.get("drafts") else "",
        draft_digest=cached.get("draft_digest"),
        write=_write_state(smart, cached),
        problems=problems,
        exam_sites=EXAM_SITES,
        exam_sides=EXAM_SIDES,
        show_exam=_show_exam(assessment),
    )
    return page, status


def _show_exam(assessment: dict[str, Any] | None) -> bool:
    if not assessment or assessment.get("classification") == "red-flags":
        return False
    findings = assessment.get("findings") or {}
    return (
        any((findings.get(f) or {}).get("status") == "unknown" for f in FINDING_ORDER)
        or assessment.get("next_step") == "focused-exam"
    )


@bp.get("/")
def index() -> BaseResponse:
    return redirect(url_for("main.review"))


@bp.get("/review")
@launch_required
def review() -> tuple[str, int]:
    """Read, assess and draft for the launched patient; the page of issue 5 item 1."""
    smart = _smart()
    load_style(smart)
    try:
        result, resources = _run_review(smart)
    except FhirError as exc:
        audit_event("error", where="review", status=exc.status, error=type(exc).__name__)
        problems: dict[str, list[Any]] = {
            "failures": [{"type": "FHIR server", "message": exc.message, "status": exc.status}],
            "skipped": [],
            "notes": [],
        }
        cached: dict[str, Any] = {
            "patient_id": smart.get("patient"),
            "patient": None,
            "assessment": None,
            "drafts": None,
            "missing_write_scopes": [],
            "unsaved_exam": False,
        }
        _pop(REVIEW_KEY)
        return render_review(smart, cached, {}, problems, status=502)
    audit_event("read", counts=result.fetch.counts, patient=result.patient_id)
    cached = _cache_review(result, unsaved_exam=bool(_unsaved_exam()))
    evidence = evidence_index(
        result.assessment, [*([result.fetch.patient] if result.fetch.patient else []), *resources]
    )
    return render_review(smart, cached, evidence, _read_problems(result))
