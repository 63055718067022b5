"""Focused-exam capture through the Flask test client (FHIR mocked by ``responses``): the form asks what
the criteria release reads, the clinician checks each Observation in words before anything is written,
and the exam is written as one transaction of conditional creates with identifiers, the clinician as
performer and a Provenance (author the clinician, assembler the app), logged in the app's audit log."""

from __future__ import annotations

import json
import re
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from launch_support import start_launch

from smart_app.clinical.criteria import default_registry
from smart_app.drafts.exam import exam_key, provenance_key
from smart_app.drafts.profiles import check_bundle
from smart_app.vocabulary import EXAM_IDENTIFIER_SYSTEM, WORKFLOW_SYSTEM
from tests.views_fixtures import (
    INSUFFICIENT,
    PROBABLE,
    READ_SCOPES,
    WRITE_SCOPES,
    FakeEhr,
    nodule,
    reproduced,
)

#: The exam of a probable back mouse: a nodule at the left posterior iliac crest whose pressure reproduces
#: the pain, no neurological deficit.
EXAM = {
    "q-NODULE": "present",
    "site": "",
    "side": "left",
    "site_text": "posterior iliac crest",
    "q-PAIN_REPRODUCED": "present",
    "q-NEURO_DEFICIT": "none",
    "q-INJECTION_RELIEF": "",
}


def launch(client: Any, **kwargs: Any) -> None:
    from tests.views_fixtures import fake_launch as make

    start_launch(client.application, client, **make(**kwargs))


def exam_digest(html: str) -> str:
    match = re.search(r'name="exam_digest" value="([0-9a-f]+)"', html)
    assert match, "no confirmation form on the page"
    return match.group(1)


def confirm(client: Any, form: dict[str, str] = EXAM) -> str:
    """Post the exam form, then open the confirmation page; its HTML."""
    posted = client.post("/exam", data=form)
    assert posted.status_code == 303 and posted.headers["Location"].endswith("/exam/confirm"), posted.data
    page = client.get("/exam/confirm")
    assert page.status_code == 200
    return str(page.get_data(as_text=True))


