"""The sandbox EHR as a CDS Hooks 2.0 client (https://cds-hooks.hl7.org/2.0/): when a chart opens it calls
the ``patient-view`` services it discovers at ``CDS_SERVICES_URL``, and shows their cards above the app.

- Discovery: ``GET {CDS_SERVICES_URL}``, reused for ``CDS_DISCOVERY_TTL`` seconds.
- The call: ``POST {CDS_SERVICES_URL}/{id}`` with ``hook``, ``hookInstance``, ``context`` (``userId``,
  ``patientId``, ``encounterId``), the service's prefetch templates satisfied from the store through the
  FHIR interactions (every page of a search in one Bundle; ``CDS_PREFETCH``), and ``fhirServer`` with a
  ``fhirAuthorization`` token for ``CDS_SERVICE_CLIENT_ID`` limited to the patient, read-only, revoked
  when the call returns (``CDS_FHIR_AUTHORIZATION``).
- Trust: each request carries a JWT (ES384) signed with the sandbox's CDS key, ``iss`` the sandbox's
  ``PUBLIC_URL``, ``aud`` the URL called, a fresh ``jti``, ``exp`` in 5 minutes, and ``jku`` pointing at
  ``/ehr/cds/jwks.json``, where the public key is published (register that URL with the service).
- Accepting a suggestion applies its actions as one transaction through the sandbox's FHIR interactions,
  written as the signed-in clinician: each ``create`` gets a fullUrl inferred from its id, and references
  to it are resolved as the spec says ("Suggestion": actions are processed as a transaction with
  ``fhirServer`` as the base of the inferred full URLs). Then ``accepted`` feedback is posted;
  dismissing a card posts ``overridden`` feedback with the reason chosen.

Calls are remembered for ``CDS_CALL_TTL`` seconds so a later accept or dismiss can find its card.
"""

from __future__ import annotations

import copy
import html
import re
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import requests
from flask import Flask, current_app
from joserfc import jwt
from joserfc.jwk import ECKey
from markupsafe import Markup

from .interactions import Access, Interactions, parse_target
from .oauth import Grant
from .outcome import FhirHttpError, JsonDict
from .state import fhir_base, get_state, public_url

EXTENSION = "sandbox.cds"
JWT_LIFETIME = 300
_lock = threading.RLock()


class CdsClientError(Exception):
    """A CDS call, accept or dismiss that could not be done; the message is safe to show."""


@dataclass
class CdsCall:
    """One ``patient-view`` call and what came back."""

    hook_instance: str
    service_id: str
    service_title: str
    patient: str
    user: str
    encounter: str | None
    cards: list[JsonDict] = field(default_factory=list)
    error: str | None = None
    expires_at: float = 0.0


@dataclass
class CdsClientState:
    key: ECKey
    calls: dict[str, CdsCall] = field(default_factory=dict)
    discovery: tuple[list[JsonDict], float] | None = None
    http: requests.Session = field(default_factory=requests.Session)


def _state(app: Flask | None = None) -> CdsClientState:
    target = app or current_app
    with _lock:
        state = target.extensions.get(EXTENSION)
        if state is None:
            state = CdsClientState(key=ECKey.generate_key("P-384", private=True))
            target.extensions[EXTENSION] = state
    assert isinstance(state, CdsClientState)
    return state


def services_url() -> str | None:
    """``CDS_SERVICES_URL`` without a trailing slash; ``None`` when no CDS service is configured."""
    url = current_app.config.get("CDS_SERVICES_URL")
    return str(url).rstrip("/") if url else None


def jwks_url() -> str:
    return f"{public_url()}/ehr/cds/jwks.json"


def public_jwks() -> JsonDict:
    """The JWK Set with the public half of the sandbox's CDS signing key (RFC 7517 §5)."""
    key = _state().key
    jwk = key.as_dict(private=False)
    jwk.update({"kid": key.thumbprint(), "alg": "ES384", "use": "sig"})
    return {"keys": [jwk]}


def client_jwt(audience: str) -> str:
    """The JWT of one request to ``audience`` (CDS Hooks 2.0 "Trusting CDS Clients")."""
    key = _state().key
    now = int(time.time())
    header = {"alg": "ES384", "typ": "JWT", "kid": key.thumbprint(), "jku": jwks_url()}
    claims = {
        "iss": public_url(),
        "aud": audience,
        "exp": now + JWT_LIFETIME,
        "iat": now,
        "jti": str(uuid.uuid4()),
    }
    return jwt.encode(header, claims, key, algorithms=["ES384"])


