"""Launch and callback (blueprint ``launch``): SMART App Launch 2.x, app side.

``GET /launch`` handles an EHR launch (``iss`` + ``launch``), a standalone launch (``iss`` only) and,
without ``iss``, shows the registered EHRs to choose from ("Launch App: Standalone Launch").
``GET /launch/<registration>`` does the same for one registration, for EHRs with several registrations
of the app (``client_id`` on ``/launch`` chooses among them too). The launch context is checked
against the launched FHIR base before anything is kept (``smart_app.smart.context``).
``GET /callback`` checks ``state``, exchanges the code, validates the id_token and keeps the launch
in the server-side session. ``GET /.well-known/jwks.json`` publishes the app's public keys
("Client Authentication: Asymmetric"). Only registered issuers are ever contacted.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from typing import Any

from flask import Blueprint, current_app, jsonify, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue

from smart_app.auditlog import audit_event
from smart_app.smart import wire
from smart_app.smart.authorize import PendingAuthorization, start_authorization
from smart_app.smart.context import check_context
from smart_app.smart.discovery import check_endpoints
from smart_app.smart.errors import (
    AuthorizationError,
    IdTokenError,
    RegistrationError,
    RelaunchRequired,
    SmartError,
    StateError,
    UnknownIssuer,
)
from smart_app.smart.idtoken import verify_id_token
from smart_app.smart.launch import Launch, new_launch_id
from smart_app.smart.logredact import install_log_redaction
from smart_app.smart.registrations import AmbiguousRegistration, Registration
from smart_app.smart.token import exchange_code
from smart_app.web.session import (
    PENDING_KEY,
    app_keys,
    begin_launch,
    discovery,
    http_session,
    http_timeout,
    launch_registry,
    token_keeper,
)

bp = Blueprint("launch", __name__, template_folder="templates")
log = logging.getLogger("smart_app.smart")
# The EHR's redirect to /callback carries code and state in its URL: keep them out of access logs.
bp.record_once(lambda _state: install_log_redaction())

#: Longest ``iss`` or ``launch`` parameter accepted.
MAX_PARAMETER = 2048
_OAUTH_ERROR = re.compile(r"^[\x20-\x21\x23-\x5B\x5D-\x7E]{1,64}$")  # RFC 6749 section 4.1.2.1


def _config_float(key: str, default: float) -> float:
    return float(current_app.config.get(key, default))


def _redirect_uri() -> str:
    return str(current_app.config["PUBLIC_URL"]).rstrip("/") + "/callback"


def _error_page(error: SmartError) -> ResponseReturnValue:
    return (
        render_template("launch_error.html", error=error, ehr_name=error.ehr_name),
        error.status,
    )


def _pendings() -> dict[str, dict[str, Any]]:
    """Pending authorizations of this browser, without expired ones."""
    stored = session.get(PENDING_KEY)
    if not isinstance(stored, dict):
        return {}
    max_age = _config_float("LAUNCH_PENDING_TTL_SECONDS", 600)
    now = time.time()
    return {
        k: v
        for k, v in stored.items()
        if isinstance(v, dict) and now - float(v.get("created_at", 0)) <= max_age
    }


def _take_pending(state: str | None) -> PendingAuthorization | None:
    """Remove and return the pending authorization for ``state`` (constant-time comparison)."""
    pendings = _pendings()
    found: str | None = None
    if state:
        given = state.encode()
        for key in pendings:
            if hmac.compare_digest(key.encode(), given):
                found = key
    pending = pendings.pop(found) if found is not None else None
    session[PENDING_KEY] = pendings
    return PendingAuthorization.from_dict(pending) if pending is not None else None


@bp.get("/launch")
def launch() -> ResponseReturnValue:
    """Start an EHR or standalone launch for the registration its ``iss`` (and ``client_id``) names, or
    list the registered EHRs."""
    return _start(None)


@bp.get("/launch/<registration>")
def launch_registration(registration: str) -> ResponseReturnValue:
    """Start an EHR or standalone launch for one registration: the launch URL registered with an EHR
    that has several registrations of the app (public, symmetric, asymmetric clients)."""
    return _start(registration)


def _start(registration_id: str | None) -> ResponseReturnValue:
    iss = request.args.get("iss", "").strip() or None
    launch_token = request.args.get("launch") or None
    client_id = request.args.get("client_id") or None
    registry = launch_registry()
    if iss is None and registration_id is None:
        return render_template("launch_chooser.html", registrations=registry.all())
    try:
        if iss and len(iss) > MAX_PARAMETER:
            raise UnknownIssuer()
        if launch_token and len(launch_token) > MAX_PARAMETER:
            raise UnknownIssuer(
                "The EHR's launch parameter is too long to be a SMART launch, so it was refused."
            )
        if launch_token is not None and iss is None:
            raise UnknownIssuer(
                "The EHR's launch does not say which FHIR server it is for (no iss), so it was refused."
            )
        reg = registry.choose(iss, registration_id=registration_id, client_id=client_id)
    except AmbiguousRegistration as exc:
        if launch_token is None:
            return render_template("launch_chooser.html", registrations=list(exc.candidates))
        log.warning("Launch refused: %d registrations share its iss and it names none", len(exc.candidates))
        return _error_page(exc)
    except UnknownIssuer as exc:
        log.warning(
            "Launch refused (%s): %s",
            exc.error,
            "registration named" if registration_id else "iss not registered",
        )
        return _error_page(exc)
    try:
        config = discovery().get(reg.iss)
        check_endpoints(reg, config, refuse_foreign=_refuse_foreign_endpoints())
        pending = start_authorization(reg, config, _redirect_uri(), launch_token)
    except SmartError as exc:
        exc.ehr_name = exc.ehr_name or reg.name
        log.warning("Launch with %s failed: %s", reg.name, exc.error)
        return _error_page(exc)
    pendings = _pendings()
    limit = max(1, int(current_app.config.get("LAUNCH_MAX_PENDING", 5)))
    while len(pendings) >= limit:  # keep a few concurrent launches (several tabs); drop the oldest
        del pendings[min(pendings, key=lambda k: float(pendings[k].get("created_at", 0)))]
    pendings[pending.state] = pending.to_dict()
    session[PENDING_KEY] = pendings
    log.info(
        "%s launch started with %s (registration %s, %s client)",
        "EHR" if launch_token else "Standalone",
        reg.name,
        reg.id,
        reg.client_type,
    )
    return redirect(pending.url, code=302)


def _refuse_foreign_endpoints() -> bool:
    return str(current_app.config.get("FOREIGN_AUTH_ENDPOINTS", "warn")).lower() == "refuse"


@bp.get("/callback")
def callback() -> ResponseReturnValue:
    """Finish the launch: check state, exchange the code, keep tokens and context server-side."""
    state = request.args.get("state")
    pending = _take_pending(state)
    registry = launch_registry()
    reg = registry.by_id(pending.registration_id) if pending else None
    try:
        if "error" in request.args:
            raise _authorization_error(reg)
        if not state:
            log.warning("Callback without state")
            raise StateError("The sign-in response has no state, so it cannot be matched to a launch.")
        if pending is None:
            log.warning("Callback with an unknown, expired or reused state")
            raise StateError()
        if reg is None:
            raise RegistrationError("The EHR this launch started with is no longer registered.")
        code = request.args.get("code")
        if not code:
            raise AuthorizationError("The EHR's response has no authorization code.", ehr_name=reg.name)
        return _complete(reg, pending, code)
    except SmartError as exc:
        if reg is not None:
            exc.ehr_name = exc.ehr_name or reg.name
        return _error_page(exc)


def _authorization_error(reg: Registration | None) -> AuthorizationError:
    """The EHR's OAuth error, described in plain words; shown escaped by the template."""
    name = reg.name if reg else None
    code = request.args.get("error", "")
    code = code if _OAUTH_ERROR.match(code) else "unknown_error"
    text = wire.ehr_text(request.args.get("error_description", ""), secrets=[request.args.get("state")])
    who = name or "The EHR"
    if code == "access_denied":
        description = f"{who} reports that access was denied, so the app was not launched."
    else:
        description = f"{who} did not authorize the app (error {code})."
    if text:
        description += f" The EHR said: {text}"
    log.warning("Authorization error from %s: %s%s", who, code, f": {text}" if text else "")
    return AuthorizationError(description, ehr_name=name, oauth_error=code, ehr_description=text or None)


