"""Write-back of the reviewed drafts: ``/writeback``, ``/draft.json`` and the outcome view (blueprint
``main``). Named ``write`` so it does not clash with ``smart_app.writeback``, which it calls."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from flask import Response, abort, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from smart_app.auditlog import audit_event
from smart_app.drafts.build import AssessmentAs
from smart_app.fhir.errors import FhirError
from smart_app.smart.launch import Launch
from smart_app.smart.registrations import WritebackOptions
from smart_app.web.common import REVIEW_KEY, _get, bp
from smart_app.web.session import get_fhir, launch_registry, launch_required, require_launch
from smart_app.writeback import InvalidDraft, Mode, WriteOutcome, write_drafts

log = logging.getLogger("smart_app.web")

#: Why a patient-facing launch is refused a write (shown on the error page).
READ_ONLY_REFUSAL = (
    "This app was opened by a patient (or for a patient by someone they care for). The assessment is for "
    "information only, and nothing is written to the chart from here. Nothing was written."
)


def _writeback_options(launch: Launch) -> tuple[Mode, AssessmentAs]:
    """(mode, assessment_as) from the launch's registration; transaction + ClinicalImpression by default."""
    reg = launch_registry().by_id(launch.registration_id)
    options = reg.writeback if reg is not None else WritebackOptions()
    return options.mode, options.assessment_as


def _write_state(launch: Launch, cached: dict[str, Any]) -> dict[str, Any]:
    """Whether the write button is offered, and if not, why. A patient-facing launch never writes: a
    patient is not the author of a clinical draft."""
    missing = list(cached.get("missing_write_scopes") or [])
    read_only = launch.read_only
    return {
        "has_draft": bool(cached.get("drafts")),
        "missing_scopes": missing,
        "unsaved_exam": bool(cached.get("unsaved_exam")),
        "read_only": read_only,
        "can_write": bool(cached.get("drafts"))
        and not missing
        and not cached.get("unsaved_exam")
        and not read_only,
        "can_write_observation": launch.scopes.can_write("Observation") and not read_only,
    }


# --- write-back -------------------------------------------------------------------------------------------
def _outcome_view(outcome: WriteOutcome) -> dict[str, Any]:
    """A ``WriteOutcome`` as plain data for the result template."""
    return {
        "ok": outcome.ok,
        "result": outcome.result,
        "summary": outcome.summary(),
        "mode": outcome.mode,
        "entries": [
            {
                "type": w.resource_type,
                "id": w.id or "",
                "version": w.version or "",
                "status": w.status,
                "created": w.created,
                "location": w.location or "",
            }
            for w in outcome.written
        ],
        "issues": list(outcome.errors),
        "status": outcome.status,
        "failed": outcome.failed,
        "missing": list(outcome.missing),
        "unknown": list(outcome.unknown),
        "read_back": outcome.read_back,
        "notes": list(outcome.notes),
    }


def _resource_link(fhir_base: str, rtype: str, rid: str) -> str:
    return f"{fhir_base.rstrip('/')}/{rtype}/{rid}" if rtype and rid else ""


