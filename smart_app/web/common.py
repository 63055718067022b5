"""The blueprint ``main`` and what its route modules share: the per-launch state kept in the server-side
session and small helpers.

Routes are not registered here but in ``review``, ``write``, ``exam`` and ``theme``;
``smart_app.web.views`` imports them all, so use ``views.bp`` to get the blueprint with every route.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from flask import Blueprint, session

from smart_app.smart.launch import Launch
from smart_app.web.session import current_launch

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


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _pretty(resource: Any) -> str:
    return json.dumps(resource, indent=2, sort_keys=True, ensure_ascii=False, default=str)
