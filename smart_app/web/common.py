"""The blueprint ``main`` and what its route modules share: the small per-launch state kept in the
server-side session, and helpers.

The session holds ids and small state only (docs/architecture.md#sessions): never the record, the
assessment or the drafts. A review keeps the patient id, its evaluation time and the digest of the drafts
the clinician was shown; the write reads the record again at that time, drafts again and writes only when
the digest is the same (the same evidence gives the same drafts, byte for byte). An exam awaiting
confirmation, or kept without the right to write it, is kept as the clinician's answers and their time.

Routes are not registered here but in ``review``, ``write``, ``exam``, ``chart`` and ``theme``;
``smart_app.web.views`` imports them all, so use ``views.bp`` to get the blueprint with every route.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import orjson
from flask import Blueprint, current_app, g, session

from smart_app import fhirjson as fj
from smart_app import pipeline
from smart_app.clinical.engine import criteria_for
from smart_app.clinical.recording import ExamTerms, exam_terms
from smart_app.drafts.build import AssessmentAs
from smart_app.drafts.exam import ExamAnswers, ExamError, observations
from smart_app.fhir.budget import ReadBudget
from smart_app.fhir.errors import FhirError
from smart_app.fhir.record import DEFAULT_PAGE_SIZE
from smart_app.smart.launch import Launch
from smart_app.smart.registrations import WritebackOptions
from smart_app.web.session import current_launch, get_fhir, launch_registry

bp = Blueprint(
    "main", __name__, template_folder="templates", static_folder="static", static_url_path="/assets"
)

#: Session key of this blueprint's per-launch state (server-side session); reset by a new launch.
STATE_KEY = "main"
#: The review the clinician was shown: ``patient``, ``as_of`` (evaluation time) and ``digest`` (drafts).
REVIEW_KEY = "review"
#: The exam awaiting the clinician's confirmation: its answers and the time it was examined.
PENDING_EXAM_KEY = "pending_exam"
#: Exams kept in this session only (no permission to write them): answers and times, newest last.
UNSAVED_EXAM_KEY = "unsaved_exam"
#: The sanitised smart_style_url values.
STYLE_KEY = "smart_style"
#: At most this many unsaved exams are kept (the newest record of a finding decides anyway).
MAX_UNSAVED_EXAMS = 3


def _state() -> dict[str, Any]:
    """This launch's state; state kept for one launch never leaks into another."""
    launch: Launch | None = current_launch()
    key = launch.id if launch is not None else ""
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


#: orjson options of the page's JSON: keys sorted, anything that is not JSON (a datetime) as ``str()``.
_JSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME


def _digest(data: Any) -> str:
    """sha256 (hex) of the canonical JSON of ``data``: what the clinician was shown, in 64 characters."""
    return hashlib.sha256(orjson.dumps(data, default=str, option=_JSON_OPTIONS)).hexdigest()


def _pretty(resource: Any) -> str:
    return orjson.dumps(resource, default=str, option=_JSON_OPTIONS | orjson.OPT_INDENT_2).decode()


# --- the review, read and assessed -----------------------------------------------------------------------
def read_budget() -> ReadBudget:
    """The read budget of one review from the settings ``FHIR_READ_BUDGET_SECONDS`` and
    ``FHIR_MAX_RESPONSE_BYTES``."""
    config, default = current_app.config, ReadBudget()
    return ReadBudget(
        seconds=float(config.get("FHIR_READ_BUDGET_SECONDS", default.seconds)),
        max_response_bytes=int(config.get("FHIR_MAX_RESPONSE_BYTES", default.max_response_bytes)),
    )


def writeback_options(launch: Launch) -> WritebackOptions:
    """How this launch's EHR takes writes (mode, the assessment's form), from its registration."""
    reg = launch_registry().by_id(launch.registration_id)
    return reg.writeback if reg is not None else WritebackOptions()


def run_review(launch: Launch, as_of: datetime | None = None) -> tuple[pipeline.Review, list[dict[str, Any]]]:
    """``pipeline.review_patient`` for the launch at ``as_of`` (default: now), with the exams kept in this
    session added; the review and every resource it read (none when the Patient could not be read).
    The same record at the same ``as_of`` gives the same drafts: the write relies on it."""
    extra = unsaved_observations(launch)
    assessment_as: AssessmentAs = writeback_options(launch).assessment_as
    review = pipeline.review_patient(
        get_fhir(),
        launch.patient,
        launch.scopes,
        author=launch.fhir_user,
        encounter=launch.encounter,
        assessment_as=assessment_as,
        as_of=as_of,
        extra_resources=extra,
        page_size=int(current_app.config.get("FHIR_PAGE_SIZE", DEFAULT_PAGE_SIZE)),
        budget=read_budget(),
        batch_reads=current_app.config.get("FHIR_BATCH_READS", "auto") == "auto",
    )
    return review, [*review.fetch.resources, *extra] if review.fetch.patient is not None else []


