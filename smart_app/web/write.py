"""Write-back of the reviewed drafts (``/writeback``, ``/draft.json``), its outcome page, and what of this
assessment is already in the chart (``/write-status``) (blueprint ``main``). Named ``write`` so it does not
clash with ``smart_app.writeback``, the one write path, which it calls.

The session keeps no drafts: the write reads the record again at the evaluation time of the review the
clinician was shown, drafts again, and writes only when the drafts are the ones shown (same digest).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from flask import Response, abort, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from smart_app import pipeline
from smart_app.auditlog import audit_event
from smart_app.drafts.written import WRITTEN, resource_state
from smart_app.fhir.errors import FhirError
from smart_app.fhirjson import Ref
from smart_app.smart.launch import Launch
from smart_app.vocabulary import DRAFT_IDENTIFIER_SYSTEM
from smart_app.web.common import (
    REVIEW_KEY,
    _digest,
    _get,
    banner_for,
    bp,
    person_name,
    run_review,
    unsaved_exams,
    writeback_options,
)
from smart_app.web.session import get_fhir, launch_required, require_launch
from smart_app.writeback import InvalidDraft, WriteOutcome, write_drafts

log = logging.getLogger("smart_app.web")

Kind = Literal["drafts", "exam"]
#: Why a patient-facing launch is refused a write (shown on the error page).
READ_ONLY_REFUSAL = (
    "This app was opened by a patient (or for a patient by someone they care for). The assessment is for "
    "information only, and nothing is written to the chart from here. Nothing was written."
)
#: A written resource's state (``smart_app.drafts.written.resource_state``) in words.
STATE_WORDS = {
    "draft": "draft awaiting clinician review",
    "signed": "reviewed and signed off",
    "recorded": "recorded",
    "withdrawn": "withdrawn",
    "entered-in-error": "marked as entered in error",
}
_KEY = re.compile(r"^[0-9a-f]{64}$")


def write_state(launch: Launch, review: pipeline.Review | None, unsaved_exam: bool) -> dict[str, Any]:
    """Whether the write button is offered, and if not, why. A patient-facing launch never writes: a
    patient is not the author of a clinical draft."""
    drafts = review.drafts if review is not None else None
    missing = list(review.missing_write_scopes) if review is not None else []
    read_only = launch.read_only
    return {
        "has_draft": bool(drafts),
        "missing_scopes": missing,
        "unsaved_exam": unsaved_exam,
        "read_only": read_only,
        "can_write": bool(drafts) and not missing and not unsaved_exam and not read_only,
    }


# --- the write and its outcome ----------------------------------------------------------------------------
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


def audit_write(outcome: WriteOutcome, *, patient: Any, user: str | None, kind: Kind = "drafts") -> None:
    """The write's line in the app's audit log: what kind of write, who, for which patient, and what the
    EHR holds after it (created / matched / found-by-reading-back references, the resource types missing
    or unknown, the result and the HTTP status of a refusal)."""

    def refs(created: bool | None) -> list[str]:
        return [f"{w.resource_type}/{w.id}" for w in outcome.written if w.id and w.created is created]

    audit_event(
        "write",
        write_kind=kind,
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


def perform_write(
    launch: Launch, bundle: dict[str, Any], *, patient: str, kind: Kind
) -> tuple[dict[str, Any], WriteOutcome | None]:
    """Write ``bundle`` with :func:`smart_app.writeback.write_drafts` in the registration's mode and log
    it; the outcome as the result page shows it, and the ``WriteOutcome`` (``None`` when nothing was
    sent)."""
    mode = writeback_options(launch).mode
    try:
        written = write_drafts(get_fhir(), bundle, mode)
    except InvalidDraft as exc:
        # The app's own mistake, not the EHR's: logged for its maintainers; a retry would send the same.
        log.error(
            "The app built a %s that fails its own profiles; nothing was sent: %s",
            kind,
            "; ".join(exc.issues[:10]),
        )
        audit_event("error", where="writeback", write_kind=kind, error="InvalidDraft")
        return _nothing_written(mode, list(exc.issues), app_problem=True), None
    except FhirError as exc:
        audit_event(
            "write",
            write_kind=kind,
            outcome="not-written",
            status=exc.status,
            error=type(exc).__name__,
            mode=mode,
            patient=patient,
            user=launch.fhir_user,
        )
        return _nothing_written(mode, exc.issues() or [exc.message], status=exc.status), None
    audit_write(written, patient=patient, user=launch.fhir_user, kind=kind)
    return _outcome_view(written), written


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


def result_page(
    outcome: dict[str, Any] | None,
    launch: Launch,
    *,
    kind: Kind,
    retry_digest: str | None,
    state: dict[str, Any] | None = None,
    patient: dict[str, Any] | None = None,
) -> str:
    """The outcome of a write (or, when ``outcome`` is None, why this launch may not write the drafts),
    with the patient banner, links to what is in the chart in the app's own view, and the way back."""
    return render_template(
        "writeback_result.html",
        outcome=outcome,
        kind=kind,
        write=state or {},
        launch=launch,
        banner=banner_for(launch, patient),
        retry_digest=retry_digest,
    )


