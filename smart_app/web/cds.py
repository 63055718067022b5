"""The CDS Hooks endpoints (CDS Hooks 2.0; docs/cds-hooks.md): discovery, the services and their feedback.

``GET /cds-services`` needs no JWT (it holds no patient data). ``POST /cds-services/{id}`` and
``POST /cds-services/{id}/feedback`` first check the CDS client's JWT (:mod:`smart_app.cds.auth`,
``aud`` = ``PUBLIC_URL`` + the path called), so an unknown client gets 401 before the body is read.
Answers are JSON; errors are ``{"error", "error_description"}``. Every call is an event of the audit
log (``cds``, ``cds-feedback``). CSRF protection does not apply: these are server-to-server calls
authenticated by the JWT, never by a browser cookie.

Settings: ``CDS_MAX_REQUEST_BYTES`` (default 64 MB), ``CDS_JWT_MAX_LIFETIME`` (seconds, default 300),
``CDS_JWKS_TTL_SECONDS`` (default 300); the FHIR budgets of a launch (``FHIR_TIMEOUT``,
``FHIR_MAX_RETRIES``, ``FHIR_PAGE_SIZE``) and ``HTTP_TIMEOUT`` for fetching JWK Sets.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Blueprint, Flask, current_app, jsonify, request
from flask.wrappers import Response

from smart_app import fhirjson as fj
from smart_app.auditlog import audit_event
from smart_app.cds.auth import (
    MAX_LIFETIME_SECONDS,
    FileReplayCache,
    JwksCache,
    RedisReplayCache,
    ReplayCache,
    Verified,
    verify_client_jwt,
)
from smart_app.cds.clients import CdsClientRegistry, load_cds_clients
from smart_app.cds.discovery import SERVICES, Service, discovery_document
from smart_app.cds.errors import CdsError
from smart_app.cds.feedback import MAX_BYTES as FEEDBACK_MAX_BYTES
from smart_app.cds.feedback import parse_feedback
from smart_app.cds.request import DEFAULT_MAX_BYTES, parse_hook_request
from smart_app.cds.service import Settings, answer_hook
from smart_app.fhir.record import DEFAULT_PAGE_SIZE
from smart_app.web import csrf
from smart_app.web.session import http_session, http_timeout, registration_dirs

bp = Blueprint("cds", __name__)
csrf.exempt(bp)

EXTENSION = "smart_app.cds"
T = TypeVar("T")
_lock = threading.Lock()


def _once(app: Flask, name: str, build: Callable[[], T]) -> T:
    ext: dict[str, Any] = app.extensions.setdefault(EXTENSION, {})
    if name not in ext:
        with _lock:
            if name not in ext:
                ext[name] = build()
    return ext[name]  # type: ignore[no-any-return]


def cds_clients(app: Flask) -> CdsClientRegistry:
    """The registered CDS clients (``"kind": "cds-client"`` files of ``REGISTRATIONS_DIRS``), loaded once."""
    return _once(app, "clients", lambda: load_cds_clients(registration_dirs(app)))


def jwks_cache(app: Flask) -> JwksCache:
    return _once(
        app,
        "jwks",
        lambda: JwksCache(
            http_session(app),
            http_timeout(app),
            ttl=float(app.config.get("CDS_JWKS_TTL_SECONDS", 300)),
        ),
    )


def replay_cache(app: Flask) -> ReplayCache:
    """Seen ``jti``s: in Redis when sessions are (every host), else files in the instance folder (every
    process of this host)."""

    def build() -> ReplayCache:
        client = app.config.get("SESSION_REDIS")
        if client is not None:
            return RedisReplayCache(client)
        return FileReplayCache(os.path.join(app.instance_path, "cds-jti"))

    return _once(app, "replay", build)


def endpoint_url() -> str:
    """The URL of the endpoint called, as the JWT's ``aud`` must name it: ``PUBLIC_URL`` + the path (the
    Host header is not trusted)."""
    return f"{str(current_app.config['PUBLIC_URL']).rstrip('/')}{request.path}"


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = jsonify(body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _refused(exc: CdsError, service: Service | None, started: float, **fields: Any) -> Response:
    audit_event(
        "cds",
        service=service.id if service else None,
        outcome="refused",
        status=exc.status,
        error=exc.error,
        duration_ms=_ms(started),
        **fields,
    )
    headers = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = f'Bearer error="invalid_token", error_description="{exc.description}"'
    return _json(exc.to_json(), exc.status, headers)


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


def _body(limit: int) -> bytes:
    """The request body, read up to ``limit`` bytes (413 beyond)."""
    if request.content_length is not None and request.content_length > limit:
        raise CdsError(413, "invalid_request", f"The request body is larger than {limit:,} bytes.")
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        raise CdsError(413, "invalid_request", f"The request body is larger than {limit:,} bytes.")
    return data


def _service(service_id: str) -> Service:
    service = SERVICES.get(service_id)
    if service is None:
        raise CdsError(404, "not_found", "No such CDS service.")
    return service


def _authenticate() -> Verified:
    """The CDS client of this call, from its JWT."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    return verify_client_jwt(
        request.headers.get("Authorization"),
        audience=endpoint_url(),
        clients=cds_clients(app),
        jwks=jwks_cache(app),
        replay=replay_cache(app),
        max_lifetime=float(app.config.get("CDS_JWT_MAX_LIFETIME", MAX_LIFETIME_SECONDS)),
    )


def _settings() -> Settings:
    config = current_app.config
    connect, read = config.get("FHIR_TIMEOUT", (3.05, 30.0))
    return Settings(
        public_url=str(config["PUBLIC_URL"]),
        fhir_timeout=(float(connect), float(read)),
        fhir_max_retries=int(config.get("FHIR_MAX_RETRIES", 3)),
        page_size=int(config.get("FHIR_PAGE_SIZE", DEFAULT_PAGE_SIZE)),
    )


@bp.get("/cds-services")
def discovery() -> Response:
    return _json(discovery_document())


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    started = time.perf_counter()
    service: Service | None = None
    client_id = None
    try:
        service = _service(service_id)
        client = _authenticate().client
        client_id = client.id
        body = _body(int(current_app.config.get("CDS_MAX_REQUEST_BYTES", DEFAULT_MAX_BYTES)))
        with fj.gc_paused():  # a large prefetch is many objects: no collector passes over them meanwhile
            answer = answer_hook(service, parse_hook_request(body, service), client, _settings())
    except CdsError as exc:
        return _refused(exc, service, started, registration=client_id)
    audit_event("cds", **answer.audit, duration_ms=_ms(started))
    return _json(answer.body)


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    started = time.perf_counter()
    service: Service | None = None
    try:
        service = _service(service_id)
        client = _authenticate().client
        items = parse_feedback(_body(FEEDBACK_MAX_BYTES))
    except CdsError as exc:
        return _refused(exc, service, started)
    for item in items:
        audit_event("cds-feedback", service=service.id, registration=client.id, **item.audit_fields())
    return _json({})
