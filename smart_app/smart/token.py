"""Token requests and the launch context in the token response.

SMART App Launch 2.x: "Obtain access token" (authorization code + PKCE verifier), "Refresh access
token", "Client Authentication" (public clients send ``client_id``; confidential symmetric clients
use HTTP Basic, RFC 6749 section 2.3.1; confidential asymmetric clients use ``private_key_jwt``,
RFC 7523, signed RS384 or ES384), and "Launch context arrives with your access token".
"""

from __future__ import annotations

import base64
import logging
import math
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests

from smart_app.smart import wire
from smart_app.smart.errors import LaunchContextError, RegistrationError, TokenError
from smart_app.smart.keys import AppKeys
from smart_app.smart.registrations import Registration
from smart_app.smart.scopes import ScopeSet

log = logging.getLogger("smart_app.smart")

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # RFC 6749 section 5.2 error codes
ASSERTION_LIFETIME = 300  # seconds; SMART asks for exp no more than five minutes ahead
Timeout = float | tuple[float, float]


@dataclass(frozen=True)
class LaunchContext:
    """Context parameters returned with the access token ("Launch context")."""

    patient: str | None = None
    encounter: str | None = None
    fhir_user: str | None = None
    need_patient_banner: bool = True
    smart_style_url: str | None = None
    fhir_context: tuple[dict[str, Any], ...] = ()
    intent: str | None = None
    tenant: str | None = None
    scopes: ScopeSet = field(default_factory=ScopeSet)


@dataclass(frozen=True)
class TokenSet:
    """A token response. Tokens are excluded from ``repr`` so they never reach a log by accident."""

    access_token: str = field(repr=False)
    token_type: str
    expires_at: float | None
    scope: ScopeSet
    context: LaunchContext
    refresh_token: str | None = field(default=None, repr=False)
    id_token: str | None = field(default=None, repr=False)
    #: When the token request was sent: the start of ``expires_in``.
    issued_at: float | None = None


def client_assertion(
    reg: Registration, token_endpoint: str, keys: AppKeys, *, now: float | None = None
) -> str:
    """A ``private_key_jwt`` client assertion (SMART App Launch 2.x, "Authenticating to the Token endpoint").

    Claims: ``iss`` = ``sub`` = client_id, ``aud`` = token endpoint, unique ``jti``, ``exp`` five
    minutes ahead; the header names the key (``kid``).
    """
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": reg.client_id,
        "sub": reg.client_id,
        "aud": token_endpoint,
        "jti": secrets.token_urlsafe(32),
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME,
    }
    return keys.sign(claims, reg.signing_alg)


def _basic_auth(client_id: str, secret: str) -> str:
    """HTTP Basic credentials with form-urlencoded parts (RFC 6749 section 2.3.1)."""
    raw = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _authenticate(
    reg: Registration,
    token_endpoint: str,
    form: dict[str, str],
    headers: dict[str, str],
    keys: AppKeys | None,
) -> None:
    if reg.client_type == "public":
        form["client_id"] = reg.client_id
    elif reg.client_type == "confidential-symmetric":
        try:
            secret = reg.client_secret()
        except RegistrationError as exc:
            raise TokenError(exc.description, ehr_name=reg.name) from None
        headers["Authorization"] = _basic_auth(reg.client_id, secret)
    else:
        if keys is None:
            raise TokenError("The app's signing key is not configured.", ehr_name=reg.name)
        form["client_assertion_type"] = CLIENT_ASSERTION_TYPE
        form["client_assertion"] = client_assertion(reg, token_endpoint, keys)


def exchange_code(
    reg: Registration,
    token_endpoint: str,
    *,
    code: str,
    code_verifier: str,
    redirect_uri: str,
    http: requests.Session,
    keys: AppKeys | None = None,
    requested_scope: str | None = None,
    require_patient: bool = True,
    timeout: Timeout = (3.05, 15.0),
) -> TokenSet:
    """Exchange an authorization code for tokens ("Obtain access token")."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": code_verifier,
    }
    data, sent_at = _post(reg, token_endpoint, form, http=http, keys=keys, timeout=timeout)
    tokens = parse_token_response(data, requested_scope=requested_scope, ehr_name=reg.name, issued_at=sent_at)
    if require_patient and not tokens.context.patient:
        raise LaunchContextError(
            f"{reg.name} did not say which patient the app was launched for (no 'patient' in the token "
            "response). Launch the app from a patient's chart.",
            ehr_name=reg.name,
        )
    log.info("Access token issued by %s (%s client)", reg.name, reg.client_type)
    return tokens


def refresh(
    reg: Registration,
    token_endpoint: str,
    *,
    refresh_token: str,
    http: requests.Session,
    keys: AppKeys | None = None,
    scope: str | None = None,
    timeout: Timeout = (3.05, 15.0),
) -> TokenSet:
    """Use a refresh token ("Refresh access token"); ``scope`` may narrow, never widen, the grant."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if scope:
        form["scope"] = scope
    data, sent_at = _post(reg, token_endpoint, form, http=http, keys=keys, timeout=timeout)
    tokens = parse_token_response(data, requested_scope=scope, ehr_name=reg.name, issued_at=sent_at)
    log.info("Access token refreshed by %s", reg.name)
    return tokens


