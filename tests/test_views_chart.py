"""What of an assessment is already in the chart (``/write-status``) and what the app wrote, opened in the
app's own view (``/chart/<type>/<id>``), through the Flask test client with FHIR mocked by ``responses``."""

from __future__ import annotations

import html
import re
from typing import Any

from launch_support import start_launch

from tests.views_fixtures import PROBABLE, FakeEhr


def launch(client: Any, **kwargs: Any) -> None:
    from tests.views_fixtures import fake_launch as make

    start_launch(client.application, client, **make(**kwargs))


def status_url(page: str) -> str:
    match = re.search(r'data-src="([^"]+)"', page)
    assert match, "the review page loads whether its draft is in the chart"
    return html.unescape(match.group(1))


def write(client: Any, page: str) -> str:
    digest = re.search(r'name="draft_digest" value="([0-9a-f]+)"', page)
    assert digest
    written = client.post("/writeback", data={"draft_digest": digest.group(1)})
    assert written.status_code == 200, written.get_data(as_text=True)
    return str(written.get_data(as_text=True))


def text(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def test_the_review_says_whether_its_draft_is_already_in_the_chart(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(PROBABLE)
    ehr.accept_transactions()
    launch(client)
    page = client.get("/review").get_data(as_text=True)
    url = status_url(page)
    assert "fragment=1" in url
    before = client.get(url)
    assert before.status_code == 200 and "not in the chart yet" in before.get_data(as_text=True)
    write(client, page)

    again = client.get("/review").get_data(as_text=True)
    assert status_url(again) == url  # the same evidence: the same drafts, found by their identifiers
    after = client.get(url).get_data(as_text=True)
    assert "already in the chart" in after
    assert "by you" in text(after) and "draft awaiting clinician review" in after
    assert re.search(r'href="/chart/ClinicalImpression/w\d+"', after)
    assert re.search(r'href="/chart/ServiceRequest/w\d+"', after)

    # signed off in the EHR: the review says so
    impression = next(r for r in ehr.stored if r["resourceType"] == "ClinicalImpression")
    impression["status"] = "completed"
    assert "reviewed and signed off" in client.get(url).get_data(as_text=True)
    # without JavaScript the same answer is a page of its own, with the banner and the way back
    alone = client.get(url.replace("fragment=1&", "").replace("&fragment=1", ""))
    assert "already in the chart" in alone.get_data(as_text=True)
    assert "Ada Example" in alone.get_data(as_text=True) and 'href="/review"' in alone.get_data(as_text=True)


def test_write_status_answers_only_for_the_apps_own_identifiers(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(PROBABLE)
    launch(client)
    assert (
        client.get("/write-status?type=Patient&key=" + "a" * 64 + "&provenance=" + "b" * 64).status_code
        == 400
    )
    assert client.get("/write-status?type=ClinicalImpression&key=x&provenance=y").status_code == 400


def test_written_resources_open_in_the_apps_own_view(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(PROBABLE)
    ehr.accept_transactions()
    launch(client)
    result = write(client, client.get("/review").get_data(as_text=True))
    links = re.findall(r'href="(/chart/[A-Za-z]+/w\d+)"', result)
    assert {link.split("/")[2] for link in links} == {"ClinicalImpression", "ServiceRequest", "Provenance"}
    request = client.get(next(link for link in links if "/ServiceRequest/" in link))
    shown = request.get_data(as_text=True)
    assert request.status_code == 200 and request.headers["Content-Type"].startswith("text/html")
    assert "Procedure suggestion (draft)" in shown and "Diagnostic local anaesthetic injection" in shown
    assert "draft awaiting clinician review" in shown
    assert "Ada Example" in shown and 'href="/review"' in shown
    assert "<details>" in shown  # the FHIR JSON only behind a toggle
    provenance = client.get(next(link for link in links if "/Provenance/" in link)).get_data(as_text=True)
    assert "the back mice decision-support app" in provenance and "Practitioner/dr1" in provenance
    assert re.search(r'href="/chart/ClinicalImpression/w\d+"', provenance)


def test_the_apps_view_shows_nothing_else(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(PROBABLE)
    ehr.accept_transactions()
    launch(client)
    write(client, client.get("/review").get_data(as_text=True))
    assert client.get("/chart/Patient/p1").status_code == 404  # not a type the app writes
    assert client.get("/chart/ClinicalImpression/nope").status_code == 404
    other = next(r for r in ehr.stored if r["resourceType"] == "ServiceRequest")
    other["subject"] = {"reference": "Patient/someone-else"}
    assert client.get(f"/chart/ServiceRequest/{other['id']}").status_code == 404
    assert client.get("/chart/ServiceRequest/..%2Fx").status_code == 404


def test_the_review_links_to_this_patients_write_history(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(PROBABLE)
    launch(client)
    page = client.get("/review").get_data(as_text=True)
    assert 'href="/audit?patient=p1"' in page
