"""The "EHR" a clinician sees: a patient list, and a chart that launches the app in an iframe from
another origin (SMART App Launch 2.x "EHR Launch": ``{launch URL}?iss=...&launch=...``), with the cards
of the CDS Hooks ``patient-view`` services above it (``cds.py``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, jsonify, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as WerkzeugResponse

from .. import cds
from ..context import ContextError, checked_items, encounter_items
from ..directory import display_name, latest_encounter, patients, practitioners
from ..oauth import Launch
from ..state import fhir_base, get_state
from ..store import patient_references

bp = Blueprint("ehr", __name__)


@bp.get("/")
def root() -> WerkzeugResponse:
    return redirect("/ehr", code=302)


@bp.get("/ehr")
def index() -> str:
    store = get_state().store
    return render_template(
        "ehr.html",
        patients=patients(store),
        practitioners=practitioners(store),
        latest_encounter=current_app.config["EHR_LAUNCH_ENCOUNTER"] == "latest",
    )


class LaunchRequestError(ValueError):
    pass


#: The ``encounter`` of a launch request that asks for the patient's latest Encounter.
LATEST_ENCOUNTER = "@latest"


def create_launch(
    patient_id: str, encounter: str | None, user: str | None, fhir_context: Any = None
) -> dict[str, Any]:
    """Record a launch context and return the app URL that carries it.

    ``encounter``: one of the patient's Encounters (``<id>`` or ``Encounter/<id>``), ``""`` for none,
    ``@latest`` for the patient's latest, or ``None`` to follow ``EHR_LAUNCH_ENCOUNTER`` ("latest" or
    "named": only a named one). ``fhir_context``: extra SMART ``fhirContext`` items; items naming the
    encounter in the ``EHR_LAUNCH_FHIR_CONTEXT`` forms come first.
    """
    state = get_state()
    config = current_app.config
    if not patient_id or state.store.read("Patient", patient_id) is None:
        raise LaunchRequestError("unknown patient")
    if encounter is None:
        encounter = LATEST_ENCOUNTER if config["EHR_LAUNCH_ENCOUNTER"] == "latest" else ""
    record = None
    if encounter == LATEST_ENCOUNTER:
        record = latest_encounter(state.store, patient_id)
    elif encounter:
        record = state.store.read("Encounter", encounter.removeprefix("Encounter/"))
        if record is None or f"Patient/{patient_id}" not in patient_references(record):
            raise LaunchRequestError("unknown encounter for this patient")
    user = user or str(config["DEFAULT_USER"])
    if not user.startswith("Practitioner/") or state.store.read("Practitioner", user[13:]) is None:
        raise LaunchRequestError("unknown practitioner")
    try:
        items = checked_items(fhir_context)
    except ContextError as exc:
        raise LaunchRequestError(str(exc)) from None
    if record is not None:
        items = encounter_items(record, config["EHR_LAUNCH_FHIR_CONTEXT"], fhir_base()) + items
    launch = Launch(
        patient=patient_id,
        encounter=str(record["id"]) if record is not None else None,
        user=user,
        expires_at=state.auth.clock() + float(config["LAUNCH_TTL"]),
        fhir_context=tuple(items),
    )
    launch_id = state.auth.add_launch(launch)
    url = f"{config['APP_LAUNCH_URL']}?{urlencode({'iss': fhir_base(), 'launch': launch_id})}"
    return {
        "launch": launch_id,
        "url": url,
        "iss": fhir_base(),
        "patient": patient_id,
        "encounter": launch.encounter,
        "fhirContext": items,
        "user": user,
    }


@bp.get("/ehr/launch")
def launch_page() -> Response:
    """Open a chart: the app runs in an iframe, as in a real EHR."""
    try:
        launch = create_launch(
            request.args.get("patient", ""), request.args.get("encounter"), request.args.get("user")
        )
    except LaunchRequestError as exc:
        return Response(render_template("error.html", error="invalid_request", description=str(exc)), 400)
    store = get_state().store
    patient = store.read("Patient", str(launch["patient"])) or {}
    user = store.read("Practitioner", str(launch["user"])[13:]) or {}
    calls = cds.patient_view(str(launch["patient"]), str(launch["user"]), launch["encounter"])
    html = render_template(
        "ehr_launch.html",
        launch_url=launch["url"],
        patient_name=display_name(patient),
        encounter=launch["encounter"],
        user_name=display_name(user),
        cds_calls=cds.with_cards_shown(calls),
        smart_link_allowed=cds.smart_link_allowed,
    )
    return Response(html)


# -- CDS Hooks: the cards' actions -----------------------------------------------------------------------
@bp.get("/ehr/cds/jwks.json")
def cds_jwks() -> Response:
    """The public key of the sandbox's CDS client JWTs (their ``jku``)."""
    return jsonify(cds.public_jwks())