def _post(url: str, body: JsonDict) -> requests.Response:
    timeout = current_app.config["CDS_TIMEOUT"]
    return _state().http.post(
        url,
        json=body,
        headers={"Authorization": f"Bearer {client_jwt(url)}", "Accept": "application/json"},
        timeout=(float(timeout[0]), float(timeout[1])),
    )


def discover(base: str) -> list[JsonDict]:
    """The services of the discovery document (cached)."""
    state = _state()
    now = time.time()
    if state.discovery is not None and now - state.discovery[1] < float(
        current_app.config["CDS_DISCOVERY_TTL"]
    ):
        return state.discovery[0]
    timeout = current_app.config["CDS_TIMEOUT"]
    try:
        response = state.http.get(
            base,
            headers={"Authorization": f"Bearer {client_jwt(base)}", "Accept": "application/json"},
            timeout=(float(timeout[0]), float(timeout[1])),
        )
    except requests.RequestException as exc:
        raise CdsClientError(f"the CDS service cannot be reached ({type(exc).__name__})") from None
    if response.status_code != 200:
        raise CdsClientError(f"CDS discovery answered HTTP {response.status_code}")
    try:
        services = response.json().get("services")
    except (ValueError, AttributeError):
        services = None
    if not isinstance(services, list):
        raise CdsClientError("CDS discovery did not answer with a services list")
    found = [s for s in services if isinstance(s, dict) and isinstance(s.get("id"), str)]
    state.discovery = (found, now)
    return found


# -- patient-view ------------------------------------------------------------------------------------------
def patient_view(patient: str, user: str, encounter: str | None) -> list[CdsCall]:
    """Call every ``patient-view`` service for a chart being opened; failures are kept on the call."""
    base = services_url()
    if base is None:
        return []
    try:
        services = [s for s in discover(base) if s.get("hook") == "patient-view"]
    except CdsClientError as exc:
        return [CdsCall("", "", "Decision support", patient, user, encounter, error=str(exc))]
    return [_call_service(base, service, patient, user, encounter) for service in services]


def _call_service(base: str, service: JsonDict, patient: str, user: str, encounter: str | None) -> CdsCall:
    config = current_app.config
    call = CdsCall(
        hook_instance=str(uuid.uuid4()),
        service_id=str(service["id"]),
        service_title=str(service.get("title") or service["id"]),
        patient=patient,
        user=user,
        encounter=encounter,
        expires_at=time.time() + float(config["CDS_CALL_TTL"]),
    )
    context: JsonDict = {"userId": user, "patientId": patient}
    if encounter:
        context["encounterId"] = encounter
    body: JsonDict = {"hook": "patient-view", "hookInstance": call.hook_instance, "context": context}
    grant = Grant(
        client_id=str(config["CDS_SERVICE_CLIENT_ID"]),
        scopes=("patient/*.rs",),
        user=user,
        patient=patient,
        encounter=encounter,
        expires_at=0.0,
    )
    auth = get_state().auth
    token: str | None = None
    if config["CDS_PREFETCH"] and isinstance(service.get("prefetch"), dict):
        body["prefetch"] = _prefetch(service["prefetch"], context, grant)
    if config["CDS_FHIR_AUTHORIZATION"]:
        token, issued = auth.issue_access(grant, float(config["CDS_TOKEN_TTL"]))
        body["fhirServer"] = fhir_base()
        body["fhirAuthorization"] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": int(config["CDS_TOKEN_TTL"]),
            "scope": " ".join(issued.scopes),
            "subject": issued.client_id,
            "patient": patient,
        }
    try:
        response = _post(f"{base}/{call.service_id}", body)
    except requests.RequestException as exc:
        call.error = f"the CDS service cannot be reached ({type(exc).__name__})"
        return _remember(call)
    finally:
        if token is not None:
            with auth.lock:  # CDS Hooks 2.0: the client SHOULD revoke the token once the call is done
                auth.access.pop(token, None)
    if response.status_code != 200:
        call.error = f"the CDS service answered HTTP {response.status_code}{_description(response)}"
        return _remember(call)
    try:
        cards = response.json().get("cards")
    except (ValueError, AttributeError):
        cards = None
    if not isinstance(cards, list) or not all(isinstance(c, dict) for c in cards):
        call.error = "the CDS service's answer has no cards array"
        return _remember(call)
    call.cards = cards
    return _remember(call)


def _description(response: requests.Response) -> str:
    try:
        text = response.json().get("error_description")
    except (ValueError, AttributeError):
        return ""
    return f": {str(text)[:200]}" if isinstance(text, str) else ""