def _post(
    reg: Registration,
    token_endpoint: str,
    form: dict[str, str],
    *,
    http: requests.Session,
    keys: AppKeys | None,
    timeout: Timeout,
) -> tuple[dict[str, Any], float]:
    """POST the token request; the JSON object answered and the time the request was sent (the start of
    the token's lifetime as the app counts it: never later than the EHR's own)."""
    headers = {"Accept": "application/json"}
    _authenticate(reg, token_endpoint, form, headers, keys)
    grant = form["grant_type"]
    sent_at = time.time()
    deadline = time.monotonic() + wire.DEADLINE_SECONDS
    try:
        response = http.post(
            token_endpoint, data=form, headers=headers, timeout=timeout, allow_redirects=False, stream=True
        )
    except requests.Timeout:
        log.warning("Token request (%s) to %s timed out", grant, reg.name)
        raise TokenError(f"{reg.name}'s token endpoint did not answer in time.", ehr_name=reg.name) from None
    except requests.RequestException as exc:
        log.warning("Token request (%s) to %s failed: %s", grant, reg.name, exc.__class__.__name__)
        raise TokenError(f"{reg.name}'s token endpoint could not be reached.", ehr_name=reg.name) from None
    status = response.status_code
    data, problem = wire.json_body(response, max_bytes=wire.TOKEN_RESPONSE_MAX_BYTES, deadline=deadline)
    if status != 200:
        raise _refusal(reg, grant, status, data, _sent_secrets(reg, form))
    if problem is not None or not isinstance(data, dict):
        why = problem or "did not answer with a JSON object"
        log.warning("Token request (%s) to %s: the token endpoint %s", grant, reg.name, why)
        raise TokenError(f"{reg.name}'s token endpoint {why}.", ehr_name=reg.name, http_status=status)
    return data, sent_at


def _sent_secrets(reg: Registration, form: Mapping[str, str]) -> list[str | None]:
    """What the request carried that the EHR's error text must never echo onto a page or into a log."""
    sent: list[str | None] = [
        form.get(k) for k in ("code", "code_verifier", "refresh_token", "client_assertion")
    ]
    if reg.client_type == "confidential-symmetric":
        try:
            sent.append(reg.client_secret())
        except RegistrationError:
            pass
    return sent


def _refusal(reg: Registration, grant: str, status: int, data: Any, sent: list[str | None]) -> TokenError:
    """The EHR's refusal (RFC 6749 section 5.2): its ``error`` code and ``error_description``, the latter
    cleaned (no control characters, nothing the request carried, at most a few hundred characters), on
    the page and in the log, so an integrator can tell a wrong key from a wrong secret or audience."""
    raw_error = data.get("error") if isinstance(data, dict) else None
    oauth_error = raw_error if isinstance(raw_error, str) and _ERROR_CODE.match(raw_error) else None
    said = wire.ehr_text(data.get("error_description") if isinstance(data, dict) else None, secrets=sent)
    log.warning(
        "Token request (%s) to %s refused: HTTP %s %s%s",
        grant,
        reg.name,
        status,
        oauth_error or "(no OAuth error code)",
        f": {said}" if said else "",
    )
    reason = f"HTTP {status}"
    if oauth_error:
        reason += f", {oauth_error}"
    description = f"{reg.name}'s token endpoint refused the request ({reason})."
    if said:
        description += f" The EHR said: {said}"
    return TokenError(
        description,
        ehr_name=reg.name,
        oauth_error=oauth_error,
        http_status=status,
        ehr_description=said or None,
    )


def _optional_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value else None


def parse_token_response(
    data: Mapping[str, Any],
    *,
    requested_scope: str | None = None,
    ehr_name: str | None = None,
    issued_at: float | None = None,
) -> TokenSet:
    """Read a successful token response (RFC 6749 section 5.1 plus the SMART context parameters).

    When ``scope`` is absent the granted scope equals the requested one (RFC 6749 section 5.1).
    ``expires_in`` counts from ``issued_at`` (when the request was sent; default now).
    """
    name = ehr_name or "The EHR"
    access_token = data.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise TokenError(f"{name}'s token response has no access_token.", ehr_name=ehr_name)
    token_type = data.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise TokenError(f"{name}'s token response has token_type other than Bearer.", ehr_name=ehr_name)
    start = time.time() if issued_at is None else issued_at
    expires_in = data.get("expires_in")
    expires_at: float | None = None
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and math.isfinite(expires_in):
        expires_at = start + max(0.0, float(expires_in))
    elif isinstance(expires_in, str) and expires_in.isdigit() and len(expires_in) <= 12:
        expires_at = start + float(expires_in)
    granted = data.get("scope")
    scopes = ScopeSet.parse(granted if isinstance(granted, str) else requested_scope)
    fhir_context_raw = data.get("fhirContext")
    fhir_context = (
        tuple(item for item in fhir_context_raw if isinstance(item, dict))
        if isinstance(fhir_context_raw, list)
        else ()
    )
    banner = data.get("need_patient_banner")
    context = LaunchContext(
        patient=_optional_str(data, "patient"),
        encounter=_optional_str(data, "encounter"),
        fhir_user=_optional_str(data, "fhirUser"),
        need_patient_banner=banner if isinstance(banner, bool) else True,
        smart_style_url=_optional_str(data, "smart_style_url"),
        fhir_context=fhir_context,
        intent=_optional_str(data, "intent"),
        tenant=_optional_str(data, "tenant"),
        scopes=scopes,
    )
    return TokenSet(
        access_token=access_token,
        token_type="Bearer",
        expires_at=expires_at,
        scope=scopes,
        context=context,
        refresh_token=_optional_str(data, "refresh_token"),
        id_token=_optional_str(data, "id_token"),
        issued_at=start,
    )
