"""Patient-facing launches are read-only (the page says the assessment is for information; no write,
exam or draft download; nothing is written with a Patient or RelatedPerson as author), and a draft
that fails the app's own check is reported as the app's problem, with no retry."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from launch_support import start_launch

from smart_app import create_app
from smart_app.writeback import InvalidDraft
from tests.views_fixtures import ALL_SCOPES, FHIR_BASE, PROBABLE, FakeEhr, fake_launch


def launch(client: Any, **kwargs: Any) -> None:
    start_launch(client.application, client, **fake_launch(**kwargs))


def fhir_writes(fake: FakeEhr) -> list[Any]:
    return [c for c in fake.rsps.calls if c.request.method != "GET"]


@pytest.mark.parametrize("user", ["Patient/p1", f"{FHIR_BASE}/Patient/p1", "RelatedPerson/rp7"])
def test_patient_launch_page_is_for_information_only(client, ehr: FakeEhr, user):
    ehr.serve(PROBABLE)
    ehr.accept_transactions()
    launch(client, fhir_user=user)
    page = client.get("/review")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "Probable back mice" in html
    assert 'id="read-only"' in html and "for information only" in html
    assert "Write draft to chart" not in html and 'class="write-form"' not in html
    assert "Download the draft" not in html and 'id="exam"' not in html
    assert client.post("/writeback", data={"draft_digest": "x"}).status_code == 403
    assert client.get("/draft.json").status_code == 403
    assert client.post("/exam", data={"nodule": "yes"}).status_code == 403
    assert fhir_writes(ehr) == [] and ehr.writes == []


def test_patient_launch_write_refusal_says_why(client, ehr: FakeEhr, caplog):
    ehr.serve(PROBABLE)
    launch(client, fhir_user="Patient/p1")
    client.get("/review")
    caplog.set_level(logging.WARNING)
    refused = client.post("/writeback", data={"draft_digest": "x"})
    assert b"opened by a patient" in refused.data and b"Nothing was written" in refused.data
    assert "Write refused: a patient-facing launch (Patient user)" in caplog.text


def test_a_patient_facing_registration_is_read_only_for_any_user(tmp_path: Path, ehr: FakeEhr):
    regs = tmp_path / "registrations"
    regs.mkdir()
    registration = {
        "id": "portal",
        "name": "Patient portal",
        "iss": FHIR_BASE,
        "client_id": "portal",
        "client_type": "public",
        "scopes": ALL_SCOPES,
        "patient_facing": True,
    }
    (regs / "portal.json").write_text(json.dumps(registration))
    app = create_app(
        {
            "TESTING": True,
            "WTF_CSRF_ENABLED": False,
            "SESSION_COOKIE_SAMESITE": "Lax",
            "SESSION_COOKIE_SECURE": False,
            "REGISTRATIONS_DIRS": [str(regs)],
            "INSTANCE_PATH": str(tmp_path / "instance"),
        }
    )
    client = app.test_client()
    ehr.serve(PROBABLE)
    start_launch(app, client, **fake_launch(registration_id="portal", fhir_user=None, patient_facing=True))
    html = client.get("/review").get_data(as_text=True)
    assert "for information only" in html and "Write draft to chart" not in html
    assert client.post("/writeback", data={"draft_digest": "x"}).status_code == 403
    assert fhir_writes(ehr) == []


def test_a_clinician_launch_still_writes(client, ehr: FakeEhr):
    ehr.serve(PROBABLE)
    ehr.accept_transactions()
    launch(client, fhir_user="Practitioner/dr1")
    html = client.get("/review").get_data(as_text=True)
    assert "Write draft to chart" in html and 'id="read-only"' not in html


def test_a_draft_failing_the_apps_check_is_the_apps_problem(client, ehr: FakeEhr, monkeypatch, caplog):
    ehr.serve(PROBABLE)
    launch(client)
    html = client.get("/review").get_data(as_text=True)
    digest = html.split('name="draft_digest" value="', 1)[1].split('"', 1)[0]

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise InvalidDraft(["ClinicalImpression.encounter: reference must be Encounter/<id>"])

    monkeypatch.setattr("smart_app.web.write.write_drafts", refuse)
    caplog.set_level(logging.INFO)
    page = client.post("/writeback", data={"draft_digest": digest})
    text = page.get_data(as_text=True)
    assert page.status_code == 502
    assert "The app could not prepare a valid draft" in text and "not in the EHR" in text
    assert "The EHR did not accept" not in text and "Retry" not in text and 'class="write-form"' not in text
    assert "ClinicalImpression.encounter: reference must be Encounter/&lt;id&gt;" in text
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "fails its own profiles" in errors[0].getMessage()
    assert fhir_writes(ehr) == []
