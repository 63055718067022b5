"""FHIR R4 REST endpoints at ``/fhir`` (JSON only, ``application/fhir+json``).

Bearer tokens per SMART App Launch 2.x "Access protected resources" and RFC 6750 §3 (401 with
``WWW-Authenticate``); every error is an OperationOutcome ("RESTful API" §3.1.0.4 / "Http" page).
"""

from __future__ import annotations

from datetime import datetime
from email.utils import format_datetime
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException

from ..faults import Fault
from ..interactions import Access, Interactions, etag, location
from ..outcome import FhirHttpError, JsonDict, bad_request, operation_outcome
from ..resource_types import RESOURCE_TYPES
from ..state import authorize_endpoint, fhir_base, get_state, token_endpoint
from ..store import SEARCH_PARAMS

bp = Blueprint("fhir", __name__, url_prefix="/fhir")

FHIR_JSON = "application/fhir+json; charset=utf-8"
ACCEPTED_BODY_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")


def fhir_response(
    body: JsonDict | None, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    payload = b"" if body is None else orjson.dumps(body)
    response = Response(payload, status=status, content_type=FHIR_JSON)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


@bp.errorhandler(FhirHttpError)
def _fhir_error(exc: FhirHttpError) -> Response:
    return fhir_response(exc.outcome(), exc.status, exc.headers)


@bp.app_errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response | HTTPException:
    """Routing errors (404, 405, 500) under /fhir are OperationOutcomes too."""
    if not request.path.startswith("/fhir"):
        return exc
    code = {404: "not-found", 405: "not-supported"}.get(exc.code or 500, "exception")
    response = fhir_response(operation_outcome(exc.description or exc.name, code=code), exc.code or 500)
    valid_methods = getattr(exc, "valid_methods", None)
    if exc.code == 405 and isinstance(valid_methods, list):
        response.headers["Allow"] = ", ".join(valid_methods)
    return response


# -- request plumbing ------------------------------------------------------------------------------------
def _fault(targets: list[str], *, after_commit: bool = False) -> None:
    """Apply a configured test fault, raising it as the response when it has a status."""
    faults = get_state().faults
    if not after_commit:
        faults.sleep(faults.global_delay)
    fault: Fault | None = faults.take([*targets, "fhir"], after_commit=after_commit)
    if fault is None:
        return
    faults.sleep(fault.delay)
    if fault.status is None:
        return
    headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
    if fault.body is not None:
        response = Response(fault.body, status=fault.status, mimetype="text/html", headers=headers)
        raise _RawResponse(response)
    raise FhirHttpError(fault.status, "injected fault", code="transient", headers=headers)


class _RawResponse(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__("raw response")
        self.response = response


@bp.errorhandler(_RawResponse)
def _raw(exc: _RawResponse) -> Response:
    return exc.response


def _access() -> Access:
    header = request.headers.get("Authorization", "")
    realm = f'Bearer realm="{fhir_base()}"'
    if not header[:7].lower() == "bearer " or not header[7:].strip():
        raise FhirHttpError(
            401, "a bearer access token is required", code="login", headers={"WWW-Authenticate": realm}
        )
    grant = get_state().auth.get_access(header[7:].strip())
    if grant is None:
        raise FhirHttpError(
            401,
            "the access token is invalid or expired",
            code="login",
            headers={
                "WWW-Authenticate": f'{realm}, error="invalid_token", '
                'error_description="The access token is invalid or expired"'
            },
        )
    return Access(grant)


def _interactions() -> Interactions:
    config = current_app.config
    state = get_state()
    return Interactions(
        state.store,
        _access(),
        fhir_base(),
        snapshots=state.snapshots,
        default_count=int(config["DEFAULT_COUNT"]),
        max_count=int(config["MAX_COUNT"]),
        location_base=str(config["LOCATION_BASE"] or ""),
    )


def _location_base() -> str:
    """The base of ``Location`` headers: ``LOCATION_BASE`` (a proxied server's own address) or the
    public FHIR base."""
    return str(current_app.config["LOCATION_BASE"] or fhir_base())


def _known_type(rtype: str) -> None:
    if rtype not in RESOURCE_TYPES:
        raise FhirHttpError(404, f"unknown resource type {rtype!r}", code="not-supported")


def _body() -> Any:
    if request.mimetype not in ACCEPTED_BODY_TYPES:
        raise FhirHttpError(415, "the body must be application/fhir+json", code="not-supported")
    try:
        return orjson.loads(request.get_data())
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the body is not valid JSON: {exc}", code="structure") from None


def _prefer(name: str) -> str | None:
    for part in request.headers.get("Prefer", "").split(","):
        key, _, value = part.strip().partition("=")
        if key.strip() == name:
            return value.strip().strip('"')
    return None


def _http_date(instant: str) -> str:
    return format_datetime(datetime.fromisoformat(instant.replace("Z", "+00:00")), usegmt=True)


def _resource_response(resource: JsonDict, status: int = 200) -> Response:
    return fhir_response(
        resource,
        status,
        {"ETag": etag(resource), "Last-Modified": _http_date(resource["meta"]["lastUpdated"])},
    )


def _write_response(status: int, stored: JsonDict) -> Response:
    """Create/update answer with Location, ETag, Last-Modified, body per ``Prefer: return=``."""
    headers = {
        "Location": location(stored, _location_base()),
        "ETag": etag(stored),
        "Last-Modified": _http_date(stored["meta"]["lastUpdated"]),
    }
    prefer = _prefer("return")
    if prefer == "minimal":
        return fhir_response(None, status, headers)
    if prefer == "OperationOutcome":
        text = (
            "created"
            if status == 201
            else "matched an existing resource"
            if request.method == "POST"
            else "updated"
        )
        return fhir_response(
            operation_outcome(f"{location(stored)} {text}", code="informational", severity="information"),
            status,
            headers,
        )
    return fhir_response(stored, status, headers)


# -- endpoints -------------------------------------------------------------------------------------------
@bp.get("/metadata")
def metadata() -> Response:
    _fault(["metadata"])
    return fhir_response(capability_statement())


@bp.post("")
@bp.post("/")
def bundle() -> Response:
    """Transaction and batch Bundles at the base URL."""
    body = _body()
    kind = body.get("type") if isinstance(body, dict) else None
    target = str(kind) if kind in ("transaction", "batch") else "transaction"
    _fault([target])
    result = _interactions().bundle(body, minimal=_prefer("return") == "minimal")
    _fault([target], after_commit=True)
    return fhir_response(result)


@bp.get("/<rtype>")
def search_get(rtype: str) -> Response:
    _known_type(rtype)
    _fault([rtype])
    params = list(request.args.items(multi=True))
    return fhir_response(_interactions().search(rtype, params, strict=_prefer("handling") == "strict"))


@bp.post("/<rtype>/_search")
def search_post(rtype: str) -> Response:
    """Search via POST: form-encoded parameters plus any in the query string ("Search" §3.1.1.1)."""
    _known_type(rtype)
    _fault([rtype])
    if request.mimetype != "application/x-www-form-urlencoded":
        raise FhirHttpError(415, "POST _search takes application/x-www-form-urlencoded", code="not-supported")
    params = list(request.args.items(multi=True)) + list(request.form.items(multi=True))
    return fhir_response(_interactions().search(rtype, params, strict=_prefer("handling") == "strict"))


@bp.post("/<rtype>")
def create(rtype: str) -> Response:
    _known_type(rtype)
    _fault([rtype])
    body = _body()
    status, stored = _interactions().create(rtype, body, request.headers.get("If-None-Exist"))
    _fault([rtype], after_commit=True)
    return _write_response(status, stored)


@bp.get("/<rtype>/<rid>")
def read(rtype: str, rid: str) -> Response:
    _known_type(rtype)
    _fault([rtype])
    return _resource_response(_interactions().read(rtype, rid))


@bp.put("/<rtype>/<rid>")
def update(rtype: str, rid: str) -> Response:
    _known_type(rtype)
    _fault([rtype])
    body = _body()
    status, stored = _interactions().update(rtype, rid, body, request.headers.get("If-Match"))
    _fault([rtype], after_commit=True)
    return _write_response(status, stored)


@bp.get("/<rtype>/<rid>/_history")
def history(rtype: str, rid: str) -> Response:
    _known_type(rtype)
    _fault([rtype])
    return fhir_response(_interactions().history(rtype, rid))


@bp.get("/<rtype>/<rid>/_history/<vid>")
def vread(rtype: str, rid: str, vid: str) -> Response:
    _known_type(rtype)
    _fault([rtype])
    return _resource_response(_interactions().vread(rtype, rid, vid))


def capability_statement() -> JsonDict:
    """CapabilityStatement with the SMART ``oauth-uris`` extension and ``SMART-on-FHIR`` service
    (SMART App Launch 2.x "Conformance": CapabilityStatement for older clients)."""
    search_params = [
        {"name": name, "type": "reference" if name in ("patient", "subject") else "token"}
        for name in sorted(SEARCH_PARAMS)
    ]
    interactions = [
        {"code": c} for c in ("read", "vread", "update", "history-instance", "create", "search-type")
    ]
    resources = [
        {
            "type": rtype,
            "interaction": interactions,
            "versioning": "versioned",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "searchParam": search_params,
        }
        for rtype in sorted(RESOURCE_TYPES - {"Bundle", "OperationOutcome", "Parameters"})
    ]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-24",
        "kind": "instance",
        "software": {"name": "smart-app sandbox EHR", "version": "0.1.0"},
        "implementation": {"description": "Local sandbox EHR (synthetic data)", "url": fhir_base()},
        "fhirVersion": "4.0.1",
        "format": ["json", "application/fhir+json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "cors": True,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ],
                            "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
                        }
                    ],
                    "extension": [
                        {
                            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                            "extension": [
                                {"url": "authorize", "valueUri": authorize_endpoint()},
                                {"url": "token", "valueUri": token_endpoint()},
                            ],
                        }
                    ],
                },
                "resource": resources,
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
            }
        ],
    }
