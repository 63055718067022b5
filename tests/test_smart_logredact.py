"""Redaction of codes, states and tokens from third-party log lines (smart_app.smart.logredact)."""

from __future__ import annotations

import logging

from smart_app.smart.logredact import RedactSecrets, install_log_redaction, redact


def test_redact_query_and_form_values():
    line = '"GET /callback?code=abc123&state=xyz HTTP/1.1" 302 -'
    assert redact(line) == '"GET /callback?code=[redacted]&state=[redacted] HTTP/1.1" 302 -'
    form = "grant_type=refresh_token&refresh_token=R1"
    assert redact(form) == "grant_type=refresh_token&refresh_token=[redacted]"
    assert redact("/launch?iss=https://ehr.test/fhir&launch=L1") == "/launch?iss=https://ehr.test/fhir&launch=L1"
    assert redact("error_code=5 passcode=7") == "error_code=5 passcode=7"


def test_filter_rewrites_records_of_installed_loggers(caplog):
    install_log_redaction(["werkzeug"])
    install_log_redaction(["werkzeug"])
    logger = logging.getLogger("werkzeug")
    assert sum(isinstance(f, RedactSecrets) for f in logger.filters) == 1
    with caplog.at_level(logging.INFO, logger="werkzeug"):
        logger.info('%s - - "%s" %s', "127.0.0.1", "GET /callback?code=SECRET-CODE&state=SECRET-STATE", 302)
    assert "SECRET" not in caplog.text and "code=[redacted]" in caplog.text
