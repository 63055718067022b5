"""The body of a hook call, checked (CDS Hooks 2.0 "Calling a CDS Service", "Passing the Access Token to
the CDS Service"; the ``patient-view`` and ``order-sign`` hook definitions).

The body is decoded through :func:`smart_app.fhirjson.decode_json` with a size limit. What the service
relies on is checked and named when wrong (400); anything else in the body is ignored. The
``fhirAuthorization`` access token is kept out of ``repr`` and is never logged or stored: it is handed to
the FHIR client of the one call and dropped with it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from smart_app import fhirjson as fj
from smart_app.cds.discovery import Service
from smart_app.cds.errors import CdsError, bad_request
from smart_app.smart.scopes import ScopeSet

#: 10,000 Observations prefetched are about 15 MB of JSON.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: ``context.userId`` types each hook allows (hook definitions, "Context").
USER_TYPES: dict[str, tuple[str, ...]] = {
    "patient-view": ("Practitioner", "PractitionerRole", "Patient", "RelatedPerson"),
    "order-sign": ("Practitioner", "PractitionerRole"),
}
#: Users the cards are for: clinicians. A patient or proxy viewing the record gets no cards.
CLINICIAN_TYPES = ("Practitioner", "PractitionerRole")


@dataclass(frozen=True)
class FhirAuthorization:
    """``fhirAuthorization``: a bearer token for ``fhirServer``, scoped to this service and user."""

    access_token: str = field(repr=False)
    expires_in: int
    scope: ScopeSet
    subject: str
    patient: str | None = None


@dataclass(frozen=True)
class HookRequest:
    """A checked hook call."""

    hook: str
    hook_instance: str
    patient_id: str
    user_id: str
    encounter_id: str | None = None
    fhir_server: str | None = None
    fhir_authorization: FhirAuthorization | None = None
    prefetch: Mapping[str, Any] | None = None
    draft_orders: tuple[dict[str, Any], ...] = ()

    @property
    def user_type(self) -> str:
        return self.user_id.split("/", 1)[0]


def parse_hook_request(body: bytes, service: Service, *, max_bytes: int = DEFAULT_MAX_BYTES) -> HookRequest:
    """Decode and check a call to ``service``; raises ``CdsError`` 400 (413 when too large)."""
    try:
        data = fj.decode_json(body, max_bytes=max_bytes)
    except fj.JsonInputError as exc:
        status = 413 if len(body) > max_bytes else 400
        raise CdsError(status, "invalid_request", f"The request body is {exc.reason}.") from None
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object.")
    if data.get("hook") != service.hook:
        raise bad_request(f"hook must be {service.hook!r} for the service {service.id}.")
    hook_instance = data.get("hookInstance")
    if not isinstance(hook_instance, str) or not _is_uuid(hook_instance):
        raise bad_request("hookInstance must be a UUID.")

    context = data.get("context")
    if not isinstance(context, dict):
        raise bad_request("context must be an object.")
    patient_id = context.get("patientId")
    if not isinstance(patient_id, str) or not fj.ID_RE.fullmatch(patient_id):
        raise bad_request("context.patientId must be a FHIR id.")
    user_id = context.get("userId")
    allowed = USER_TYPES[service.hook]
    if not isinstance(user_id, str) or not _is_reference(user_id, allowed):
        raise bad_request(f"context.userId must be a reference to one of {', '.join(allowed)} (Type/id).")
    encounter_id = context.get("encounterId")
    if encounter_id is not None and (
        not isinstance(encounter_id, str) or not fj.ID_RE.fullmatch(encounter_id)
    ):
        raise bad_request("context.encounterId must be a FHIR id.")
    draft_orders: tuple[dict[str, Any], ...] = ()
    if service.hook == "order-sign":
        draft_orders = _draft_orders(context.get("draftOrders"))

    fhir_server = data.get("fhirServer")
    if fhir_server is not None and (not isinstance(fhir_server, str) or not _is_base_url(fhir_server)):
        raise bad_request("fhirServer must be an absolute http(s) URL without query or fragment.")
    authorization = _authorization(data.get("fhirAuthorization"))
    if authorization is not None and fhir_server is None:
        raise bad_request("fhirServer is required with fhirAuthorization.")
    if authorization is not None and authorization.patient not in (None, patient_id):
        raise bad_request("fhirAuthorization.patient is not context.patientId.")
    prefetch = data.get("prefetch")
    if prefetch is not None and not isinstance(prefetch, dict):
        raise bad_request("prefetch must be an object.")

    return HookRequest(
        hook=service.hook,
        hook_instance=hook_instance.lower(),
        patient_id=patient_id,
        user_id=user_id,
        encounter_id=encounter_id,
        fhir_server=fhir_server.rstrip("/") if fhir_server else None,
        fhir_authorization=authorization,
        prefetch=prefetch,
        draft_orders=draft_orders,
    )


def _authorization(value: Any) -> FhirAuthorization | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_request("fhirAuthorization must be an object.")
    token = value.get("access_token")
    if not isinstance(token, str) or not token.strip() or len(token) > 8192:
        raise bad_request("fhirAuthorization.access_token must be a non-empty string.")
    token_type = value.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise bad_request("fhirAuthorization.token_type must be Bearer.")
    expires_in = value.get("expires_in")
    if not isinstance(expires_in, int) or isinstance(expires_in, bool) or expires_in < 0:
        raise bad_request("fhirAuthorization.expires_in must be a non-negative integer.")
    scope = value.get("scope")
    if not isinstance(scope, str):
        raise bad_request("fhirAuthorization.scope must be a string of scopes.")
    subject = value.get("subject")
    if not isinstance(subject, str) or not subject:
        raise bad_request("fhirAuthorization.subject must be the service's client id.")
    patient = value.get("patient")
    if patient is not None and (not isinstance(patient, str) or not fj.ID_RE.fullmatch(patient)):
        raise bad_request("fhirAuthorization.patient must be a FHIR id.")
    return FhirAuthorization(
        access_token=token.strip(),
        expires_in=expires_in,
        scope=ScopeSet.parse(scope),
        subject=subject,
        patient=patient,
    )


def _draft_orders(value: Any) -> tuple[dict[str, Any], ...]:
    """``context.draftOrders``: a Bundle of the request resources about to be signed."""
    if not isinstance(value, dict) or value.get("resourceType") != "Bundle":
        raise bad_request("context.draftOrders must be a Bundle.")
    entries = value.get("entry", [])
    if not isinstance(entries, list):
        raise bad_request("context.draftOrders.entry must be an array.")
    return tuple(
        entry["resource"]
        for entry in entries
        if isinstance(entry, dict) and isinstance(entry.get("resource"), dict)
    )


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value.removeprefix("urn:uuid:"))
    except ValueError:
        return False
    return True


def _is_reference(value: str, types: tuple[str, ...]) -> bool:
    rtype, _, rid = value.partition("/")
    return rtype in types and bool(fj.ID_RE.fullmatch(rid))


def _is_base_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and not parts.query and not parts.fragment