def _remember(call: CdsCall) -> CdsCall:
    state = _state()
    now = time.time()
    with _lock:
        for key in [k for k, c in state.calls.items() if c.expires_at < now]:
            del state.calls[key]
        state.calls[call.hook_instance] = call
    return call


def _prefetch(templates: JsonDict, context: JsonDict, grant: Grant) -> JsonDict:
    """Each template the sandbox can satisfy (CDS Hooks 2.0 "Prefetch Template"), with the grant of the
    service's token: a read gives the resource (null when absent), a search one Bundle of every page;
    an error gives its OperationOutcome. A template with a token that has no value is left out."""
    tokens = {f"context.{k}": str(v) for k, v in context.items()}
    user_type, _, user_id = str(context["userId"]).partition("/")
    tokens[f"user{user_type}Id"] = user_id
    interactions = _interactions(grant)
    out: JsonDict = {}
    for key, template in templates.items():
        if not isinstance(template, str):
            continue
        try:
            url = re.sub(r"\{\{\s*([A-Za-z.]+)\s*\}\}", lambda m: tokens[m.group(1)], template)
        except KeyError:
            continue
        try:
            out[key] = _run(interactions, url)
        except FhirHttpError as exc:
            out[key] = exc.outcome()
    return out


def _run(interactions: Interactions, url: str) -> JsonDict | None:
    target = parse_target(url, fhir_base())
    if target.id is not None:
        try:
            return interactions.read(target.resource_type, target.id)
        except FhirHttpError as exc:
            if exc.status == 404:
                return None
            raise
    params = parse_qsl(target.query or "", keep_blank_values=True)
    bundle = interactions.search(target.resource_type, [*params, ("_count", str(interactions.max_count))])
    entries = list(bundle.get("entry", []))
    offset = len(entries)
    while offset < int(bundle.get("total", 0)) and entries:
        page = interactions.search(
            target.resource_type, [*params, ("_count", str(interactions.max_count)), ("_offset", str(offset))]
        )
        more = page.get("entry", [])
        if not more:
            break
        entries.extend(more)
        offset += len(more)
    whole: JsonDict = {"resourceType": "Bundle", "type": "searchset", "total": len(entries)}
    if entries:
        whole["entry"] = entries
    return whole


def _interactions(grant: Grant) -> Interactions:
    config = current_app.config
    state = get_state()
    return Interactions(
        state.store,
        Access(grant),
        fhir_base(),
        snapshots=state.snapshots,
        default_count=int(config["DEFAULT_COUNT"]),
        max_count=int(config["MAX_COUNT"]),
        location_base=str(config["LOCATION_BASE"] or ""),
    )


# -- accept and dismiss ------------------------------------------------------------------------------------
def find_call(hook_instance: str) -> CdsCall:
    with _lock:
        call = _state().calls.get(hook_instance)
    if call is None or call.expires_at < time.time():
        raise CdsClientError("these cards are no longer current: open the chart again")
    return call


def _card(call: CdsCall, card_uuid: str) -> JsonDict:
    for card in call.cards:
        if card.get("uuid") == card_uuid:
            return card
    raise CdsClientError("no such card")


def accept(hook_instance: str, card_uuid: str, suggestion_uuid: str) -> list[str]:
    """Apply the suggestion's actions as the clinician of the call, then post ``accepted`` feedback.
    Returns the references written (``Type/id/_history/v``)."""
    call = find_call(hook_instance)
    card = _card(call, card_uuid)
    suggestion = next(
        (
            s
            for s in card.get("suggestions") or []
            if isinstance(s, dict) and s.get("uuid") == suggestion_uuid
        ),
        None,
    )
    if suggestion is None:
        raise CdsClientError("no such suggestion on this card")
    entries = transaction_entries(suggestion.get("actions") or [], fhir_base())
    writer = Grant(
        client_id="sandbox-ehr",
        scopes=("user/*.cruds",),
        user=call.user,
        patient=call.patient,
        encounter=call.encounter,
        expires_at=time.time() + 60,
    )
    try:
        result = _interactions(writer).transaction(entries, minimal=True)
    except FhirHttpError as exc:
        raise CdsClientError(f"the suggestion could not be written: {exc.diagnostics}") from None
    written = [str(e["response"]["location"]) for e in result["entry"]]
    _feedback(
        call,
        {
            "card": card_uuid,
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": suggestion_uuid}],
            "outcomeTimestamp": _now(),
        },
    )
    return written


