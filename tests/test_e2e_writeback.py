"""Write-back end to end over real HTTP: the sandbox EHR and the app on
loopback, an HTTP client doing what the clinician's browser does: EHR launch → /review → POST
/writeback → result page, then the chart read back from the sandbox's FHIR API with a user-level token.

Checks R4 "Transactions" and conditional create (http.html#ccreate): every drafted resource is stored
once, a repeated write or a retry after a lost response creates nothing new, a failed transaction
leaves nothing behind; the Provenance targets every draft and names every versioned source; what is
stored still conforms to the package's profiles (fhir_profiles/package). CSRF (a missing or wrong token
gets 403 and writes nothing) and a registration without write scopes (no write button, the missing
scopes named, the draft offered as a download) are covered too.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
import requests

from smart_app.drafts.build import DRAFT_BANNER, DRAFT_IDENTIFIER_SYSTEM, narrative_text
from smart_app.drafts.profiles import load_checker
from tests.servers import SCOPES, Stack, start_stack

pytestmark = pytest.mark.e2e

#: A sandbox patient whose draft has every kind of resource: probable back mouse with a WARN red flag,
#: so ClinicalImpression, ServiceRequest, DetectedIssue, Provenance (and the app Device).
PATIENT = "jkowalski"
WRITTEN_TYPES = ("ClinicalImpression", "DocumentReference", "ServiceRequest", "DetectedIssue", "Provenance",
                 "Device")
WORKFLOW_TAG = "https://smart-app.example/fhir/CodeSystem/workflow|draft-requires-review"
PAIN_REPRODUCED = "https://smart-app.example/fhir/CodeSystem/back-mice-finding|nodule-pain-reproduced"
#: As launch/registrations/sandbox.json: written types get ``crs``, because a conditional create that
#: matches a stored resource needs search permission (the sandbox checks it on every repeated write).
WRITE_SCOPES = SCOPES
READ_ONLY_SCOPES = [s for s in SCOPES if not (s.endswith(".c") or s.endswith(".crs"))]
TIMEOUT = 30


# --- fixtures and helpers -----------------------------------------------------------------------------
@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    running = start(tmp_path)
    yield running
    running.stop()


def start(tmp_path: Path, **kwargs: Any) -> Stack:
    kwargs.setdefault("scopes", WRITE_SCOPES)
    return start_stack(tmp_path, **kwargs)


class Chart:
    """The sandbox's FHIR API as another user of the EHR sees it (a user-level token from its store)."""

    def __init__(self, stack: Stack) -> None:
        from launch.sandbox.oauth import Grant

        self.base = stack.fhir_base
        self.token = stack.sandbox_app.extensions["sandbox"].auth.add_access(
            Grant(client_id="e2e-readback", scopes=("user/*.cruds",), user="Practitioner/dr-ada",
                  patient=None, encounter=None, expires_at=time.time() + 3600)
        )
        self.http = requests.Session()
        self.http.headers.update({"Authorization": f"Bearer {self.token}", "Accept": "application/fhir+json"})

    def search(self, rtype: str, params: dict[str, str] | list[tuple[str, str]]) -> list[dict[str, Any]]:
        """Every match, following ``next`` links."""
        found: list[dict[str, Any]] = []
        url: str | None = f"{self.base}/{rtype}"
        query: Any = params
        while url:
            resp = self.http.get(url, params=query, timeout=TIMEOUT)
            assert resp.status_code == 200, resp.text[:1000]
            page = resp.json()
            found += [e["resource"] for e in page.get("entry") or [] if "resource" in e]
            links = page.get("link") or []
            url = next((link["url"] for link in links if link.get("relation") == "next"), None)
            query = None
        return found

    def counts(self) -> dict[str, int]:
        """How many resources of each written type (and Observations) the sandbox holds."""
        out = {rtype: len(self.search(rtype, {"_count": "200"})) for rtype in WRITTEN_TYPES}
        out["Observation"] = len(self.search("Observation", {"patient": PATIENT, "_count": "200"}))
        return out

    def create(self, resource: dict[str, Any]) -> dict[str, Any]:
        resp = self.http.post(f"{self.base}/{resource['resourceType']}", json=resource,
                              headers={"Content-Type": "application/fhir+json"}, timeout=TIMEOUT)
        assert resp.status_code == 201, resp.text[:1000]
        return dict(resp.json())


def launch(stack: Stack, browser: requests.Session, patient: str = PATIENT) -> requests.Response:
    """The clinician's click in the EHR: the EHR makes a launch and opens the app's launch URL; the
    redirects end on the review page."""
    made = requests.get(f"{stack.sandbox.url}/ehr/launch-url", params={"patient": patient}, timeout=TIMEOUT)
    made.raise_for_status()
    page = browser.get(made.json()["url"], timeout=TIMEOUT)
    assert page.status_code == 200, page.text[:2000]
    assert page.url.startswith(f"{stack.app_url}/review")
    return page


