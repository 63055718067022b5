"""The auditor page ``/audit`` against the sandbox over HTTP, with a launch in the app's session."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import requests
from launch_support import start_launch

from tests.audit_fixtures import AUTHOR, Sandbox

pytestmark = pytest.mark.e2e


@pytest.fixture
def app(tmp_path: Path, sandbox: Sandbox) -> Any:
    from smart_app import create_app

    regs = tmp_path / "registrations"
    regs.mkdir()
    (regs / "audit-test.json").write_text(
        json.dumps(
            {
                "id": "audit-test",
                "name": "Sandbox",
                "iss": sandbox.base,
                "client_id": "audit-test",
                "client_type": "public",
                "scopes": "launch openid fhirUser user/*.rs",
                "frame_ancestors": ["http://127.0.0.1"],
            }
        )
    )
    app = create_app(
        {
            "TESTING": True,
            "SESSION_COOKIE_SAMESITE": "Lax",
            "SESSION_COOKIE_SECURE": False,
            "REGISTRATIONS_DIRS": [str(regs)],
            "FHIR_MAX_RETRIES": 0,
            "AUDIT_LOG_PATH": str(tmp_path / "audit.jsonl"),
        }
    )
    return app


def launch(app: Any, client: Any, box: Sandbox, scope: str, token: str, patient: str = "apatel") -> None:
    start_launch(
        app,
        client,
        iss=box.base,
        patient=patient,
        fhir_user=AUTHOR,
        need_patient_banner=False,
        scope=scope,
        registration_id="audit-test",
        access_token=token,
        expires_at=4102444800,
        token_endpoint=box.base.removesuffix("/fhir") + "/auth/token",
        ehr_name="Sandbox",
    )


def test_page_needs_a_launch(app: Any) -> None:
    assert app.test_client().get("/audit").status_code == 401


def test_page_explains_each_write(app: Any, sandbox: Sandbox, tmp_path: Path) -> None:
    ok = sandbox.write_for("apatel")
    edited = sandbox.write_for("jkowalski")
    sr_ref = next(r for r in edited["refs"] if r.startswith("ServiceRequest/"))
    sr = sandbox.client().read("ServiceRequest", sr_ref.split("/")[1])
    sr["bodySite"] = [{"text": "right forearm"}]
    answer = requests.put(
        f"{sandbox.base}/{sr_ref}",
        data=json.dumps(sr),
        headers={"Authorization": f"Bearer {sandbox.token}", "Content-Type": "application/fhir+json"},
        timeout=10,
    )
    assert answer.status_code == 200

    client = app.test_client()
    launch(app, client, sandbox, "launch openid fhirUser user/*.rs", sandbox.token)
    page = client.get("/audit")
    assert page.status_code == 200, page.data[:500]
    html = page.get_data(as_text=True)
    assert "2 write(s) found" in html
    for text in (
        "Reproduces",
        "Does not reproduce",
        "Possible back mice",
        "Probable back mice",
        "https://smart-app.example/fhir/criteria/back-mice version 1.1.0",  # the newest release
        AUTHOR,
        ok["assessment"],
        "procedure suggestion",
        "right forearm",
        "Someone changed this after the app wrote it",
        "From which records",
    ):
        assert text in html, text
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)  # no inline script
    log = (tmp_path / "audit.jsonl").read_text()
    assert sandbox.token not in log
    last = json.loads(log.splitlines()[-1])
    assert last["kind"] == "audit" and last["command"] == "page" and last["findings"] == 1


def test_patient_level_launch_sees_only_its_patient(app: Any, sandbox: Sandbox) -> None:
    mine = sandbox.write_for("apatel")
    other = sandbox.write_for("evance")
    token = sandbox.new_token(("patient/*.rs",), patient="apatel")
    client = app.test_client()
    launch(app, client, sandbox, "launch openid fhirUser patient/*.rs", token, patient="apatel")
    html = client.get("/audit").get_data(as_text=True)
    assert mine["assessment"] in html
    assert other["assessment"] not in html
    assert "1 write(s) found" in html