def _review_shown(launch: Launch) -> dict[str, Any] | None:
    """The review the clinician was shown for this launch's patient (from the session), if any."""
    shown = _get(REVIEW_KEY)
    if not isinstance(shown, dict) or shown.get("patient") != launch.patient or not shown.get("digest"):
        return None
    return shown


def _drafts_again(launch: Launch, shown: Mapping[str, Any]) -> tuple[pipeline.Review | None, str | None]:
    """The review read again at the evaluation time shown, when its drafts are the ones shown; else
    ``None`` and why, in words."""
    try:
        review, _ = run_review(launch, as_of=datetime.fromisoformat(str(shown["as_of"])))
    except (FhirError, ValueError, KeyError) as exc:
        reason = exc.message if isinstance(exc, FhirError) else "the review shown could not be read back"
        return None, f"The record could not be read again ({reason}), so nothing was written."
    if review.drafts is None or _digest(review.drafts) != shown["digest"]:
        return None, (
            "The record changed since the page was shown (new data, a recorded exam, or a read that failed "
            "this time), so the draft changed too. Check the updated review, then write again."
        )
    return review, None


@bp.post("/writeback")
@launch_required
def writeback() -> tuple[str, int] | BaseResponse:
    """Write the reviewed drafts as one transaction (or the registration's sequential writes)."""
    launch = require_launch()
    if launch.read_only:
        log.warning(
            "Write refused: a patient-facing launch (%s user) writes nothing", launch.user_type or "no"
        )
        abort(403, description=READ_ONLY_REFUSAL)
    shown = _review_shown(launch)
    if shown is None:
        flash("The review had expired, so it was read again. Check it, then write the draft.", "warning")
        return redirect(url_for("main.review"), code=303)
    if request.form.get("draft_digest") != shown["digest"]:
        flash(
            "The draft changed since the page was shown (new data or a recorded exam). "
            "Check the updated review, then write again.",
            "warning",
        )
        return redirect(url_for("main.review"), code=303)
    review, problem = _drafts_again(launch, shown)
    if review is None or review.drafts is None:
        flash(problem or "The draft could not be prepared again.", "warning")
        return redirect(url_for("main.review"), code=303)
    state = write_state(launch, review, unsaved_exam=bool(unsaved_exams()))
    if not state["can_write"]:
        page = result_page(
            None, launch, kind="drafts", retry_digest=None, state=state, patient=review.fetch.patient
        )
        return page, 403
    outcome, _ = perform_write(launch, review.drafts, patient=review.patient_id, kind="drafts")
    page = result_page(
        outcome,
        launch,
        kind="drafts",
        retry_digest=shown["digest"],
        state=state,
        patient=review.fetch.patient,
    )
    return page, 200 if outcome["ok"] else 502


@bp.get("/draft.json")
@launch_required
def draft_json() -> Response | BaseResponse:
    """The draft transaction Bundle as a download, for EHRs where the write scopes are missing: the
    drafts shown, drafted again from the record."""
    launch = require_launch()
    if launch.read_only:
        abort(403, description=READ_ONLY_REFUSAL)
    shown = _review_shown(launch)
    if shown is None:
        abort(404)
    review, problem = _drafts_again(launch, shown)
    if review is None or review.drafts is None:
        flash(problem or "The draft could not be prepared again.", "warning")
        return redirect(url_for("main.review"), code=303)
    body = json.dumps(review.drafts, indent=2, sort_keys=True, ensure_ascii=False)
    patient = re.sub(r"[^A-Za-z0-9.-]", "_", launch.patient or "patient")[:64]
    resp = Response(body, mimetype="application/fhir+json")
    resp.headers["Content-Disposition"] = f'attachment; filename="back-mice-draft-{patient}.json"'
    resp.headers["Cache-Control"] = "no-store"
    return resp


