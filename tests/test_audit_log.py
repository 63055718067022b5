"""The app's local audit log: JSON lines, allow-listed fields only, no tokens or PHI, size rotation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flask import Flask

from smart_app import auditlog
from smart_app.auditlog import DROPPED, audit_event, configure, sanitise
from smart_app.web import init_audit_log as init_app

SECRET = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0.c2ln"


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    app = Flask(__name__)
    app.config["AUDIT_LOG_PATH"] = str(tmp_path / "logs" / "audit.jsonl")
    init_app(app)
    return app


def test_events_are_json_lines_with_allowed_fields(app: Flask, tmp_path: Path) -> None:
    with app.app_context():
        audit_event(
            "launch",
            iss="http://127.0.0.1:8001/fhir",
            patient="p1",
            user="Practitioner/d1",
            scope="launch openid fhirUser patient/Observation.rs",
            registration="sandbox",
        )
        audit_event("read", resource_type="Observation", count=12, patient="p1")
        audit_event("write", ids=["ClinicalImpression/c1", "Provenance/v1"], patient="p1", status=200)
        audit_event("error", where="writeback", status=500, error="FhirServerError")
    lines = _lines(tmp_path / "logs" / "audit.jsonl")
    assert [line["kind"] for line in lines] == ["launch", "read", "write", "error"]
    assert lines[1] == {
        "ts": lines[1]["ts"],
        "kind": "read",
        "resource_type": "Observation",
        "count": 12,
        "patient": "p1",
    }
    assert lines[2]["ids"] == ["ClinicalImpression/c1", "Provenance/v1"]
    assert str(lines[0]["ts"]).endswith("Z")


def test_no_token_no_secret_no_phi(app: Flask, tmp_path: Path) -> None:
    with app.app_context():
        line = audit_event(
            "launch",
            access_token=SECRET,
            refresh_token="r-" + SECRET,
            client_secret="sandbox-secret",
            code="auth-code-123",
            patient="John Smith 1970-01-01",
            user=f"Bearer {SECRET}",
            error="Patient John Smith has cancer",
            name="John Smith",
            birthDate="1970-01-01",
            iss="http://user:pw@evil/fhir",
        )
    assert line is not None
    text = (tmp_path / "logs" / "audit.jsonl").read_text()
    for leaked in (SECRET, "sandbox-secret", "auth-code-123", "John", "Smith", "1970", "cancer", "pw@"):
        assert leaked not in text
    assert line["patient"] == DROPPED and line["user"] == DROPPED and line["error"] == DROPPED
    assert line["iss"] == DROPPED
    assert line["dropped_fields"] == sorted(
        ["access_token", "refresh_token", "client_secret", "code", "name", "birthDate"]
    )


def test_rotation_by_size(tmp_path: Path) -> None:
    app = Flask(__name__)
    app.config.update(AUDIT_LOG_PATH=str(tmp_path / "a.jsonl"), AUDIT_LOG_MAX_BYTES=400, AUDIT_LOG_BACKUPS=2)
    init_app(app)
    with app.app_context():
        for i in range(40):
            audit_event("read", resource_type="Observation", count=i, patient="p1")
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["a.jsonl", "a.jsonl.1", "a.jsonl.2"]
    assert all(p.stat().st_size <= 400 for p in tmp_path.iterdir())
    assert _lines(tmp_path / "a.jsonl")[-1]["count"] == 39


def test_default_log_outside_app_and_off(tmp_path: Path) -> None:
    configure(None)
    assert audit_event("audit", command="list") is None
    configure(str(tmp_path / "cli.jsonl"))
    try:
        assert audit_event("audit", command="list", findings=2) is not None
    finally:
        configure(None)
    assert _lines(tmp_path / "cli.jsonl")[0]["findings"] == 2
    app = Flask(__name__)
    app.config["AUDIT_LOG_PATH"] = ""
    init_app(app)
    with app.app_context():
        assert audit_event("read", count=1) is None


def test_default_path_is_in_instance_folder(tmp_path: Path) -> None:
    app = Flask(__name__, instance_path=str(tmp_path / "inst"))
    init_app(app)
    log = app.extensions[auditlog.EXTENSION_KEY]
    assert log.path == str(tmp_path / "inst" / "audit.jsonl")


def test_sanitise_shapes() -> None:
    line = sanitise(
        "read", {"counts": {"Observation": 3, "bad key": 1, "Condition": -1}, "round_trips": True}
    )
    assert line["counts"] == {"Observation": 3, "Condition": DROPPED}
    assert line["round_trips"] == DROPPED