def _chart_url(call: cds.CdsCall) -> str:
    query = {"patient": call.patient, "user": call.user, "encounter": call.encounter or ""}
    return f"{url_for('ehr.launch_page')}?{urlencode(query)}"


def _cds_result(
    title: str, message: str, call: cds.CdsCall | None, written: list[str], status: int
) -> Response:
    html = render_template(
        "ehr_cds_result.html",
        title=title,
        message=message,
        written=written,
        chart_url=_chart_url(call) if call is not None else url_for("ehr.index"),
    )
    return Response(html, status)


@bp.post("/ehr/cds/accept")
def cds_accept() -> Response:
    """Accept a card's suggestion: its actions are written through the FHIR API, then feedback is sent."""
    form = request.form
    call = None
    try:
        call = cds.find_call(form.get("hook_instance", ""))
        written = cds.accept(call.hook_instance, form.get("card", ""), form.get("suggestion", ""))
    except cds.CdsClientError as exc:
        return _cds_result("Suggestion not applied", str(exc), call, [], 400)
    return _cds_result("Suggestion accepted", "Written to the chart:", call, written, 200)


@bp.post("/ehr/cds/dismiss")
def cds_dismiss() -> Response:
    """Dismiss a card with the override reason chosen; the service gets ``overridden`` feedback."""
    form = request.form
    call = None
    try:
        call = cds.find_call(form.get("hook_instance", ""))
        cds.dismiss(call.hook_instance, form.get("card", ""), form.get("reason") or None)
    except cds.CdsClientError as exc:
        return _cds_result("Card not dismissed", str(exc), call, [], 400)
    return _cds_result("Card dismissed", "The service was told why.", call, [], 200)


@bp.get("/ehr/cds/launch")
def cds_launch() -> WerkzeugResponse:
    """A card's ``smart`` link: a new EHR launch of the app, in the chart's context."""
    try:
        call = cds.find_call(request.args.get("hook_instance", ""))
    except cds.CdsClientError as exc:
        return Response(render_template("error.html", error="invalid_request", description=str(exc)), 400)
    if not cds.smart_link_allowed(request.args.get("url", "")):
        return Response(
            render_template("error.html", error="invalid_request", description="not a registered SMART app"),
            400,
        )
    try:
        launch = create_launch(call.patient, call.encounter or "", call.user)
    except LaunchRequestError as exc:
        return Response(render_template("error.html", error="invalid_request", description=str(exc)), 400)
    return redirect(str(launch["url"]), code=303)


def _json_launch(
    patient: str, encounter: str | None, user: str | None, status: int, fhir_context: Any = None
) -> Response:
    try:
        body = create_launch(patient, encounter, user, fhir_context)
    except LaunchRequestError as exc:
        response = jsonify({"error": "invalid_request", "error_description": str(exc)})
        response.status_code = 400
        return response
    response = jsonify(body)
    response.status_code = status
    return response


@bp.post("/ehr/launches")
def launches() -> Response:
    """JSON (or form) ``{patient, encounter?, user?, fhirContext?}`` → 201 with the launch id and URL."""
    raw = request.get_json(silent=True) if request.is_json else request.form.to_dict()
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    encounter = data.get("encounter")
    return _json_launch(
        str(data.get("patient", "")),
        str(encounter) if encounter is not None else None,
        data.get("user"),
        201,
        data.get("fhirContext"),
    )


@bp.get("/ehr/launch-url")
def launch_url() -> Response:
    return _json_launch(
        request.args.get("patient", ""), request.args.get("encounter"), request.args.get("user"), 200
    )