@bp.post("/writeback")
@launch_required
def writeback() -> tuple[str, int] | BaseResponse:
    """Write the reviewed draft as one transaction; keep it for retry on failure."""
    launch = require_launch()
    if launch.read_only:
        log.warning(
            "Write refused: a patient-facing launch (%s user) writes nothing", launch.user_type or "no"
        )
        abort(403, description=READ_ONLY_REFUSAL)
    cached = _get(REVIEW_KEY)
    if not isinstance(cached, dict) or cached.get("patient_id") != launch.patient or not cached.get("drafts"):
        flash("The review had expired, so it was read again. Check it, then write the draft.", "warning")
        return redirect(url_for("main.review"), code=303)
    if request.form.get("draft_digest") != cached.get("draft_digest"):
        flash(
            "The draft changed since the page was shown (new data or a recorded exam). "
            "Check the updated review, then write again.",
            "warning",
        )
        return redirect(url_for("main.review"), code=303)
    state = _write_state(launch, cached)
    if not state["can_write"]:
        return _result_page(None, state, launch, cached), 403
    mode, _ = _writeback_options(launch)
    try:
        written = write_drafts(get_fhir(), cached["drafts"], mode)
        outcome = _outcome_view(written)
        audit_write(written, patient=cached.get("patient_id"), user=launch.fhir_user)
    except InvalidDraft as exc:
        # The app's own mistake, not the EHR's: logged for its maintainers; a retry would send the same.
        log.error(
            "The app built a draft that fails its own profiles; nothing was sent: %s",
            "; ".join(exc.issues[:10]),
        )
        audit_event("error", where="writeback", error="InvalidDraft")
        outcome = _nothing_written(mode, list(exc.issues), app_problem=True)
    except FhirError as exc:
        audit_event(
            "write",
            outcome="not-written",
            status=exc.status,
            error=type(exc).__name__,
            mode=mode,
            patient=cached.get("patient_id"),
            user=launch.fhir_user,
        )
        outcome = _nothing_written(mode, exc.issues() or [exc.message], status=exc.status)
    return _result_page(outcome, state, launch, cached), 200 if outcome["ok"] else 502


def audit_write(outcome: WriteOutcome, *, patient: Any, user: str | None) -> None:
    """The write's line in the app's audit log: who, for which patient, and what the EHR holds after it
    (created / matched / found-by-reading-back references, the resource types missing or unknown, the
    result and the HTTP status of a refusal)."""

    def refs(created: bool | None) -> list[str]:
        return [f"{w.resource_type}/{w.id}" for w in outcome.written if w.id and w.created is created]

    audit_event(
        "write",
        outcome=outcome.result,
        mode=outcome.mode,
        patient=patient,
        user=user,
        status=outcome.status,
        ids=[f"{w.resource_type}/{w.id}" for w in outcome.written if w.id],
        created=refs(True),
        matched=refs(False),
        found=refs(None),
        missing=list(outcome.missing),
        unknown=list(outcome.unknown),
    )


def _nothing_written(
    mode: str,
    issues: list[Any],
    *,
    status: int | None = None,
    notes: list[str] | None = None,
    app_problem: bool = False,
) -> dict[str, Any]:
    """The result view of a write that sent nothing or was refused whole; ``app_problem`` when the app's
    own check refused its draft (nothing reached the EHR, and retrying cannot help)."""
    return {
        "app_problem": app_problem,
        "ok": False,
        "result": "not-written",
        "summary": "Nothing was sent to the EHR.",
        "entries": [],
        "issues": issues,
        "mode": mode,
        "status": status,
        "failed": None,
        "missing": [],
        "unknown": [],
        "read_back": False,
        "notes": notes or [],
    }


def _result_page(
    outcome: dict[str, Any] | None, state: dict[str, Any], launch: Launch, cached: dict[str, Any]
) -> str:
    """The write-back result (or the missing-scopes explanation when ``outcome`` is None)."""
    return render_template(
        "writeback_result.html",
        outcome=outcome,
        write=state,
        launch=launch,
        fhir_base=launch.fhir_base,
        draft_digest=cached.get("draft_digest"),
        link=_resource_link,
    )


@bp.get("/draft.json")
@launch_required
def draft_json() -> Response:
    """The draft transaction Bundle as a download, for EHRs where the write scopes are missing."""
    if require_launch().read_only:
        abort(403, description=READ_ONLY_REFUSAL)
    cached = _get(REVIEW_KEY)
    if not isinstance(cached, dict) or not cached.get("drafts"):
        abort(404)
    body = json.dumps(cached["drafts"], indent=2, sort_keys=True, ensure_ascii=False)
    patient = re.sub(r"[^A-Za-z0-9.-]", "_", str(cached.get("patient_id") or "patient"))[:64]
    resp = Response(body, mimetype="application/fhir+json")
    resp.headers["Content-Disposition"] = f'attachment; filename="back-mice-draft-{patient}.json"'
    resp.headers["Cache-Control"] = "no-store"
    return resp
