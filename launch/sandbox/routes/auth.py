"""Authorization server: ``/auth/authorize`` and ``/auth/token`` (SMART App Launch 2.x "App Launch:
Launch and Authorization", steps "Obtain authorization code" and "Obtain access token"), and
``/auth/jwks.json`` (the id_token key)."""

from __future__ import annotations

import hmac
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, jsonify, render_template, request
from joserfc import jwt

from ..context import token_context
from ..directory import patients, practitioners
from ..faults import fault_response
from ..keys import public_jwks
from ..oauth import GRANT_TYPES, Client, Grant, OAuthError, s256, valid_verifier
from ..outcome import JsonDict
from ..scopes import grant as grant_scopes
from ..scopes import parse_clinical
from ..state import fhir_base, get_state, public_url, token_endpoint

bp = Blueprint("auth", __name__, url_prefix="/auth")

CHALLENGE_LEN = 43  # BASE64URL of a SHA-256 digest, without padding
B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _error_page(error: str, description: str, status: int = 400) -> Response:
    """RFC 6749 §4.1.2.1: with no valid client or redirect_uri, tell the user; never redirect."""
    return Response(render_template("error.html", error=error, description=description), status=status)


def _redirect(uri: str, params: dict[str, str | None]) -> Response:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    response = Response(status=302)
    response.headers["Location"] = f"{uri}{'&' if '?' in uri else '?'}{query}"
    response.headers["Cache-Control"] = "no-store"
    return response


def _error_redirect(uri: str, error: str, description: str, state: str | None) -> Response:
    """RFC 6749 §4.1.2.1: error, error_description and the client's state on the redirect URI."""
    return _redirect(uri, {"error": error, "error_description": description, "state": state})


@bp.route("/authorize", methods=["GET", "POST"])
def authorize() -> Response:
    """Validate the authorization request; EHR launch issues a code at once, standalone signs in."""
    fault = get_state().faults.take(["authorize"])
    if fault is not None:
        failed = fault_response(fault)
        if failed is not None:
            return failed
    params = {k: request.values.get(k, "") for k in request.values}
    state_obj = get_state()
    client = state_obj.clients.get(params.get("client_id", ""))
    if client is None:
        return _error_page("invalid_request", "Unknown client_id.")
    if "authorization_code" not in client.grant_types:
        return _error_page("unauthorized_client", "This client is not registered for user sign-in.")
    redirect_uri = params.get("redirect_uri", "")
    if redirect_uri not in client.redirect_uris:
        return _error_page("invalid_request", "redirect_uri is missing or not registered for this client.")
    state = params.get("state") or None

    def fail(error: str, description: str) -> Response:
        return _error_redirect(redirect_uri, error, description, state)

    if not params.get("response_type"):
        return fail("invalid_request", "response_type is required")
    if params.get("response_type") != "code":
        return fail("unsupported_response_type", "response_type must be code")
    if params.get("aud", "").rstrip("/") != fhir_base():
        return fail("invalid_request", "aud must be this server's FHIR base URL")
    if params.get("code_challenge_method") != "S256":
        return fail("invalid_request", "PKCE is required with code_challenge_method S256")
    challenge = params.get("code_challenge", "")
    if len(challenge) != CHALLENGE_LEN or not set(challenge) <= B64URL:
        return fail("invalid_request", "code_challenge must be a base64url SHA-256 digest")
    requested = params.get("scope", "").split()
    if not requested:
        return fail("invalid_scope", "scope is required")
    granted = grant_scopes(requested, client.scopes)
    if not granted:
        return fail("invalid_scope", "none of the requested scopes can be granted to this client")
    request_data: dict[str, Any] = {
        "client_id": client.client_id,
        "redirect_uri": redirect_uri,
        "state": state,
        "nonce": params.get("nonce") or None,
        "code_challenge": challenge,
        "scopes": granted,
    }
    launch_id = params.get("launch")
    if launch_id:
        launch = state_obj.auth.get_launch(launch_id)
        if launch is None:
            return fail("invalid_request", "unknown or expired launch")
        user = launch.user or str(current_app.config["DEFAULT_USER"])
        return _issue_code(
            request_data,
            user=user,
            patient=launch.patient,
            encounter=launch.encounter,
            fhir_context=launch.fhir_context,
        )
    pending = state_obj.auth.add_pending(request_data, float(current_app.config["PENDING_TTL"]))
    return Response(
        render_template(
            "authorize.html",
            pending=pending,
            client_name=client.name,
            scopes=" ".join(granted),
            practitioners=practitioners(state_obj.store),
            patients=patients(state_obj.store),
            need_patient="launch/patient" in granted,
        )
    )


