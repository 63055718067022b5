"""Fault catalogue, writing the draft: honest outcomes from the misbehaving EHR of
``tests/hostile_ehr.py`` over real HTTP, each test with a chart of its own.

The result page says what the EHR holds ("2 of 4 drafts are in the chart; the DetectedIssue and the
Provenance are not"), learnt by reading each draft back by its identifier when the answer does not
settle it: a transaction stored in part, a commit whose answer came after the read timeout, a
``201 Created`` without ``Location`` (transaction and one-by-one writes), a refusal, a timeout with
nothing stored. A retry completes what is missing and duplicates nothing; the audit log's ``write`` line
carries the user (the ``fhirUser`` URL) and the outcome.
"""

from __future__ import annotations

import html
import logging
import re

import pytest
import requests

from tests.hostile_ehr import PATIENT, HostileStack

pytestmark = pytest.mark.e2e

#: The patient's draft: the app's Device, ClinicalImpression, ServiceRequest, DetectedIssue, Provenance.
DRAFT_TYPES = ("Device", "ClinicalImpression", "ServiceRequest", "DetectedIssue", "Provenance")
ONE_EACH = {
    "Device": 1,
    "ClinicalImpression": 1,
    "ServiceRequest": 1,
    "DetectedIssue": 1,
    "Provenance": 1,
    "DocumentReference": 0,
}
EMPTY = dict.fromkeys(ONE_EACH, 0)


def summary(page: str) -> str:
    found = re.search(r'<p id="write-summary">(.*?)</p>', page, re.S)
    assert found, page[:3000]
    return html.unescape(found.group(1))


def rows(page: str) -> list[tuple[str, str, str, str]]:
    """(type, id, version, result) of the result page's table of what is in the chart."""
    table = re.search(r'<table class="written">.*?<tbody>(.*?)</tbody>', page, re.S)
    assert table, page[:3000]
    out = []
    for row in re.findall(r"<tr>(.*?)</tr>", table.group(1), re.S):
        cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td>(.*?)</td>", row, re.S)]
        out.append((cells[0], cells[1], cells[2], cells[3]))
    return out


def write_events(stack: HostileStack) -> list[dict[str, object]]:
    return [e for e in stack.audit_events() if e["kind"] == "write"]


def launch_and_write(stack: HostileStack, browser: requests.Session) -> requests.Response:
    review = stack.launch(browser)
    assert review.status_code == 200, review.text[:2000]
    return stack.write(browser, review.text)


def assert_chart_holds_each_once(stack: HostileStack, result: requests.Response) -> None:
    chart = stack.chart()
    assert chart.counts() == ONE_EACH
    held = {f"{r['resourceType']}/{r['id']}" for t in DRAFT_TYPES for r in chart.search(t)}
    shown = {f"{t}/{i}" for t, i, _, _ in rows(result.text)}
    assert shown == held


