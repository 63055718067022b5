"""Write-back against a mocked FHIR server (``responses``): transaction and sequential modes, refusals,
5xx, timeout after commit with a retry that finds what exists, and the refusal to send invalid drafts."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
import requests
import responses
from writeback_fixtures import AUTHOR, RECORDED, hand_assessment

from smart_app.drafts.build import build_transaction
from smart_app.fhir.client import FhirClient
from smart_app.writeback import InvalidDraft, validate_drafts, write_drafts

BASE = "https://ehr.example/fhir"
OUTCOME_400 = {
    "resourceType": "OperationOutcome",
    "issue": [
        {"severity": "error", "code": "invalid", "diagnostics": "ServiceRequest.code: unknown CPT code"}
    ],
}


def bundle_for(name: str = "probable", **kwargs: Any) -> dict[str, Any]:
    return build_transaction(
        hand_assessment(name), author=AUTHOR, encounter=None, recorded=RECORDED, **kwargs
    )


def client() -> FhirClient:
    return FhirClient(BASE, token="t0ken", max_retries=0, backoff=0)


class FakeServer:
    """Conditional creates keyed by the ``ifNoneExist`` query; ids ``<type>-<n>``, version 1."""

    def __init__(self) -> None:
        self.store: dict[str, tuple[str, str, dict[str, Any]]] = {}
        self.count = 0
        self.fail_type: str | None = None
        self.commit_then_timeout = False

    def _create(self, resource: dict[str, Any], query: str) -> tuple[str, str, dict[str, Any]]:
        rtype = resource["resourceType"]
        if query in self.store:
            found = self.store[query]
            return "200 OK", f"{rtype}/{found[1]}/_history/1", found[2]
        self.count += 1
        rid = f"{rtype.lower()}-{self.count}"
        stored = {**resource, "id": rid, "meta": {**resource.get("meta", {}), "versionId": "1"}}
        self.store[query] = (rtype, rid, stored)
        return "201 Created", f"{rtype}/{rid}/_history/1", stored

    def transaction(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        assert request.headers["Authorization"] == "Bearer t0ken"
        bundle = json.loads(request.body or b"{}")
        ids: dict[str, str] = {}
        answers = []
        for entry in bundle["entry"]:
            body = json.loads(json.dumps(entry["resource"]))
            status, location, stored = self._create(body, entry["request"]["ifNoneExist"])
            ids[entry["fullUrl"]] = location.rsplit("/_history/", 1)[0]
            answers.append({"response": {"status": status, "location": location, "etag": 'W/"1"'}})
        if self.commit_then_timeout:
            self.commit_then_timeout = False
            raise requests.exceptions.ReadTimeout("read timed out")
        response = {"resourceType": "Bundle", "type": "transaction-response", "entry": answers}
        return 200, {"Content-Type": "application/fhir+json"}, json.dumps(response)

    def create(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        resource = json.loads(request.body or b"{}")
        if resource["resourceType"] == self.fail_type:
            return 422, {"Content-Type": "application/fhir+json"}, json.dumps(OUTCOME_400)
        dangling = re.findall(r'"reference": ?"(urn:uuid:[^"]+)"', json.dumps(resource))
        assert not dangling, dangling
        status, location, stored = self._create(resource, request.headers["If-None-Exist"])
        headers = {"Content-Type": "application/fhir+json", "Location": f"{BASE}/{location}", "ETag": 'W/"1"'}
        return int(status[:3]), headers, json.dumps(stored)

    def install(self, mocked: responses.RequestsMock) -> None:
        mocked.add_callback(responses.POST, BASE, callback=self.transaction)
        mocked.add_callback(
            responses.POST, re.compile(re.escape(BASE) + r"/[A-Za-z]+$"), callback=self.create
        )


@pytest.fixture
def server() -> Callable[[], FakeServer]:
    def start() -> FakeServer:
        fake = FakeServer()
        fake.install(responses.mock)
        return fake

    return start


@responses.activate
def test_transaction_success_and_repeat(server: Callable[[], FakeServer]) -> None:
    fake = server()
    bundle = bundle_for()
    first = write_drafts(client(), bundle, "transaction")
    assert first.ok and first.mode == "transaction" and first.errors == []
    assert [(w.resource_type, w.created) for w in first.written] == [
        ("Device", True),
        ("ClinicalImpression", True),
        ("ServiceRequest", True),
        ("Provenance", True),
    ]
    assert first.written[1].id == "clinicalimpression-2" and first.written[1].version == "1"
    assert first.written[1].location == "ClinicalImpression/clinicalimpression-2/_history/1"
    assert first.written[1].full_url == bundle["entry"][1]["fullUrl"]
    sent = json.loads(responses.calls[0].request.body or b"{}")
    assert sent == bundle
    second = write_drafts(client(), bundle_for(), "transaction")
    assert second.ok and second.created == 0
    assert [w.id for w in second.written] == [w.id for w in first.written]
    assert fake.count == 4
    data = second.to_json()
    assert (
        data["existing"] == 4 and data["written"][1]["reference"] == "ClinicalImpression/clinicalimpression-2"
    )
    json.dumps(data)


@responses.activate
def test_transaction_refused_with_operation_outcome() -> None:
    responses.add(responses.POST, BASE, json=OUTCOME_400, status=400, content_type="application/fhir+json")
    outcome = write_drafts(client(), bundle_for(), "transaction")
    assert not outcome.ok
    assert outcome.status == 400
    assert outcome.errors == ["ServiceRequest.code: unknown CPT code"]
    assert outcome.written == []


@responses.activate
def test_transaction_server_error() -> None:
    responses.add(responses.POST, BASE, body="<html>boom</html>", status=500, content_type="text/html")
    outcome = write_drafts(client(), bundle_for(), "transaction")
    assert not outcome.ok and outcome.status == 500 and outcome.errors
    assert len(responses.calls) == 1  # a transaction is never retried


@responses.activate
def test_timeout_after_commit_then_retry_creates_nothing_new(server: Callable[[], FakeServer]) -> None:
    fake = server()
    fake.commit_then_timeout = True
    lost = write_drafts(client(), bundle_for(), "transaction")
    assert not lost.ok and lost.status is None
    assert any("writing again is safe" in n for n in lost.notes)
    assert fake.count == 4  # the server did commit
    retry = write_drafts(client(), bundle_for(), "transaction")
    assert retry.ok and retry.created == 0 and len(retry.written) == 4
    assert fake.count == 4


@responses.activate
def test_malformed_transaction_response() -> None:
    responses.add(
        responses.POST, BASE, json={"resourceType": "Bundle", "type": "transaction-response", "entry": []}
    )
    outcome = write_drafts(client(), bundle_for(), "transaction")
    assert not outcome.ok and "entries sent" in outcome.errors[0]


@responses.activate
def test_sequential_rewrites_references_and_puts_provenance_last(server: Callable[[], FakeServer]) -> None:
    fake = server()
    bundle = bundle_for("red-flag-block")
    outcome = write_drafts(client(), bundle, "sequential")
    assert outcome.ok and outcome.mode == "sequential"
    assert [w.resource_type for w in outcome.written] == [
        "Device",
        "ClinicalImpression",
        "DetectedIssue",
        "DetectedIssue",
        "Provenance",
    ]
    assert all(w.created for w in outcome.written)
    provenance = next(v[2] for v in fake.store.values() if v[0] == "Provenance")
    assert [t["reference"] for t in provenance["target"]] == [
        "ClinicalImpression/clinicalimpression-2",
        "DetectedIssue/detectedissue-3",
        "DetectedIssue/detectedissue-4",
    ]
    assert provenance["agent"][1]["who"] == {"reference": "Device/device-1"}
    issue = next(v[2] for v in fake.store.values() if v[0] == "DetectedIssue")
    assert issue["author"] == {"reference": "Device/device-1"}
    again = write_drafts(client(), bundle_for("red-flag-block"), "sequential")
    assert again.ok and again.created == 0 and fake.count == 5


@responses.activate
def test_sequential_stops_at_first_failure(server: Callable[[], FakeServer]) -> None:
    fake = server()
    fake.fail_type = "DetectedIssue"
    outcome = write_drafts(client(), bundle_for("red-flag-block"), "sequential")
    assert not outcome.ok
    assert [w.resource_type for w in outcome.written] == ["Device", "ClinicalImpression"]
    assert outcome.failed == "DetectedIssue (entry 2)"
    assert outcome.status == 422 and outcome.errors == ["ServiceRequest.code: unknown CPT code"]
    assert [n.split(" ")[0] for n in outcome.not_written] == ["DetectedIssue", "Provenance"]
    assert not any(v[0] == "Provenance" for v in fake.store.values())


@responses.activate
def test_too_many_entries_for_the_server_falls_back_to_sequential(server: Callable[[], FakeServer]) -> None:
    server()
    bundle = bundle_for("all-flags")
    assert len(bundle["entry"]) == 12
    outcome = write_drafts(client(), bundle, "transaction", max_transaction_entries=8)
    assert outcome.ok and outcome.mode == "sequential" and len(outcome.written) == 12
    assert "limit of 8" in outcome.notes[0]
    assert all(c.request.url != BASE for c in responses.calls)
    small = write_drafts(client(), bundle_for(), "transaction", max_transaction_entries=8)
    assert small.mode == "transaction"


@responses.activate
def test_invalid_draft_is_not_sent() -> None:
    bundle = bundle_for()
    bundle["entry"][2]["resource"]["status"] = "active"
    with pytest.raises(InvalidDraft, match="ServiceRequest.status"):
        write_drafts(client(), bundle, "transaction")
    broken = copy.deepcopy(bundle_for())
    del broken["entry"][1]["request"]["ifNoneExist"]
    with pytest.raises(InvalidDraft, match="conditional create"):
        write_drafts(client(), broken, "sequential")
    assert len(responses.calls) == 0


def test_validate_drafts_structure() -> None:
    assert validate_drafts({"resourceType": "Bundle", "type": "batch"}) == ["not a transaction Bundle"]
    assert validate_drafts({"resourceType": "Bundle", "type": "transaction", "entry": []}) == [
        "the Bundle has no entries"
    ]
    assert validate_drafts({"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {}}]})[
        0
    ] == ("Bundle.entry[0]: no resource")
    assert validate_drafts(bundle_for()) == []
