"""The blueprint ``main`` object and what its route modules share: session keys, the per-launch state in
the server-side session, the FHIR client of the launch and small JSON helpers.

Routes are not registered here but in ``review``, ``write``, ``exam`` and ``theme``;
``smart_app.web.views`` imports them all, so use ``views.bp`` to get the blueprint with every route.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from flask import Blueprint, abort, current_app, session

from smart_app.fhir.client import FhirClient
from smart_app.smart.scopes import ScopeSet
from smart_app.web.session import access_token_provider

bp = Blueprint(
    "main", __name__, template_folder="templates", static_folder="static", static_url_path="/assets"
)

#: Session key of this blueprint's per-launch state (server-side session); reset by a new launch.
STATE_KEY = "main"
#: The JSON-able parts of the last review.
REVIEW_KEY = "review"
#: Exam Observations recorded without the Observation write scope.
UNSAVED_EXAM_KEY = "unsaved_exam"
#: The sanitised smart_style_url values.
STYLE_KEY = "smart_style"


# --- small helpers ----------------------------------------------------------------------------------------
def _smart() -> dict[str, Any]:
    smart = session.get("smart")
    if not isinstance(smart, dict):
        abort(401)
    return smart


def _launch_key(smart: dict[str, Any]) -> str:
    """Identifies one launch, so state kept for one patient never leaks into another launch."""
    if smart.get("launch_id"):
        return str(smart["launch_id"])
    parts = [smart.get(k) for k in ("iss", "patient", "encounter", "fhir_user", "registration_id")]
    return _digest(parts)


def _state() -> dict[str, Any]:
    smart = session.get("smart")
    key = _launch_key(smart) if isinstance(smart, dict) else ""
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


def _scopes(smart: dict[str, Any]) -> ScopeSet:
    return ScopeSet.parse(str(smart.get("scope") or ""))


def _client(smart: dict[str, Any]) -> FhirClient:
    cfg = current_app.config
    timeout = tuple(cfg.get("FHIR_TIMEOUT", (3.05, 30.0)))
    return FhirClient(
        smart["fhir_base"],
        token=access_token_provider(),
        timeout=(float(timeout[0]), float(timeout[1])),
        max_retries=int(cfg.get("FHIR_MAX_RETRIES", 3)),
    )


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _pretty(resource: Any) -> str:
    return json.dumps(resource, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def _ref(resource: dict[str, Any]) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"
