"""fetch_patient_record: parallel reads, scope skipping, partial failure (responses; no network)."""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
from responses import matchers

from smart_app.fhir import FhirClient, FhirUnauthorized, fetch_patient_record
from smart_app.fhir.record import SCOPE_NOT_GRANTED, SEARCH_TYPES

BASE = "http://127.0.0.1:8001/fhir"
TOKEN = "access-token-not-for-logs"
PID = "p1"
ALL_TYPES = ("Patient", *SEARCH_TYPES)


def res(resource_type: str, rid: str, patient: str = PID) -> dict[str, Any]:
    return {"resourceType": resource_type, "id": rid, "subject": {"reference": f"Patient/{patient}"}}


def searchset(resources: list[dict[str, Any]], next_url: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }
    if next_url:
        out["link"] = [{"relation": "next", "url": next_url}]
    return out


def outcome(text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "forbidden", "diagnostics": text}],
    }


@pytest.fixture
def client() -> FhirClient:
    return FhirClient(BASE, token=TOKEN, sleep=lambda seconds: None)


def everything(rsps: responses.RequestsMock) -> None:
    rsps.get(f"{BASE}/Patient/{PID}", json={"resourceType": "Patient", "id": PID})
    rsps.get(f"{BASE}/Observation", json=searchset([res("Observation", "o1"), res("Observation", "o2")]))
    rsps.get(f"{BASE}/Condition", json=searchset([res("Condition", "c1")]))
    rsps.get(f"{BASE}/Procedure", json=searchset([]))
    rsps.get(f"{BASE}/MedicationStatement", json=searchset([res("MedicationStatement", "ms1")]))
    rsps.get(f"{BASE}/MedicationRequest", json=searchset([res("MedicationRequest", "mr1")]))


def test_reads_patient_and_every_granted_type(rsps, client):
    everything(rsps)
    result = fetch_patient_record(client, PID, lambda resource_type: True)
    assert result.patient == {"resourceType": "Patient", "id": PID}
    assert [f"{r['resourceType']}/{r['id']}" for r in result.resources] == [
        "Observation/o1",
        "Observation/o2",
        "Condition/c1",
        "MedicationStatement/ms1",
        "MedicationRequest/mr1",
    ]
    assert result.counts == {
        "Observation": 2,
        "Condition": 1,
        "MedicationStatement": 1,
        "MedicationRequest": 1,
    }
    assert result.failures == [] and result.skipped == []
    assert result.round_trips == 6
    for call in rsps.calls:
        query = parse_qs(urlsplit(call.request.url).query)
        assert call.request.headers["Authorization"] == f"Bearer {TOKEN}"
        if "/Patient/" not in call.request.url:
            assert query == {"patient": [PID], "_count": ["1000"]}  # no category filter


def test_page_size_argument_and_paging_within_a_type(rsps, client):
    everything(rsps)
    rsps.replace(
        responses.GET,
        f"{BASE}/Observation",
        json=searchset([res("Observation", "o1")], f"{BASE}/Observation?page=2"),
        match=[matchers.query_param_matcher({"patient": PID, "_count": "50"})],
    )
    rsps.get(
        f"{BASE}/Observation",
        json=searchset([res("Observation", "o2"), res("Observation", "o1")]),
        match=[matchers.query_param_matcher({"page": "2"})],
    )
    result = fetch_patient_record(client, PID, lambda resource_type: True, page_size=50)
    assert result.counts["Observation"] == 2  # o1 seen twice across pages, kept once
    assert any("kept once" in note for note in result.notes)
    assert result.round_trips == 7


def test_types_without_scope_are_skipped_and_not_requested(rsps, client):
    everything(rsps)
    granted = {"Patient", "Observation", "Condition"}
    result = fetch_patient_record(client, PID, granted.__contains__)
    assert result.skipped == [
        ("Procedure", SCOPE_NOT_GRANTED),
        ("MedicationStatement", SCOPE_NOT_GRANTED),
        ("MedicationRequest", SCOPE_NOT_GRANTED),
    ]
    requested = {urlsplit(c.request.url).path.split("/")[2] for c in rsps.calls}
    assert requested == {"Patient", "Observation", "Condition"}
    assert result.round_trips == 3


