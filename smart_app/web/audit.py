"""Auditor page ``GET /audit`` (docs/auditors.md#the-audit-page): per write, what was concluded, from
what, by which rule version, who asked for it, and whether it reproduces. Behind the SMART launch; it
reads with the launch's token. With user-level read scopes (``user/Provenance.rs`` ...) it covers every
patient the user may see, otherwise only the launched patient.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, render_template, request

from smart_app.audit.listing import list_writes
from smart_app.audit.model import AuditInputError, AuditReport, Finding, VerifyReport, Write
from smart_app.audit.source import FhirSource, Source
from smart_app.audit.verify import verify_assessment
from smart_app.auditlog import audit_event
from smart_app.smart.launch import Launch
from smart_app.vocabulary import classifications, next_steps
from smart_app.web.session import get_fhir, launch_required, require_launch

bp = Blueprint("audit", __name__)

#: At most this many writes are re-run on one page view (each costs a few reads); config overrides.
DEFAULT_MAX_VERIFY = 25

STATUS_TEXT = {
    "draft": "Still a draft awaiting clinician review",
    "signed": "Reviewed and signed off by a clinician",
    "entered-in-error": "Marked as entered in error",
    "changed-since-written": "Changed since the app wrote it",
}
FINDING_TEXT = {
    "missing-provenance": "The app wrote this, but its record of production (Provenance) is missing.",
    "changed-since-written": "Someone changed this after the app wrote it (beyond signing it off).",
    "tag-without-provenance": "This carries the app's draft label, but the app did not write it.",
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
}


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


def describe_write(
    write: Write, verify: VerifyReport | None, error: str | None, findings: list[Finding]
) -> dict[str, Any]:
    """What the template shows for one write, in words."""
    written = verify.written if verify is not None else {}
    classification = written.get("classification")
    step = written.get("next_step")
    assessment = next((r.resource for r in write.resources if r.reference == write.assessment), None) or {}
    criteria = write.criteria
    return {
        "assessment": write.assessment,
        "patient": write.patient,
        "written_at": write.written_at,
        "author": write.author or "not recorded",
        "criteria": f"{criteria.get('url') or 'unknown'} version {criteria.get('version') or 'unknown'}",
        "status": STATUS_TEXT.get(write.status, write.status),
        "status_code": write.status,
        "headline": assessment.get("description") or assessment.get("summary"),
        "classification": _in_words(classification, classifications().displays),
        "next_step": _in_words(step, next_steps().displays),
        "red_flags": written.get("red_flags") or [],
        "resources": [r.reference for r in write.resources],
        "provenance": write.provenance,
        "sources": verify.sources if verify is not None else [{"reference": s} for s in write.sources],
        "reproduced": None if verify is None else verify.reproduced,
        "differences": [
            {"field": FIELD_TEXT.get(d.field, d.field), "written": d.written, "recomputed": d.recomputed}
            for d in (verify.differences if verify is not None else [])
        ],
        "notes": verify.notes if verify is not None else [],
        "error": error,
        "findings": [{"text": FINDING_TEXT.get(f.kind, f.kind), **f.to_json()} for f in findings],
    }


def build_page(source: Source, patient: str | None, max_verify: int) -> dict[str, Any]:
    """List the writes, re-run up to ``max_verify`` of them, and group the findings per write."""
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
        if write.assessment is None:
            error = "No assessment among the written resources."
        elif index >= max_verify:
            error = f"Not re-run on this page (only the newest {max_verify} are); use the command line."
        else:
            try:
                verify = verify_assessment(source, write.assessment)
            except AuditInputError as exc:
                error = str(exc)
        rows.append(describe_write(write, verify, error, mine))
    other = [
        {"text": FINDING_TEXT.get(f.kind, f.kind), **f.to_json()}
        for i, f in enumerate(report.findings)
        if i not in claimed
    ]
    return {"writes": rows, "other_findings": other, "finding_count": len(report.findings)}


@bp.get("/audit")
@launch_required
def audit_page() -> tuple[str, int]:
    from smart_app.fhir.errors import FhirError

    patient = audit_scope(require_launch())
    max_verify = int(current_app.config.get("AUDIT_PAGE_MAX_VERIFY", DEFAULT_MAX_VERIFY))
    try:
        page = build_page(FhirSource(get_fhir()), patient, max_verify)
    except FhirError as exc:
        audit_event("error", where="audit-page", status=exc.status, error=type(exc).__name__)
        return render_template("audit.html", page=None, error=exc.message, patient=patient), 502
    audit_event("audit", command="page", patient=patient, findings=page["finding_count"])
    return render_template("audit.html", page=page, error=None, patient=patient), 200
