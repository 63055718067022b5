"""Fault catalogue, reading the record by batch: the misbehaving EHR of ``tests/hostile_ehr.py`` offers
batch Bundles in its CapabilityStatement, and the app's reads go as one batch (``FHIR_BATCH_READS``
``auto``), which the EHR then breaks on purpose.

Whatever the batch answer is, the page is the one a read one by one gives (the same classification, the
same counts read, nothing cut short) unless the budget itself ran out; the log names what went on its
own; nothing is read twice into the record, and no link off the FHIR base is followed.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import pytest
import requests

from tests.hostile_ehr import FULL_COUNTS, HostileStack

pytestmark = pytest.mark.e2e


@pytest.fixture
def batching(hostile: HostileStack) -> HostileStack:
    hostile.app.config["FHIR_BATCH_READS"] = "auto"
    return hostile


def launch(stack: HostileStack) -> requests.Response:
    with requests.Session() as browser:
        return stack.launch(browser)


def conclusion(page: requests.Response) -> str:
    found = re.search(r'<span class="badge badge-class [^"]*">([^<]*)</span>', page.text)
    assert found, "the page shows a classification"
    return found.group(1)


def fhir_sent(stack: HostileStack) -> list[str]:
    """The FHIR requests after discovery, as ``METHOD path``."""
    skipped = ("/fhir/.well-known/smart-configuration", "/fhir/metadata")
    return [
        f"{s.method} {s.path}"
        for s in stack.hostile.seen
        if s.path.startswith("/fhir") and s.path not in skipped
    ]


def fhir_log(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "smart_app.fhir")


def one_by_one(stack: HostileStack) -> str:
    """The classification a read one by one gives, batches off."""
    stack.app.config["FHIR_BATCH_READS"] = "never"
    try:
        page = launch(stack)
    finally:
        stack.app.config["FHIR_BATCH_READS"] = "auto"
    assert page.status_code == 200 and stack.read_counts() == FULL_COUNTS
    stack.hostile.seen.clear()
    return conclusion(page)


def assert_whole(stack: HostileStack, page: requests.Response, expected: str) -> None:
    assert page.status_code == 200 and page.url.endswith("/review")
    assert 'id="cut-short"' not in page.text and "these reads failed" not in page.text
    assert conclusion(page) == expected
    assert stack.read_counts() == FULL_COUNTS  # everything, and each resource once


def test_a_whole_batch_answer_is_the_only_read(batching: HostileStack) -> None:
    expected = one_by_one(batching)
    page = launch(batching)
    assert_whole(batching, page, expected)
    assert fhir_sent(batching) == ["POST /fhir"]


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"kind": "status", "status": 500}, id="500"),
        pytest.param({"kind": "status", "status": 400}, id="400-not-here"),
        pytest.param({"kind": "body", "status": 200, "body": b"<html>proxy</html>"}, id="not-json"),
        pytest.param(
            {"kind": "rewrite", "fn": lambda b: {**b, "entry": b["entry"][:1]}}, id="entries-missing"
        ),
        pytest.param(
            {"kind": "rewrite", "fn": lambda b: {**b, "type": "searchset"}}, id="not-a-batch-response"
        ),
    ],
)
def test_a_failed_batch_is_read_one_by_one_and_not_sent_again(
    batching: HostileStack, caplog: pytest.LogCaptureFixture, fault: dict[str, Any]
) -> None:
    expected = one_by_one(batching)
    caplog.set_level(logging.INFO, logger="smart_app.fhir")
    batching.hostile.set("batch", **fault)
    page = launch(batching)
    assert_whole(batching, page, expected)
    sent = fhir_sent(batching)
    assert sent[0] == "POST /fhir" and sorted(sent[1:]) == [
        "GET /fhir/Condition",
        "GET /fhir/Observation",
        "GET /fhir/Patient/jkowalski",
    ]
    assert "FHIR batch read failed" in fhir_log(caplog)
    batching.hostile.seen.clear()
    assert_whole(batching, launch(batching), expected)
    assert "POST /fhir" not in fhir_sent(batching)  # this EHR's reads go one by one for a while


def short_observations(bundle: dict[str, Any]) -> dict[str, Any]:
    """The batch answer with its Observation searchset cut to one entry, its ``total`` kept and no
    paging link (as the independent FHIR server answers a batch search longer than its page)."""
    entries = []
    for entry in bundle["entry"]:
        found = entry.get("resource") or {}
        if (
            found.get("resourceType") == "Bundle"
            and found["entry"][0]["resource"]["resourceType"] == "Observation"
        ):
            found = {**found, "entry": found["entry"][:1], "total": len(found["entry"])}
            found.pop("link", None)
        entries.append({**entry, "resource": found})
    return {**bundle, "entry": entries}


def refused_conditions(bundle: dict[str, Any]) -> dict[str, Any]:
    entries = list(bundle["entry"])
    entries[2] = {"response": {"status": "503 Service Unavailable"}}
    return {**bundle, "entry": entries}


def foreign_next_link(other: str) -> Any:
    def rewrite(bundle: dict[str, Any]) -> dict[str, Any]:
        entries = list(bundle["entry"])
        searchset = {
            **entries[1]["resource"],
            "link": [{"relation": "next", "url": f"{other}/fhir/Observation"}],
        }
        entries[1] = {**entries[1], "resource": searchset}
        return {**bundle, "entry": entries}

    return rewrite


@pytest.mark.parametrize(
    ("rewrite", "alone"),
    [
        pytest.param(short_observations, "GET /fhir/Observation", id="searchset-short-of-its-total"),
        pytest.param(refused_conditions, "GET /fhir/Condition", id="an-entry-refused"),
        pytest.param("foreign", "GET /fhir/Observation", id="next-link-to-another-host"),
    ],
)
def test_what_the_batch_did_not_answer_whole_is_read_on_its_own(
    batching: HostileStack, caplog: pytest.LogCaptureFixture, rewrite: Any, alone: str
) -> None:
    expected = one_by_one(batching)
    caplog.set_level(logging.INFO, logger="smart_app.fhir")
    fn = foreign_next_link(batching.other_url) if rewrite == "foreign" else rewrite
    batching.hostile.set("batch", kind="rewrite", fn=fn)
    page = launch(batching)
    assert_whole(batching, page, expected)
    assert fhir_sent(batching) == ["POST /fhir", alone]
    assert "sent on its own" in fhir_log(caplog)
    assert batching.other.requests == []  # the link off the base was never followed


def test_a_gzip_bomb_for_a_batch_is_cut_at_the_cap_and_read_one_by_one(
    batching: HostileStack, caplog: pytest.LogCaptureFixture
) -> None:
    expected = one_by_one(batching)
    caplog.set_level(logging.INFO, logger="smart_app.fhir")
    batching.hostile.set("batch", kind="gzip_bomb", unpacked=64 * 1024 * 1024)
    page = launch(batching)
    assert_whole(batching, page, expected)
    assert "FHIR batch read failed" in fhir_log(caplog) and "4 MB" in fhir_log(caplog)


def test_a_batch_dripped_a_byte_at_a_time_is_given_up_at_half_the_budget(
    batching: HostileStack, caplog: pytest.LogCaptureFixture
) -> None:
    expected = one_by_one(batching)
    caplog.set_level(logging.INFO, logger="smart_app.fhir")
    batching.hostile.set("batch", kind="drip", interval=0.5)
    started = time.monotonic()
    page = launch(batching)
    assert time.monotonic() - started < 3.0 + 3.0  # within the budget, not the drip's 10,000 bytes
    assert_whole(batching, page, expected)  # the reads one by one had the other half
    log = fhir_log(caplog)
    assert "FHIR batch read failed" in log and "share of the read budget for a batch" in log
    batching.hostile.seen.clear()
    assert_whole(batching, launch(batching), expected)
    assert "POST /fhir" not in fhir_sent(batching)  # this EHR's reads go one by one for a while
