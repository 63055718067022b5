"""FHIR R4 REST client (no Flask): read, paged search, create, transaction, and the patient fetch."""

from __future__ import annotations

from smart_app.fhir.client import FhirClient, WriteResult
from smart_app.fhir.errors import (
    FhirClientError,
    FhirConnectionError,
    FhirCutShort,
    FhirError,
    FhirForbidden,
    FhirMalformedResponse,
    FhirNotFound,
    FhirRateLimited,
    FhirServerError,
    FhirTimeout,
    FhirUnauthorized,
    ForeignLinkError,
)
from smart_app.fhir.record import FetchResult, ReadFailure, fetch_patient_record

__all__ = [
    "FetchResult",
    "FhirClient",
    "FhirClientError",
    "FhirConnectionError",
    "FhirCutShort",
    "FhirError",
    "FhirForbidden",
    "FhirMalformedResponse",
    "FhirNotFound",
    "FhirRateLimited",
    "FhirServerError",
    "FhirTimeout",
    "FhirUnauthorized",
    "ForeignLinkError",
    "ReadFailure",
    "WriteResult",
    "fetch_patient_record",
]
