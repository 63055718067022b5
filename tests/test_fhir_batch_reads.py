"""Reads by batch Bundle (``smart_app.fhir.record``, ``smart_app.fhir.capability``): a batch is used only
where the CapabilityStatement offers it, and whatever the batch answer is (whole, short of its searches,
failed in one entry or as a whole, malformed, refused), the record read is the one reading one by one
gives, nothing lost or repeated; what went on its own is logged (responses; no network)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import responses

from smart_app.fhir import FhirClient, FhirUnauthorized, capability, fetch_patient_record
from smart_app.fhir.budget import ReadBudget
from smart_app.fhir.errors import FhirCutShort, FhirServerError
from smart_app.fhir.record import BATCH_COUNT

BASE = "http://127.0.0.1:8001/fhir"
PID = "p1"
FIRST = ("Observation", "Condition")


def res(resource_type: str, rid: str) -> dict[str, Any]:
    return {"resourceType": resource_type, "id": rid, "subject": {"reference": f"Patient/{PID}"}}


def searchset(resources: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    entries = [{"resource": r, "search": {"mode": "match"}} for r in resources]
    return {"resourceType": "Bundle", "type": "searchset", "entry": entries, **extra}


PATIENT = {"resourceType": "Patient", "id": PID}
OBSERVATIONS = [res("Observation", f"o{n}") for n in range(3)]
CONDITIONS = [res("Condition", "c1")]


def batch_answer(*entries: tuple[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [{"response": {"status": status}, "resource": resource} for status, resource in entries],
    }


WHOLE = batch_answer(
    ("200 OK", PATIENT), ("200 OK", searchset(OBSERVATIONS)), ("200 OK", searchset(CONDITIONS))
)


@pytest.fixture(autouse=True)
def fresh_capabilities() -> Iterator[None]:
    capability.forget()
    yield
    capability.forget()


@pytest.fixture
def chart(rsps: responses.RequestsMock) -> responses.RequestsMock:
    """A server holding PATIENT, OBSERVATIONS and CONDITIONS, read one by one."""
    rsps.get(f"{BASE}/Patient/{PID}", json=PATIENT)
    rsps.get(f"{BASE}/Observation", json=searchset(OBSERVATIONS))
    rsps.get(f"{BASE}/Condition", json=searchset(CONDITIONS))
    return rsps


def read(batch: bool = True) -> Any:
    client = FhirClient(BASE, token="token", max_retries=0, sleep=lambda seconds: None)
    return fetch_patient_record(client, PID, lambda resource_type: True, types=FIRST, batch=batch)


def sent(rsps: responses.RequestsMock) -> list[str]:
    return [f"{call.request.method} {urlsplit(call.request.url).path}" for call in rsps.calls]


def same_as_one_by_one(result: Any) -> None:
    assert result.patient == PATIENT
    assert result.resources == [*OBSERVATIONS, *CONDITIONS]
    assert result.counts == {"Observation": 3, "Condition": 1}
    assert result.failures == [] and result.notes == []


def test_a_whole_batch_answer_is_one_round_trip(chart):
    chart.post(BASE, json=WHOLE)
    result = read()
    same_as_one_by_one(result)
    assert result.round_trips == 1 and sent(chart) == ["POST /fhir"]
    asked = json.loads(chart.calls[0].request.body)
    assert asked["type"] == "batch"
    assert [e["request"] for e in asked["entry"]] == [
        {"method": "GET", "url": f"Patient/{PID}"},
        {"method": "GET", "url": f"Observation?patient={PID}&_count={BATCH_COUNT}"},
        {"method": "GET", "url": f"Condition?patient={PID}&_count={BATCH_COUNT}"},
    ]


@pytest.mark.parametrize(
    "observations",
    [
        pytest.param(searchset(OBSERVATIONS[:1], total=3), id="total-above-entries-no-next-link"),
        pytest.param(
            searchset(OBSERVATIONS[:1], link=[{"relation": "next", "url": f"{BASE}/Observation?p=2"}]),
            id="next-link",
        ),
        pytest.param(
            searchset(OBSERVATIONS[:1], link=[{"relation": "next", "url": "http://elsewhere.test/x"}]),
            id="next-link-off-the-base",
        ),
        pytest.param(searchset([res("Observation", f"o{n}") for n in range(BATCH_COUNT)]), id="a-full-page"),
        pytest.param(searchset(OBSERVATIONS * 2, total=3), id="more-entries-than-total"),
        pytest.param({"resourceType": "OperationOutcome"}, id="not-a-bundle"),
        pytest.param(None, id="no-resource"),
    ],
)
def test_a_search_the_batch_did_not_answer_whole_is_sent_on_its_own(chart, caplog, observations):
    chart.post(
        BASE, json=batch_answer(("200", PATIENT), ("200", observations), ("200", searchset(CONDITIONS)))
    )
    with caplog.at_level(logging.INFO, logger="smart_app.fhir"):
        result = read()
    same_as_one_by_one(result)
    assert sent(chart) == ["POST /fhir", "GET /fhir/Observation"]
    assert "Observation search" in caplog.text and "sent on its own" in caplog.text


def test_a_failed_entry_is_sent_on_its_own_and_fails_as_it_would_alone(chart, caplog):
    refused = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "forbidden"}]}
    chart.post(BASE, json=batch_answer(("200", PATIENT), ("200", searchset(OBSERVATIONS)), ("403", refused)))
    issue = {"severity": "error", "code": "forbidden", "diagnostics": "Condition not permitted"}
    chart.replace(
        responses.GET,
        f"{BASE}/Condition",
        status=403,
        json={"resourceType": "OperationOutcome", "issue": [issue]},
    )
    with caplog.at_level(logging.INFO, logger="smart_app.fhir"):
        result = read()
    assert result.resources == OBSERVATIONS
    [failure] = result.failures
    assert (failure.resource_type, failure.status) == ("Condition", 403)
    assert "Condition not permitted" in failure.message
    assert sent(chart) == ["POST /fhir", "GET /fhir/Condition"]
    assert "Condition search in a batch answered 403" in caplog.text


def test_a_patient_entry_that_is_no_patient_is_read_on_its_own(chart):
    chart.post(
        BASE,
        json=batch_answer(
            ("200", res("Observation", "x")), ("200", searchset(OBSERVATIONS)), ("200", searchset(CONDITIONS))
        ),
    )
    same_as_one_by_one(read())
    assert sent(chart) == ["POST /fhir", f"GET /fhir/Patient/{PID}"]


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param({"status": 500, "json": {"resourceType": "OperationOutcome"}}, id="500"),
        pytest.param({"status": 404}, id="404-no-batch-here"),
        pytest.param({"body": "<html>gateway</html>", "content_type": "text/html"}, id="not-json"),
        pytest.param({"json": {**WHOLE, "type": "transaction-response"}}, id="wrong-bundle-type"),
        pytest.param({"json": {**WHOLE, "entry": WHOLE["entry"][:2]}}, id="an-entry-missing"),
        pytest.param(
            {"json": {**WHOLE, "entry": [{"response": "200"}, *WHOLE["entry"][1:]]}},
            id="response-not-an-object",
        ),
        pytest.param({"json": {**WHOLE, "entry": [{}, *WHOLE["entry"][1:]]}}, id="entry-without-status"),
        pytest.param({"json": [WHOLE]}, id="not-a-bundle"),
    ],
)
def test_a_failed_batch_sends_every_read_on_its_own_and_is_not_tried_again(chart, caplog, answer):
    chart.post(BASE, **answer)
    with caplog.at_level(logging.INFO, logger="smart_app.fhir"):
        same_as_one_by_one(read())
    assert sent(chart)[0] == "POST /fhir"
    assert sorted(sent(chart)[1:]) == [
        "GET /fhir/Condition",
        "GET /fhir/Observation",
        f"GET /fhir/Patient/{PID}",
    ]
    assert "FHIR batch read failed" in caplog.text
    chart.get(f"{BASE}/metadata", json=STATEMENT)
    client = FhirClient(BASE, token="token")
    assert capability.batch_offered(client) is False  # this server's reads now go one by one for a while
    assert "GET /fhir/metadata" not in sent(chart)


def test_a_refused_token_on_the_batch_is_refused_on_the_reads_too(rsps):
    rsps.post(BASE, status=401)
    for path in (f"Patient/{PID}", "Observation", "Condition"):
        rsps.get(f"{BASE}/{path}", status=401)
    with pytest.raises(FhirUnauthorized):
        read()
    rsps.get(f"{BASE}/metadata", json=STATEMENT)
    assert (
        capability.batch_offered(FhirClient(BASE, token="token")) is True
    )  # a token says nothing of batches


def test_a_batch_answer_cut_short_by_the_size_cap_is_read_one_by_one(chart, caplog):
    chart.post(
        BASE, json=batch_answer(("200", PATIENT), ("200", searchset(OBSERVATIONS * 400)), ("200", None))
    )
    client = FhirClient(BASE, token="token", max_retries=0, max_response_bytes=20_000)
    with caplog.at_level(logging.INFO, logger="smart_app.fhir"):
        result = fetch_patient_record(client, PID, lambda resource_type: True, types=FIRST, batch=True)
    same_as_one_by_one(result)
    assert "FHIR batch read failed" in caplog.text


# -- what the CapabilityStatement says --------------------------------------------------------------------
STATEMENT = {
    "resourceType": "CapabilityStatement",
    "rest": [{"mode": "server", "interaction": [{"code": "transaction"}, {"code": "batch"}]}],
}


@pytest.mark.parametrize(
    ("statement", "offered"),
    [
        (STATEMENT, True),
        ({"resourceType": "CapabilityStatement", "rest": [{"interaction": [{"code": "batch"}]}]}, True),
        (
            {
                "resourceType": "CapabilityStatement",
                "rest": [{"mode": "client", "interaction": [{"code": "batch"}]}],
            },
            False,
        ),
        (
            {
                "resourceType": "CapabilityStatement",
                "rest": [{"mode": "server", "interaction": [{"code": "transaction"}]}],
            },
            False,
        ),
        ({"resourceType": "CapabilityStatement", "rest": "batch"}, False),
        ({"resourceType": "CapabilityStatement", "rest": [{"interaction": {"code": "batch"}}]}, False),
        ({"resourceType": "CapabilityStatement"}, False),
    ],
)
def test_batch_is_offered_only_by_a_server_rest_interaction(statement, offered):
    assert capability.offers_batch(statement) is offered


def test_the_statement_is_read_once_per_base_and_kept(rsps):
    rsps.get(f"{BASE}/metadata", json=STATEMENT)
    clock = [100.0]
    client = FhirClient(BASE, token="token")
    assert capability.batch_offered(client, clock=lambda: clock[0]) is True
    clock[0] += capability.KEEP_SECONDS - 1
    assert capability.batch_offered(client, clock=lambda: clock[0]) is True
    assert len(rsps.calls) == 1
    clock[0] += 2
    assert capability.batch_offered(client, clock=lambda: clock[0]) is True
    assert len(rsps.calls) == 2


@pytest.mark.parametrize(
    "answer",
    [{"status": 500}, {"body": requests.exceptions.ConnectionError()}, {"json": {"resourceType": "Patient"}}],
    ids=["500", "unreachable", "not-a-statement"],
)
def test_an_unreadable_statement_means_one_by_one_and_is_asked_again_later(rsps, caplog, answer):
    rsps.get(f"{BASE}/metadata", **answer)
    clock = [100.0]
    client = FhirClient(BASE, token="token", max_retries=0)
    with caplog.at_level(logging.INFO, logger="smart_app.fhir"):
        assert capability.batch_offered(client, clock=lambda: clock[0]) is False
    assert "FHIR metadata not read" in caplog.text
    clock[0] += capability.RETRY_SECONDS + 1
    rsps.replace(responses.GET, f"{BASE}/metadata", json=STATEMENT)
    assert capability.batch_offered(client, clock=lambda: clock[0]) is True


@pytest.mark.parametrize(
    ("error", "still_offered"),
    [
        (FhirServerError("batch not supported", status=500), False),
        (FhirCutShort("cut short", limit="time"), False),
        (FhirUnauthorized("refused", status=401), True),
    ],
)
def test_a_failed_batch_stops_batches_unless_the_token_was_refused(rsps, error, still_offered):
    rsps.get(f"{BASE}/metadata", json=STATEMENT)
    client = FhirClient(BASE, token="token")
    assert capability.batch_offered(client) is True
    capability.batch_failed(BASE, error)
    assert capability.batch_offered(client) is still_offered


# -- an independent FHIR server --------------------------------------------------------------------------
@pytest.mark.medplum
def test_the_independent_server_loses_nothing_by_batch(medplum: Any) -> None:
    """Its batch searchsets give their ``total`` but drop their paging links: a patient with more
    Observations than a batch asks for is read whole all the same."""
    made = requests.post(f"{medplum.base_url}/Patient", json={"resourceType": "Patient"}, timeout=30)
    patient = made.json()["id"]
    subject = {"reference": f"Patient/{patient}"}
    entries = [
        {
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": f"obs {n}"},
                "subject": subject,
            },
            "request": {"method": "POST", "url": "Observation"},
        }
        for n in range(BATCH_COUNT + 5)
    ] + [
        {
            "resource": {"resourceType": "Condition", "code": {"text": "back pain"}, "subject": subject},
            "request": {"method": "POST", "url": "Condition"},
        }
    ]
    seeded = requests.post(
        medplum.base_url, json={"resourceType": "Bundle", "type": "batch", "entry": entries}, timeout=60
    )
    assert all(e["response"]["status"].startswith("201") for e in seeded.json()["entry"])

    def read_it(batch: bool) -> Any:
        with FhirClient(medplum.base_url) as client:
            assert capability.batch_offered(client) is True
            return fetch_patient_record(client, patient, lambda resource_type: True, types=FIRST, batch=batch)

    one_by_one, batched = read_it(batch=False), read_it(batch=True)
    assert batched.counts == one_by_one.counts == {"Observation": BATCH_COUNT + 5, "Condition": 1}
    assert batched.resources == one_by_one.resources and batched.patient == one_by_one.patient
    assert batched.failures == [] and batched.round_trips == 2  # the batch, then the Observations alone


def test_a_slow_batch_leaves_half_the_budget_to_the_reads_one_by_one(chart, caplog):
    def slow(request: Any) -> tuple[int, dict[str, str], str]:
        raise requests.exceptions.ReadTimeout("no answer yet")

    chart.add_callback(responses.POST, BASE, callback=slow)
    client = FhirClient(BASE, token="token", max_retries=0, timeout=(1.0, 60.0))
    with caplog.at_level(logging.INFO, logger="smart_app.fhir"), client.budget(ReadBudget(seconds=4.0)):
        with client.budget_share(0.5, "share"):
            assert client._cutoff()[0] - time.monotonic() <= 2.0  # the share, not the whole budget
        result = fetch_patient_record(client, PID, lambda resource_type: True, types=FIRST, batch=True)
    same_as_one_by_one(result)
    assert "FHIR batch read failed" in caplog.text


def test_a_batch_that_answers_no_entry_is_not_sent_again(chart, caplog):
    """A server may list batch and take only writes in one: every read entry refused."""
    refused = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-supported"}]}
    chart.post(BASE, json=batch_answer(("400", refused), ("400", refused), ("400", refused)))
    with caplog.at_level(logging.INFO, logger="smart_app.fhir"):
        same_as_one_by_one(read())
    assert sorted(sent(chart)[1:]) == [
        "GET /fhir/Condition",
        "GET /fhir/Observation",
        f"GET /fhir/Patient/{PID}",
    ]
    assert "no entry was answered" in caplog.text
    chart.get(f"{BASE}/metadata", json=STATEMENT)
    assert capability.batch_offered(FhirClient(BASE, token="token")) is False