def test_the_exam_form_asks_what_the_release_reads(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(INSUFFICIENT)
    launch(client)
    html = client.get("/review").get_data(as_text=True)
    criteria = default_registry().get()
    titles = {str(spec["id"]): str(spec["title"]) for spec in criteria.findings}
    for finding in ("NODULE", "PAIN_REPRODUCED", "NEURO_DEFICIT", "INJECTION_RELIEF"):
        assert f'id="q-{finding}"' in html
        assert titles[finding] in html
    assert 'name="q-LBP"' not in html  # a diagnosis is not an exam finding
    # the typical sites offered are those of the release's ValueSet, in words
    assert "Left lumbar region of back" in html and "Sacroiliac joint" in html


def test_the_exam_is_checked_in_words_then_written_as_one_transaction(
    client: Any, ehr: FakeEhr, app: Any
) -> None:
    ehr.serve(INSUFFICIENT)
    ehr.accept_transactions()
    launch(client)
    client.get("/review")
    page = confirm(client)
    assert ehr.writes == []  # nothing before the clinician confirms
    findings = re.findall(r"<li><strong>(.*?)</strong>", page, re.S)
    words = [unescape(re.sub(r"<[^>]+>", "", f)) for f in findings]
    assert words == [
        "Subcutaneous nodule: Present, left posterior iliac crest",
        "Pressure on the nodule reproduces the patient's typical pain: Present",
        "Muscle weakness: Absent",
        "Hypoesthesia: Absent",
        "Abnormal reflex: Absent",
    ]
    assert "SNOMED 95325000" in page and "you as the performer" in page
    assert "Ada Example" in page  # the patient banner

    written = client.post("/exam/confirm", data={"exam_digest": exam_digest(page)})
    assert written.status_code == 303 and written.headers["Location"].endswith("/review")
    (bundle,) = ehr.writes
    assert bundle["type"] == "transaction" and check_bundle(bundle) == []
    entries = bundle["entry"]
    assert [e["resource"]["resourceType"] for e in entries] == ["Device", *["Observation"] * 5, "Provenance"]
    observations = [e for e in entries if e["resource"]["resourceType"] == "Observation"]
    for entry in observations:
        obs = entry["resource"]
        (ident,) = obs["identifier"]
        assert ident == {"system": EXAM_IDENTIFIER_SYSTEM, "value": exam_key(obs)}
        assert entry["request"] == {
            "method": "POST",
            "url": "Observation",
            "ifNoneExist": f"identifier={EXAM_IDENTIFIER_SYSTEM}|{exam_key(obs)}",
        }
        assert obs["status"] == "final" and obs["performer"] == [{"reference": "Practitioner/dr1"}]
        assert {"system": WORKFLOW_SYSTEM, "code": "entered-through-app"}.items() <= obs["meta"]["tag"][
            0
        ].items()
        assert "security" not in obs["meta"]  # entered by the clinician: no AI label
    provenance = entries[-1]["resource"]
    assert {t["reference"] for t in provenance["target"]} == {e["fullUrl"] for e in observations}
    agents = {a["type"]["coding"][0]["code"]: a["who"]["reference"] for a in provenance["agent"]}
    assert agents == {"author": "Practitioner/dr1", "assembler": entries[0]["fullUrl"]}
    assert provenance["policy"] == [default_registry().get().canonical]
    assert "reason" not in provenance
    key = provenance_key([exam_key(e["resource"]) for e in observations])
    assert entries[-1]["request"]["ifNoneExist"] == f"_tag={EXAM_IDENTIFIER_SYSTEM}|{key}"

    review = client.get("/review").get_data(as_text=True)
    assert "Exam recorded in the chart: 5 findings" in review
    log_file = Path(app.instance_path) / "audit.jsonl"
    log = [json.loads(line) for line in log_file.read_text().splitlines()]
    line = next(x for x in log if x["kind"] == "write")
    assert (
        line["write_kind"] == "exam" and line["outcome"] == "written" and line["user"] == "Practitioner/dr1"
    )
    assert sorted(r.split("/")[0] for r in line["created"]) == ["Device", *["Observation"] * 5, "Provenance"]


def test_a_retry_sends_the_same_conditional_creates(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(INSUFFICIENT)
    ehr.reject_transactions(503, "try later")
    launch(client)
    page = confirm(client)
    failed = client.post("/exam/confirm", data={"exam_digest": exam_digest(page)})
    body = failed.get_data(as_text=True)
    assert failed.status_code == 502 and "did not accept the exam" in body
    assert "Retry recording the exam" in body and "Ada Example" in body
    ehr.rsps.reset()
    ehr.serve(INSUFFICIENT)
    ehr.accept_transactions()
    retried = client.post("/exam/confirm", data={"exam_digest": exam_digest(body)})
    assert retried.status_code == 303
    (sent,) = ehr.writes
    queries = [e["request"]["ifNoneExist"] for e in sent["entry"]]
    assert len(set(queries)) == len(queries) == 7


def test_an_empty_exam_keeps_its_warning_beside_the_form(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(INSUFFICIENT)
    launch(client)
    resp = client.post("/exam", data={"q-NODULE": "unknown", "q-PAIN_REPRODUCED": "unknown"})
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/review#exam-message")
    html = client.get("/review").get_data(as_text=True)
    exam = html[html.index('id="exam"') :]
    assert 'id="exam-message"' in exam and "Nothing to record" in exam
    assert "Nothing to record" not in html[: html.index('id="exam"')]  # not scrolled away at the top
    assert ehr.writes == []


@pytest.mark.parametrize(
    "form, message",
    [
        ({**EXAM, "q-INJECTION_RELIEF": "150"}, "0 to 100"),
        ({**EXAM, "site_text": "", "side": ""}, "say where it is"),
        ({**EXAM, "q-NODULE": "maybe"}, "unexpected answer"),
        ({**EXAM, "q-NEURO_DEFICIT": "found"}, "tick which signs"),
        ({**EXAM, "site": "999999"}, "not one of the sites"),
    ],
)
def test_answers_that_do_not_fit_are_refused(
    client: Any, ehr: FakeEhr, form: dict[str, str], message: str
) -> None:
    ehr.serve(INSUFFICIENT)
    launch(client)
    resp = client.post("/exam", data=form)
    assert resp.status_code == 303 and resp.headers["Location"].endswith("#exam-message")
    page = client.get("/review").get_data(as_text=True)
    assert "The exam was not recorded" in page and message in page
    assert ehr.writes == []


def test_relief_is_recorded_as_a_percentage(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(INSUFFICIENT)
    ehr.accept_transactions()
    launch(client)
    page = confirm(client, {"q-INJECTION_RELIEF": "90"})
    assert "Relief after diagnostic local anaesthetic injection into the nodule: 90 %" in page
    client.post("/exam/confirm", data={"exam_digest": exam_digest(page)})
    (obs,) = [e["resource"] for e in ehr.writes[0]["entry"] if e["resource"]["resourceType"] == "Observation"]
    assert obs["code"]["coding"][0]["code"] == "diagnostic-injection-relief"
    ucum = "http://unitsofmeasure.org"
    assert obs["valueQuantity"] == {"value": 90, "unit": "%", "system": ucum, "code": "%"}


def test_a_coded_site_is_written_coded(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(INSUFFICIENT)
    ehr.accept_transactions()
    launch(client)
    page = confirm(client, {**EXAM, "site": "1017210004", "side": "", "site_text": ""})
    assert "Subcutaneous nodule: Present, left lumbar region of back" in page
    client.post("/exam/confirm", data={"exam_digest": exam_digest(page)})
    nod = next(e["resource"] for e in ehr.writes[0]["entry"] if e["resource"].get("bodySite"))
    assert nod["bodySite"]["coding"][0]["code"] == "1017210004"


def test_changing_the_answers_brings_them_back_in_the_form(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(INSUFFICIENT)
    launch(client)
    confirm(client)
    html = client.get("/review").get_data(as_text=True)
    assert re.search(r'name="q-NODULE" value="present" checked', html)
    assert re.search(r'name="q-NEURO_DEFICIT" value="none" checked', html)
    assert 'value="posterior iliac crest"' in html


def test_findings_already_recorded_are_shown_beside_the_form(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(PROBABLE)
    launch(client)
    html = client.get("/review").get_data(as_text=True)
    nodule_question = html[html.index('id="q-NODULE"') : html.index('id="q-PAIN_REPRODUCED"')]
    assert "In the record:</strong> yes" in nodule_question
    assert "Subcutaneous nodule" in nodule_question and "left posterior iliac crest" in nodule_question


def test_without_the_right_to_write_the_exam_is_kept_in_this_session(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(INSUFFICIENT)
    launch(client, scope=f"{READ_SCOPES} {WRITE_SCOPES}")  # no Observation create
    html = client.get("/review").get_data(as_text=True)
    assert "not saved to the chart" in html
    page = confirm(client)
    assert "not be saved to the chart" in page and "Observation" in page
    kept = client.post("/exam/confirm", data={"exam_digest": exam_digest(page)})
    assert kept.status_code == 303 and ehr.writes == []
    review = client.get("/review").get_data(as_text=True)
    assert "Exam NOT saved to the chart" in review
    assert "Probable back mice" in review
    assert "includes an exam not saved to the chart" in review
    assert "recorded in this session only, not in the chart" in review
    assert "Write draft to chart" not in review and "/draft.json" in review
    assert client.post("/exam/clear").status_code == 303
    assert "Insufficient data" in client.get("/review").get_data(as_text=True)


def test_without_a_clinician_named_the_exam_is_not_written(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(INSUFFICIENT)
    ehr.accept_transactions()
    launch(client, fhir_user=None)
    page = confirm(client)
    assert "did not say which clinician is signed in" in page
    client.post("/exam/confirm", data={"exam_digest": exam_digest(page)})
    assert ehr.writes == []


def test_a_confirmation_for_another_exam_is_refused(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(INSUFFICIENT)
    ehr.accept_transactions()
    launch(client)
    first = confirm(client)
    confirm(client, {**EXAM, "q-PAIN_REPRODUCED": "absent"})  # changed in another tab
    stale = client.post("/exam/confirm", data={"exam_digest": exam_digest(first)})
    assert stale.status_code == 303 and stale.headers["Location"].endswith("/exam/confirm")
    assert ehr.writes == []


def test_unsaved_exam_does_not_follow_into_another_launch(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(INSUFFICIENT)
    launch(client, scope=f"{READ_SCOPES} {WRITE_SCOPES}")
    page = confirm(client)
    client.post("/exam/confirm", data={"exam_digest": exam_digest(page)})
    assert "Probable back mice" in client.get("/review").get_data(as_text=True)
    launch(client, scope=f"{READ_SCOPES} {WRITE_SCOPES}", fhir_user="Practitioner/dr2")
    later = client.get("/review").get_data(as_text=True)
    assert "Insufficient data" in later
    assert "includes an exam not saved" not in later


def test_the_next_review_reads_the_recorded_exam_back(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(INSUFFICIENT)
    ehr.accept_transactions()
    launch(client)
    page = confirm(client)
    client.post("/exam/confirm", data={"exam_digest": exam_digest(page)})
    stored = [r for r in ehr.stored if r["resourceType"] == "Observation"]
    ehr.rsps.reset()
    ehr.serve([*INSUFFICIENT, *stored])
    review = client.get("/review").get_data(as_text=True)
    assert "Probable back mice" in review
    assert "entered through this app" in review
    assert nodule()["id"] not in review and reproduced()["id"] not in review
