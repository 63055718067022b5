"""Focused-exam capture (blueprint ``main``; docs/auditors.md#exam): the clinician answers the exam form,
reviews each Observation it will record, in words, and confirms; the exam is then written to the chart in
one transaction through :func:`smart_app.writeback.write_drafts`, under the clinician's name and with a
Provenance, and the review is read again. Without the right to write it (no Observation, Provenance or
Device create scope, or no clinician named by the launch), the confirmed exam is used for this session's
assessment only, and says so.

The questions and their codes come from the criteria release (:func:`smart_app.clinical.recording
.exam_terms`); the session keeps the clinician's answers and their time, never the Observations.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import abort, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from smart_app.clinical.recording import ABSENT, PRESENT, ExamTerms
from smart_app.drafts.exam import (
    NONE_FOUND,
    SIDES,
    ExamAnswers,
    ExamError,
    ExamSite,
    build_exam_transaction,
    check_answers,
    site_label,
)
from smart_app.drafts.written import finding_text, types_in
from smart_app.smart.launch import Launch
from smart_app.web.common import (
    MAX_UNSAVED_EXAMS,
    PENDING_EXAM_KEY,
    UNSAVED_EXAM_KEY,
    _digest,
    _get,
    _pop,
    _set,
    banner_for,
    bp,
    current_terms,
    unsaved_exams,
)
from smart_app.web.session import launch_required, require_launch
from smart_app.web.write import perform_write, result_page

#: Flash category of the exam form's own messages (shown inside the form, where the clinician is).
EXAM_MESSAGE = "exam"
#: Users that may be the performer of an exam Observation (the exam profile's performer targets).
PERFORMER_TYPES = ("Practitioner", "PractitionerRole")
READ_ONLY_REFUSAL = "This app was opened by a patient: it records no exam and writes nothing."


def examined_now() -> datetime:
    """The time an exam is recorded as examined: when its form was sent, to the second (UTC)."""
    return datetime.now(UTC).replace(microsecond=0)


# --- the form --------------------------------------------------------------------------------------------
def exam_form(terms: ExamTerms, prefill: ExamAnswers | None) -> dict[str, Any]:
    """The exam form for the template: its questions, and the site's choices, with the answers to show
    selected (those of an exam sent back from the confirmation step)."""
    answers = prefill.answers if prefill is not None else {}
    site = prefill.site if prefill is not None else None
    questions = []
    for q in terms.questions:
        answer = answers.get(q.finding)
        questions.append(
            {
                "finding": q.finding,
                "title": q.title,
                "kind": q.kind,
                "name": f"q-{q.finding}",
                "answer": "found" if isinstance(answer, tuple) else answer,
                "found": list(answer) if isinstance(answer, tuple) else [],
                "signs": [{"id": s.id, "title": s.title[:1].upper() + s.title[1:]} for s in q.signs],
                "threshold": f"{q.threshold:g}" if q.threshold is not None else None,
                "site_finding": q.site_finding,
            }
        )
    return {
        "questions": questions,
        "sites": [{"code": c["code"], "label": site_label(c.get("display", c["code"]))} for c in terms.sites],
        "sides": list(SIDES),
        "site": {"code": site.code, "side": site.side, "text": site.text} if site else None,
    }


def parse_form(terms: ExamTerms, form: Any) -> ExamAnswers:
    """The answers of a submitted exam form; :class:`ExamError` names the field that does not fit."""
    answers: dict[str, str | int | tuple[str, ...]] = {}
    for q in terms.questions:
        raw = str(form.get(f"q-{q.finding}", "")).strip()
        if not raw or raw == "unknown":
            continue
        if q.kind == "presence":
            if raw not in (PRESENT, ABSENT):
                raise ExamError(f"{q.title}: unexpected answer.")
            answers[q.finding] = raw
        elif q.kind == "relief":
            if not raw.isdigit() or not 0 <= int(raw) <= 100:
                raise ExamError(f"{q.title}: give a whole number from 0 to 100 (percent).")
            answers[q.finding] = int(raw)
        elif raw == NONE_FOUND:
            answers[q.finding] = NONE_FOUND
        elif raw == "found":
            found = tuple(str(v) for v in form.getlist(f"sign-{q.finding}") if v)
            if not found:
                raise ExamError(f"{q.title}: tick which signs were found.")
            answers[q.finding] = found
        else:
            raise ExamError(f"{q.title}: unexpected answer.")
    code = str(form.get("site", "")).strip() or None
    side = str(form.get("side", "")).strip()
    text = str(form.get("site_text", "")).strip()
    site = ExamSite(code=code, side=side, text=text) if code or side or text else None
    parsed = ExamAnswers(answers, site)
    check_answers(terms, parsed)
    return parsed


def pending_exam() -> tuple[ExamAnswers, dict[str, Any]] | None:
    pending = _get(PENDING_EXAM_KEY)
    if not isinstance(pending, dict):
        return None
    return ExamAnswers.from_json(pending), pending


# --- what may be written --------------------------------------------------------------------------------
def exam_write_problem(launch: Launch, bundle: dict[str, Any] | None = None) -> str | None:
    """Why this launch cannot write an exam to the chart (``None`` when it can)."""
    if launch.read_only:
        return READ_ONLY_REFUSAL
    if launch.user_type not in PERFORMER_TYPES:
        return (
            "the EHR did not say which clinician is signed in (no fhirUser naming a Practitioner), so the "
            "exam cannot be recorded under your name"
        )
    types = types_in(bundle) if bundle else ["Observation", "Provenance", "Device"]
    missing = [t for t in types if not launch.scopes.can_write(t)]
    if missing:
        return f"this launch was not granted permission to create {', '.join(missing)}"
    return None


# --- routes -----------------------------------------------------------------------------------------------
def _back_to_form(message: str, category: str = "error") -> BaseResponse:
    flash(message, EXAM_MESSAGE if category == "error" else f"{EXAM_MESSAGE}-{category}")
    return redirect(url_for("main.review", _anchor="exam-message"), code=303)


@bp.post("/exam")
@launch_required
def exam() -> BaseResponse:
    """Check the exam form and keep the answers for the confirmation step."""
    launch = require_launch()
    if launch.read_only:
        abort(403, description=READ_ONLY_REFUSAL)
    terms = current_terms()
    try:
        answers = parse_form(terms, request.form)
    except ExamError as exc:
        return _back_to_form(f"The exam was not recorded: {exc}")
    if not answers.answers:
        return _back_to_form(
            "Nothing to record: every question was left as 'not examined'. Answer at least one.", "warning"
        )
    _set(
        PENDING_EXAM_KEY,
        {
            **answers.to_json(),
            "recorded": examined_now().isoformat(),
            "criteria": terms.canonical.split("|")[1],
        },
    )
    return redirect(url_for("main.exam_confirm"), code=303)


@bp.get("/exam/confirm")
@launch_required
def exam_confirm() -> tuple[str, int] | BaseResponse:
    """What the exam will record, Observation by Observation, in words; confirm or change."""
    launch = require_launch()
    pending = pending_exam()
    if pending is None:
        flash("There is no exam waiting to be recorded.", "warning")
        return redirect(url_for("main.review"), code=303)
    answers, raw = pending
    terms = current_terms(raw.get("criteria"))
    recorded = datetime.fromisoformat(str(raw["recorded"]))
    try:
        bundle = build_exam_transaction(
            terms,
            answers,
            patient=f"Patient/{launch.patient}",
            performer=launch.fhir_user or "the signed-in user",
            encounter=encounter_reference(launch),
            recorded=recorded,
        )
    except ExamError as exc:
        _pop(PENDING_EXAM_KEY)
        return _back_to_form(f"The exam was not recorded: {exc}")
    made = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]
    problem = exam_write_problem(launch, bundle)
    page = render_template(
        "exam_confirm.html",
        banner=banner_for(launch),
        launch=launch,
        findings=[{"text": finding_text(obs), "codes": _codes(obs)} for obs in made],
        recorded=recorded,
        criteria=terms.canonical.split("|")[1],
        problem=problem,
        exam_digest=_digest(raw),
    )
    return page, 200


def _codes(observation: dict[str, Any]) -> str:
    from smart_app.vocabulary import system_label

    parts = []
    for key in ("code", "valueCodeableConcept", "bodySite"):
        for coding in (observation.get(key) or {}).get("coding") or []:
            parts.append(f"{system_label(str(coding.get('system')))} {coding.get('code')}")
    return "; ".join(parts)


def encounter_reference(launch: Launch) -> str | None:
    if not launch.encounter:
        return None
    return launch.encounter if "/" in launch.encounter else f"Encounter/{launch.encounter}"


@bp.post("/exam/confirm")
@launch_required
def exam_write() -> tuple[str, int] | BaseResponse:
    """Record the confirmed exam: in the chart when this launch may, else for this session only."""
    launch = require_launch()
    if launch.read_only:
        abort(403, description=READ_ONLY_REFUSAL)
    pending = pending_exam()
    if pending is None or request.form.get("exam_digest") != _digest(pending[1]):
        flash("The exam shown was not the one waiting to be recorded: check it again.", "warning")
        return redirect(url_for("main.exam_confirm" if pending else "main.review"), code=303)
    answers, raw = pending
    terms = current_terms(raw.get("criteria"))
    recorded = datetime.fromisoformat(str(raw["recorded"]))
    problem = exam_write_problem(launch)
    if problem is not None:
        kept = [*unsaved_exams(), raw][-MAX_UNSAVED_EXAMS:]
        _set(UNSAVED_EXAM_KEY, kept)
        _pop(PENDING_EXAM_KEY)
        flash(
            f"Exam NOT saved to the chart: {problem}. It is used for this session's assessment only.",
            "warning",
        )
        return redirect(url_for("main.review"), code=303)
    assert launch.fhir_user is not None
    bundle = build_exam_transaction(
        terms,
        answers,
        patient=f"Patient/{launch.patient}",
        performer=launch.fhir_user,
        encounter=encounter_reference(launch),
        recorded=recorded,
    )
    outcome, written = perform_write(launch, bundle, patient=launch.patient, kind="exam")
    if written is not None and written.ok:
        _pop(PENDING_EXAM_KEY)
        count = sum(1 for w in written.written if w.resource_type == "Observation")
        flash(
            f"Exam recorded in the chart: {count} finding{'s' if count != 1 else ''}, under your name, "
            "with a record of how it was entered. The assessment below includes it.",
            "success",
        )
        return redirect(url_for("main.review"), code=303)
    return result_page(outcome, launch, kind="exam", retry_digest=_digest(raw)), 502


@bp.post("/exam/clear")
@launch_required
def exam_clear() -> BaseResponse:
    """Forget the exams kept in this session only, and any exam awaiting confirmation."""
    _pop(UNSAVED_EXAM_KEY)
    _pop(PENDING_EXAM_KEY)
    flash("The exam kept in this session was discarded.", "success")
    return redirect(url_for("main.review"), code=303)
