"""Errors raised by the FHIR client, one class per kind of failure.

FHIR R4 "RESTful API" (http.html#status): servers answer errors with an HTTP status and, where they
can, an OperationOutcome resource; both are kept on the exception so the caller can show the
server's own words. Messages never contain the bearer token or query values.
"""

from __future__ import annotations

from typing import Any


class FhirError(Exception):
    """Base class. ``status`` is the HTTP status (None when no response arrived); ``outcome`` is the
    server's OperationOutcome when the error body was one."""

    #: HTTP status this class stands for by default (None: no HTTP response).
    default_status: int | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        outcome: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status if status is not None else self.default_status
        self.outcome = outcome

    def issues(self) -> list[str]:
        """Readable text of each OperationOutcome issue (``diagnostics``, else ``details.text``, else
        the first coding's display), in server order; empty when there is no outcome."""
        return outcome_issues(self.outcome)

    def __str__(self) -> str:
        return self.message


class FhirUnauthorized(FhirError):
    """401: the access token is missing, expired or revoked; a refresh or relaunch is needed."""

    default_status = 401


class FhirForbidden(FhirError):
    """403: the token is valid but its scopes (or the server's policy) do not allow the request."""

    default_status = 403


class FhirNotFound(FhirError):
    """404 (or 410 Gone): the resource or resource type does not exist on this server."""

    default_status = 404


class FhirRateLimited(FhirError):
    """429: the server asked the client to slow down; ``retry_after`` is its requested wait (s)."""

    default_status = 429

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        outcome: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, outcome=outcome)
        self.retry_after = retry_after


class FhirServerError(FhirError):
    """5xx: the server failed; idempotent reads were already retried where that could help."""

    default_status = 500


class FhirClientError(FhirError):
    """Any other 4xx (400 bad search, 409/412 conflicts on write, 422 unprocessable, ...)."""

    default_status = 400


class FhirTimeout(FhirError):
    """No (complete) answer within the configured connect/read timeout."""


class FhirConnectionError(FhirError):
    """The server could not be reached (DNS, refused connection, reset)."""


class FhirMalformedResponse(FhirError):
    """The body is not JSON, or not the resource kind the interaction returns (e.g. a search that does
    not answer with a Bundle)."""


class FhirCutShort(FhirError):
    """The answer was stopped before it was complete: the read budget's deadline passed (``limit``
    ``"time"``; a ``Retry-After`` longer than what is left counts too) or it grew past the size cap
    (``"size"``, counted decompressed). What it would have said is not read."""

    def __init__(
        self,
        message: str,
        *,
        limit: str,
        status: int | None = None,
        outcome: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, status=status, outcome=outcome)
        self.limit = limit


class ForeignLinkError(FhirError):
    """A URL (paging ``next`` link, redirect) points outside the FHIR base the token was issued for;
    nothing was sent to it."""


def outcome_issues(outcome: dict[str, Any] | None) -> list[str]:
    """Readable lines from an OperationOutcome (FHIR R4 operationoutcome.html), tolerant of junk."""
    if not isinstance(outcome, dict):
        return []
    issues = outcome.get("issue")
    if not isinstance(issues, list):
        return []
    lines: list[str] = []
    for issue in issues:
        if not isinstance(issue, dict):
            continue
        text = _issue_text(issue)
        if text:
            lines.append(text)
    return lines


def _issue_text(issue: dict[str, Any]) -> str | None:
    diagnostics = issue.get("diagnostics")
    if isinstance(diagnostics, str) and diagnostics.strip():
        return diagnostics.strip()
    details = issue.get("details")
    if isinstance(details, dict):
        text = details.get("text")
        if isinstance(text, str) and text.strip():
            return text.strip()
        codings = details.get("coding")
        if isinstance(codings, list):
            for coding in codings:
                if isinstance(coding, dict):
                    display = coding.get("display") or coding.get("code")
                    if isinstance(display, str) and display.strip():
                        return display.strip()
    code = issue.get("code")
    return code.strip() if isinstance(code, str) and code.strip() else None


def error_for_status(
    status: int,
    message: str,
    outcome: dict[str, Any] | None = None,
    *,
    retry_after: float | None = None,
) -> FhirError:
    """The exception class for an HTTP error status (FHIR R4 http.html#status)."""
    if status == 401:
        return FhirUnauthorized(message, status=status, outcome=outcome)
    if status == 403:
        return FhirForbidden(message, status=status, outcome=outcome)
    if status in (404, 410):
        return FhirNotFound(message, status=status, outcome=outcome)
    if status == 429:
        return FhirRateLimited(message, status=status, outcome=outcome, retry_after=retry_after)
    if status >= 500:
        return FhirServerError(message, status=status, outcome=outcome)
    return FhirClientError(message, status=status, outcome=outcome)