def dismiss(hook_instance: str, card_uuid: str, reason_code: str | None) -> None:
    """Post ``overridden`` feedback, with the override reason of the card chosen (if any)."""
    call = find_call(hook_instance)
    card = _card(call, card_uuid)
    item: JsonDict = {"card": card_uuid, "outcome": "overridden", "outcomeTimestamp": _now()}
    reason = next(
        (
            r
            for r in card.get("overrideReasons") or []
            if isinstance(r, dict) and r.get("code") == reason_code
        ),
        None,
    )
    if reason is not None:
        item["overrideReason"] = {"reason": {k: reason[k] for k in ("system", "code") if k in reason}}
    _feedback(call, item)


def _feedback(call: CdsCall, item: JsonDict) -> None:
    base = services_url()
    if base is None:
        raise CdsClientError("no CDS service is configured")
    try:
        response = _post(f"{base}/{call.service_id}/feedback", {"feedback": [item]})
    except requests.RequestException as exc:
        raise CdsClientError(f"the feedback could not be sent ({type(exc).__name__})") from None
    if response.status_code != 200:
        raise CdsClientError(f"the CDS service refused the feedback (HTTP {response.status_code})")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def transaction_entries(actions: list[Any], base: str) -> list[JsonDict]:
    """A suggestion's actions as transaction entries (CDS Hooks 2.0 "Suggestion"; FHIR R4 http.html#trules).

    A ``create`` becomes a POST whose fullUrl stands for the one inferred from ``fhirServer`` and the
    resource's id: references to it (``Type/id`` or the absolute URL) are pointed at that fullUrl, so the
    server resolves them to the id it assigns. An ``update`` becomes a PUT. The sandbox's transactions
    have no DELETE, so a ``delete`` is refused.
    """
    creates: dict[str, str] = {}
    entries: list[JsonDict] = []
    for index, action in enumerate(actions):
        if not isinstance(action, dict) or not isinstance(action.get("resource"), dict):
            raise CdsClientError(f"action {index} has no resource the sandbox can apply")
        kind = action.get("type")
        resource = copy.deepcopy(action["resource"])
        rtype = str(resource.get("resourceType"))
        if kind == "create":
            full_url = f"urn:uuid:{uuid.uuid4()}"
            if isinstance(resource.get("id"), str):
                creates[f"{rtype}/{resource['id']}"] = full_url
                creates[f"{base}/{rtype}/{resource['id']}"] = full_url
            entries.append(
                {"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": rtype}}
            )
        elif kind == "update" and isinstance(resource.get("id"), str):
            entries.append(
                {"resource": resource, "request": {"method": "PUT", "url": f"{rtype}/{resource['id']}"}}
            )
        else:
            raise CdsClientError(f"action {index} ({kind}) is not supported by the sandbox")
    for entry in entries:
        _point_references(entry["resource"], creates)
    return entries


def _point_references(node: Any, creates: dict[str, str]) -> None:
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and ref in creates:
            node["reference"] = creates[ref]
        for value in node.values():
            _point_references(value, creates)
    elif isinstance(node, list):
        for item in node:
            _point_references(item, creates)


# -- cards on the page -------------------------------------------------------------------------------------
def markdown(text: Any) -> Markup:
    """A card's ``detail`` (GitHub Flavored Markdown) as plain HTML: paragraphs, ``- `` lists,
    ``**strong**``, ``code`` and backslash escapes. Everything else shows as text."""
    blocks = re.split(r"\n\s*\n", str(text or "").strip())
    out: list[str] = []
    for block in blocks:
        lines = block.split("\n")
        items = [line[2:] for line in lines if line.startswith("- ")]
        head = [line for line in lines if not line.startswith("- ")]
        if head:
            out.append(f"<p>{'<br>'.join(_inline(line) for line in head)}</p>")
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in items) + "</ul>")
    return Markup("".join(out))


_ESCAPED = re.compile(r"\\([!-/:-@\[-`{-~])")


def _inline(text: str) -> str:
    placeholders: list[str] = []

    def keep(match: re.Match[str]) -> str:
        placeholders.append(match.group(1))
        return f"\x00{len(placeholders) - 1}\x00"

    text = _ESCAPED.sub(keep, text)
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"\x00(\d+)\x00", lambda m: html.escape(placeholders[int(m.group(1))]), text)


def smart_link_allowed(url: str) -> bool:
    """A ``smart`` link is launched only for the app the EHR knows (``APP_LAUNCH_URL``)."""
    return url == str(current_app.config["APP_LAUNCH_URL"])


def with_cards_shown(calls: list[CdsCall]) -> list[CdsCall]:
    """The calls with each card's detail rendered (``detail_html``), for the chart template."""
    shown = []
    for call in calls:
        cards = [{**card, "detail_html": markdown(card.get("detail"))} for card in call.cards]
        shown.append(replace(call, cards=cards))
    return shown