def write_form(page: str) -> dict[str, str] | None:
    """The hidden fields of the page's write (or retry) form, or None when the page offers no write."""
    form = re.search(r'<form[^>]*class="write-form".*?</form>', page, re.S)
    if not form:
        return None
    fields = dict(re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)"', form.group(0)))
    assert fields.get("csrf_token") and fields.get("draft_digest"), form.group(0)
    return {k: html.unescape(v) for k, v in fields.items()}


def post_write(stack: Stack, browser: requests.Session, form: dict[str, str]) -> requests.Response:
    return browser.post(f"{stack.app_url}/writeback", data=form, allow_redirects=False, timeout=TIMEOUT)


def written_rows(page: str) -> list[dict[str, str]]:
    """Rows of the result page's "What was written" table."""
    table = re.search(r'<table class="written">.*?<tbody>(.*?)</tbody>', page, re.S)
    assert table, page[:3000]
    rows = []
    for row in re.findall(r"<tr>(.*?)</tr>", table.group(1), re.S):
        cells = [c.strip() for c in re.findall(r"<td>(.*?)</td>", row, re.S)]
        href = re.search(r'href="([^"]+)"', cells[1])
        rows.append({"type": cells[0], "id": re.sub(r"<[^>]+>", "", cells[1]), "version": cells[2],
                     "result": cells[3], "href": html.unescape(href.group(1)) if href else ""})
    return rows


def page_sources(page: str) -> dict[str, str | None]:
    """The assessment's ``sources`` as the review page lists them (reference → version)."""
    block = re.search(r'<details class="source-list">(.*?)</details>', page, re.S)
    assert block, "the review lists the resources that decided the result"
    text = re.sub(r"</?bdi[^>]*>", "", block.group(1))  # EHR strings are isolated in <bdi>
    pairs = re.findall(r"<li><code>([^<]+)</code>(?: version ([^<\s]+))?</li>", text)
    return {html.unescape(ref): (version or None) for ref, version in pairs}


