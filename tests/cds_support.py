"""Helpers for the CDS Hooks tests: a registered CDS client with its own keys, hook bodies, prefetch built
from a record, and a checker of the CDS Hooks 2.0 response shapes (the spec's "Card Attributes",
"Source", "Suggestion", "Action", "Link" and "Reasons for rejecting a card" tables)."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from smart_app.cds.prefetch import PATIENT_KEY, SEARCH_KEYS

PUBLIC_URL = "https://cds.test"
EHR_ISS = "https://ehr.test"
FHIR_BASE = "https://ehr.test/fhir"
PATIENT_VIEW = "back-mice-patient-view"
ORDER_SIGN = "back-mice-order-sign"
CASES_DIR = Path(__file__).resolve().parent / "cases"


class ClientKeys:
    """A CDS client's signing key and the JWTs it mints (ES384 by default, as CDS Hooks 2.0 recommends)."""

    def __init__(self, alg: str = "ES384") -> None:
        self.alg = alg
        self.key: ECKey | RSAKey = (
            ECKey.generate_key("P-384", private=True)
            if alg.startswith("ES")
            else RSAKey.generate_key(2048, private=True)
        )
        self.kid = self.key.thumbprint()

    def jwks(self) -> dict[str, Any]:
        jwk = self.key.as_dict(private=False)
        jwk.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        return {"keys": [jwk]}

    def token(self, aud: str | list[str], *, header: dict[str, Any] | None = None, **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": EHR_ISS,
            "aud": aud,
            "exp": now + 120,
            "iat": now,
            "jti": str(uuid.uuid4()),
        }
        body.update(claims)
        head = {"alg": self.alg, "typ": "JWT", "kid": self.kid, **(header or {})}
        return jwt.encode(
            {k: v for k, v in head.items() if v is not None},
            {k: v for k, v in body.items() if v is not None},
            self.key,
            algorithms=[self.alg],
        )


def registration(keys: ClientKeys | None = None, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "kind": "cds-client",
        "id": "ehr-cds",
        "name": "Test EHR (CDS client)",
        "iss": EHR_ISS,
        "fhir_servers": [FHIR_BASE],
    }
    if keys is not None:
        data["jwks"] = keys.jwks()
    data.update(fields)
    return data


def make_app(tmp_path: Path, *registrations: dict[str, Any], **config: Any) -> Flask:
    """The app with the given CDS client registrations in its registrations directory."""
    from smart_app import create_app

    regs = tmp_path / "registrations"
    regs.mkdir(exist_ok=True)
    for index, data in enumerate(registrations):
        (regs / f"cds-{index}.json").write_text(json.dumps(data))
    return create_app(
        {
            "TESTING": True,
            "PUBLIC_URL": PUBLIC_URL,
            "REGISTRATIONS_DIRS": [str(regs)],
            "FHIR_MAX_RETRIES": 0,
            "INSTANCE_PATH": str(tmp_path / "instance"),
            **config,
        }
    )


def service_url(service_id: str, feedback: bool = False) -> str:
    return f"{PUBLIC_URL}/cds-services/{service_id}" + ("/feedback" if feedback else "")


def post(client: FlaskClient, keys: ClientKeys, service_id: str, body: Any, *, feedback: bool = False) -> Any:
    """POST ``body`` to the service (or its feedback endpoint) with a fresh JWT of ``keys``."""
    url = service_url(service_id, feedback)
    path = url.removeprefix(PUBLIC_URL)
    return client.post(path, json=body, headers={"Authorization": f"Bearer {keys.token(url)}"})


def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [
            {"fullUrl": f"{FHIR_BASE}/{r['resourceType']}/{r['id']}", "resource": r} for r in resources
        ],
    }


def prefetch_of(
    patient: dict[str, Any], resources: list[dict[str, Any]], *, leave_out: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The prefetch a client gives for the discovery templates (types in ``leave_out`` not satisfied)."""
    out: dict[str, Any] = {}
    if "Patient" not in leave_out:
        out[PATIENT_KEY] = patient
    for key, rtype in SEARCH_KEYS.items():
        if rtype not in leave_out:
            out[key] = searchset([r for r in resources if r["resourceType"] == rtype])
    return out


def hook_body(
    patient_id: str = "p1",
    *,
    hook: str = "patient-view",
    prefetch: dict[str, Any] | None = None,
    user: str = "Practitioner/dr1",
    encounter: str | None = None,
    authorization: dict[str, Any] | None = None,
    fhir_server: str | None = FHIR_BASE,
    draft_orders: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    context: dict[str, Any] = {"userId": user, "patientId": patient_id}
    if encounter:
        context["encounterId"] = encounter
    if draft_orders is not None:
        context["draftOrders"] = {"resourceType": "Bundle", "entry": [{"resource": o} for o in draft_orders]}
    body: dict[str, Any] = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context}
    if prefetch is not None:
        body["prefetch"] = prefetch
    if authorization is not None:
        body["fhirAuthorization"] = authorization
        body["fhirServer"] = fhir_server
    return body


def authorization(token: str = "cds-access-token", scope: str = "patient/*.rs") -> dict[str, Any]:
    return {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": scope,
        "subject": "back-mice-cds",
        "patient": "p1",
    }


def load_case(name: str) -> dict[str, Any]:
    return dict(json.loads((CASES_DIR / name).read_text(encoding="utf-8")))


def case_today(name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A clinical case's Patient and resources with every date moved so its ``as_of`` falls on today."""
    from launch.sandbox.dates import shift_dates

    case = load_case(name)
    days = (datetime.now(UTC).date() - date.fromisoformat(case["as_of"][:10])).days
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": case["patient"]}, *({"resource": r} for r in case["resources"])],
    }
    moved = [e["resource"] for e in shift_dates(bundle, days)["entry"]]
    return moved[0], moved[1:]