def test_patient_without_scope_is_skipped_too(rsps, client):
    everything(rsps)
    result = fetch_patient_record(client, PID, lambda resource_type: resource_type != "Patient")
    assert result.patient is None
    assert ("Patient", SCOPE_NOT_GRANTED) in result.skipped
    assert result.failures == []


def test_one_failing_search_does_not_lose_the_others(rsps, client):
    everything(rsps)
    rsps.replace(responses.GET, f"{BASE}/Condition", status=403, json=outcome("Condition not permitted"))
    rsps.replace(responses.GET, f"{BASE}/Procedure", status=500)
    rsps.replace(responses.GET, f"{BASE}/MedicationStatement", body=requests.exceptions.ReadTimeout())
    rsps.replace(responses.GET, f"{BASE}/MedicationRequest", body="not json", content_type="text/plain")
    result = fetch_patient_record(client, PID, lambda resource_type: True)
    assert result.patient is not None
    assert result.counts == {"Observation": 2}
    failures = {f.resource_type: f for f in result.failures}
    assert set(failures) == {"Condition", "Procedure", "MedicationStatement", "MedicationRequest"}
    assert failures["Condition"].status == 403 and "Condition not permitted" in failures["Condition"].message
    assert failures["Procedure"].status == 500
    assert failures["MedicationStatement"].status is None
    assert failures["MedicationRequest"].status == 200  # answered, but not a Bundle
    assert all(TOKEN not in f.message for f in result.failures)


def test_foreign_next_link_is_a_failure_of_that_search_only(rsps, client):
    everything(rsps)
    rsps.replace(
        responses.GET,
        f"{BASE}/Observation",
        json=searchset([res("Observation", "o1")], "https://elsewhere.example/fhir/Observation?p=2"),
    )
    result = fetch_patient_record(client, PID, lambda resource_type: True)
    assert [f.resource_type for f in result.failures] == ["Observation"]
    assert "Observation" not in result.counts  # a partial type is not passed off as complete
    assert result.counts["Condition"] == 1
    assert not any("elsewhere" in c.request.url for c in rsps.calls)


def test_patient_not_found_is_a_failure_and_the_rest_is_returned(rsps, client):
    everything(rsps)
    rsps.replace(responses.GET, f"{BASE}/Patient/{PID}", status=404, json=outcome("Patient/p1 is unknown"))
    result = fetch_patient_record(client, PID, lambda resource_type: True)
    assert result.patient is None
    assert [(f.resource_type, f.status) for f in result.failures] == [("Patient", 404)]
    assert result.counts["Observation"] == 2


def test_401_on_everything_raises_unauthorized(rsps, client):
    for resource_type in SEARCH_TYPES:
        rsps.get(f"{BASE}/{resource_type}", status=401, json=outcome("token expired"))
    rsps.get(f"{BASE}/Patient/{PID}", status=401)
    with pytest.raises(FhirUnauthorized):
        fetch_patient_record(client, PID, lambda resource_type: True)


def test_401_on_some_is_reported_not_raised(rsps, client):
    everything(rsps)
    rsps.replace(responses.GET, f"{BASE}/Condition", status=401)
    result = fetch_patient_record(client, PID, lambda resource_type: True)
    assert [(f.resource_type, f.status) for f in result.failures] == [("Condition", 401)]


def test_resources_for_another_patient_are_still_returned(rsps, client):
    everything(rsps)
    rsps.replace(
        responses.GET, f"{BASE}/Condition", json=searchset([res("Condition", "c9", patient="other")])
    )
    result = fetch_patient_record(client, PID, lambda resource_type: True)
    assert any(r["id"] == "c9" for r in result.resources)


