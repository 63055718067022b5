"""The "EHR" a clinician sees: a patient list, and a chart that launches the app in an iframe from
another origin (SMART App Launch 2.x "EHR Launch": ``{launch URL}?iss=...&launch=...``)."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, jsonify, redirect, render_template, request
from werkzeug.wrappers import Response as WerkzeugResponse

from ..directory import display_name, latest_encounter, patients, practitioners
from ..oauth import Launch
from ..state import fhir_base, get_state

bp = Blueprint("ehr", __name__)


@bp.get("/")
def root() -> WerkzeugResponse:
    return redirect("/ehr", code=302)


@bp.get("/ehr")
def index() -> str:
    store = get_state().store
    return render_template("ehr.html", patients=patients(store), practitioners=practitioners(store))


class LaunchRequestError(ValueError):
    pass


def create_launch(patient_id: str, encounter: str | None, user: str | None) -> dict[str, str | None]:
    """Record a launch context and return the app URL that carries it."""
    state = get_state()
    if not patient_id or state.store.read("Patient", patient_id) is None:
        raise LaunchRequestError("unknown patient")
    if encounter is None:
        encounter = latest_encounter(state.store, patient_id)
    elif encounter == "":
        encounter = None
    elif state.store.read("Encounter", encounter.removeprefix("Encounter/")) is None:
        raise LaunchRequestError("unknown encounter")
    else:
        encounter = "Encounter/" + encounter.removeprefix("Encounter/")
    user = user or str(current_app.config["DEFAULT_USER"])
    if not user.startswith("Practitioner/") or state.store.read("Practitioner", user[13:]) is None:
        raise LaunchRequestError("unknown practitioner")
    launch = Launch(
        patient=patient_id,
        encounter=encounter.removeprefix("Encounter/") if encounter else None,
        user=user,
        expires_at=time.time() + float(current_app.config["LAUNCH_TTL"]),
    )
    launch_id = state.auth.add_launch(launch)
    url = f"{current_app.config['APP_LAUNCH_URL']}?{urlencode({'iss': fhir_base(), 'launch': launch_id})}"
    return {
        "launch": launch_id,
        "url": url,
        "iss": fhir_base(),
        "patient": patient_id,
        "encounter": launch.encounter,
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
    html = render_template(
        "ehr_launch.html",
        launch_url=launch["url"],
        patient_name=display_name(patient),
        encounter=launch["encounter"],
        user_name=display_name(user),
    )
    return Response(html)


def _json_launch(patient: str, encounter: str | None, user: str | None, status: int) -> Response:
    try:
        body = create_launch(patient, encounter, user)
    except LaunchRequestError as exc:
        response = jsonify({"error": "invalid_request", "error_description": str(exc)})
        response.status_code = 400
        return response
    response = jsonify(body)
    response.status_code = status
    return response


@bp.post("/ehr/launches")
def launches() -> Response:
    """JSON (or form) ``{patient, encounter?, user?}`` → 201 with the launch id and URL."""
    raw = request.get_json(silent=True) if request.is_json else request.form.to_dict()
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    return _json_launch(str(data.get("patient", "")), data.get("encounter"), data.get("user"), 201)


@bp.get("/ehr/launch-url")
def launch_url() -> Response:
    return _json_launch(
        request.args.get("patient", ""), request.args.get("encounter"), request.args.get("user"), 200
    )