def _complete(reg: Registration, pending: PendingAuthorization, code: str) -> ResponseReturnValue:
    config = discovery().get(reg.iss)
    tokens = exchange_code(
        reg,
        pending.token_endpoint or config.token_endpoint,
        code=code,
        code_verifier=pending.code_verifier,
        redirect_uri=pending.redirect_uri or _redirect_uri(),
        http=http_session(),
        keys=app_keys() if reg.client_type == "confidential-asymmetric" else None,
        requested_scope=pending.scope,
        require_patient=True,
        timeout=http_timeout(),
    )
    context = check_context(tokens.context, reg.iss, ehr_name=reg.name)
    fhir_user = tokens.context.fhir_user
    if tokens.id_token:
        claims = verify_id_token(
            tokens.id_token,
            discovery=discovery(),
            config=config,
            client_id=reg.client_id,
            nonce=pending.nonce,
            ehr_name=reg.name,
        )
        claimed = claims.get("fhirUser")
        if isinstance(claimed, str) and claimed:
            fhir_user = claimed
    elif pending.nonce is not None and tokens.scope.has("openid"):
        raise IdTokenError(f"{reg.name} granted openid but sent no identity token.", ehr_name=reg.name)
    launch = Launch(
        id=new_launch_id(),
        registration_id=reg.id,
        ehr_name=reg.name,
        iss=reg.iss,
        patient=context.patient,
        access_token=tokens.access_token,
        token_endpoint=pending.token_endpoint or config.token_endpoint,
        scope=str(tokens.scope),
        expires_at=tokens.expires_at,
        refresh_token=tokens.refresh_token,
        encounter=context.encounter,
        fhir_user=fhir_user,
        need_patient_banner=tokens.context.need_patient_banner,
        smart_style_url=tokens.context.smart_style_url,
        fhir_context=context.fhir_context,
        ehr_launch=pending.ehr_launch,
        token_issued_at=tokens.issued_at,
        refresh_due_at=token_keeper().refresh_due(tokens),
        patient_facing=reg.patient_facing,
    )
    begin_launch(launch)
    log.info(
        "Launch with %s completed (%s launch, registration %s%s)",
        reg.name,
        "EHR" if pending.ehr_launch else "standalone",
        reg.id,
        ", read-only: patient-facing" if launch.read_only else "",
    )
    audit_event(
        "launch",
        iss=reg.iss,
        registration=reg.id,
        client_id=reg.client_id,
        patient=context.patient,
        user=fhir_user,
        encounter=context.encounter,
        scope=str(tokens.scope),
    )
    return redirect(url_for("main.review"), code=302)


@bp.get("/.well-known/jwks.json")
def jwks() -> ResponseReturnValue:
    """The app's public signing keys, for EHRs that authenticate it with private_key_jwt."""
    response = jsonify(app_keys().public_jwks())
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


@bp.app_errorhandler(RelaunchRequired)
def relaunch_required(error: RelaunchRequired) -> ResponseReturnValue:
    """ "Relaunch from the EHR": the access token ended and could not be renewed."""
    return render_template("launch_relaunch.html", ehr_name=error.ehr_name), error.status
