"""Review page, focused-exam capture and write-back (blueprint ``main``).

DESIGN.md "One launch, end to end" steps 10-13: render the Assessment JSON (CONTRACT.md) inside the EHR
iframe, let the clinician record the focused exam (CLINICAL.md "Findings"), and write the drafts
(issue 4) with ``smart_app.writeback.write_drafts``. Every EHR-supplied string reaches the page through
Jinja autoescaping only.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import requests
from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response as BaseResponse

from smart_app import pipeline
from smart_app.auditlog import audit_event
from smart_app.fhir.client import FhirClient
from smart_app.fhir.errors import FhirError
from smart_app.smart.scopes import ScopeSet
from smart_app.web.session import access_token_provider, launch_required
from smart_app.writeback import InvalidDraft, WriteOutcome, write_drafts

bp = Blueprint(
    "main", __name__, template_folder="templates", static_folder="static", static_url_path="/assets"
)

#: Session key of this blueprint's per-launch state (server-side session); reset by a new launch.
STATE_KEY = "main"
#: The JSON-able parts of the last review.
REVIEW_KEY = "review"
#: Exam Observations recorded without the Observation write scope.
UNSAVED_EXAM_KEY = "unsaved_exam"
#: The sanitised smart_style_url values.
STYLE_KEY = "smart_style"

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

# --- focused exam (CLINICAL.md "Canonical URLs" and "Findings"; clinical-evidence.md §3.2) -------------
SNOMED = "http://snomed.info/sct"
FINDING_SYSTEM = "https://smart-app.example/fhir/CodeSystem/back-mice-finding"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
UCUM = "http://unitsofmeasure.org"
PRESENT = {"system": SNOMED, "code": "52101004", "display": "Present"}
ABSENT = {"system": SNOMED, "code": "2667000", "display": "Absent"}

#: Exam form choices: key -> (label, body-site text, optional coding per side).
EXAM_SITES: dict[str, tuple[str, str]] = {
    "posterior-iliac-crest": ("Posterior iliac crest / PSIS", "posterior iliac crest"),
    "sacroiliac": ("Sacroiliac region", "sacroiliac region"),
    "lumbar": ("Lumbar region of back", "lumbar region of back"),
    "sacral": ("Sacral region", "sacral region"),
    "other": ("Elsewhere (not a typical site)", "other site"),
}
EXAM_SIDES = {"left": "Left", "right": "Right", "midline": "Midline / both sides"}
#: Verified body-site codes (clinical-evidence.md §3.2, "Body sites"); other sites are sent as text.
SITE_CODES: dict[tuple[str, str], tuple[str, str]] = {
    ("lumbar", "left"): ("1017210004", "Structure of left lumbar region of back"),
    ("lumbar", "right"): ("1017211000", "Structure of right lumbar region of back"),
    ("sacral", "midline"): ("1144746008", "Structure of sacral vertebral column region"),
}
NEURO_CODES = {
    "weakness": ("26544005", "Muscle weakness"),
    "hypoesthesia": ("397974008", "Hypoesthesia"),
}
TRI_STATE = ("yes", "no", "unknown")


# --- small helpers ----------------------------------------------------------------------------------------
def _smart() -> dict[str, Any]:
    smart = session.get("smart")
    if not isinstance(smart, dict):
        abort(401)
    return smart


def _launch_key(smart: dict[str, Any]) -> str:
    """Identifies one launch, so state kept for one patient never leaks into another launch."""
    if smart.get("launch_id"):
        return str(smart["launch_id"])
    parts = [smart.get(k) for k in ("iss", "patient", "encounter", "fhir_user", "registration_id")]
    return _digest(parts)


def _state() -> dict[str, Any]:
    smart = session.get("smart")
    key = _launch_key(smart) if isinstance(smart, dict) else ""
    state = session.get(STATE_KEY)
    if not isinstance(state, dict) or state.get("launch") != key:
        state = {"launch": key}
    return state


def _get(name: str) -> Any:
    return _state().get(name)


def _set(name: str, value: Any) -> None:
    state = dict(_state())
    state[name] = value
    session[STATE_KEY] = state


def _pop(name: str) -> None:
    state = dict(_state())
    state.pop(name, None)
    session[STATE_KEY] = state


def _scopes(smart: dict[str, Any]) -> ScopeSet:
    return ScopeSet.parse(str(smart.get("scope") or ""))


def _registration(smart: dict[str, Any]) -> Any | None:
    """The EHR registration of this launch (``smart_app.smart.registrations``), when the app knows it."""
    from smart_app.web.session import launch_registry

    reg_id = smart.get("registration_id")
    if not reg_id:
        return None
    return launch_registry(current_app).by_id(str(reg_id))


AssessmentAs = Literal["ClinicalImpression", "DocumentReference"]


def _writeback_options(smart: dict[str, Any]) -> tuple[str, AssessmentAs]:
    """(mode, assessment_as) from the registration; transaction + ClinicalImpression by default."""
    reg = _registration(smart)
    options = getattr(reg, "writeback", None)
    mode = str(getattr(options, "mode", "transaction") or "transaction")
    as_doc = getattr(options, "assessment_as", "ClinicalImpression") == "DocumentReference"
    assessment_as: AssessmentAs = "DocumentReference" if as_doc else "ClinicalImpression"
    return mode, assessment_as


def _mode(mode: str) -> Literal["transaction", "sequential"]:
    return "sequential" if mode == "sequential" else "transaction"


def _client(smart: dict[str, Any]) -> FhirClient:
    cfg = current_app.config
    timeout = tuple(cfg.get("FHIR_TIMEOUT", (3.05, 30.0)))
    return FhirClient(
        smart["fhir_base"],
        token=access_token_provider(),
        timeout=(float(timeout[0]), float(timeout[1])),
        max_retries=int(cfg.get("FHIR_MAX_RETRIES", 3)),
    )


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _pretty(resource: Any) -> str:
    return json.dumps(resource, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def _ref(resource: dict[str, Any]) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


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
    for key in ("effectiveDateTime", "effectiveInstant", "onsetDateTime", "performedDateTime",
                "recordedDate", "authoredOn", "dateAsserted", "issued", "birthDate"):
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
        return {"reference": reference, "type": rtype, "what": "", "date": "", "value": "", "status": "",
                "json": None}
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
    text = official.get("text") or " ".join(
        [*(str(g) for g in official.get("given") or []), str(official.get("family") or "")]
    ).strip()
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


# --- smart_style_url (SMART App Launch 2.x "Styling") -------------------------------------------------
_HEX = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
_DIM = re.compile(r"^\d{1,3}(?:\.\d{1,3})?(?:px|em|rem)$")
_FONT = re.compile(r"^[A-Za-z0-9 ,'\"-]{1,120}$")


def _rgb(hex_colour: str) -> tuple[float, float, float]:
    h = hex_colour[1:]
    if len(h) == 3:
        h = "".join(c * 2 for c in h)
    return (int(h[0:2], 16) / 255, int(h[2:4], 16) / 255, int(h[4:6], 16) / 255)


def _luminance(hex_colour: str) -> float:
    def channel(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else float(((c + 0.055) / 1.055) ** 2.4)

    r, g, b = (channel(c) for c in _rgb(hex_colour))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(fg: str, bg: str) -> float:
    """WCAG 2.x contrast ratio of two hex colours."""
    a, b = sorted((_luminance(fg), _luminance(bg)), reverse=True)
    return (a + 0.05) / (b + 0.05)


def sanitise_style(raw: Any) -> dict[str, str]:
    """Keep only well-formed values; drop colour pairs that would fall below WCAG AA (4.5:1)."""
    if not isinstance(raw, dict):
        return {}
    out: dict[str, str] = {}
    for key in ("color_background", "color_text", "color_highlight", "color_error", "color_success"):
        value = raw.get(key)
        if isinstance(value, str) and _HEX.match(value):
            out[key] = value
    for key in ("dim_border_radius", "dim_font_size", "dim_spacing_size"):
        value = raw.get(key)
        if isinstance(value, str) and _DIM.match(value):
            out[key] = value
    for key in ("font_family_body", "font_family_heading"):
        value = raw.get(key)
        if isinstance(value, str) and _FONT.match(value):
            out[key] = value
    bg = out.get("color_background", "#ffffff")
    for key in ("color_text", "color_highlight", "color_error", "color_success"):
        if key in out and contrast(out[key], bg) < 4.5:
            del out[key]
    text = out.get("color_text", "#1a1a1a")
    if "color_background" in out and contrast(text, out["color_background"]) < 4.5:
        del out["color_background"]
    return out


def load_style(smart: dict[str, Any]) -> dict[str, str]:
    """Fetch ``smart_style_url`` once per launch, only from the issuer's own host; sanitised."""
    cached = _get(STYLE_KEY)
    if isinstance(cached, dict):
        return cached
    style: dict[str, str] = {}
    url = smart.get("smart_style_url")
    iss = smart.get("iss") or ""
    if isinstance(url, str) and url:
        parts, iss_parts = urlsplit(url), urlsplit(str(iss))
        if parts.scheme in ("http", "https") and parts.hostname and parts.hostname == iss_parts.hostname:
            try:
                resp = requests.get(url, timeout=(2.0, 3.0), headers={"Accept": "application/json"})
                if resp.ok and len(resp.content) < 65536:
                    style = sanitise_style(resp.json())
            except (requests.RequestException, ValueError):
                style = {}
    _set(STYLE_KEY, style)
    return style


