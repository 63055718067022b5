"""Auditor page ``GET /audit`` (docs/auditors.md#the-audit-page): per write, what was concluded, from
what, by which rule version, who asked for it, and whether it reproduces; per exam entered through the
app, what it records and whether it is still as entered. Names, not codes: people by their names, red
flags, conclusions and next steps by the words of the app's CodeSystems, records by what they record.

Behind the SMART launch; it reads with the launch's token. With user-level read scopes
(``user/Provenance.rs`` ...) it covers every patient the user may see (or the one ``?patient=`` names),
otherwise only the launched patient. Inside the EHR's frame it offers to open itself in a new tab
(:mod:`smart_app.web.handoff`: a single-use, short-lived ticket bound to the launch).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from smart_app.audit.errors import AuditInputError
from smart_app.audit.listing import list_writes
from smart_app.audit.model import EXAM, AuditReport, Finding, VerifyReport, Write
from smart_app.audit.source import FhirSource, Source
from smart_app.audit.verify import verify_assessment, verify_exam
from smart_app.auditlog import audit_event
from smart_app.clinical.criteria import default_registry
from smart_app.drafts.written import finding_text
from smart_app.smart.launch import Launch
from smart_app.vocabulary import classifications, next_steps, red_flags
from smart_app.web.common import person_name
from smart_app.web.handoff import (
    audit_launch,
    audit_launch_required,
    in_hand_off,
    make_ticket,
    ticket_seconds,
    use_ticket,
)
from smart_app.web.session import get_fhir

bp = Blueprint("audit", __name__)

#: At most this many writes are re-run on one page view (each costs a few reads); config overrides.
DEFAULT_MAX_VERIFY = 25

STATUS_TEXT = {
    "draft": "Still a draft awaiting clinician review",
    "signed": "Reviewed and signed off by a clinician",
    "recorded": "Exam findings as the clinician entered them",
    "entered-in-error": "Marked as entered in error",
    "changed-since-written": "Changed since the app wrote it",
}
FINDING_TEXT = {
    "missing-provenance": "The app wrote this, but its record of production (Provenance) is missing.",
    "changed-since-written": "Someone changed this after the app wrote it (beyond signing it off).",
    "tag-without-provenance": "This carries the app's label, but the app did not write it.",
    "source-amended": "A record the conclusion was based on has been amended since.",
    "source-missing": "A record the conclusion was based on can no longer be found.",
    "provenance-target-missing": "A resource the app wrote can no longer be found.",
}
FIELD_TEXT = {
    "classification": "conclusion",
    "next_step": "suggested next step",
    "red_flags": "red flags",
    "procedure_suggestion": "procedure suggestion",
    "criteria": "rule version",
    "provenance": "record of how it was produced",
    "evidence": "evidence it was drawn from (sources and data not read)",
    "content": "what was entered",
    "performer": "who examined",
}
LEVEL_TEXT = {"block": "withholds any procedure", "warn": "warning"}


def audit_scope(launch: Launch) -> str | None:
    """``None`` (every patient) with user- or system-level read of the written types, else the launch's
    patient: a patient-level token can only see that patient's writes anyway."""
    scopes = launch.scopes
    wide = all(scopes.permits(t, "s", context="user") for t in ("Provenance", "ClinicalImpression"))
    if wide:
        wanted = request.args.get("patient", "").strip()
        return wanted or None
    return launch.patient


def _in_words(value: Any, words: dict[str, str]) -> str | None:
    """A written code in words; several conflicting coded values (a list) are all shown."""
    if not value:
        return None
    values = value if isinstance(value, list) else [value]
    return " / ".join(words.get(str(v), str(v)) for v in values)


def flag_words(flag: Any) -> str:
    """``bone-fragility:warn`` → "Bone fragility (osteoporosis or long-term systemic steroids): warning"."""
    code, _, level = str(flag).partition(":")
    title = red_flags().displays.get(code, code)
    return f"{title}: {LEVEL_TEXT.get(level, level)}" if level else title


def value_words(field: str, value: Any) -> str:
    """A compared value in words, for the table of differences."""
    if value is None or value == [] or value == "":
        return "none"
    if field == "classification":
        return _in_words(value, classifications().displays) or "none"
    if field == "next_step":
        return _in_words(value, next_steps().displays) or "none"
    if field == "red_flags" and isinstance(value, list):
        return "; ".join(flag_words(f) for f in value)
    if isinstance(value, dict):
        return str(value.get("text") or value.get("kind") or value)
    if isinstance(value, list):
        return "; ".join(str(v) for v in value)
    return str(value)


def criteria_words(criteria: dict[str, Any]) -> str:
    version = criteria.get("version")
    if not version:
        return "not named"
    try:
        title = default_registry().get(str(version)).title
    except (KeyError, ValueError):
        return f"criteria release {version} (not known to this app)"
    return f"criteria release {version}: {title}"


