"""Fault catalogue, reading the record: the misbehaving EHR of ``tests/hostile_ehr.py`` over real HTTP,
the app launched as a clinician launches it.

Each test asserts the page (what the clinician sees and the HTTP status), the log line that names the
fault, and that nothing else was lost: the other resource types are read in full (the audit log's
``read`` counts) and what was cut short is unavailable, so the criteria treat it as unknown. Budgets run
small here (3 s, 4 MB: ``start_hostile``); ``benchmarks/hostile_bench.py`` runs the same faults at the
production defaults and measures the worker's memory.

Covered: the read budgets (a body dripped a byte at a time, headers dripped, 429 storms, a gzip bomb,
a huge page, JSON nested 100,000 deep) and the FHIR items of the bad-input catalogue (401, 403, 404,
429, 500, timeouts, non-JSON, malformed Bundles, a ``next`` link to another host).
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

import pytest
import requests

from smart_app.fhir import FhirClient, FhirCutShort
from smart_app.fhir.budget import ReadBudget
from tests.hostile_ehr import FULL_COUNTS, DripServer, HostileStack

pytestmark = pytest.mark.e2e


def review(stack: HostileStack) -> tuple[requests.Response, float]:
    with requests.Session() as browser:
        started = time.monotonic()
        page = stack.launch(browser)
        return page, time.monotonic() - started


def cut_short_section(page: str) -> str:
    found = re.search(r'<p id="cut-short">.*?</ul>', page, re.S)
    assert found, "the page says what was not read"
    return found.group(0)


def unavailable_in_draft(stack: HostileStack, browser: requests.Session) -> list[str]:
    draft = browser.get(f"{stack.app_url}/draft.json", timeout=30).json()
    assessment = next(
        e["resource"] for e in draft["entry"] if e["resource"]["resourceType"] == "ClinicalImpression"
    )
    return [
        part["valueCode"]
        for ext in assessment.get("extension", [])
        for part in ext.get("extension", [])
        if part.get("url") == "resourceType"
    ]


def fhir_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "smart_app.fhir" and r.levelno >= logging.WARNING
    ]


def test_no_fault_reads_everything(hostile: HostileStack) -> None:
    page, _ = review(hostile)
    assert page.status_code == 200 and page.url.endswith("/review")
    assert 'id="cut-short"' not in page.text
    assert hostile.read_counts() == FULL_COUNTS


# -- budgets -------------------------------------------------------------------------------------------
def test_body_dripped_a_byte_at_a_time_is_cut_at_the_read_budget(
    hostile: HostileStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    hostile.hostile.set("Observation", kind="drip", interval=0.5)
    with requests.Session() as browser:
        started = time.monotonic()
        page = hostile.launch(browser)
        elapsed = time.monotonic() - started
        assert page.status_code == 200
        section = cut_short_section(page.text)
        assert "Observation" in section and "3 s budget for reading the record ran out" in section
        assert elapsed < 3.0 + 3.0  # the budget, not the drip (10,000 bytes at 0.5 s each)
        assert hostile.read_counts() == {"Condition": 2}  # the rest was read in full
        assert unavailable_in_draft(hostile, browser) == ["Observation"]  # unknown, not absent
    assert any("Observation" in m and "still arriving" in m for m in fhir_warnings(caplog))


def test_headers_dripped_a_byte_at_a_time_are_cut_too() -> None:
    drip = DripServer(interval=0.3)
    try:
        with FhirClient(f"{drip.url}/fhir", timeout=(3.05, 30), max_retries=0) as client:
            started = time.monotonic()
            with client.budget(ReadBudget(seconds=1.5)), pytest.raises(FhirCutShort) as info:
                client.read("Patient", "p1")
            assert time.monotonic() - started < 1.5 + 1.5  # no read timeout ever fires on a drip
            assert info.value.limit == "time" and "1 s budget" not in info.value.message
        with FhirClient(f"{drip.url}/fhir", max_request_seconds=1.0, max_retries=0) as client:
            started = time.monotonic()
            with pytest.raises(FhirCutShort, match="1 s limit for one request"):
                client.read("Patient", "p1")
            assert time.monotonic() - started < 1.0 + 1.5
    finally:
        drip.close()


def test_429_storm_stops_when_the_wait_would_pass_the_budget(
    hostile: HostileStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    hostile.hostile.set("Observation", kind="status", status=429, retry_after=2)
    page, elapsed = review(hostile)
    assert page.status_code == 200
    section = cut_short_section(page.text)
    assert "HTTP 429, and a retry in 2 s would pass the 3 s budget" in section
    assert elapsed < 3.0 + 2.0
    asked = [s for s in hostile.hostile.seen if s.path == "/fhir/Observation"]
    assert len(asked) == 2  # the first answer, one retry after 2 s; the next wait would pass the budget
    assert hostile.read_counts() == {"Condition": 2}
    assert any("retry 1 in 2.00 s" in m for m in fhir_warnings(caplog))
    assert any("would pass the 3 s budget" in m and "stopped" in m for m in fhir_warnings(caplog))


def test_gzip_bomb_is_cut_at_the_decompressed_cap(
    hostile: HostileStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    hostile.hostile.set("Observation", kind="gzip_bomb", unpacked=200 * 1024 * 1024)
    page, _ = review(hostile)
    assert page.status_code == 200
    section = cut_short_section(page.text)
    assert "grew past the 4 MB limit (counted decompressed)" in section
    assert hostile.read_counts() == {"Condition": 2}
    assert any("cut short" in m and "4 MB" in m for m in fhir_warnings(caplog))


def test_huge_page_is_cut_at_the_cap(hostile: HostileStack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    hostile.hostile.set("Observation", kind="huge_page", bytes=16 * 1024 * 1024)
    page, _ = review(hostile)
    assert page.status_code == 200
    assert "grew past the 4 MB limit" in cut_short_section(page.text)
    assert hostile.read_counts() == {"Condition": 2}
    assert any("Observation" in m and "cut short" in m for m in fhir_warnings(caplog))


def test_a_page_within_the_cap_is_read(hostile: HostileStack) -> None:
    hostile.hostile.set("Observation", kind="huge_page", bytes=2 * 1024 * 1024)
    page, _ = review(hostile)
    assert page.status_code == 200 and 'id="cut-short"' not in page.text
    assert hostile.read_counts()["Observation"] > 1900  # 2 MB of ~1 KB Observations


def test_declared_length_over_the_cap_is_refused_before_reading(hostile: HostileStack) -> None:
    body = b" " * (5 * 1024 * 1024)
    hostile.hostile.set("Observation", kind="body", body=body, content_type="application/fhir+json")
    page, _ = review(hostile)
    assert "larger than the 4 MB limit" in cut_short_section(page.text)


def test_json_nested_100000_deep_is_reported_not_a_500(
    hostile: HostileStack, caplog: pytest.LogCaptureFixture
) -> None:
    hostile.hostile.set(
        "Condition", kind="body", body=b"[" * 100_000 + b"]" * 100_000, content_type="application/fhir+json"
    )
    page, _ = review(hostile)
    assert page.status_code == 200
    assert "not usable JSON (nested deeper than 1024 levels)" in page.text
    assert hostile.read_counts() == {"Observation": 3}


def test_slow_patient_read_ends_at_the_budget(hostile: HostileStack) -> None:
    hostile.hostile.set("Patient", kind="drip", interval=0.5)
    page, elapsed = review(hostile)
    assert elapsed < 3.0 + 3.0
    assert "The patient record could not be read" in page.text
    assert "3 s budget for reading the record ran out" in page.text
    assert 'id="write-draft"' not in page.text  # nothing to write without the patient


# -- the bad-input catalogue: FHIR answers ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "shown"),
    [(403, "HTTP 403"), (404, "HTTP 404"), (500, "HTTP 500")],
)
def test_refused_search_is_listed_and_the_rest_kept(
    hostile: HostileStack, caplog: pytest.LogCaptureFixture, status: int, shown: str
) -> None:
    caplog.set_level(logging.WARNING)
    hostile.hostile.set("Condition", kind="status", status=status)
    page, _ = review(hostile)
    assert page.status_code == 200
    failures = re.search(r"these reads failed:</p>(.*?)</ul>", page.text, re.S)
    assert failures and "Condition" in failures.group(1) and shown in failures.group(1)
    assert "injected fault" in failures.group(1)  # the EHR's own OperationOutcome, escaped
    assert hostile.read_counts() == {"Observation": 3}
    assert any(f"-> {status}" in m for m in fhir_warnings(caplog))


def test_401_on_every_read_asks_for_a_relaunch(
    hostile: HostileStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    hostile.hostile.set("fhir", kind="status", status=401)
    page, _ = review(hostile)
    assert page.status_code == 401 and "Relaunch the app from your EHR" in page.text
    assert sum(1 for s in hostile.hostile.seen if s.path == "/auth/token") == 2  # the launch, one refresh
    assert not [e for e in hostile.audit_events() if e["kind"] == "read"]
    relaunch = "Relaunch required for Hostile EHR (test): the EHR refused a freshly refreshed access token"
    assert relaunch in [r.getMessage() for r in caplog.records]


def test_one_429_is_retried_after_its_wait(hostile: HostileStack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    hostile.hostile.set("Observation", kind="status", status=429, retry_after=1, times=1)
    page, _ = review(hostile)
    assert page.status_code == 200 and 'id="cut-short"' not in page.text
    assert hostile.read_counts() == FULL_COUNTS
    assert any("Observation" in m and "retry 1 in 1.00 s" in m for m in fhir_warnings(caplog))


def test_read_timeout_is_reported(hostile: HostileStack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    hostile.hostile.set("Condition", kind="hold", delay=2.5)  # past the 1.5 s read timeout
    page, _ = review(hostile)
    assert page.status_code == 200
    assert "no answer within the read timeout" in page.text
    assert hostile.read_counts() == {"Observation": 3}
    assert any("Condition" in m and "read timeout" in m for m in fhir_warnings(caplog))


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        (b"<html>gateway login</html>", "the response body is not JSON"),
        (b'{"resourceType": "Patient", "id": "x"}', "expected a Bundle"),
        (
            b'{"resourceType": "Bundle", "type": "searchset", "entry": {"resource": {}}}',
            "Bundle.entry is not a list",
        ),
    ],
    ids=["not-json", "not-a-bundle", "entry-not-a-list"],
)
def test_malformed_answers_are_reported(hostile: HostileStack, body: bytes, shown: str) -> None:
    hostile.hostile.set("Condition", kind="body", body=body, content_type="application/fhir+json")
    page, _ = review(hostile)
    assert page.status_code == 200 and shown in page.text
    assert hostile.read_counts() == {"Observation": 3}


def test_next_link_to_another_host_is_refused_and_the_token_not_sent(
    hostile: HostileStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    foreign = f"{hostile.other_url}/fhir/Observation?page=2"

    def add_foreign_next(bundle: dict[str, Any]) -> dict[str, Any]:
        bundle["link"] = [*bundle.get("link", []), {"relation": "next", "url": foreign}]
        return bundle

    hostile.hostile.set("Observation", kind="rewrite", fn=add_foreign_next)
    page, _ = review(hostile)
    assert page.status_code == 200
    assert "next-page link points outside the FHIR base; not followed" in page.text
    assert hostile.other.requests == []  # nothing, and so no token, reached the other host
    assert hostile.read_counts() == {"Condition": 2}
    assert not any(foreign in r.getMessage() for r in caplog.records)


def test_the_page_is_cut_short_and_the_token_is_not_in_any_log(
    hostile: HostileStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    hostile.hostile.set("Observation", kind="gzip_bomb", unpacked=50 * 1024 * 1024)
    page, _ = review(hostile)
    assert page.status_code == 200
    state = hostile.sandbox_app.extensions["sandbox"].auth
    with state.lock:
        tokens = [*state.access, *state.refresh]
    assert tokens and not any(token in caplog.text for token in tokens)
    assert not any(token in json.dumps(hostile.audit_events()) for token in tokens)
