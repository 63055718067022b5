"""One home for error pages: HTML for people, OperationOutcome JSON for machines."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, render_template, request
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from smart_app.fhir.errors import FhirError
from smart_app.smart.errors import SmartError

log = logging.getLogger("smart_app.web")


def wants_json() -> bool:
    best = request.accept_mimetypes.best_match(["text/html", "application/json", "application/fhir+json"])
    return best in ("application/json", "application/fhir+json")


def error_response(
    status: int, title: str, detail: str, *, ehr_name: str | None = None
) -> ResponseReturnValue:
    """Render an error as a page or as an OperationOutcome, by content negotiation."""
    if wants_json():
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "processing", "diagnostics": f"{title}: {detail}"}],
        }
        return jsonify(outcome), status
    return render_template("error.html", status=status, title=title, detail=detail, ehr_name=ehr_name), status


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(CSRFError)
    def csrf_error(error: CSRFError) -> ResponseReturnValue:
        log.warning("CSRF check failed on %s", request.path)
        return error_response(
            403,
            "This form has expired",
            "The page's security token was missing or did not match. Reload the page and try again; "
            "nothing was written.",
        )

    @app.errorhandler(SmartError)
    def smart_error(error: SmartError) -> ResponseReturnValue:
        log.warning("SMART launch error %s", error.error)
        return error_response(
            error.status, "The launch could not be completed", error.description, ehr_name=error.ehr_name
        )

    @app.errorhandler(FhirError)
    def fhir_error(error: FhirError) -> ResponseReturnValue:
        log.warning("FHIR error status=%s", error.status)
        return error_response(502, "The EHR's FHIR server did not answer as expected", error.message)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> ResponseReturnValue:
        return error_response(error.code or 500, error.name, error.description or "")

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> ResponseReturnValue:
        log.exception("Unexpected error on %s", request.path)
        return error_response(500, "Something went wrong", "The error was logged. Nothing was written.")