@bp.post("/authorize/decide")
def decide() -> Response:
    """The standalone sign-in and patient picker's answer (SMART "Standalone Launch")."""
    state_obj = get_state()
    data = state_obj.auth.take_pending(request.form.get("pending", ""))
    if data is None:
        return _error_page("invalid_request", "This sign-in expired or was already used; start again.")
    redirect_uri = str(data["redirect_uri"])
    if request.form.get("decision") != "approve":
        return _error_redirect(redirect_uri, "access_denied", "the user denied the request", data["state"])
    user = request.form.get("user", "")
    if not user.startswith("Practitioner/") or state_obj.store.read("Practitioner", user[13:]) is None:
        return _error_redirect(redirect_uri, "access_denied", "no valid clinician signed in", data["state"])
    patient: str | None = None
    if "launch/patient" in data["scopes"]:
        patient = request.form.get("patient", "")
        if not patient or state_obj.store.read("Patient", patient) is None:
            return _error_redirect(redirect_uri, "access_denied", "no patient selected", data["state"])
    return _issue_code(data, user=user, patient=patient, encounter=None)


def _issue_code(
    data: dict[str, Any],
    *,
    user: str,
    patient: str | None,
    encounter: str | None,
    fhir_context: tuple[JsonDict, ...] = (),
) -> Response:
    grant = Grant(
        client_id=str(data["client_id"]),
        scopes=tuple(data["scopes"]),
        user=user,
        patient=patient,
        encounter=encounter,
        expires_at=get_state().auth.clock() + float(current_app.config["CODE_TTL"]),
        nonce=data.get("nonce"),
        redirect_uri=str(data["redirect_uri"]),
        code_challenge=str(data["code_challenge"]),
        fhir_context=fhir_context,
    )
    code = get_state().auth.add_code(grant)
    return _redirect(str(data["redirect_uri"]), {"code": code, "state": data.get("state")})


def _token_error(exc: OAuthError) -> Response:
    """RFC 6749 §5.2 error JSON; 401 + WWW-Authenticate for invalid_client."""
    response = jsonify(exc.to_json())
    response.status_code = exc.status
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="sandbox"'
    return _no_store(response)


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


@bp.post("/token")
def token() -> Response:
    state_obj = get_state()
    fault = state_obj.faults.take(["token"])
    if fault is not None:
        failed = fault_response(fault)
        if failed is not None:
            return _no_store(failed)
    try:
        if request.mimetype != "application/x-www-form-urlencoded":
            raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
        form = {k: request.form.get(k, "") for k in request.form}
        client = state_obj.auth.authenticate(
            state_obj.clients,
            form,
            request.headers.get("Authorization"),
            token_endpoint=token_endpoint(),
            http=state_obj.http,
            jwks_ttl=float(current_app.config["JWKS_CACHE_TTL"]),
        )
        grant_type = form.get("grant_type", "")
        if grant_type not in GRANT_TYPES:
            raise OAuthError("unsupported_grant_type", f"grant_type must be one of {', '.join(GRANT_TYPES)}")
        if grant_type not in client.grant_types:
            raise OAuthError("unauthorized_client", f"this client may not use the {grant_type} grant")
        if grant_type == "authorization_code":
            grant = _redeem_code(client, form)
            return _no_store(jsonify(_token_response(client, grant, issue="code")))
        if grant_type == "refresh_token":
            if not form.get("refresh_token"):
                raise OAuthError("invalid_request", "refresh_token is required")
            scope = form.get("scope")
            grant = state_obj.auth.use_refresh(
                form["refresh_token"],
                client.client_id,
                scope.split() if scope else None,
                rotation=str(current_app.config["REFRESH_TOKEN_ROTATION"]),
            )
            return _no_store(jsonify(_token_response(client, grant, issue="refresh")))
        grant = _client_credentials(client, form)
        return _no_store(jsonify(_token_response(client, grant, issue="client")))
    except OAuthError as exc:
        return _token_error(exc)