def draft_bundle(stack: Stack, browser: requests.Session) -> dict[str, Any]:
    resp = browser.get(f"{stack.app_url}/draft.json", timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text[:1000]
    return dict(resp.json())


def draft_identifiers(bundle: dict[str, Any]) -> set[str]:
    return {i["value"] for e in bundle["entry"] for i in e["resource"].get("identifier") or []
            if i.get("system") == DRAFT_IDENTIFIER_SYSTEM}


def stored_drafts(chart: Chart, bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each drafted resource as stored, found by the query of its own ``ifNoneExist`` (identifier, or
    ``_tag`` for the Provenance, which has no identifier); asserts exactly one match each."""
    found: dict[str, dict[str, Any]] = {}
    for entry in bundle["entry"]:
        rtype = entry["resource"]["resourceType"]
        query = entry["request"]["ifNoneExist"]
        matches = chart.search(rtype, parse_qsl(query))
        assert len(matches) == 1, f"{rtype}?{query}: {len(matches)} stored"
        found[entry["fullUrl"]] = matches[0]
    return found


def plain_ref(reference: str) -> str:
    return reference.split("/_history/", 1)[0]


def assert_chart_holds_the_draft(
    chart: Chart, bundle: dict[str, Any], sources: dict[str, str | None]
) -> None:
    stored = stored_drafts(chart, bundle)
    resources = list(stored.values())
    drafts = [r for r in resources if r["resourceType"] != "Device"]
    provenance = [r for r in drafts if r["resourceType"] == "Provenance"]
    assert len(provenance) == 1
    prov = provenance[0]
    targets = {plain_ref(t["reference"]) for t in prov["target"]}
    expected = {f"{r['resourceType']}/{r['id']}" for r in drafts if r["resourceType"] != "Provenance"}
    assert targets == expected
    entities = {e["what"]["reference"] for e in prov.get("entity") or []}
    assert sources, "the assessment names its sources"
    for ref, version in sources.items():
        assert (f"{ref}/_history/{version}" if version else ref) in entities, (ref, version, entities)
    checker = load_checker()
    for resource in resources:
        issues = checker.check(resource)
        assert issues == [], [str(i) for i in issues]
    for resource in drafts:
        text = narrative_text(resource["text"]["div"]).strip()
        assert text.startswith(DRAFT_BANNER), (resource["resourceType"], text[:120])


def assert_no_change(before: dict[str, int], chart: Chart) -> None:
    assert chart.counts() == before


# --- the happy path -----------------------------------------------------------------------------------
def test_write_read_back_repeat_and_new_evidence(stack: Stack) -> None:
    chart = Chart(stack)
    before = chart.counts()
    with requests.Session() as browser:
        review = launch(stack, browser)
        form = write_form(review.text)
        assert form is not None, "the review offers the write"
        sources = page_sources(review.text)
        bundle = draft_bundle(stack, browser)

        result = post_write(stack, browser, form)
        assert result.status_code == 200, result.text[:3000]
        assert "Draft written to the chart" in result.text
        rows = written_rows(result.text)
        types = [r["type"] for r in rows]
        for rtype in ("ClinicalImpression", "ServiceRequest", "DetectedIssue", "Provenance"):
            assert rtype in types
        assert len(rows) == len(bundle["entry"])
        for row in rows:  # each row opens the resource in the app's own view (never raw FHIR in the frame)
            stored = chart.http.get(f"{stack.fhir_base}/{row['type']}/{row['id']}", timeout=TIMEOUT)
            assert stored.status_code == 200 and stored.json()["meta"]["versionId"] == row["version"]
            if row["type"] == "Device":
                assert row["href"] == ""
                continue
            assert row["href"] == f"/chart/{row['type']}/{row['id']}"
            shown = browser.get(f"{stack.app_url}{row['href']}", timeout=TIMEOUT)
            assert shown.status_code == 200 and shown.headers["Content-Type"].startswith("text/html")
            assert f"version {row['version']}" in re.sub(r"<[^>]+>", "", shown.text)
        drafted = [r for r in rows if r["type"] != "Device"]
        assert all(r["result"] == "created" for r in drafted), rows

        assert_chart_holds_the_draft(chart, bundle, sources)
        after_first = chart.counts()
        for rtype in ("ClinicalImpression", "ServiceRequest", "DetectedIssue", "Provenance"):
            assert after_first[rtype] == before[rtype] + types.count(rtype)

        # the same form again: a double click or a second tab creates nothing new
        again = post_write(stack, browser, form)
        assert again.status_code == 200, again.text[:3000]
        assert all(r["result"].startswith("already in the chart") for r in written_rows(again.text))
        same = {(r["type"], r["id"]) for r in rows}
        assert {(r["type"], r["id"]) for r in written_rows(again.text)} == same
        assert_no_change(after_first, chart)
        stored_drafts(chart, bundle)

        # a second tab: a fresh review of the same evidence drafts the same identifiers (only
        # Provenance.recorded differs) and writing it creates nothing
        tab = launch(stack, browser)
        tab_form = write_form(tab.text)
        assert tab_form is not None
        assert draft_identifiers(draft_bundle(stack, browser)) == draft_identifiers(bundle)
        tab_write = post_write(stack, browser, tab_form)
        assert tab_write.status_code == 200, tab_write.text[:3000]
        assert all(r["result"].startswith("already in the chart") for r in written_rows(tab_write.text))
        assert_no_change(after_first, chart)

        # new evidence: a newer exam Observation makes a new draft with new identifiers
        old = chart.search("Observation", {"patient": PATIENT, "code": PAIN_REPRODUCED})
        assert old, "the patient has a pain-reproduction exam"
        newer = {k: v for k, v in old[0].items() if k not in ("id", "meta", "text")}
        newer["effectiveDateTime"] = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0) \
            .isoformat().replace("+00:00", "Z")
        newer.pop("issued", None)
        created = chart.create(newer)
        review2 = browser.get(f"{stack.app_url}/review", timeout=TIMEOUT)
        assert review2.status_code == 200
        sources2 = page_sources(review2.text)
        assert f"Observation/{created['id']}" in sources2
        form2 = write_form(review2.text)
        assert form2 is not None
        bundle2 = draft_bundle(stack, browser)
        assert draft_identifiers(bundle2).isdisjoint(draft_identifiers(bundle))
        result2 = post_write(stack, browser, form2)
        assert result2.status_code == 200, result2.text[:3000]
        assert all(r["result"] == "created" for r in written_rows(result2.text) if r["type"] != "Device")
        assert_chart_holds_the_draft(chart, bundle2, sources2)
        stored_drafts(chart, bundle)  # the first draft is still there, once
        after_second = chart.counts()
        assert after_second["ClinicalImpression"] == after_first["ClinicalImpression"] + 1
        assert after_second["Provenance"] == after_first["Provenance"] + 1
        assert after_second["Device"] == after_first["Device"]


# --- CSRF -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("token", [None, "wrong-token"], ids=["missing", "wrong"])
def test_writeback_without_a_valid_csrf_token_is_refused(stack: Stack, token: str | None) -> None:
    chart = Chart(stack)
    before = chart.counts()
    with requests.Session() as browser:
        form = write_form(launch(stack, browser).text)
        assert form is not None
        forged = {"draft_digest": form["draft_digest"]}
        if token is not None:
            forged["csrf_token"] = token
        refused = post_write(stack, browser, forged)
        assert refused.status_code == 403
        assert "Draft written" not in refused.text
    assert_no_change(before, chart)


# --- failures at the EHR --------------------------------------------------------------------------------
def test_failed_transaction_writes_nothing_and_retry_succeeds(tmp_path: Path) -> None:
    running = start(tmp_path, sandbox_config={"FAULTS": {"transaction": {"status": 500, "times": 1}}})
    try:
        chart = Chart(running)
        before = chart.counts()
        with requests.Session() as browser:
            review = launch(running, browser)
            form = write_form(review.text)
            assert form is not None
            sources = page_sources(review.text)
            bundle = draft_bundle(running, browser)
            failed = post_write(running, browser, form)
            assert failed.status_code == 502, failed.text[:3000]
            assert "The EHR did not accept the draft" in failed.text
            assert re.search(r"None of the \d+ drafts is in the chart", failed.text)  # read back, not assumed
            assert "injected fault" in failed.text  # the server's OperationOutcome is shown
            retry = write_form(failed.text)
            assert retry is not None, "the failure page offers a retry"
            assert "Retry writing the draft" in failed.text
            assert retry["draft_digest"] == form["draft_digest"]
            assert_no_change(before, chart)

            done = post_write(running, browser, retry)
            assert done.status_code == 200, done.text[:3000]
            assert all(r["result"] == "created" for r in written_rows(done.text) if r["type"] != "Device")
            assert_chart_holds_the_draft(chart, bundle, sources)
    finally:
        running.stop()


def test_timeout_after_commit_then_retry_finds_the_resources(tmp_path: Path) -> None:
    fault = {"transaction": {"status": 504, "after_commit": True, "times": 1}}
    running = start(tmp_path, sandbox_config={"FAULTS": fault})
    try:
        chart = Chart(running)
        before = chart.counts()
        with requests.Session() as browser:
            review = launch(running, browser)
            form = write_form(review.text)
            assert form is not None
            sources = page_sources(review.text)
            bundle = draft_bundle(running, browser)
            lost = post_write(running, browser, form)
            committed = chart.counts()
            assert committed != before  # the server did store the transaction
            # the 504 came after the commit: reading back shows the chart holds the draft
            assert lost.status_code == 200, lost.text[:3000]
            assert "Draft written to the chart" in lost.text and "HTTP 504" in lost.text
            found = written_rows(lost.text)
            assert found, lost.text[:3000]
            assert all(r["result"] == "in the chart (found by reading it back)" for r in found), found

            done = post_write(running, browser, form)
            assert done.status_code == 200, done.text[:3000]
            rows = written_rows(done.text)
            assert rows and all(r["result"].startswith("already in the chart") for r in rows), rows
            assert_no_change(committed, chart)
            assert_chart_holds_the_draft(chart, bundle, sources)
    finally:
        running.stop()


# --- a registration without write scopes ----------------------------------------------------------------
def test_without_write_scopes_the_draft_is_offered_as_a_download(tmp_path: Path) -> None:
    running = start(tmp_path, scopes=READ_ONLY_SCOPES)
    try:
        chart = Chart(running)
        before = chart.counts()
        with requests.Session() as browser:
            review = launch(running, browser)
            assert write_form(review.text) is None
            assert 'id="write-draft"' not in review.text
            notice = re.search(r'<div class="notice notice-warning" id="no-write">(.*?)</div>',
                               review.text, re.S)
            assert notice, review.text[:3000]
            for rtype in ("ClinicalImpression", "ServiceRequest", "DetectedIssue", "Provenance"):
                assert rtype in notice.group(1)
            assert 'href="/draft.json"' in notice.group(1)

            download = browser.get(f"{running.app_url}/draft.json", timeout=TIMEOUT)
            assert download.status_code == 200
            assert download.headers["Content-Type"].startswith("application/fhir+json")
            assert "attachment" in download.headers["Content-Disposition"]
            bundle = download.json()
            assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
            types = {e["resource"]["resourceType"] for e in bundle["entry"]}
            assert {"ClinicalImpression", "Provenance"} <= types
            assert all(e["request"]["ifNoneExist"] for e in bundle["entry"])

            # a hand-made POST of this very draft (its digest as the app computes it) is refused too
            canonical = json.dumps(bundle, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            digest = hashlib.sha256(canonical.encode()).hexdigest()
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', review.text)
            token = html.unescape(csrf.group(1)) if csrf else ""
            refused = post_write(running, browser, {"csrf_token": token, "draft_digest": digest})
            assert refused.status_code == 403, refused.text[:2000]
            assert "The draft was not written" in refused.text
        assert_no_change(before, chart)
    finally:
        running.stop()