def test_partly_stored_transaction_says_what_is_in_the_chart_and_a_retry_completes_it(
    fresh_hostile: HostileStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    stack = fresh_hostile
    stack.hostile.set("transaction", kind="partial", keep=3, times=1)  # Device, assessment, ServiceRequest
    with requests.Session() as browser:
        result = launch_and_write(stack, browser)
        assert result.status_code == 502
        assert "The draft is only partly in the chart" in result.text
        assert (
            summary(result.text)
            == "2 of 4 drafts are in the chart; the DetectedIssue and the Provenance are not."
        )
        assert "storage node lost mid-transaction" in result.text  # the EHR's reason
        assert [r[0] for r in rows(result.text)] == ["Device", "ClinicalImpression", "ServiceRequest"]
        assert all(r[3] == "in the chart (found by reading it back)" for r in rows(result.text))
        assert stack.chart().counts() == {**ONE_EACH, "DetectedIssue": 0, "Provenance": 0}
        (event,) = write_events(stack)
        assert event["outcome"] == "partly-written" and event["status"] == 500
        assert event["missing"] == ["DetectedIssue", "Provenance"] and len(event["found"]) == 3
        assert event["user"] == f"{stack.fhir_base}/Practitioner/dr-ada"  # the fhirUser URL, kept
        assert any("POST [base] -> 500" in r.getMessage() for r in caplog.records)

        retry = stack.write(browser, result.text)
        assert retry.status_code == 200 and "Draft written to the chart" in retry.text
        assert summary(retry.text) == "All 4 drafts are in the chart."
        results = {r[0]: r[3] for r in rows(retry.text)}
        assert results["DetectedIssue"] == "created" and results["Provenance"] == "created"
        assert results["ClinicalImpression"].startswith("already in the chart")
        assert_chart_holds_each_once(stack, retry)
        assert write_events(stack)[-1]["outcome"] == "written"


def test_commit_then_timeout_is_read_back_as_written(
    fresh_hostile: HostileStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    stack = fresh_hostile
    stack.hostile.set("transaction", kind="hold", delay=3.0, times=1)  # past the 1.5 s read timeout
    with requests.Session() as browser:
        result = launch_and_write(stack, browser)
        assert result.status_code == 200, result.text[:3000]
        assert "Draft written to the chart" in result.text
        assert summary(result.text) == "All 4 drafts are in the chart."
        assert "no answer within the read timeout" in result.text  # said, not hidden
        assert all(
            r[3] == "in the chart (found by reading it back)" and r[2] == "1" for r in rows(result.text)
        )
        assert_chart_holds_each_once(stack, result)
        (event,) = write_events(stack)
        assert event["outcome"] == "written" and len(event["found"]) == 5 and event["created"] == []
        assert any("POST [base] read timeout" in r.getMessage() for r in caplog.records)

        again = launch_and_write(stack, browser)  # a second tab: nothing new
        assert again.status_code == 200
        assert_chart_holds_each_once(stack, again)


def test_transaction_answered_without_locations_is_read_back(fresh_hostile: HostileStack) -> None:
    stack = fresh_hostile
    stack.hostile.set("transaction", kind="no_location")
    with requests.Session() as browser:
        result = launch_and_write(stack, browser)
        assert result.status_code == 200 and summary(result.text) == "All 4 drafts are in the chart."
        assert all(r[1] and r[2] == "1" for r in rows(result.text))  # ids and versions as the EHR holds them
        assert_chart_holds_each_once(stack, result)
        again = launch_and_write(stack, browser)
        assert again.status_code == 200
        assert_chart_holds_each_once(stack, again)


def test_sequential_writes_without_location_go_on_and_never_duplicate(
    fresh_hostile_sequential: HostileStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    stack = fresh_hostile_sequential
    stack.hostile.set("create", kind="no_location")  # 201 with no Location, no ETag, no body
    with requests.Session() as browser:
        result = launch_and_write(stack, browser)
        assert result.status_code == 200, result.text[:3000]
        assert summary(result.text) == "All 4 drafts are in the chart."
        assert "found in the chart by reading it back" in result.text
        assert_chart_holds_each_once(stack, result)
        (provenance,) = stack.chart().search("Provenance")
        targets = {t["reference"] for t in provenance["target"]}
        assert targets == {
            f"{t}/{i}" for t, i, _, _ in rows(result.text) if t not in ("Device", "Provenance")
        }
        again = launch_and_write(stack, browser)  # every create matches; still no Location
        assert again.status_code == 200
        assert_chart_holds_each_once(stack, again)


def test_sequential_refusal_stops_and_a_retry_completes_without_duplicates(
    fresh_hostile_sequential: HostileStack,
) -> None:
    stack = fresh_hostile_sequential
    stack.hostile.set("create:DetectedIssue", kind="status", status=422, times=1)
    with requests.Session() as browser:
        result = launch_and_write(stack, browser)
        assert result.status_code == 502
        assert "The draft is only partly in the chart" in result.text
        assert (
            summary(result.text)
            == "2 of 4 drafts are in the chart; the DetectedIssue and the Provenance are not."
        )
        assert "Stopped at: DetectedIssue (entry 3)." in result.text
        (event,) = write_events(stack)
        assert event["outcome"] == "partly-written" and event["status"] == 422
        retry = stack.write(browser, result.text)
        assert retry.status_code == 200
        assert_chart_holds_each_once(stack, retry)


def test_refused_transaction_is_read_back_as_not_written(fresh_hostile: HostileStack) -> None:
    stack = fresh_hostile
    stack.hostile.set("transaction", kind="status", status=422, times=1)
    with requests.Session() as browser:
        result = launch_and_write(stack, browser)
        assert result.status_code == 502 and "The EHR did not accept the draft" in result.text
        assert summary(result.text) == "None of the 4 drafts is in the chart; the app's Device record is not."
        assert "injected fault 422" in result.text
        assert stack.chart().counts() == EMPTY
        (event,) = write_events(stack)
        assert event["outcome"] == "refused" and event["status"] == 422 and event["created"] == []
        retry = stack.write(browser, result.text)
        assert retry.status_code == 200
        assert_chart_holds_each_once(stack, retry)


def test_timeout_with_nothing_stored_is_read_back_as_not_written(fresh_hostile: HostileStack) -> None:
    stack = fresh_hostile
    stack.hostile.set("transaction", kind="status", status=504, delay=3.0, times=1)  # no answer in time
    with requests.Session() as browser:
        result = launch_and_write(stack, browser)
        assert result.status_code == 502
        assert summary(result.text) == "None of the 4 drafts is in the chart; the app's Device record is not."
        assert "answer was lost or unusable" in result.text
        (event,) = write_events(stack)
        assert event["outcome"] == "not-written" and "status" not in event
        assert stack.chart().counts() == EMPTY


def test_read_back_refused_says_unknown(fresh_hostile: HostileStack) -> None:
    stack = fresh_hostile
    stack.hostile.set("transaction", kind="hold", delay=3.0, times=1)
    with requests.Session() as browser:
        review = stack.launch(browser)
        for rtype in DRAFT_TYPES:  # the EHR stores the write but then refuses to let the app look
            stack.hostile.set(rtype, kind="status", status=403)
        result = stack.write(browser, review.text)
        assert result.status_code == 502
        assert "It is not known whether the draft is in the chart" in result.text
        assert "could not be checked" in summary(result.text)
        (event,) = write_events(stack)
        assert event["outcome"] == "unknown" and set(event["unknown"]) == set(DRAFT_TYPES)
    assert stack.chart().counts() == ONE_EACH  # it was stored: the page did not claim otherwise


def test_launch_and_write_lines_name_the_user_and_patient(fresh_hostile: HostileStack) -> None:
    stack = fresh_hostile
    with requests.Session() as browser:
        result = launch_and_write(stack, browser)
    assert result.status_code == 200
    launch, read, write = (e for e in stack.audit_events() if e["kind"] in ("launch", "read", "write"))
    user = f"{stack.fhir_base}/Practitioner/dr-ada"
    assert launch["user"] == user and write["user"] == user
    assert launch["patient"] == PATIENT and write["patient"] == PATIENT
    assert write["outcome"] == "written" and write["mode"] == "transaction"
    assert sorted(str(r).split("/")[0] for r in write["created"]) == sorted(DRAFT_TYPES)
    assert write["matched"] == [] and write["found"] == [] and write["missing"] == []
