"""End to end: the sandbox EHR, as a CDS client, calls the app's ``patient-view`` service when a chart
opens and shows the cards above the app; accepting the suggestion writes the drafts through the EHR's FHIR
API, and the feedback lands in the app's audit log. Debian's Chromium drives the EHR page; the rest goes
over real HTTP between the two servers (docs/cds-hooks.md)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from smart_app.audit.listing import list_writes
from smart_app.audit.source import FhirSource
from smart_app.audit.verify import verify_assessment
from smart_app.fhir.client import FhirClient
from smart_app.vocabulary import DRAFT_IDENTIFIER_SYSTEM
from tests.browser import Servers, app_frame

pytestmark = pytest.mark.e2e

USER = "Practitioner/dr-ada"


@pytest.fixture(scope="module")
def cds_live(live: Servers) -> Iterator[Servers]:
    """The sandbox registered with the app as a CDS client, its chart calling the app's services."""
    registration = {
        "kind": "cds-client",
        "id": "sandbox-cds",
        "name": "Sandbox EHR (CDS client)",
        "iss": live.ehr_url,
        "jwks_url": f"{live.ehr_url}/ehr/cds/jwks.json",
        "fhir_servers": [live.iss],
    }
    (live.stack.registration_dir / "sandbox-cds.json").write_text(json.dumps(registration))
    live.sandbox.config["CDS_SERVICES_URL"] = f"{live.app_url}/cds-services"
    yield live


def store(servers: Servers) -> Any:
    return servers.sandbox.extensions["sandbox"].store


def audit(servers: Servers) -> list[dict[str, Any]]:
    path = Path(servers.app.instance_path) / "audit.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def chart(servers: Servers, patient: str) -> str:
    answer = requests.get(
        f"{servers.ehr_url}/ehr/launch", params={"patient": patient, "user": USER}, timeout=30
    )
    assert answer.status_code == 200
    return answer.text


def drafts_of(servers: Servers, patient: str, rtype: str) -> list[dict[str, Any]]:
    found = store(servers).search(rtype, [("patient", patient)])
    return [
        r for r in found if any(i.get("system") == DRAFT_IDENTIFIER_SYSTEM for i in r.get("identifier", []))
    ]


def form_fields(html: str, action: str) -> dict[str, str]:
    form = re.search(rf'<form method="post" action="{re.escape(action)}">(.*?)</form>', html, re.S)
    assert form, f"no form posting to {action}"
    return dict(re.findall(r'name="([a-z_]+)" value="([^"]*)"', form.group(1)))


# -- in the browser --
def test_chart_shows_the_card_above_the_app_and_accepting_writes_the_draft(
    page: Any, cds_live: Servers
) -> None:
    page.goto(f"{cds_live.ehr_url}/ehr")
    page.locator("button[name=patient][value='jkowalski']").click()
    card = page.locator("article.cds-card")
    card.wait_for()
    assert card.count() == 1
    assert (
        card.locator(".cds-summary").inner_text()
        == "Probable back mice: Diagnostic local anaesthetic injection"
    )
    assert card.locator(".cds-indicator").inner_text().lower() == "warning"  # a WARN flag: bone fragility
    assert card.bounding_box()["y"] < page.locator("iframe.app").bounding_box()["y"]  # above the app
    app_frame(page).locator("h1#headline").wait_for()  # the app launched beside the card, as before
    card.locator("summary").click()
    assert "Bone fragility" in card.locator(".cds-detail").inner_text()
    card_uuid = card.get_attribute("data-card")
    assert drafts_of(cds_live, "jkowalski", "ServiceRequest") == []

    card.get_by_role("button", name=re.compile("^Accept: ")).click()
    page.locator("h1.cds-result").wait_for()
    assert page.locator("h1.cds-result").inner_text() == "Suggestion accepted"
    written = page.locator("ul.cds-written").inner_text()
    for rtype in ("ClinicalImpression", "ServiceRequest", "DetectedIssue", "Provenance"):
        assert f"{rtype}/" in written

    [request] = drafts_of(cds_live, "jkowalski", "ServiceRequest")
    [assessment] = drafts_of(cds_live, "jkowalski", "ClinicalImpression")
    assert (request["status"], request["intent"]) == ("draft", "proposal")
    assert request["supportingInfo"] == [{"reference": f"ClinicalImpression/{assessment['id']}"}]
    provenance = store(cds_live).search("Provenance", [("_tag", DRAFT_IDENTIFIER_SYSTEM + "|")])
    assert any(
        f"ServiceRequest/{request['id']}" in {t["reference"] for t in p["target"]}
        and {"reference": USER} in [a["who"] for a in p["agent"]]
        for p in provenance
    )
    feedback = [line for line in audit(cds_live) if line["kind"] == "cds-feedback"]
    assert feedback[-1]["card"] == card_uuid and feedback[-1]["outcome"] == "accepted"
    assert feedback[-1]["registration"] == "sandbox-cds"


