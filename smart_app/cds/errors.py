"""Refusals of a CDS Hooks call (https://cds-hooks.hl7.org/2.0/#http-status-codes)."""

from __future__ import annotations


class CdsError(Exception):
    """A call refused with HTTP ``status``. ``error`` is a short code, safe to log and to audit;
    ``description`` is one sentence safe to show the caller (it never quotes a token or patient data)."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description

    def to_json(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def bad_request(description: str) -> CdsError:
    return CdsError(400, "invalid_request", description)


def unauthorized(error: str, description: str) -> CdsError:
    """401: the caller is not a registered CDS client with a valid JWT; nothing is evaluated."""
    return CdsError(401, error, description)


def precondition_failed(description: str) -> CdsError:
    """412: the data the criteria need was neither prefetched nor readable (CDS Hooks 2.0 "Prefetch
    Template": the service SHALL answer 412 Precondition Failed)."""
    return CdsError(412, "data_unavailable", description)