@bp.get("/theme.css")
def theme_css() -> Response:
    """The EHR's styling as CSS custom properties (no inline style: CSP)."""
    style = _get(STYLE_KEY) if isinstance(session.get("smart"), dict) else None
    style = style if isinstance(style, dict) else {}
    mapping = {
        "color_background": "--bg", "color_text": "--fg", "color_highlight": "--accent",
        "color_error": "--danger", "color_success": "--ok", "dim_border_radius": "--radius",
        "dim_font_size": "--font-size", "dim_spacing_size": "--space",
        "font_family_body": "--font-body", "font_family_heading": "--font-heading",
    }
    lines = [f"  {mapping[k]}: {v};" for k, v in sorted(style.items()) if k in mapping]
    css = ":root {\n" + "\n".join(lines) + "\n}\n" if lines else "/* EHR style not provided */\n"
    resp = Response(css, mimetype="text/css")
    resp.headers["Cache-Control"] = "private, no-cache"
    return resp


# --- review -----------------------------------------------------------------------------------------------
def _unsaved_exam() -> list[dict[str, Any]]:
    exam = _get(UNSAVED_EXAM_KEY)
    return [r for r in exam if isinstance(r, dict)] if isinstance(exam, list) else []


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
        rows.append({"id": fid, "title": f.get("title") or fid, "status": status, "met": met,
                     "reason": f.get("reason") or "", "evidence": f.get("evidence") or []})
    return rows