def test_dismissing_a_card_sends_the_reason(page: Any, cds_live: Servers) -> None:
    page.goto(f"{cds_live.ehr_url}/ehr")
    page.locator("button[name=patient][value='apatel']").click()
    card = page.locator("article.cds-card")
    card.wait_for()
    assert card.locator(".cds-summary").inner_text() == "Possible back mice: Focused examination"
    assert card.locator("button.cds-accept").count() == 0  # nothing to write: examine first
    card.get_by_label("Reason").select_option(label="Clinical judgement differs")
    card.get_by_role("button", name="Dismiss").click()
    page.locator("h1.cds-result").wait_for()
    assert page.locator("h1.cds-result").inner_text() == "Card dismissed"
    line = [line for line in audit(cds_live) if line["kind"] == "cds-feedback"][-1]
    assert (line["outcome"], line["override_reason"]) == ("overridden", "clinical-judgement")


def test_the_cards_smart_link_launches_the_app_for_the_patient(page: Any, cds_live: Servers) -> None:
    page.goto(f"{cds_live.ehr_url}/ehr")
    page.locator("button[name=patient][value='apatel']").click()
    app_frame(page).locator("h1#headline").wait_for()
    with page.expect_request(re.compile(re.escape(cds_live.app_url) + r"/launch\?")) as launched:
        page.locator("article.cds-card a.cds-link").click()
    assert "launch=" in launched.value.url and "iss=" in launched.value.url
    frame = app_frame(page)
    frame.locator("h1#headline").wait_for()
    assert "Possible back mice" in frame.locator(".badge-class").inner_text()


# -- over HTTP --
def test_no_card_when_there_is_nothing_to_act_on(cds_live: Servers) -> None:
    html = chart(cds_live, "hmueller")  # unlikely
    assert "cds-card" not in html and "cds-error" not in html
    [line] = [e for e in audit(cds_live) if e["kind"] == "cds" and e.get("patient") == "hmueller"][-1:]
    assert line["outcome"] == "answered" and line["classification"] == "unlikely" and line["cards"] == []


def test_without_prefetch_the_service_reads_the_chart_with_the_token_it_was_given(cds_live: Servers) -> None:
    auth = cds_live.sandbox.extensions["sandbox"].auth
    cds_live.sandbox.config["CDS_PREFETCH"] = False
    try:
        before = cds_live.stack.counter.counts["fhir"]
        html = chart(cds_live, "rsantos")
        reads = cds_live.stack.counter.counts["fhir"] - before
    finally:
        cds_live.sandbox.config["CDS_PREFETCH"] = True
    assert reads >= 6  # the Patient and five searches, on the sandbox's FHIR API
    assert "Back mice confirmed by diagnostic injection" in html
    with auth.lock:  # the token is revoked once the call is answered
        assert not any(g.client_id == "back-mice-cds" for g in auth.access.values())
    line = [e for e in audit(cds_live) if e["kind"] == "cds" and e.get("patient") == "rsantos"][-1]
    assert line["round_trips"] >= 6


def test_accepted_drafts_are_the_apps_writes_for_its_audit_tools(cds_live: Servers) -> None:
    html = chart(cds_live, "rsantos")
    fields = form_fields(html, "/ehr/cds/accept")
    accepted = requests.post(f"{cds_live.ehr_url}/ehr/cds/accept", data=fields, timeout=30)
    assert accepted.status_code == 200 and "ServiceRequest/" in accepted.text
    auth = cds_live.sandbox.extensions["sandbox"].auth
    from launch.sandbox.oauth import Grant

    token, _ = auth.issue_access(Grant("audit", ("user/*.rs",), USER, None, None, 0.0), 600)
    source = FhirSource(FhirClient(cds_live.iss, token=token, max_retries=0))
    report = list_writes(source, patient="rsantos")
    assert report.findings == []
    [write] = report.writes
    assert write.author == USER and write.status == "draft"
    assert {r.reference.split("/")[0] for r in write.resources} == {"ClinicalImpression", "ServiceRequest"}
    verified = verify_assessment(source, write.assessment or "")
    assert verified.reproduced, verified.to_json()


def test_an_unregistered_ehr_gets_no_cards(cds_live: Servers, tmp_path: Path) -> None:
    """Another sandbox, not registered with the app: the service refuses it (401) and the chart says so."""
    from launch.sandbox import create_app as create_sandbox

    other = create_sandbox(
        {
            "TESTING": True,
            "PUBLIC_URL": "http://127.0.0.1:9",
            "APP_LAUNCH_URL": f"{cds_live.app_url}/launch",
            "CDS_SERVICES_URL": f"{cds_live.app_url}/cds-services",
            "SIGNING_KEY_PATH": str(tmp_path / "key.pem"),
        }
    )
    html = (
        other.test_client().get("/ehr/launch", query_string={"patient": "jkowalski"}).get_data(as_text=True)
    )
    assert "cds-card" not in html
    assert "decision support unavailable (the CDS service answered HTTP 401" in html
    line = [e for e in audit(cds_live) if e["kind"] == "cds"][-1]
    assert (line["outcome"], line["error"]) == ("refused", "unknown_client")
