"""Review page, write-back, draft download and exam capture through the Flask test client,
with a fake launch in the session and FHIR mocked by ``responses``."""

from __future__ import annotations

import json
import re
from typing import Any

from launch_support import start_launch

from tests.views_fixtures import (
    FHIR_BASE,
    FINDING,
    INSUFFICIENT,
    PROBABLE,
    READ_SCOPES,
    RED_FLAG,
    FakeEhr,
    lbp,
    nodule,
    observation,
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
    order = [html.index(x) for x in ('id="headline"', 'id="next-step"', "urgent-title", "Criteria checklist",
                                     "why-title", "draft-title")]
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
    # the written resources open in the app's own view, never as raw FHIR from the EHR in the frame
    assert FHIR_BASE not in page
    assert re.search(r'href="/chart/ServiceRequest/w\d+"', page)
    assert "Ada Example" in page and "MRN-0001" in page  # the patient banner stays
    assert 'href="/review"' in page


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
    # the retry drafts again from the record, finds the same drafts and reaches the server again
    ehr.rsps.reset()
    ehr.serve(PROBABLE)
    ehr.accept_transactions()
    retry = client.post("/writeback", data={"draft_digest": digest})
    assert retry.status_code == 200, retry.get_data(as_text=True)
    assert "Draft written to the chart" in retry.get_data(as_text=True)


def test_draft_changed_in_the_record_since_the_review_is_not_written(client: Any, ehr: FakeEhr) -> None:
    """The session keeps no drafts: the write drafts again at the time of the review shown and writes only
    the drafts shown. A record that changed in between (a new Observation) is reviewed again."""
    ehr.serve(PROBABLE)
    ehr.accept_transactions()
    launch(client)
    digest = digest_from(client.get("/review").get_data(as_text=True))
    ehr.rsps.reset()
    ehr.serve([*PROBABLE, observation("o-relief", FINDING, "diagnostic-injection-relief", "Relief",
                                      valueQuantity={"value": 95, "unit": "%", "code": "%"})])
    ehr.accept_transactions()
    resp = client.post("/writeback", data={"draft_digest": digest})
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/review")
    assert ehr.writes == []
    assert "The record changed since the page was shown" in client.get("/review").get_data(as_text=True)


def test_the_session_holds_no_record_no_assessment_and_no_drafts(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(PROBABLE)
    launch(client)
    html = client.get("/review").get_data(as_text=True)
    with client.session_transaction() as sess:
        state = dict(sess)
    text = json.dumps(state, default=str)
    assert len(text) < 1024, text
    for patient_data in ("Ada Example", "MRN-0001", "resourceType", "95325000", "Probable"):
        assert patient_data not in text
    assert state["main"]["review"]["digest"] == digest_from(html)


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


def test_an_objective_deficit_gets_a_prompt_work_up_and_preliminary_evidence_is_marked(
    client: Any, ehr: FakeEhr
) -> None:
    """A foot drop or a weakness is not a back-mouse red flag, so the conclusion stays "not consistent",
    but the page says plainly that it needs a prompt work-up, above the checklist; a preliminary record
    that counts for safety (criteria 1.1.0) is marked as preliminary where it is shown."""
    from tests.views_fixtures import SNOMED

    weakness = observation("o-weak", SNOMED, "26544005", "Muscle weakness", status="preliminary")
    ehr.serve([*PROBABLE, weakness])
    launch(client)
    html = client.get("/review").get_data(as_text=True)
    assert "Not consistent with back mice" in html
    assert "Prompt work-up for the cause of the objective neurological deficit" in html
    urgent = html[html.index('id="urgent-finding"') : html.index('id="criteria-title"')]
    assert "Objective neurological deficit recorded" in urgent
    assert "Preliminary</span>" in urgent and "A preliminary record, not final" in urgent
    assert html.index('id="urgent-finding"') < html.index('id="criteria-title"')