def _write_state(smart: dict[str, Any], cached: dict[str, Any]) -> dict[str, Any]:
    """Whether the write button is offered, and if not, why (issue 4 item 4)."""
    missing = list(cached.get("missing_write_scopes") or [])
    return {
        "has_draft": bool(cached.get("drafts")),
        "missing_scopes": missing,
        "unsaved_exam": bool(cached.get("unsaved_exam")),
        "can_write": bool(cached.get("drafts")) and not missing and not cached.get("unsaved_exam"),
        "can_write_observation": _scopes(smart).can_write("Observation"),
    }


def render_review(smart: dict[str, Any], cached: dict[str, Any], evidence: dict[str, Any],
                  problems: dict[str, list[Any]], status: int = 200) -> tuple[str, int]:
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
    return any((findings.get(f) or {}).get("status") == "unknown" for f in FINDING_ORDER) or \
        assessment.get("next_step") == "focused-exam"


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
            "skipped": [], "notes": []}
        cached: dict[str, Any] = {
            "patient_id": smart.get("patient"), "patient": None, "assessment": None, "drafts": None,
            "missing_write_scopes": [], "unsaved_exam": False}
        _pop(REVIEW_KEY)
        return render_review(smart, cached, {}, problems, status=502)
    audit_event("read", counts=result.fetch.counts, patient=result.patient_id)
    cached = _cache_review(result, unsaved_exam=bool(_unsaved_exam()))
    evidence = evidence_index(result.assessment, [*( [result.fetch.patient] if result.fetch.patient else []),
                                                 *resources])
    return render_review(smart, cached, evidence, _read_problems(result))


