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
        "criteria release 1.1.0",  # the newest release, named
        "Bone fragility (osteoporosis or long-term systemic steroids): warning",  # a red flag by its name
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


def exam_answers() -> Any:
    from smart_app.drafts.exam import ExamAnswers, ExamSite

    return ExamAnswers(
        {"NODULE": "present", "PAIN_REPRODUCED": "present", "NEURO_DEFICIT": "none"},
        ExamSite(text="posterior iliac crest", side="left"),
    )


def test_an_exam_entered_through_the_app_is_its_own_kind_of_write(app: Any, sandbox: Sandbox) -> None:
    exam = sandbox.exam_for("dnguyen", exam_answers())
    client = app.test_client()
    launch(app, client, sandbox, "launch openid fhirUser user/*.rs", sandbox.token, patient="dnguyen")
    html = client.get("/audit?patient=dnguyen").get_data(as_text=True)
    text = re.sub(r"<[^>]+>", "", html)
    assert "Exam entered through the app" in text
    assert "As entered" in text and "Exam findings as the clinician entered them" in text
    assert "Subcutaneous nodule: Present, left posterior iliac crest" in text
    assert "Ada Lovelace (Practitioner/dr-ada)" in text  # the clinician by name
    assert "David Nguyen" in text  # the patient by name
    for ref in exam["observations"]:
        assert f'href="/chart/{ref}"' in html  # opened in the app's own view


def test_the_write_history_opens_in_a_new_tab_through_a_single_use_ticket(
    app: Any, sandbox: Sandbox, tmp_path: Path
) -> None:
    """The frame's session cookie is partitioned under the EHR's site: a new tab has none. The audit page
    in the frame links to a ticket that opens it once, for the audit pages only, without the ticket left
    in the tab's URL; the server keeps only the ticket's SHA-256."""
    import hashlib

    sandbox.write_for("apatel")
    frame = app.test_client()
    launch(
        app,
        frame,
        sandbox,
        "launch openid fhirUser patient/*.rs",
        sandbox.new_token(("patient/*.rs",), patient="apatel"),
        patient="apatel",
    )
    html = frame.get("/audit").get_data(as_text=True)
    link = re.search(
        r'href="(/audit/enter\?ticket=([^"]+))"[^>]*target="_blank"[^>]*rel="noopener noreferrer"', html
    )
    assert link, html[:2000]
    ticket = link.group(2)
    stored = [p.name for p in (Path(app.instance_path) / "handoff").iterdir()]
    assert hashlib.sha256(ticket.encode()).hexdigest() in stored and not any(ticket in n for n in stored)

    tab = app.test_client()  # a new tab: no cookie of the frame's
    assert tab.get("/audit").status_code == 401
    entered = tab.get(link.group(1))
    assert entered.status_code == 303
    assert "ticket" not in entered.headers["Location"] and entered.headers["Location"].startswith("/audit")
    page = tab.get(entered.headers["Location"])
    assert page.status_code == 200 and "1 write(s) found" in page.get_data(as_text=True)
    assert "/audit/enter" not in page.get_data(as_text=True)  # no further ticket handed out from the tab
    assert tab.get("/review").status_code == 401  # the tab may audit, not review or write
    assert tab.post("/writeback", data={"draft_digest": "x"}).status_code in (401, 403)

    again = app.test_client().get(link.group(1))  # used once
    assert again.status_code == 410 and "expired" in again.get_data(as_text=True)
    log = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [x["outcome"] for x in log if x["kind"] == "handoff"] == ["opened", "refused"]
    assert ticket not in (tmp_path / "audit.jsonl").read_text()


def test_an_expired_ticket_opens_nothing(app: Any, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    import time as clock

    frame = app.test_client()
    launch(app, frame, sandbox, "launch openid fhirUser user/*.rs", sandbox.token)
    html = frame.get("/audit").get_data(as_text=True)
    link = re.search(r'href="(/audit/enter\?ticket=[^"]+)"', html)
    assert link
    later = clock.time() + 121
    monkeypatch.setattr("smart_app.web.handoff.time.time", lambda: later)
    assert app.test_client().get(link.group(1).replace("&amp;", "&")).status_code == 410
