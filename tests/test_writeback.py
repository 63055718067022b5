"""Write-back against a mocked FHIR server (``responses``): transaction and sequential modes, refusals,
5xx, timeout after commit, partly stored transactions and answers without ``Location`` settled by reading
back, retries that complete what is missing without duplicates, versions as the server gives them, and
the refusal to send invalid drafts."""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
import responses
from writeback_fixtures import AUTHOR, RECORDED, hand_assessment

from smart_app.drafts.build import build_transaction
from smart_app.drafts.profiles import check_bundle
from smart_app.fhir.client import FhirClient
from smart_app.writeback import InvalidDraft, validate_drafts, write_drafts

BASE = "https://ehr.example/fhir"
OUTCOME_500 = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "exception", "diagnostics": "storage node lost mid-transaction"}],
}
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
    """Conditional creates keyed by the ``ifNoneExist`` query, searchable by it; ids ``<type>-<n>``,
    version 1 (or an opaque UUID with ``opaque_versions``). Faults: ``fail_type`` refuses creates of a
    type; ``commit_then_timeout`` stores a transaction and loses the answer; ``partial`` stores that
    many entries of a transaction, then answers 500; ``no_location`` answers without ``Location``, ETag
    or body (transaction entries with a bare status); ``bare_locations`` names transaction entries by a
    ``Location`` without ``_history`` and no ``etag``."""

    def __init__(self) -> None:
        self.store: dict[str, tuple[str, str, dict[str, Any]]] = {}
        self.count = 0
        self.fail_type: str | None = None
        self.commit_then_timeout = False
        self.partial: int | None = None
        self.no_location = False
        self.bare_locations = False
        self.opaque_versions = False

    def _create(self, resource: dict[str, Any], query: str) -> tuple[str, str, dict[str, Any]]:
        rtype = resource["resourceType"]
        if query in self.store:
            found = self.store[query]
            return "200 OK", f"{rtype}/{found[1]}/_history/{found[2]['meta']['versionId']}", found[2]
        self.count += 1
        rid = f"{rtype.lower()}-{self.count}"
        version = str(uuid.uuid4()) if self.opaque_versions else "1"
        stored = {**resource, "id": rid, "meta": {**resource.get("meta", {}), "versionId": version}}
        self.store[query] = (rtype, rid, stored)
        return "201 Created", f"{rtype}/{rid}/_history/{version}", stored

    def search(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        parts = urlsplit(str(request.url))
        rtype = parts.path.rsplit("/", 1)[-1]
        query = "&".join(f"{k}={v}" for k, v in parse_qsl(parts.query))
        found = [v[2] for k, v in self.store.items() if k == query and v[0] == rtype]
        body = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in found]}
        return 200, {"Content-Type": "application/fhir+json"}, json.dumps(body)

    def read(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        rtype, rid = urlsplit(str(request.url)).path.rsplit("/", 2)[-2:]
        found = [v[2] for v in self.store.values() if v[0] == rtype and v[1] == rid]
        if not found:
            return 404, {}, ""
        return 200, {"Content-Type": "application/fhir+json"}, json.dumps(found[0])

    def transaction(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        assert request.headers["Authorization"] == "Bearer t0ken"
        bundle = json.loads(request.body or b"{}")
        ids: dict[str, str] = {}
        answers = []
        for entry in bundle["entry"][: self.partial]:
            body = json.loads(json.dumps(entry["resource"]))
            status, location, stored = self._create(body, entry["request"]["ifNoneExist"])
            ids[entry["fullUrl"]] = location.rsplit("/_history/", 1)[0]
            etag = f'W/"{stored["meta"]["versionId"]}"'
            if self.no_location:
                answers.append({"response": {"status": status}})
            elif self.bare_locations:
                answers.append({"response": {"status": status, "location": location.split("/_history/")[0]}})
            else:
                answers.append({"response": {"status": status, "location": location, "etag": etag}})
        if self.commit_then_timeout:
            self.commit_then_timeout = False
            raise requests.exceptions.ReadTimeout("read timed out")
        if self.partial is not None:
            self.partial = None
            return 500, {"Content-Type": "application/fhir+json"}, json.dumps(OUTCOME_500)
        response = {"resourceType": "Bundle", "type": "transaction-response", "entry": answers}
        return 200, {"Content-Type": "application/fhir+json"}, json.dumps(response)

    def create(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        resource = json.loads(request.body or b"{}")
        if resource["resourceType"] == self.fail_type:
            return 422, {"Content-Type": "application/fhir+json"}, json.dumps(OUTCOME_400)
        dangling = re.findall(r'"reference": ?"(urn:uuid:[^"]+)"', json.dumps(resource))
        assert not dangling, dangling
        status, location, stored = self._create(resource, request.headers["If-None-Exist"])
        if self.no_location:
            return int(status[:3]), {}, ""
        etag = f'W/"{stored["meta"]["versionId"]}"'
        headers = {"Content-Type": "application/fhir+json", "Location": f"{BASE}/{location}", "ETag": etag}
        return int(status[:3]), headers, json.dumps(stored)

    def install(self, mocked: responses.RequestsMock) -> None:
        mocked.add_callback(responses.POST, BASE, callback=self.transaction)
        mocked.add_callback(
            responses.POST, re.compile(re.escape(BASE) + r"/[A-Za-z]+$"), callback=self.create
        )
        mocked.add_callback(
            responses.GET, re.compile(re.escape(BASE) + r"/[A-Za-z]+\?.*$"), callback=self.search
        )
        mocked.add_callback(
            responses.GET, re.compile(re.escape(BASE) + r"/[A-Za-z]+/[^/?]+$"), callback=self.read
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
def test_transaction_server_error_is_read_back(server: Callable[[], FakeServer]) -> None:
    fake = server()
    fake.partial = 0  # nothing stored, then 500
    outcome = write_drafts(client(), bundle_for(), "transaction")
    assert not outcome.ok and outcome.status == 500 and outcome.errors
    posts = [c for c in responses.calls if c.request.method == "POST"]
    assert len(posts) == 1  # a transaction is never retried
    assert outcome.read_back and outcome.written == [] and fake.count == 0
    assert outcome.missing == ["Device", "ClinicalImpression", "ServiceRequest", "Provenance"]
    assert outcome.result == "refused"
    assert outcome.summary() == "None of the 3 drafts is in the chart; the app's Device record is not."


@responses.activate
def test_partly_stored_transaction_says_what_the_chart_holds_and_a_retry_completes_it(
    server: Callable[[], FakeServer],
) -> None:
    fake = server()
    fake.partial = 3  # Device, ClinicalImpression, ServiceRequest stored; then 500
    outcome = write_drafts(client(), bundle_for(), "transaction")
    assert not outcome.ok and outcome.status == 500
    assert outcome.errors == ["storage node lost mid-transaction"]
    assert [w.reference for w in outcome.written] == [
        "Device/device-1",
        "ClinicalImpression/clinicalimpression-2",
        "ServiceRequest/servicerequest-3",
    ]
    assert all(w.created is None and w.version == "1" for w in outcome.written)
    assert outcome.missing == ["Provenance"] and outcome.unknown == []
    assert outcome.result == "partly-written"
    assert outcome.summary() == "2 of 3 drafts are in the chart; the Provenance is not."
    retry = write_drafts(client(), bundle_for(), "transaction")
    assert retry.ok and retry.result == "written" and retry.created == 1 and fake.count == 4
    assert [w.created for w in retry.written] == [False, False, False, True]


@responses.activate
def test_timeout_after_commit_is_read_back_then_retry_creates_nothing_new(
    server: Callable[[], FakeServer],
) -> None:
    fake = server()
    fake.commit_then_timeout = True
    lost = write_drafts(client(), bundle_for(), "transaction")
    assert fake.count == 4  # the server did commit
    assert lost.ok and lost.status is None and lost.read_back and lost.result == "written"
    assert lost.errors and "read timeout" in lost.errors[0]
    assert any("answer was lost" in n for n in lost.notes)
    assert lost.summary() == "All 3 drafts are in the chart."
    assert len(lost.written) == 4 and all(w.id and w.version == "1" for w in lost.written)
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
    assert outcome.missing == ["DetectedIssue", "DetectedIssue", "Provenance"] and outcome.read_back
    assert outcome.summary() == "1 of 4 drafts is in the chart; 2 DetectedIssues and the Provenance are not."
    assert not any(v[0] == "Provenance" for v in fake.store.values())
    fake.fail_type = None
    retry = write_drafts(client(), bundle_for("red-flag-block"), "sequential")
    assert retry.ok and retry.created == 3 and fake.count == 5


@responses.activate
@pytest.mark.parametrize("mode", ["transaction", "sequential"])
def test_created_without_location_is_found_by_reading_back(
    server: Callable[[], FakeServer], mode: str
) -> None:
    fake = server()
    fake.no_location = True
    fake.opaque_versions = True
    outcome = write_drafts(client(), bundle_for("red-flag-block"), mode)  # type: ignore[arg-type]
    assert outcome.ok and outcome.read_back, outcome.to_json()
    assert len(outcome.written) == 5 and fake.count == 5
    stored = {f"{v[0]}/{v[1]}": v[2]["meta"]["versionId"] for v in fake.store.values()}
    assert {str(w.reference): w.version for w in outcome.written} == stored  # opaque versions, as given
    if mode == "sequential":  # the Provenance names the ids found by reading back
        provenance = next(v[2] for v in fake.store.values() if v[0] == "Provenance")
        assert not any(t["reference"].startswith("urn:") for t in provenance["target"])
    again = write_drafts(client(), bundle_for("red-flag-block"), mode)  # type: ignore[arg-type]
    assert again.ok and fake.count == 5


@responses.activate
def test_versions_come_from_etag_location_or_a_read_never_assumed(server: Callable[[], FakeServer]) -> None:
    fake = server()
    fake.opaque_versions = True
    outcome = write_drafts(client(), bundle_for(), "transaction")
    stored = {f"{v[0]}/{v[1]}": v[2]["meta"]["versionId"] for v in fake.store.values()}
    assert {str(w.reference): w.version for w in outcome.written} == stored
    assert all(w.version != "1" for w in outcome.written)


@responses.activate
def test_transaction_entries_without_version_learn_it_by_reading(server: Callable[[], FakeServer]) -> None:
    fake = server()
    fake.opaque_versions = True
    fake.bare_locations = True  # Location without _history, no etag: as some servers answer
    outcome = write_drafts(client(), bundle_for(), "transaction")
    stored = {f"{v[0]}/{v[1]}": v[2]["meta"]["versionId"] for v in fake.store.values()}
    assert outcome.ok and {str(w.reference): w.version for w in outcome.written} == stored
    reads = [c for c in responses.calls if c.request.method == "GET"]
    assert len(reads) == 4  # one read per resource whose answer named no version


@responses.activate
def test_read_back_that_cannot_reach_the_ehr_says_unknown(server: Callable[[], FakeServer]) -> None:
    fake = server()
    fake.commit_then_timeout = True
    responses.replace(
        responses.GET,
        re.compile(re.escape(BASE) + r"/[A-Za-z]+\?.*$"),
        body=requests.exceptions.ConnectionError("refused"),
    )
    outcome = write_drafts(client(), bundle_for(), "transaction")
    assert not outcome.ok and outcome.result == "unknown" and outcome.written == []
    assert outcome.unknown == ["Device", "ClinicalImpression", "ServiceRequest", "Provenance"]
    reads = [c for c in responses.calls if c.request.method == "GET"]
    assert len(reads) == 1  # the first failure says the EHR is unreachable: no hammering
    assert outcome.summary() == (
        "0 of 3 drafts are in the chart; whether the ClinicalImpression, the ServiceRequest and the "
        "Provenance are could not be checked; whether the app's Device record is could not be checked."
    )


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


def test_draft_that_is_not_valid_r4_is_not_sent() -> None:
    """A malformed dateTime passes the app's profiles (they check no primitive formats) but not the R4
    models: nothing is sent, and the problem names the element."""
    bundle = bundle_for()
    bundle["entry"][1]["resource"]["date"] = "24 November 2026"
    assert check_bundle(bundle) == []
    assert validate_drafts(bundle) == ["Bundle.entry[1].resource.date: invalid datetime format"]
    with pytest.raises(InvalidDraft, match=r"Bundle\.entry\[1\]\.resource\.date"):
        write_drafts(client(), bundle, "transaction")
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