# --- write-back -------------------------------------------------------------------------------------------
def _outcome_view(outcome: WriteOutcome) -> dict[str, Any]:
    """A ``WriteOutcome`` as plain data for the result template."""
    return {
        "ok": outcome.ok,
        "mode": outcome.mode,
        "entries": [
            {"type": w.resource_type, "id": w.id or "", "version": w.version or "", "status": w.status,
             "created": w.created, "location": w.location or ""}
            for w in outcome.written
        ],
        "issues": list(outcome.errors),
        "status": outcome.status,
        "failed": outcome.failed,
        "not_written": list(outcome.not_written),
        "notes": list(outcome.notes),
    }


def _resource_link(fhir_base: str, rtype: str, rid: str) -> str:
    return f"{fhir_base.rstrip('/')}/{rtype}/{rid}" if rtype and rid else ""


@bp.post("/writeback")
@launch_required
def writeback() -> tuple[str, int] | BaseResponse:
    """Write the reviewed draft as one transaction (issue 4 item 3); keep it for retry on failure."""
    smart = _smart()
    cached = _get(REVIEW_KEY)
    if not isinstance(cached, dict) or cached.get("patient_id") != smart.get("patient") \
            or not cached.get("drafts"):
        flash("The review had expired, so it was read again. Check it, then write the draft.", "warning")
        return redirect(url_for("main.review"), code=303)
    if request.form.get("draft_digest") != cached.get("draft_digest"):
        flash("The draft changed since the page was shown (new data or a recorded exam). "
              "Check the updated review, then write again.", "warning")
        return redirect(url_for("main.review"), code=303)
    state = _write_state(smart, cached)
    if not state["can_write"]:
        return render_template("writeback_result.html", outcome=None, write=state, smart=smart,
                               fhir_base=smart.get("fhir_base", ""), draft_digest=cached.get("draft_digest"),
                               link=_resource_link), 403
    mode, _ = _writeback_options(smart)
    try:
        with _client(smart) as client:
            written = write_drafts(client, cached["drafts"], _mode(mode))
            outcome = _outcome_view(written)
        audit_event(
            "write",
            ids=[f"{w.resource_type}/{w.id}" for w in written.written if w.id],
            patient=cached.get("patient_id"),
            status=written.status,
            mode=written.mode,
        )
    except InvalidDraft as exc:
        outcome = {"ok": False, "entries": [], "mode": mode, "status": None, "failed": None,
                   "not_written": [],
                   "notes": ["The draft did not pass the app's own profile check, so nothing was sent."],
                   "issues": exc.issues}
    except FhirError as exc:
        audit_event("error", where="writeback", status=exc.status, error=type(exc).__name__)
        outcome = {"ok": False, "entries": [], "issues": exc.issues() or [exc.message], "mode": mode,
                   "status": exc.status, "failed": None, "not_written": [], "notes": []}
    status = 200 if outcome["ok"] else 502
    return render_template("writeback_result.html", outcome=outcome, write=state, smart=smart,
                           fhir_base=smart.get("fhir_base", ""), draft_digest=cached.get("draft_digest"),
                           link=_resource_link), status


