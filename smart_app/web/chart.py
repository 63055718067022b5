"""What the app wrote, opened in the app's own view (``/chart/<type>/<id>``, blueprint ``main``): never the
EHR's raw FHIR answer inside the frame (a link to the FHIR server would replace the app with a 401 or a
JSON document).

Only the types the app writes (``smart_app.drafts.written.WRITTEN``) are shown, read with the launch's
token, and only when they are about the launched patient (a Provenance: when its first target is).
"""

from __future__ import annotations

from typing import Any

from flask import abort, render_template

from smart_app import fhirjson as fj
from smart_app.drafts.build import narrative_text
from smart_app.drafts.written import WRITTEN, resource_state, summary_lines
from smart_app.fhir.errors import FhirError
from smart_app.web.common import _pretty, banner_for, bp, person_name
from smart_app.web.handoff import audit_launch, audit_launch_required, in_hand_off
from smart_app.web.session import get_fhir
from smart_app.web.write import STATE_WORDS, about_patient

#: The written types in words.
TYPE_WORDS = {
    "ClinicalImpression": "Assessment (draft)",
    "DocumentReference": "Assessment note (draft)",
    "ServiceRequest": "Procedure suggestion (draft)",
    "DetectedIssue": "Red flag (draft)",
    "Observation": "Exam finding",
    "Provenance": "Record of how it was written (Provenance)",
    "Device": "The app",
}


def _targets(resource: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    for target in resource.get("target") or []:
        ref = fj.Ref.parse((target or {}).get("reference")) if isinstance(target, dict) else None
        if ref is not None:
            out.append({"type": ref.type, "id": ref.id, "label": TYPE_WORDS.get(ref.type, ref.type)})
    return out


def _agents(client: Any, resource: dict[str, Any], me: str | None) -> list[dict[str, str]]:
    out = []
    for agent in resource.get("agent") or []:
        if not isinstance(agent, dict):
            continue
        role = fj.concept_label(agent.get("type")) or "agent"
        who = (agent.get("who") or {}).get("reference") if isinstance(agent.get("who"), dict) else None
        ref = fj.Ref.parse(who)
        name = (
            "the back mice decision-support app" if ref and ref.type == "Device" else person_name(client, who)
        )
        out.append({"role": role, "who": name})
    return out


@bp.get("/chart/<rtype>/<rid>")
@audit_launch_required
def chart_resource(rtype: str, rid: str) -> tuple[str, int]:
    """One resource the app wrote, read from the chart and shown in words (from the launched frame, or
    from the audit page opened in a new tab)."""
    launch = audit_launch()
    assert launch is not None
    if rtype not in WRITTEN or not fj.ID_RE.fullmatch(rid):
        abort(404)
    client = get_fhir()
    try:
        resource = client.read(rtype, rid)
    except FhirError as exc:
        if exc.status in (403, 404, 410):
            abort(404)
        raise
    if rtype == "Provenance":
        targets = _targets(resource)
        if not any(_target_about_patient(client, t, launch.patient) for t in targets[:1]):
            abort(404)
    elif rtype != "Device" and not about_patient(resource, launch.patient):
        abort(404)
    page = render_template(
        "chart_resource.html",
        banner=banner_for(launch),
        type_words=TYPE_WORDS.get(rtype, rtype),
        rtype=rtype,
        rid=rid,
        state=STATE_WORDS.get(resource_state(resource), ""),
        lines=summary_lines(resource),
        narrative=narrative_text(str((resource.get("text") or {}).get("div") or "")),
        version=fj.version_id(resource),
        updated=(resource.get("meta") or {}).get("lastUpdated")
        if isinstance(resource.get("meta"), dict)
        else None,
        recorded=resource.get("recorded"),
        agents=_agents(client, resource, launch.fhir_user) if rtype == "Provenance" else [],
        targets=_targets(resource),
        policy=resource.get("policy") or [],
        sources=[
            str((e.get("what") or {}).get("reference"))
            for e in resource.get("entity") or []
            if isinstance(e, dict) and isinstance(e.get("what"), dict)
        ],
        json=_pretty(resource),
        in_frame=not in_hand_off(),
    )
    return page, 200


def _target_about_patient(client: Any, target: dict[str, str], patient: str) -> bool:
    try:
        return about_patient(client.read(target["type"], target["id"]), patient)
    except (FhirError, ValueError):
        return False