def describe_write(
    client: Any,
    write: Write,
    verify: VerifyReport | None,
    error: str | None,
    findings: list[Finding],
    me: str | None = None,
) -> dict[str, Any]:
    """What the template shows for one write, in words."""
    written = verify.written if verify is not None else {}
    assessment = next((r.resource for r in write.resources if r.reference == write.assessment), None) or {}
    exam = write.kind == EXAM
    return {
        "kind": write.kind,
        "assessment": write.assessment,
        "patient": person_name(client, write.patient) if write.patient else "unknown",
        "written_at": write.written_at,
        "author": person_name(client, write.author, me=me) if write.author else "not recorded",
        "criteria": criteria_words(write.criteria),
        "status": STATUS_TEXT.get(write.status, write.status),
        "status_code": write.status,
        "headline": assessment.get("description") or assessment.get("summary"),
        "classification": None
        if exam
        else _in_words(written.get("classification"), classifications().displays),
        "next_step": None if exam else _in_words(written.get("next_step"), next_steps().displays),
        "red_flags": [flag_words(f) for f in written.get("red_flags") or []],
        "exam_findings": [finding_text(r.resource) for r in write.resources if r.resource is not None]
        if exam
        else [],
        "resources": [
            {"type": r.resource_type, "id": r.reference.split("/", 1)[1], "reference": r.reference}
            for r in write.resources
            if "/" in r.reference
        ],
        "provenance": write.provenance,
        "sources": verify.sources if verify is not None else [{"reference": s} for s in write.sources],
        "reproduced": None if verify is None else verify.reproduced,
        "differences": [
            {
                "field": FIELD_TEXT.get(d.field, d.field),
                "written": value_words(d.field, d.written),
                "recomputed": value_words(d.field, d.recomputed),
            }
            for d in (verify.differences if verify is not None else [])
        ],
        "notes": verify.notes if verify is not None else [],
        "error": error,
        "findings": [{"text": FINDING_TEXT.get(f.kind, f.kind), **f.to_json()} for f in findings],
    }


def build_page(
    source: Source, patient: str | None, max_verify: int, client: Any = None, me: str | None = None
) -> dict[str, Any]:
    """List the writes, re-run (or, for an exam, check) up to ``max_verify`` of them, and group the
    findings per write."""
    report: AuditReport = list_writes(source, patient=patient)
    claimed: set[int] = set()
    rows = []
    for index, write in enumerate(sorted(report.writes, key=lambda w: w.written_at or "", reverse=True)):
        refs = {r.reference for r in write.resources} | set(write.sources) | {write.provenance or ""}
        mine = []
        for i, f in enumerate(report.findings):
            base = f.reference.split("/_history/")[0]
            if f.reference in refs or base in {r.split("/_history/")[0] for r in refs}:
                mine.append(f)
                claimed.add(i)
        verify: VerifyReport | None = None
        error: str | None = None
        target = write.assessment or (write.provenance if write.kind == EXAM else None)
        if target is None:
            error = (
                "No record of who entered it (Provenance)."
                if write.kind == EXAM
                else "No assessment among the written resources."
            )
        elif index >= max_verify:
            error = f"Not re-checked on this page (only the newest {max_verify} are); use the command line."
        else:
            try:
                verify = (
                    verify_exam(source, target) if write.kind == EXAM else verify_assessment(source, target)
                )
            except AuditInputError as exc:
                error = str(exc)
        rows.append(describe_write(client, write, verify, error, mine, me))
    other = [
        {"text": FINDING_TEXT.get(f.kind, f.kind), **f.to_json()}
        for i, f in enumerate(report.findings)
        if i not in claimed
    ]
    return {"writes": rows, "other_findings": other, "finding_count": len(report.findings)}


@bp.get("/audit")
@audit_launch_required
def audit_page() -> tuple[str, int]:
    from smart_app.fhir.errors import FhirError

    launch = audit_launch()
    assert launch is not None
    patient = audit_scope(launch)
    max_verify = int(current_app.config.get("AUDIT_PAGE_MAX_VERIFY", DEFAULT_MAX_VERIFY))
    client = get_fhir()
    whose = person_name(client, f"Patient/{patient}", with_reference=False) if patient else None
    new_tab = None if in_hand_off() else url_for("audit.enter", ticket=make_ticket(launch))
    context = {
        "patient": patient,
        "whose": whose,
        "new_tab": new_tab,
        "new_tab_minutes": max(1, round(ticket_seconds() / 60)),
        "in_frame": not in_hand_off(),
    }
    try:
        page = build_page(FhirSource(client), patient, max_verify, client, me=launch.fhir_user)
    except FhirError as exc:
        audit_event("error", where="audit-page", status=exc.status, error=type(exc).__name__)
        return render_template("audit.html", page=None, error=exc.message, **context), 502
    audit_event("audit", command="page", patient=patient, findings=page["finding_count"])
    return render_template("audit.html", page=page, error=None, **context), 200


@bp.get("/audit/enter")
def enter() -> BaseResponse | tuple[str, int]:
    """Redeem a hand-off ticket (a new tab): bind this tab's fresh session to the launch for the audit
    pages, and go to the audit page without the ticket in the URL."""
    launch = use_ticket(request.args.get("ticket", ""))
    if launch is None:
        audit_event("handoff", outcome="refused")
        return render_template("handoff_expired.html"), 410
    audit_event("handoff", outcome="opened", patient=launch.patient, user=launch.fhir_user)
    return redirect(url_for("audit.audit_page", patient=launch.patient), code=303)