@bp.get("/draft.json")
@launch_required
def draft_json() -> Response:
    """The draft transaction Bundle as a download, for EHRs where the write scopes are missing."""
    cached = _get(REVIEW_KEY)
    if not isinstance(cached, dict) or not cached.get("drafts"):
        abort(404)
    body = json.dumps(cached["drafts"], indent=2, sort_keys=True, ensure_ascii=False)
    patient = re.sub(r"[^A-Za-z0-9.-]", "_", str(cached.get("patient_id") or "patient"))[:64]
    resp = Response(body, mimetype="application/fhir+json")
    resp.headers["Content-Disposition"] = f'attachment; filename="back-mice-draft-{patient}.json"'
    resp.headers["Cache-Control"] = "no-store"
    return resp


# --- focused exam (issue 5 item 2) ------------------------------------------------------------------------
class ExamError(ValueError):
    """The exam form was not filled in a usable way; the message says which field."""


def _choice(name: str, allowed: Iterable[str], default: str = "") -> str:
    value = request.form.get(name, default).strip()
    if value and value not in allowed:
        raise ExamError(f"Unexpected value for {name}.")
    return value


def _observation(smart: dict[str, Any], code: dict[str, Any], now: str, **fields: Any) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": "exam", "display": "Exam"}]}],
        "code": {"coding": [code], "text": code.get("display", "")},
        "subject": {"reference": f"Patient/{smart['patient']}"},
        "effectiveDateTime": now,
        "issued": now,
    }
    if smart.get("encounter"):
        obs["encounter"] = {"reference": f"Encounter/{smart['encounter']}"
                            if "/" not in str(smart["encounter"]) else str(smart["encounter"])}
    if smart.get("fhir_user"):
        obs["performer"] = [{"reference": str(smart["fhir_user"])}]
    obs.update(fields)
    return obs


def exam_observations(smart: dict[str, Any], form: dict[str, str], now: str) -> list[dict[str, Any]]:
    """Observations for the recorded focused exam, coded as CLINICAL.md "Findings" reads them."""
    out: list[dict[str, Any]] = []
    site_key, side = form.get("site", ""), form.get("side", "")
    body_site: dict[str, Any] | None = None
    if site_key:
        text = EXAM_SITES[site_key][1]
        if site_key == "other" and form.get("site_other"):
            text = form["site_other"]
        if side and side != "midline":
            text = f"{side} {text}"
        body_site = {"text": text}
        site_code = SITE_CODES.get((site_key, side or "midline"))
        if site_code:
            body_site["coding"] = [{"system": SNOMED, "code": site_code[0], "display": site_code[1]}]
    nodule = form.get("nodule", "")
    if nodule in ("yes", "no"):
        nodule_code = {"system": SNOMED, "code": "95325000", "display": "Subcutaneous nodule"}
        obs = _observation(smart, nodule_code, now,
                           valueCodeableConcept={"coding": [PRESENT if nodule == "yes" else ABSENT]})
        if body_site and nodule == "yes":
            obs["bodySite"] = body_site
        out.append(obs)
        if nodule == "yes":
            for key, label in (("firm", "Nodule firm"), ("mobile", "Nodule mobile")):
                if form.get(key) == "on":
                    out.append(_observation(smart, {"system": FINDING_SYSTEM, "code": f"nodule-{key}",
                                                    "display": label}, now, valueBoolean=True))
    reproduced = form.get("pain_reproduced", "")
    if reproduced in ("yes", "no"):
        obs = _observation(smart, {"system": FINDING_SYSTEM, "code": "nodule-pain-reproduced",
                                   "display": "Pressure on the nodule reproduces the typical pain"}, now,
                           valueCodeableConcept={"coding": [PRESENT if reproduced == "yes" else ABSENT]})
        if body_site:
            obs["bodySite"] = body_site
        out.append(obs)
    neuro = form.get("neuro", "")
    if neuro == "no":
        for code, display in NEURO_CODES.values():
            out.append(_observation(smart, {"system": SNOMED, "code": code, "display": display}, now,
                                    valueCodeableConcept={"coding": [ABSENT]}))
    elif neuro == "yes":
        code, display = NEURO_CODES[form.get("neuro_kind") or "weakness"]
        out.append(_observation(smart, {"system": SNOMED, "code": code, "display": display}, now,
                                valueCodeableConcept={"coding": [PRESENT]}))
    relief = form.get("relief", "")
    if relief != "":
        relief_code = {"system": FINDING_SYSTEM, "code": "diagnostic-injection-relief",
                       "display": "Relief after diagnostic local anaesthetic injection"}
        quantity = {"value": int(relief), "unit": "%", "system": UCUM, "code": "%"}
        out.append(_observation(smart, relief_code, now, valueQuantity=quantity))
    return out