def test_requests_run_in_parallel(rsps, client):
    barrier = threading.Barrier(4, timeout=5)
    lock = threading.Lock()
    arrivals: list[str] = []

    def handler(request: Any) -> tuple[int, dict[str, str], bytes]:
        path = urlsplit(request.url).path
        if path.endswith(f"/Patient/{PID}"):
            body = b'{"resourceType": "Patient", "id": "p1"}'
        else:
            body = b'{"resourceType": "Bundle", "type": "searchset"}'
        with lock:
            arrivals.append(path)
            first_four = len(arrivals) <= 4
        if first_four:  # the first four only return once all four are in flight together
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                pass
        return 200, {"Content-Type": "application/fhir+json"}, body

    for resource_type in ALL_TYPES:
        url = f"{BASE}/Patient/{PID}" if resource_type == "Patient" else f"{BASE}/{resource_type}"
        rsps.add_callback(responses.GET, url, callback=handler)
    result = fetch_patient_record(client, PID, lambda resource_type: True)
    assert result.failures == []
    assert not barrier.broken  # four requests were in flight at the same time
    assert len(arrivals) == 6


# -- asking for some types, and setting resources aside ----------------------------------------------------
def test_only_the_types_asked_for_are_searched_and_the_patient_read_can_be_left_out(rsps, client):
    everything(rsps)
    result = fetch_patient_record(
        client,
        PID,
        lambda resource_type: resource_type != "MedicationRequest",
        types=("Procedure", "MedicationRequest"),
        read_patient=False,
    )
    requested = [urlsplit(c.request.url).path.split("/")[2] for c in rsps.calls]
    assert requested == ["Procedure"]
    assert result.patient is None and result.failures == []
    assert result.skipped == [("MedicationRequest", SCOPE_NOT_GRANTED)]


def test_what_keep_refuses_is_counted_not_kept(rsps, client):
    everything(rsps)
    offered: list[str] = []

    def keep(resource: dict[str, Any]) -> bool:
        offered.append(resource["id"])
        return resource["id"] != "o1"

    result = fetch_patient_record(client, PID, lambda resource_type: True, keep=keep)
    assert sorted(offered) == ["c1", "mr1", "ms1", "o1", "o2"]
    assert [r["id"] for r in result.resources] == ["o2", "c1", "ms1", "mr1"]
    assert result.counts["Observation"] == 2 and result.unmatched == 1


def test_a_resource_set_aside_still_wins_over_a_later_copy(rsps, client):
    """Duplicates keep the first copy, whether or not ``keep`` set it aside: a later copy of a resource
    that was set aside is dropped as before, so setting aside never changes which copy counts."""
    everything(rsps)
    later = {**res("Observation", "o1"), "code": {"text": "changed between pages"}}
    rsps.replace(
        responses.GET,
        f"{BASE}/Observation",
        json=searchset([res("Observation", "o1")], f"{BASE}/Observation?page=2"),
        match=[matchers.query_param_matcher({"patient": PID, "_count": "1000"})],
    )
    rsps.get(
        f"{BASE}/Observation", json=searchset([later]), match=[matchers.query_param_matcher({"page": "2"})]
    )
    result = fetch_patient_record(
        client, PID, lambda resource_type: True, keep=lambda r: "code" in r, types=("Observation",)
    )
    assert result.resources == [] and result.unmatched == 1
    assert result.counts == {"Observation": 1}
    assert any("kept once" in note for note in result.notes)


def test_a_read_then_more_types(rsps, client):
    everything(rsps)
    first = fetch_patient_record(client, PID, lambda t: t != "Procedure", types=("Observation", "Condition"))
    first.not_needed = ["MedicationStatement", "MedicationRequest"]
    first.skipped.append(("Procedure", SCOPE_NOT_GRANTED))
    more = fetch_patient_record(
        client, PID, lambda t: True, types=("MedicationStatement", "MedicationRequest"), read_patient=False
    )
    both = first.then(more, covered=["MedicationStatement", "MedicationRequest"])
    assert both.patient == first.patient
    assert [r["id"] for r in both.resources] == ["o1", "o2", "c1", "ms1", "mr1"]
    assert both.counts == {"Observation": 2, "Condition": 1, "MedicationStatement": 1, "MedicationRequest": 1}
    assert both.skipped == [("Procedure", SCOPE_NOT_GRANTED)] and both.not_needed == []
    assert both.round_trips == first.round_trips + more.round_trips == 5
