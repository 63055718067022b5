"""Review page, write-back, draft download and exam capture through the Flask test client,
with a fake launch in the session and FHIR mocked by ``responses``."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from launch_support import start_launch

from tests.views_fixtures import (
    FHIR_BASE,
    INSUFFICIENT,
    PROBABLE,
    READ_SCOPES,
    RED_FLAG,
    WRITE_SCOPES,
    FakeEhr,
    lbp,
    nodule,
    patient,
    reproduced,
)


def launch(client: Any, **kwargs: Any) -> None:
    from tests.views_fixtures import fake_launch as make

    start_launch(client.application, client, **make(**kwargs))


def written_types(fake: FakeEhr) -> list[str]:
    return [e["resource"]["resourceType"] for body in fake.writes for e in body.get("entry", [])]


def digest_from(html: str) -> str:
    match = re.search(r'name="draft_digest" value="([0-9a-f]+)"', html)
    assert match, "no write form on the page"
    return match.group(1)


def test_review_without_launch_is_refused(client: Any) -> None:
    resp = client.get("/review")
    assert resp.status_code in (400, 401, 403)
    assert b"Write draft to chart" not in resp.data


def test_probable_patient_page(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(PROBABLE)
    launch(client)
    resp = client.get("/review")
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200, html
    assert "Probable back mice" in html
    assert "<h1 id=\"headline\">" in html
    assert "diagnostic" in html.lower()
    assert "Ada Example" in html and "MRN-0001" in html  # patient banner
    assert "Criteria checklist" in html and "badge-met" in html
    assert "Write draft to chart" in html
    assert "ServiceRequest" in html
    # evidence expands to the escaped source resource
    assert "<details class=\"evidence\">" in html and "&#34;resourceType&#34;: &#34;Observation&#34;" in html
    assert "Motyka 2000" in html and "criteria" in html.lower()
    # CSP: no inline script or style
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert " style=" not in html and "<style" not in html


def test_no_banner_when_ehr_shows_its_own(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(PROBABLE)
    launch(client, need_patient_banner=False)
    html = client.get("/review").get_data(as_text=True)
    assert "patient-banner" not in html


def test_ehr_strings_are_escaped(client: Any, ehr: FakeEhr) -> None:
    evil = "<script>alert(1)</script>"
    ehr.serve([lbp(), nodule(site=f"left iliac crest {evil}"), reproduced()], pat=patient(f"Eve {evil}"))
    launch(client)
    html = client.get("/review").get_data(as_text=True)
    assert evil not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_red_flag_blocks_suggestion(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(RED_FLAG)
    launch(client)
    html = client.get("/review").get_data(as_text=True)
    assert "Procedure suggestion withheld" in html
    assert "Work-up recommended" in html
    order = [html.index(x) for x in ("red-flags-title", "Suggested next step", "Criteria checklist")]
    assert order == sorted(order)
    assert '"resourceType": "ServiceRequest"' not in html.replace("&#34;", '"')
    assert "No ServiceRequest is in this draft" in html


def test_write_back_success_lists_ids(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(PROBABLE)
    ehr.accept_transactions()
    launch(client)
    html = client.get("/review").get_data(as_text=True)
    resp = client.post("/writeback", data={"draft_digest": digest_from(html)})
    page = resp.get_data(as_text=True)
    assert resp.status_code == 200, page
    assert "Draft written to the chart" in page
    assert len(ehr.writes) == 1 and ehr.writes[0]["type"] == "transaction"
    assert "ServiceRequest" in written_types(ehr)
    assert "Provenance" in written_types(ehr)
    assert f"{FHIR_BASE}/ServiceRequest/" in page


def test_write_back_failure_shows_outcome_and_keeps_draft(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(PROBABLE)
    ehr.reject_transactions(422, "ServiceRequest.code: binding <violated>")
    launch(client)
    html = client.get("/review").get_data(as_text=True)
    digest = digest_from(html)
    resp = client.post("/writeback", data={"draft_digest": digest})
    page = resp.get_data(as_text=True)
    assert resp.status_code == 502, page
    assert "did not accept the draft" in page
    assert "binding &lt;violated&gt;" in page
    assert "Retry writing the draft" in page and digest in page
    # the draft is still in the session: a retry reaches the server again
    ehr.rsps.reset()
    ehr.accept_transactions()
    retry = client.post("/writeback", data={"draft_digest": digest})
    assert retry.status_code == 200, retry.get_data(as_text=True)


def test_stale_draft_is_not_written(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(PROBABLE)
    ehr.accept_transactions()
    launch(client)
    client.get("/review")
    resp = client.post("/writeback", data={"draft_digest": "0000"})
    assert resp.status_code == 303
    assert ehr.writes == []


def test_writeback_without_review_redirects(client: Any, ehr: FakeEhr) -> None:
    launch(client)
    resp = client.post("/writeback", data={"draft_digest": "x"})
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/review")


def test_missing_write_scope_offers_download(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(PROBABLE)
    launch(client, scope=READ_SCOPES)
    html = client.get("/review").get_data(as_text=True)
    assert "Write draft to chart" not in html
    assert "did not grant" in html and "ClinicalImpression" in html
    assert "/draft.json" in html
    download = client.get("/draft.json")
    assert download.status_code == 200
    assert "attachment" in download.headers["Content-Disposition"]
    body = json.loads(download.data)
    assert body["resourceType"] == "Bundle" and body["type"] == "transaction"
    # posting anyway is refused without a request to the EHR
    ehr.accept_transactions()
    refused = client.post("/writeback", data={"draft_digest": digest_or_none(html)})
    assert refused.status_code in (303, 403)
    assert ehr.writes == []


def digest_or_none(html: str) -> str:
    match = re.search(r'name="draft_digest" value="([0-9a-f]+)"', html)
    return match.group(1) if match else "none"


def test_draft_download_without_review_is_404(client: Any) -> None:
    launch(client)
    assert client.get("/draft.json").status_code == 404


def test_failed_search_is_reported(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(PROBABLE, fail={"Condition": 500})
    launch(client)
    resp = client.get("/review")
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert "What could not be read" in html
    assert "Condition" in html


def test_unreadable_patient(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(PROBABLE, fail={"Patient": 404})
    launch(client)
    resp = client.get("/review")
    html = resp.get_data(as_text=True)
    assert "could not be read" in html
    assert "Write draft to chart" not in html


# --- exam capture --------------------------------------------------------------------------------------
EXAM = {"nodule": "yes", "site": "posterior-iliac-crest", "side": "left", "firm": "on", "mobile": "on",
        "pain_reproduced": "yes", "neuro": "no", "relief": ""}


def test_exam_written_when_observation_create_granted(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(INSUFFICIENT)
    launch(client)
    html = client.get("/review").get_data(as_text=True)
    assert "Insufficient data" in html and "Record the focused exam" in html
    assert "not saved to the chart" not in html
    ehr.accept_transactions()
    resp = client.post("/exam", data=EXAM)
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/review")
    observations = [e["resource"] for body in ehr.writes for e in body["entry"]]
    assert all(o["resourceType"] == "Observation" and o["status"] == "final" for o in observations)
    assert all(o["subject"] == {"reference": "Patient/p1"} for o in observations)
    assert all(o["performer"] == [{"reference": "Practitioner/dr1"}] for o in observations)
    codes = {c["code"] for o in observations for c in o["code"]["coding"]}
    assert {"95325000", "nodule-pain-reproduced", "nodule-firm", "nodule-mobile", "26544005"} <= codes
    nod = next(o for o in observations if o["code"]["coding"][0]["code"] == "95325000")
    assert nod["bodySite"]["text"] == "left posterior iliac crest"
    assert nod["valueCodeableConcept"]["coding"][0]["code"] == "52101004"
    # the next review reads them back from the EHR
    ehr.rsps.reset()
    ehr.serve([*INSUFFICIENT, {**nod, "id": "exam-nodule"}, reproduced()])
    page = client.get("/review").get_data(as_text=True)
    assert "Exam saved to the chart" in page
    assert "Probable back mice" in page


def test_exam_kept_in_session_without_scope(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(INSUFFICIENT)
    launch(client, scope=f"{READ_SCOPES} {WRITE_SCOPES}")
    html = client.get("/review").get_data(as_text=True)
    assert "not saved to the chart" in html
    resp = client.post("/exam", data=EXAM)
    assert resp.status_code == 303
    assert ehr.writes == []
    page = client.get("/review").get_data(as_text=True)
    assert "Exam NOT saved to the chart" in page
    assert "Probable back mice" in page
    assert "includes an exam not saved to the chart" in page
    assert "Write draft to chart" not in page and "/draft.json" in page
    cleared = client.post("/exam/clear")
    assert cleared.status_code == 303
    assert "Insufficient data" in client.get("/review").get_data(as_text=True)


@pytest.mark.parametrize(
    "form, message",
    [
        ({**EXAM, "relief": "150"}, "0 to 100"),
        ({**EXAM, "site": ""}, "site"),
        ({**EXAM, "nodule": "maybe"}, "Unexpected value"),
    ],
)
def test_exam_rejects_bad_input(client: Any, ehr: FakeEhr, form: dict[str, str], message: str) -> None:
    ehr.serve(INSUFFICIENT)
    launch(client)
    resp = client.post("/exam", data=form)
    assert resp.status_code == 303
    assert ehr.writes == []
    page = client.get("/review").get_data(as_text=True)
    assert "The exam was not recorded" in page and message in page


def test_exam_relief_is_a_percentage(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(INSUFFICIENT)
    ehr.accept_transactions()
    launch(client)
    client.post("/exam", data={"nodule": "unknown", "pain_reproduced": "unknown", "neuro": "unknown",
                               "relief": "90"})
    (obs,) = [e["resource"] for body in ehr.writes for e in body["entry"]]
    assert obs["code"]["coding"][0]["code"] == "diagnostic-injection-relief"
    ucum = "http://unitsofmeasure.org"
    assert obs["valueQuantity"] == {"value": 90, "unit": "%", "system": ucum, "code": "%"}


def test_csrf_required_for_writes(app: Any, ehr: FakeEhr) -> None:
    app.config["WTF_CSRF_ENABLED"] = True
    client = app.test_client()
    ehr.serve(PROBABLE)
    ehr.accept_transactions()
    launch(client)
    html = client.get("/review").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert token
    refused = client.post("/writeback", data={"draft_digest": digest_from(html)})
    assert refused.status_code == 403 and ehr.writes == []
    wrong = client.post("/writeback", data={"draft_digest": digest_from(html), "csrf_token": "forged"})
    assert wrong.status_code == 403 and ehr.writes == []
    ok = client.post("/writeback", data={"draft_digest": digest_from(html), "csrf_token": token.group(1)})
    assert ok.status_code == 200 and len(ehr.writes) == 1



def test_unsaved_exam_does_not_follow_into_another_launch(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(INSUFFICIENT)
    launch(client, scope=f"{READ_SCOPES} {WRITE_SCOPES}")
    client.post("/exam", data=EXAM)
    assert "Probable back mice" in client.get("/review").get_data(as_text=True)
    launch(client, scope=f"{READ_SCOPES} {WRITE_SCOPES}", fhir_user="Practitioner/dr2")
    page = client.get("/review").get_data(as_text=True)
    assert "Insufficient data" in page
    assert "includes an exam not saved" not in page


def test_page_structure_is_accessible(client: Any, ehr: FakeEhr) -> None:
    from html.parser import HTMLParser

    class Audit(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.headings: list[int] = []
            self.controls: list[dict[str, str | None]] = []
            self.label_for: set[str] = set()
            self.in_label = 0

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            a = dict(attrs)
            if re.fullmatch(r"h[1-6]", tag):
                self.headings.append(int(tag[1]))
            if tag == "label":
                self.in_label += 1
                if a.get("for"):
                    self.label_for.add(str(a["for"]))
            if tag in ("input", "select", "textarea") and a.get("type") != "hidden":
                self.controls.append({**a, "wrapped": "yes" if self.in_label else None})

        def handle_endtag(self, tag: str) -> None:
            if tag == "label":
                self.in_label -= 1

    ehr.serve(INSUFFICIENT)
    launch(client)
    audit = Audit()
    audit.feed(client.get("/review").get_data(as_text=True))
    assert audit.headings[0] == 1 and audit.headings.count(1) == 1
    assert all(b <= a + 1 for a, b in zip(audit.headings, audit.headings[1:], strict=False))
    assert audit.controls, "the exam form is shown"
    for control in audit.controls:
        assert control["wrapped"] or control.get("id") in audit.label_for, control