def _parse_exam_form() -> dict[str, str]:
    form = {
        "nodule": _choice("nodule", TRI_STATE),
        "site": _choice("site", EXAM_SITES),
        "side": _choice("side", EXAM_SIDES),
        "pain_reproduced": _choice("pain_reproduced", TRI_STATE),
        "neuro": _choice("neuro", TRI_STATE),
        "neuro_kind": _choice("neuro_kind", NEURO_CODES),
        "firm": _choice("firm", ("on",)),
        "mobile": _choice("mobile", ("on",)),
        "site_other": request.form.get("site_other", "").strip()[:80],
        "relief": request.form.get("relief", "").strip(),
    }
    if form["relief"]:
        if not form["relief"].isdigit() or not 0 <= int(form["relief"]) <= 100:
            raise ExamError("Relief must be a whole number from 0 to 100 (percent).")
    if form["nodule"] == "yes" and not form["site"]:
        raise ExamError("Say where the nodule is (site).")
    return form


def _transaction(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": r,
             "request": {"method": "POST", "url": "Observation"}}
            for r in resources
        ],
    }


def _locations(response: dict[str, Any]) -> Iterator[str]:
    for entry in response.get("entry") or []:
        loc = (entry.get("response") or {}).get("location") or ""
        if loc:
            parts = loc.split("/_history")[0].rstrip("/").split("/")
            yield "/".join(parts[-2:])


@bp.post("/exam")
@launch_required
def exam() -> BaseResponse:
    """Record the focused exam; write it when patient/Observation create is granted, else keep it here."""
    smart = _smart()
    try:
        form = _parse_exam_form()
    except ExamError as exc:
        flash(f"The exam was not recorded: {exc}", "error")
        return redirect(url_for("main.review", _anchor="exam"), code=303)
    now = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    observations = exam_observations(smart, form, now)
    if not observations:
        flash("Nothing was recorded: every question was left as 'not examined'.", "warning")
        return redirect(url_for("main.review", _anchor="exam"), code=303)
    if _scopes(smart).can_write("Observation"):
        try:
            with _client(smart) as client:
                response = client.transaction(_transaction(observations))
        except FhirError as exc:
            reasons = "; ".join(exc.issues() or [exc.message])
            flash(f"The EHR did not accept the exam, so nothing was saved: {reasons}", "error")
            return redirect(url_for("main.review", _anchor="exam"), code=303)
        refs = list(_locations(response))
        flash(f"Exam saved to the chart ({len(observations)} Observations"
              + (f": {', '.join(refs)}" if refs else "") + "). The assessment below includes it.", "success")
    else:
        kept = _unsaved_exam()
        for i, obs in enumerate(observations, start=len(kept) + 1):
            obs["id"] = f"unsaved-exam-{i}"
        _set(UNSAVED_EXAM_KEY, [*kept, *observations])
        flash("Exam NOT saved to the chart: this launch was not granted permission to create Observations. "
              "It is used for this session's assessment only.", "warning")
    return redirect(url_for("main.review"), code=303)


@bp.post("/exam/clear")
@launch_required
def exam_clear() -> BaseResponse:
    """Forget the exam kept in this session only."""
    _pop(UNSAVED_EXAM_KEY)
    flash("The unsaved exam was discarded.", "success")
    return redirect(url_for("main.review"), code=303)