# --- exams kept in this session --------------------------------------------------------------------------
def current_terms(version: str | None = None) -> ExamTerms:
    """The exam questions of a criteria release (the newest by default: the one a review uses)."""
    return exam_terms(criteria_for(version))


def unsaved_exams() -> list[dict[str, Any]]:
    """The exams kept in this session only: answers, time examined and criteria version, oldest first."""
    kept = _get(UNSAVED_EXAM_KEY)
    return [e for e in kept if isinstance(e, dict)] if isinstance(kept, list) else []


def exam_observations(
    launch: Launch, terms: ExamTerms, answers: ExamAnswers, when: str
) -> list[dict[str, Any]]:
    """The Observations recording ``answers`` as the assessment reads them, the clinician as performer."""
    made = [obs for _, obs in observations(terms, answers, patient=f"Patient/{launch.patient}", when=when)]
    if launch.fhir_user:
        for obs in made:
            obs["performer"] = [{"reference": launch.fhir_user}]
    return made


def unsaved_observations(launch: Launch) -> list[dict[str, Any]]:
    """The Observations of every exam kept in this session only, with ids ``unsaved-exam-<n>``, rebuilt
    from the answers each time (the same answers give the same Observations)."""
    out: list[dict[str, Any]] = []
    for exam in unsaved_exams():
        try:
            terms = current_terms(str(exam.get("criteria") or "") or None)
            out.extend(exam_observations(launch, terms, ExamAnswers.from_json(exam), str(exam["recorded"])))
        except (ExamError, ValueError, KeyError):
            continue  # answers to questions of another release: dropped, not guessed at
    for number, obs in enumerate(out, start=1):
        obs["id"] = f"unsaved-exam-{number}"
    return out


# --- the patient banner ----------------------------------------------------------------------------------
def patient_banner(patient: dict[str, Any] | None) -> dict[str, str] | None:
    """Name, birth date, sex and first identifier of the Patient, for the banner (EHR strings: the
    template cleans them with the ``ehr`` filter)."""
    if not patient:
        return None
    text = human_name(patient)
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


def banner_for(launch: Launch, patient: dict[str, Any] | None = None) -> dict[str, str] | None:
    """The banner of pages other than the review: from ``patient`` when the page has it, else read
    (one request); none when the EHR shows its own (``need_patient_banner`` false)."""
    if not launch.need_patient_banner:
        return None
    if patient is None:
        try:
            patient = get_fhir().read("Patient", launch.patient)
        except (FhirError, ValueError):
            return {
                "name": "(the patient record could not be read)",
                "birth_date": "unknown",
                "gender": "unknown",
                "identifier": "",
                "reference": f"Patient/{launch.patient}",
            }
    return patient_banner(patient)


def person_name(
    client: Any, reference: str | None, *, me: str | None = None, with_reference: bool = True
) -> str:
    """The name of the person a reference names (Practitioner, PractitionerRole's practitioner, Patient,
    RelatedPerson), read once per request, with the reference in brackets (``Type/id``); "you" for the
    launch's own user (``me``); the reference alone when it names no one readable."""
    if not reference:
        return "not recorded"
    ref = fj.Ref.parse(reference)
    shown = ref.plain if ref is not None else reference
    if me and ref is not None and (mine := fj.Ref.parse(me)) is not None and mine.plain == ref.plain:
        return f"you ({shown})" if with_reference else "you"
    names: dict[str, str] = g.setdefault("person_names", {})
    if shown not in names:
        names[shown] = _read_name(client, ref)
    name = names[shown]
    if not name:
        return shown
    return f"{name} ({shown})" if with_reference else name


def _read_name(client: Any, ref: fj.Ref | None) -> str:
    try:
        if ref is not None and ref.type == "PractitionerRole":
            role = client.read("PractitionerRole", ref.id)
            ref = fj.Ref.parse(
                ((role.get("practitioner") or {}) if isinstance(role, dict) else {}).get("reference")
            )
        if ref is not None and ref.type in ("Practitioner", "Patient", "RelatedPerson"):
            return human_name(client.read(ref.type, ref.id))
    except (FhirError, ValueError):
        pass
    return ""


def human_name(resource: Any) -> str:
    """The official (else the first) HumanName of a resource, as text."""
    if not isinstance(resource, dict):
        return ""
    names = [n for n in resource.get("name") or [] if isinstance(n, dict)]
    chosen = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    text = chosen.get("text")
    if isinstance(text, str) and text.strip():
        return text.strip()
    parts = [*(str(p) for p in chosen.get("prefix") or []), *(str(p) for p in chosen.get("given") or [])]
    parts.append(str(chosen.get("family") or ""))
    return " ".join(p for p in parts if p).strip()
