"""OperationOutcome responses (FHIR R4 "OperationOutcome" and "RESTful API" pages: every error is one)."""

from __future__ import annotations

from typing import Any

JsonDict = dict[str, Any]


def operation_outcome(
    diagnostics: str, *, code: str = "processing", severity: str = "error", expression: str | None = None
) -> JsonDict:
    """One-issue OperationOutcome; ``code`` is from the R4 IssueType value set."""
    issue: JsonDict = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


class FhirHttpError(Exception):
    """A FHIR interaction refused with ``status`` and an OperationOutcome naming the problem."""

    def __init__(
        self,
        status: int,
        diagnostics: str,
        *,
        code: str = "processing",
        expression: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.diagnostics = diagnostics
        self.code = code
        self.expression = expression
        self.headers = headers or {}

    def outcome(self) -> JsonDict:
        return operation_outcome(self.diagnostics, code=self.code, expression=self.expression)


def bad_request(diagnostics: str, *, code: str = "invalid", expression: str | None = None) -> FhirHttpError:
    return FhirHttpError(400, diagnostics, code=code, expression=expression)


def not_found(diagnostics: str) -> FhirHttpError:
    return FhirHttpError(404, diagnostics, code="not-found")