def order(
    code: str = "11900",
    system: str = "http://www.ama-assn.org/go/cpt",
    oid: str = "sr-1",
    patient: str = "p1",
) -> dict[str, Any]:
    """A draft ServiceRequest as an EHR puts it in ``draftOrders``."""
    return {
        "resourceType": "ServiceRequest",
        "id": oid,
        "status": "draft",
        "intent": "order",
        "code": {"coding": [{"system": system, "code": code, "display": "Injection, intralesional"}]},
        "subject": {"reference": f"Patient/{patient}"},
    }


# -- CDS Hooks 2.0 response shapes --
INDICATORS = ("info", "warning", "critical")
SELECTION = ("at-most-one", "any")
ACTION_TYPES = ("create", "update", "delete")
LINK_TYPES = ("absolute", "smart")


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _absolute_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("https://", "http://"))


def card_problems(card: Any) -> list[str]:
    """What in ``card`` breaks the CDS Hooks 2.0 card shape (empty list: none)."""
    if not isinstance(card, dict):
        return ["a card must be an object"]
    problems = []
    if "uuid" in card and not _nonempty_str(card["uuid"]):
        problems.append("uuid must be a string")
    summary = card.get("summary")
    if not _nonempty_str(summary) or len(summary) >= 140 or "\n" in summary:
        problems.append("summary must be one line of fewer than 140 characters")
    if "detail" in card and not _nonempty_str(card["detail"]):
        problems.append("detail must be a non-empty (markdown) string")
    if card.get("indicator") not in INDICATORS:
        problems.append(f"indicator must be one of {INDICATORS}")
    source = card.get("source")
    if not isinstance(source, dict) or not _nonempty_str(source.get("label")):
        problems.append("source.label is required")
    elif "url" in source and not _absolute_url(source["url"]):
        problems.append("source.url must be an absolute URL")
    elif "topic" in source and problems_of_coding(source["topic"], display_required=False):
        problems.append("source.topic must be a Coding")
    suggestions = card.get("suggestions")
    if suggestions is not None:
        if not isinstance(suggestions, list) or not suggestions:
            problems.append("suggestions must be a non-empty array")
        else:
            if card.get("selectionBehavior") not in SELECTION:
                problems.append("selectionBehavior is required with suggestions")
            for s in suggestions:
                problems += [f"suggestion: {p}" for p in suggestion_problems(s)]
    elif "selectionBehavior" in card and card["selectionBehavior"] not in SELECTION:
        problems.append("selectionBehavior has an unknown value")
    for reason in card.get("overrideReasons") or []:
        if problems_of_coding(reason, display_required=True):
            problems.append("overrideReasons must be Codings with a display")
    for link in card.get("links") or []:
        if (
            not isinstance(link, dict)
            or not _nonempty_str(link.get("label"))
            or not _absolute_url(link.get("url"))
        ):
            problems.append("a link needs a label and an absolute url")
        elif link.get("type") not in LINK_TYPES:
            problems.append("link.type must be absolute or smart")
        elif "appContext" in link and link["type"] != "smart":
            problems.append("appContext is only for smart links")
    for key, value in card.items():
        if value is None or value == [] or value == "":
            problems.append(f"{key} must not be null or empty")
    return problems


def suggestion_problems(suggestion: Any) -> list[str]:
    if not isinstance(suggestion, dict) or not _nonempty_str(suggestion.get("label")):
        return ["a suggestion needs a label"]
    problems = []
    if "uuid" in suggestion and not _nonempty_str(suggestion["uuid"]):
        problems.append("uuid must be a string")
    if "isRecommended" in suggestion and not isinstance(suggestion["isRecommended"], bool):
        problems.append("isRecommended must be a boolean")
    for action in suggestion.get("actions") or []:
        problems += action_problems(action)
    return problems


def action_problems(action: Any) -> list[str]:
    if not isinstance(action, dict) or action.get("type") not in ACTION_TYPES:
        return ["action.type must be create, update or delete"]
    problems = []
    if not _nonempty_str(action.get("description")):
        problems.append("action.description is required")
    if action["type"] in ("create", "update"):
        resource = action.get("resource")
        if not isinstance(resource, dict) or not _nonempty_str(resource.get("resourceType")):
            problems.append(f"a {action['type']} action needs a FHIR resource")
    if action["type"] == "delete" and not _nonempty_str(action.get("resourceId")):
        problems.append("a delete action names its resourceId")
    return problems


def problems_of_coding(coding: Any, *, display_required: bool) -> list[str]:
    if not isinstance(coding, dict) or not _nonempty_str(coding.get("code")):
        return ["a Coding needs a code"]
    if display_required and not _nonempty_str(coding.get("display")):
        return ["a Coding here needs a display"]
    return []


def response_problems(body: Any) -> list[str]:
    """What in a service response breaks the CDS Hooks 2.0 shape."""
    if not isinstance(body, dict) or not isinstance(body.get("cards"), list):
        return ["the response must be an object with a cards array"]
    problems = []
    for index, card in enumerate(body["cards"]):
        problems += [f"cards[{index}]: {p}" for p in card_problems(card)]
    for action in body.get("systemActions") or []:
        problems += action_problems(action)
    return problems


def audit_lines(app: Flask) -> list[dict[str, Any]]:
    path = Path(app.instance_path) / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