# --- what of this assessment is already in the chart -------------------------------------------------------
def status_query(drafts: Mapping[str, Any] | None) -> dict[str, str] | None:
    """The query of ``/write-status`` for a draft Bundle: the assessment's type and identifier, and the
    Provenance's key (its ``meta.tag``); ``None`` when the Bundle has no assessment."""
    found: dict[str, str] = {}
    for entry in (drafts or {}).get("entry") or []:
        resource = entry.get("resource") or {}
        rtype = resource.get("resourceType")
        if rtype in ("ClinicalImpression", "DocumentReference"):
            for ident in resource.get("identifier") or []:
                if ident.get("system") == DRAFT_IDENTIFIER_SYSTEM:
                    found["type"], found["key"] = str(rtype), str(ident.get("value"))
        elif rtype == "Provenance":
            query = str((entry.get("request") or {}).get("ifNoneExist") or "")
            found["provenance"] = query.rpartition("|")[2]
    return found if {"type", "key", "provenance"} <= set(found) else None


def written_status(launch: Launch, rtype: str, key: str, provenance_key: str) -> dict[str, Any] | None:
    """Whether the drafts of an assessment are in the chart, found by the assessment's identifier: when
    and by whom they were written (their Provenance) and the state of each; ``None`` when they are not."""
    client = get_fhir()
    matches = [
        r
        for r in client.search_all(rtype, {"identifier": f"{DRAFT_IDENTIFIER_SYSTEM}|{key}"})
        if r.get("resourceType") == rtype and about_patient(r, launch.patient)
    ]
    if not matches:
        return None
    assessment = matches[0]
    provenances = client.search_all("Provenance", {"_tag": f"{DRAFT_IDENTIFIER_SYSTEM}|{provenance_key}"})
    provenance = next((p for p in provenances if p.get("resourceType") == "Provenance"), None)
    resources = [assessment]
    if provenance is not None:
        for target in provenance.get("target") or []:
            ref = Ref.parse((target or {}).get("reference")) if isinstance(target, dict) else None
            if ref is None or ref.type not in WRITTEN or ref.plain == f"{rtype}/{assessment.get('id')}":
                continue
            try:
                resources.append(client.read(ref.type, ref.id))
            except (FhirError, ValueError):
                resources.append({"resourceType": ref.type, "id": ref.id, "_unreadable": True})
    author = _author(provenance) if provenance is not None else None
    return {
        "when": (provenance or {}).get("recorded") or (assessment.get("meta") or {}).get("lastUpdated"),
        "who": person_name(client, author, me=launch.fhir_user),
        "provenance": provenance is not None,
        "resources": [
            {
                "type": r.get("resourceType"),
                "id": r.get("id"),
                "state": "could not be read"
                if r.get("_unreadable")
                else STATE_WORDS.get(resource_state(r), ""),
                "signed": resource_state(r) == "signed",
            }
            for r in resources
        ],
        "state": STATE_WORDS.get(resource_state(assessment), ""),
    }


def about_patient(resource: Mapping[str, Any], patient: str) -> bool:
    """Whether ``resource`` is about the Patient ``patient`` (its ``subject`` or ``patient``)."""
    for key in ("subject", "patient"):
        ref = Ref.parse(
            ((resource.get(key) or {}) if isinstance(resource.get(key), dict) else {}).get("reference")
        )
        if ref is not None and ref.type == "Patient" and ref.id == patient:
            return True
    return False


def _author(provenance: Mapping[str, Any]) -> str | None:
    for agent in provenance.get("agent") or []:
        codes = {c.get("code") for c in ((agent or {}).get("type") or {}).get("coding") or []}
        who = ((agent or {}).get("who") or {}).get("reference")
        if "author" in codes and isinstance(who, str):
            return who
    return None


@bp.get("/write-status")
@launch_required
def write_status() -> tuple[str, int]:
    """Whether this assessment's drafts are already in the chart: a fragment the review page loads
    after it is shown (so the headline never waits for it), or a page of its own without JavaScript."""
    launch = require_launch()
    rtype, key, prov = (request.args.get(k, "") for k in ("type", "key", "provenance"))
    if (
        rtype not in ("ClinicalImpression", "DocumentReference")
        or not _KEY.match(key)
        or not _KEY.match(prov)
    ):
        abort(400, description="Not a draft of this app.")
    try:
        status = written_status(launch, rtype, key, prov)
        error = None
    except FhirError as exc:
        status, error = None, exc.message
    if request.args.get("fragment"):
        return render_template("write_status.html", status=status, error=error), 200
    page = render_template("write_status_page.html", status=status, error=error, banner=banner_for(launch))
    return page, 200