def _redeem_code(client: Client, form: dict[str, str]) -> Grant:
    """Authorization code grant (RFC 6749 §4.1.3) with PKCE verification (RFC 7636 §4.6)."""
    for name in ("code", "redirect_uri", "code_verifier"):
        if not form.get(name):
            raise OAuthError("invalid_request", f"{name} is required")
    grant = get_state().auth.redeem_code(form["code"])
    if grant.client_id != client.client_id:
        raise OAuthError("invalid_grant", "the code was issued to another client")
    if form["redirect_uri"] != grant.redirect_uri:
        raise OAuthError("invalid_grant", "redirect_uri does not match the authorization request")
    verifier = form["code_verifier"]
    if not valid_verifier(verifier) or not hmac.compare_digest(s256(verifier), grant.code_challenge):
        raise OAuthError("invalid_grant", "PKCE verification failed")
    return grant


def _client_credentials(client: Client, form: dict[str, str]) -> Grant:
    """Client credentials grant (RFC 6749 §4.4; SMART App Launch 2.x "Backend Services"): the client's
    own token for the ``user/`` or ``system/`` scopes it asks for and may have; no patient, no launch
    context, no refresh token."""
    requested = form.get("scope", "").split()
    if not requested:
        raise OAuthError("invalid_scope", "scope is required")
    granted = [
        scope
        for scope in grant_scopes(requested, client.scopes)
        if (clinical := parse_clinical(scope)) is not None and clinical.context in ("user", "system")
    ]
    if not granted:
        raise OAuthError("invalid_scope", "none of the requested user/ or system/ scopes can be granted")
    return Grant(
        client_id=client.client_id,
        scopes=tuple(granted),
        user=client.user,
        patient=None,
        encounter=None,
        expires_at=0.0,
    )


def _token_response(client: Client, grant: Grant, *, issue: str) -> dict[str, Any]:
    """The token response ("Obtain access token"): for ``issue`` "code" and "refresh" with the launch
    context parameters (and, for "code", an id_token); for "client" the bare token (Backend Services).
    Refreshes within ``ACCESS_TOKEN_REUSE_WINDOW`` may get the same access token again; with
    ``REFRESH_TOKEN_ROTATION`` "none" a refresh returns no new refresh token."""
    config = current_app.config
    auth = get_state().auth
    reuse = float(config["ACCESS_TOKEN_REUSE_WINDOW"]) if issue == "refresh" else 0.0
    token, access = auth.issue_access(grant, float(config["ACCESS_TOKEN_TTL"]), reuse_within=reuse)
    now = auth.clock()
    body: dict[str, Any] = {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": max(0, int(access.expires_at - now)),
        "scope": " ".join(grant.scopes),
    }
    if issue == "client":
        return body
    body["need_patient_banner"] = True
    body["smart_style_url"] = public_url() + "/smart-style.json"
    body.update(
        token_context(
            grant.patient,
            grant.encounter,
            grant.fhir_context,
            encounter_format=str(config["EHR_LAUNCH_ENCOUNTER_FORMAT"]),
            fhir_base=fhir_base(),
        )
    )
    if grant.user:
        body["fhirUser"] = grant.user
    rotates = issue == "code" or config["REFRESH_TOKEN_ROTATION"] != "none"
    if rotates and {"offline_access", "online_access"} & set(grant.scopes):
        refresh = replace(grant, expires_at=now + float(config["REFRESH_TOKEN_TTL"]))
        body["refresh_token"] = auth.add_refresh(refresh)
    if issue == "code" and "openid" in grant.scopes and grant.user:
        body["id_token"] = _id_token(client, grant, now)
    return body


def _id_token(client: Client, grant: Grant, now: float) -> str:
    """OpenID Connect Core §2 ID Token, RS256; ``fhirUser`` claim per SMART "Scopes for requesting
    identity data" when the fhirUser scope was granted."""
    key = get_state().signing_key
    claims: dict[str, Any] = {
        "iss": fhir_base(),
        "sub": grant.user,
        "aud": client.client_id,
        "iat": int(now),
        "exp": int(now + float(current_app.config["ID_TOKEN_TTL"])),
        "auth_time": int(now),
    }
    if grant.nonce:
        claims["nonce"] = grant.nonce
    if "fhirUser" in grant.scopes and grant.user:
        claims["fhirUser"] = f"{fhir_base()}/{grant.user}"
    return jwt.encode({"alg": "RS256", "kid": key.thumbprint()}, claims, key)


@bp.get("/jwks.json")
def jwks() -> Response:
    response = jsonify(public_jwks(get_state().signing_key))
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response
