"""Feedback on cards: ``POST {baseUrl}/cds-services/{id}/feedback`` (CDS Hooks 2.0 "Feedback").

Each item names a card by its ``uuid``, an ``outcome`` (``accepted`` with the ids of the accepted
suggestions, or ``overridden`` with an optional ``overrideReason``) and an ``outcomeTimestamp``. Each
becomes one event of the app's audit log (``kind`` ``cds-feedback``); the override reason is kept as its
code, and the clinician's ``userComment`` is never kept (free text can quote patient data).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from smart_app import fhirjson as fj
from smart_app.cds.errors import CdsError, bad_request

MAX_BYTES = 256 * 1024
MAX_ITEMS = 100
OUTCOMES = ("accepted", "overridden")


@dataclass(frozen=True)
class Feedback:
    """One feedback item, checked."""

    card: str
    outcome: str
    accepted: tuple[str, ...] = ()
    override_system: str | None = None
    override_code: str | None = None
    outcome_time: datetime | None = None

    def audit_fields(self) -> dict[str, Any]:
        return {
            "card": self.card,
            "outcome": self.outcome,
            "suggestions": list(self.accepted) or None,
            "override_reason": self.override_code,
        }


def parse_feedback(body: bytes, *, max_bytes: int = MAX_BYTES) -> list[Feedback]:
    """The items of a feedback request; raises ``CdsError`` 400 (413 when too large) naming the fault."""
    try:
        data = fj.decode_json(body, max_bytes=max_bytes)
    except fj.JsonInputError as exc:
        raise CdsError(
            413 if len(body) > max_bytes else 400, "invalid_request", f"The body is {exc.reason}."
        ) from None
    items = data.get("feedback") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise bad_request("The body must be an object with a non-empty feedback array.")
    if len(items) > MAX_ITEMS:
        raise bad_request(f"At most {MAX_ITEMS} feedback items per request.")
    return [_item(item, f"feedback[{index}]") for index, item in enumerate(items)]


def _item(item: Any, where: str) -> Feedback:
    if not isinstance(item, dict):
        raise bad_request(f"{where} must be an object.")
    card = item.get("card")
    if not isinstance(card, str) or not _is_uuid(card):
        raise bad_request(f"{where}.card must be the uuid of a card.")
    outcome = item.get("outcome")
    if outcome not in OUTCOMES:
        raise bad_request(f"{where}.outcome must be accepted or overridden.")
    when = item.get("outcomeTimestamp")
    moment = _instant(when)
    if moment is None:
        raise bad_request(f"{where}.outcomeTimestamp must be an RFC 3339 date-time in UTC.")
    accepted: tuple[str, ...] = ()
    if outcome == "accepted":
        suggestions = item.get("acceptedSuggestions")
        if not isinstance(suggestions, list) or not suggestions:
            raise bad_request(f"{where}.acceptedSuggestions is required for an accepted outcome.")
        ids = [s.get("id") if isinstance(s, dict) else None for s in suggestions]
        if not all(isinstance(i, str) and _is_uuid(i) for i in ids):
            raise bad_request(f"{where}.acceptedSuggestions[].id must be the uuid of a suggestion.")
        accepted = tuple(str(i).lower() for i in ids)
    system = code = None
    reason = item.get("overrideReason")
    if reason is not None:
        if outcome != "overridden" or not isinstance(reason, dict):
            raise bad_request(
                f"{where}.overrideReason belongs to an overridden outcome and must be an object."
            )
        coding = reason.get("reason")
        if coding is not None:
            if not isinstance(coding, dict) or not isinstance(coding.get("code"), str) or not coding["code"]:
                raise bad_request(f"{where}.overrideReason.reason must be a Coding with a code.")
            system = coding.get("system") if isinstance(coding.get("system"), str) else None
            code = str(coding["code"])
        comment = reason.get("userComment")
        if comment is not None and not isinstance(comment, str):
            raise bad_request(f"{where}.overrideReason.userComment must be a string.")
    return Feedback(
        card=card.lower(),
        outcome=str(outcome),
        accepted=accepted,
        override_system=system,
        override_code=code,
        outcome_time=moment,
    )


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _instant(value: Any) -> datetime | None:
    if not isinstance(value, str) or "T" not in value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None
