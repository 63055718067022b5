"""Focused-exam capture: the exam form becomes Observations, written to the chart or kept in this session
(blueprint ``main``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from flask import abort, flash, redirect, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from smart_app import fhirjson as fj
from smart_app.fhir.errors import FhirError
from smart_app.smart.launch import Launch
from smart_app.vocabulary import FINDING_SYSTEM, SNOMED, UCUM
from smart_app.vocabulary import OBSERVATION_CATEGORY as OBS_CATEGORY
from smart_app.web.common import UNSAVED_EXAM_KEY, _get, _pop, _set, bp
from smart_app.web.session import get_fhir, launch_required, require_launch

# --- focused exam (docs/clinical-criteria.md#findings) --------------------------------------------------
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
#: Verified body-site codes (docs/clinical-criteria.md#typical_site); other sites are sent as text.
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


def _unsaved_exam() -> list[dict[str, Any]]:
    exam = _get(UNSAVED_EXAM_KEY)
    return [r for r in exam if isinstance(r, dict)] if isinstance(exam, list) else []


# --- focused exam (issue 5 item 2) ------------------------------------------------------------------------
class ExamError(ValueError):
    """The exam form was not filled in a usable way; the message says which field."""


def _choice(name: str, allowed: Iterable[str], default: str = "") -> str:
    value = request.form.get(name, default).strip()
    if value and value not in allowed:
        raise ExamError(f"Unexpected value for {name}.")
    return value


def _observation(launch: Launch, code: dict[str, Any], now: str, **fields: Any) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": "exam", "display": "Exam"}]}],
        "code": {"coding": [code], "text": code.get("display", "")},
        "subject": {"reference": f"Patient/{launch.patient}"},
        "effectiveDateTime": now,
        "issued": now,
    }
    if launch.encounter:
        obs["encounter"] = {
            "reference": f"Encounter/{launch.encounter}" if "/" not in launch.encounter else launch.encounter
        }
    if launch.fhir_user:
        obs["performer"] = [{"reference": launch.fhir_user}]
    obs.update(fields)
    return obs


def exam_observations(launch: Launch, form: dict[str, str], now: str) -> list[dict[str, Any]]:
    """Observations for the recorded focused exam, coded as the criteria read them."""
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
        obs = _observation(
            launch,
            nodule_code,
            now,
            valueCodeableConcept={"coding": [PRESENT if nodule == "yes" else ABSENT]},
        )
        if body_site and nodule == "yes":
            obs["bodySite"] = body_site
        out.append(obs)
        if nodule == "yes":
            for key, label in (("firm", "Nodule firm"), ("mobile", "Nodule mobile")):
                if form.get(key) == "on":
                    out.append(
                        _observation(
                            launch,
                            {"system": FINDING_SYSTEM, "code": f"nodule-{key}", "display": label},
                            now,
                            valueBoolean=True,
                        )
                    )
    reproduced = form.get("pain_reproduced", "")
    if reproduced in ("yes", "no"):
        obs = _observation(
            launch,
            {
                "system": FINDING_SYSTEM,
                "code": "nodule-pain-reproduced",
                "display": "Pressure on the nodule reproduces the typical pain",
            },
            now,
            valueCodeableConcept={"coding": [PRESENT if reproduced == "yes" else ABSENT]},
        )
        if body_site:
            obs["bodySite"] = body_site
        out.append(obs)
    neuro = form.get("neuro", "")
    if neuro == "no":
        for code, display in NEURO_CODES.values():
            out.append(
                _observation(
                    launch,
                    {"system": SNOMED, "code": code, "display": display},
                    now,
                    valueCodeableConcept={"coding": [ABSENT]},
                )
            )
    elif neuro == "yes":
        code, display = NEURO_CODES[form.get("neuro_kind") or "weakness"]
        out.append(
            _observation(
                launch,
                {"system": SNOMED, "code": code, "display": display},
                now,
                valueCodeableConcept={"coding": [PRESENT]},
            )
        )
    relief = form.get("relief", "")
    if relief != "":
        relief_code = {
            "system": FINDING_SYSTEM,
            "code": "diagnostic-injection-relief",
            "display": "Relief after diagnostic local anaesthetic injection",
        }
        quantity = {"value": int(relief), "unit": "%", "system": UCUM, "code": "%"}
        out.append(_observation(launch, relief_code, now, valueQuantity=quantity))
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
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": r,
                "request": {"method": "POST", "url": "Observation"},
            }
            for r in resources
        ],
    }


def _locations(response: dict[str, Any]) -> Iterator[str]:
    for entry in response.get("entry") or []:
        rtype, rid, _ = fj.location_parts((entry.get("response") or {}).get("location"))
        if rtype and rid:
            yield f"{rtype}/{rid}"


@bp.post("/exam")
@launch_required
def exam() -> BaseResponse:
    """Record the focused exam; write it when patient/Observation create is granted, else keep it here.
    A patient-facing launch records no exam (a patient is not the performer of a clinical exam)."""
    launch = require_launch()
    if launch.read_only:
        abort(403, description="This app was opened by a patient: it records no exam and writes nothing.")
    try:
        form = _parse_exam_form()
    except ExamError as exc:
        flash(f"The exam was not recorded: {exc}", "error")
        return redirect(url_for("main.review", _anchor="exam"), code=303)
    now = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    observations = exam_observations(launch, form, now)
    if not observations:
        flash("Nothing was recorded: every question was left as 'not examined'.", "warning")
        return redirect(url_for("main.review", _anchor="exam"), code=303)
    if launch.scopes.can_write("Observation"):
        try:
            response = get_fhir().transaction(_transaction(observations))
        except FhirError as exc:
            reasons = "; ".join(exc.issues() or [exc.message])
            flash(f"The EHR did not accept the exam, so nothing was saved: {reasons}", "error")
            return redirect(url_for("main.review", _anchor="exam"), code=303)
        refs = list(_locations(response))
        flash(
            f"Exam saved to the chart ({len(observations)} Observations"
            + (f": {', '.join(refs)}" if refs else "")
            + "). The assessment below includes it.",
            "success",
        )
    else:
        kept = _unsaved_exam()
        for i, obs in enumerate(observations, start=len(kept) + 1):
            obs["id"] = f"unsaved-exam-{i}"
        _set(UNSAVED_EXAM_KEY, [*kept, *observations])
        flash(
            "Exam NOT saved to the chart: this launch was not granted permission to create Observations. "
            "It is used for this session's assessment only.",
            "warning",
        )
    return redirect(url_for("main.review"), code=303)


@bp.post("/exam/clear")
@launch_required
def exam_clear() -> BaseResponse:
    """Forget the exam kept in this session only."""
    _pop(UNSAVED_EXAM_KEY)
    flash("The unsaved exam was discarded.", "success")
    return redirect(url_for("main.review"), code=303)
