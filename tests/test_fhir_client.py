"""Contract tests for smart_app.fhir.client against a mocked FHIR server (responses; no network)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import orjson
import pytest
import requests
from responses import matchers

from smart_app import fhirjson as fj
from smart_app.fhir import (
    FhirClient,
    FhirClientError,
    FhirConnectionError,
    FhirForbidden,
    FhirMalformedResponse,
    FhirNotFound,
    FhirRateLimited,
    FhirServerError,
    FhirTimeout,
    FhirUnauthorized,
    ForeignLinkError,
)
from smart_app.fhir.client import _retry_after_seconds

BASE = "https://ehr.example/fhir"
TOKEN = "tok-7f3a9c1e-SECRET"
PATIENT_ID = "pat-123"


def bundle(resources: list[dict[str, Any]], next_url: str | None = None) -> dict[str, Any]:
    links = [{"relation": "self", "url": f"{BASE}/Observation"}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [
            {"fullUrl": f"{BASE}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}}
            for r in resources
        ],
    }


def obs(i: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"o{i}",
        "status": "final",
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
    }


def outcome(diagnostics: str | None = None, text: str | None = None) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": "error", "code": "processing"}
    if diagnostics:
        issue["diagnostics"] = diagnostics
    if text:
        issue["details"] = {"text": text}
    return {"resourceType": "OperationOutcome", "issue": [issue]}


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client(sleeps: Sleeps) -> FhirClient:
    return FhirClient(BASE, token=TOKEN, sleep=sleeps)


def auth_of(call: Any) -> str | None:
    value = call.request.headers.get("Authorization")
    return str(value) if value is not None else None


# -- read, headers, token ---------------------------------------------------------------------------


def test_read_sends_fhir_json_accept_gzip_and_bearer(rsps, client):
    rsps.get(f"{BASE}/Patient/{PATIENT_ID}", json={"resourceType": "Patient", "id": PATIENT_ID})
    patient = client.read("Patient", PATIENT_ID)
    assert patient["id"] == PATIENT_ID
    request = rsps.calls[0].request
    assert request.headers["Accept"] == "application/fhir+json"
    assert "gzip" in request.headers["Accept-Encoding"]
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert client.round_trips == 1


@pytest.mark.parametrize("bad_id", ["../../admin", "a/b", "", "x" * 65, "id?x=1"])
def test_read_refuses_an_invalid_id_without_sending(rsps, client, bad_id):
    with pytest.raises(ValueError):
        client.read("Patient", bad_id)
    assert len(rsps.calls) == 0
    assert client.round_trips == 0


def test_read_of_the_wrong_resource_type_is_malformed(rsps, client):
    rsps.get(f"{BASE}/Patient/{PATIENT_ID}", json={"resourceType": "Practitioner", "id": PATIENT_ID})
    with pytest.raises(FhirMalformedResponse):
        client.read("Patient", PATIENT_ID)


def test_token_callable_is_called_for_every_request(rsps, sleeps):
    issued = iter(["tok-one", "tok-two", "tok-three"])
    calls: list[str] = []

    def token() -> str:
        calls.append("x")
        return next(issued)

    client = FhirClient(BASE, token=token, sleep=sleeps)
    rsps.get(f"{BASE}/Patient/p1", json={"resourceType": "Patient", "id": "p1"})
    rsps.get(f"{BASE}/Patient/p2", status=503)
    rsps.get(f"{BASE}/Patient/p2", json={"resourceType": "Patient", "id": "p2"})
    client.read("Patient", "p1")
    client.read("Patient", "p2")  # one retry: the refreshed token is used on the retry too
    assert len(calls) == 3
    assert [auth_of(c) for c in rsps.calls] == ["Bearer tok-one", "Bearer tok-two", "Bearer tok-three"]


def test_no_token_sends_no_authorization(rsps):
    client = FhirClient(BASE, token=None)
    rsps.get(f"{BASE}/metadata", json={"resourceType": "CapabilityStatement", "status": "active"})
    assert client.capabilities()["resourceType"] == "CapabilityStatement"
    assert "Authorization" not in rsps.calls[0].request.headers


def test_proxy_settings_hold_and_a_netrc_entry_never_replaces_the_bearer(rsps, monkeypatch, tmp_path):
    """The environment is read once per client: a proxy for the base is used, NO_PROXY bypasses it, and
    a .netrc entry for the EHR's host (Basic credentials) does not replace the bearer token."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine ehr.example login someone password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    proxied = FhirClient(BASE, token=TOKEN)
    assert proxied.session.proxies["https"] == "http://proxy.example:3128"
    monkeypatch.setenv("NO_PROXY", "ehr.example")
    direct = FhirClient(BASE, token=TOKEN)
    assert "https" not in direct.session.proxies
    rsps.get(f"{BASE}/Patient/p1", json={"resourceType": "Patient", "id": "p1"})
    direct.read("Patient", "p1")
    assert auth_of(rsps.calls[0]) == f"Bearer {TOKEN}"


def test_capabilities_must_be_a_capability_statement(rsps, client):
    rsps.get(f"{BASE}/metadata", json={"resourceType": "Bundle"})
    with pytest.raises(FhirMalformedResponse):
        client.capabilities()


@pytest.mark.parametrize(
    "base",
    ["ftp://ehr.example/fhir", "/fhir", "https://ehr.example/fhir?x=1", "https://user:pw@ehr.example/fhir"],
)
def test_base_url_must_be_a_plain_absolute_http_url(base):
    with pytest.raises(ValueError):
        FhirClient(base, token=TOKEN)


def test_timeout_from_config_list_is_passed_to_requests(rsps):
    client = FhirClient(BASE, token=TOKEN, timeout=[1.5, 7.0])
    rsps.get(f"{BASE}/Patient/p1", json={"resourceType": "Patient", "id": "p1"})
    client.read("Patient", "p1")
    assert client.timeout == (1.5, 7.0)
    assert rsps.calls[0].request.req_kwargs["timeout"] == (1.5, 7.0)


# -- paging -----------------------------------------------------------------------------------------


def test_search_follows_next_links_across_three_pages(rsps, client):
    page2 = f"{BASE}?_getpages=abc&_offset=2"
    page3 = "Observation?patient=pat-123&_count=2&page=3"  # relative: resolved against the base
    rsps.get(
        f"{BASE}/Observation",
        json=bundle([obs(1), obs(2)], page2),
        match=[matchers.query_param_matcher({"patient": PATIENT_ID, "_count": "2"})],
    )
    rsps.get(
        f"{BASE}",
        json=bundle([obs(3), obs(4)], page3),
        match=[matchers.query_param_matcher({"_getpages": "abc", "_offset": "2"})],
    )
    rsps.get(
        f"{BASE}/Observation",
        json=bundle([obs(5)]),
        match=[matchers.query_param_matcher({"patient": PATIENT_ID, "_count": "2", "page": "3"})],
    )
    found = client.search_all("Observation", {"patient": PATIENT_ID, "_count": 2})
    assert [r["id"] for r in found] == ["o1", "o2", "o3", "o4", "o5"]
    assert client.round_trips == 3
    assert all(auth_of(c) == f"Bearer {TOKEN}" for c in rsps.calls)


def test_search_yields_page_by_page(rsps, client):
    rsps.get(f"{BASE}/Observation", json=bundle([obs(1)], f"{BASE}/Observation?page=2"))
    rsps.get(
        f"{BASE}/Observation", json=bundle([obs(2)]), match=[matchers.query_param_matcher({"page": "2"})]
    )
    iterator = client.search("Observation", {"patient": PATIENT_ID})
    assert next(iterator)["id"] == "o1"
    assert client.round_trips == 1
    assert [r["id"] for r in iterator] == ["o2"]
    assert client.round_trips == 2


@pytest.mark.parametrize(
    "foreign",
    [
        "https://evil.example/fhir/Observation?page=2",
        "http://ehr.example/fhir/Observation?page=2",  # scheme downgrade
        "https://ehr.example:8443/fhir/Observation?page=2",  # other port
        "https://ehr.example/other/Observation?page=2",  # outside the path prefix
        "https://ehr.example/fhirx/Observation?page=2",  # prefix look-alike
        "https://ehr.example/fhir/../admin/Observation",  # climbs out
        "https://ehr.example/fhir/%2e%2e/admin",  # encoded climb
        "https://attacker@ehr.example/fhir/Observation?page=2",  # user info
        "//evil.example/fhir/Observation",  # scheme-relative
    ],
)
def test_next_link_outside_the_base_is_refused_and_nothing_is_sent(rsps, client, foreign):
    rsps.get(f"{BASE}/Observation", json=bundle([obs(1)], foreign))
    found: list[str] = []
    with pytest.raises(ForeignLinkError):
        for resource in client.search("Observation", {"patient": PATIENT_ID}):
            found.append(resource["id"])
    assert found == ["o1"]
    assert len(rsps.calls) == 1
    assert rsps.calls[0].request.url.startswith(f"{BASE}/Observation")
    assert client.round_trips == 1


def test_base_with_default_port_spelled_out_is_the_same_base(rsps, client):
    rsps.get(f"{BASE}/Observation", json=bundle([obs(1)], "https://EHR.example:443/fhir/Observation?page=2"))
    rsps.get(
        f"{BASE}/Observation", json=bundle([obs(2)]), match=[matchers.query_param_matcher({"page": "2"})]
    )
    assert [r["id"] for r in client.search("Observation")] == ["o1", "o2"]


def test_repeated_next_link_stops_instead_of_looping(rsps, client):
    loop = f"{BASE}/Observation?page=2"
    rsps.get(f"{BASE}/Observation", json=bundle([obs(1)], loop))
    notes: list[str] = []
    found = client.search_all("Observation", notes=notes)
    assert len(found) == 2  # first page, then the looping page once
    assert client.round_trips == 2
    assert any("repeated" in note for note in notes)


def test_redirect_under_the_base_is_followed_but_foreign_redirect_is_refused(rsps, client):
    rsps.get(f"{BASE}/Patient/p1", status=302, headers={"Location": f"{BASE}/Patient/p1b"})
    rsps.get(f"{BASE}/Patient/p1b", json={"resourceType": "Patient", "id": "p1b"})
    assert client.read("Patient", "p1")["id"] == "p1b"
    rsps.get(f"{BASE}/Patient/p2", status=307, headers={"Location": "https://evil.example/fhir/Patient/p2"})
    with pytest.raises(ForeignLinkError):
        client.read("Patient", "p2")
    assert not any("evil" in c.request.url for c in rsps.calls)


# -- malformed bodies ----------------------------------------------------------------------------------


def test_non_json_body_is_malformed(rsps, client):
    rsps.get(f"{BASE}/Observation", body="<html>gateway login</html>", content_type="text/html")
    with pytest.raises(FhirMalformedResponse) as info:
        client.search_all("Observation", {"patient": PATIENT_ID})
    assert info.value.status == 200
    assert "not JSON" in info.value.message


@pytest.mark.parametrize(
    "body",
    [
        {"resourceType": "OperationOutcome", "issue": []},
        [1, 2, 3],
        "a string",
        {"resourceType": "Bundle", "type": "searchset", "entry": {"not": "a list"}},
    ],
)
def test_json_that_is_not_a_search_bundle_is_malformed(rsps, client, body):
    rsps.get(f"{BASE}/Condition", body=orjson.dumps(body), content_type="application/fhir+json")
    with pytest.raises(FhirMalformedResponse):
        client.search_all("Condition", {"patient": PATIENT_ID})


def test_entries_without_a_resource_and_outcome_entries_are_skipped_with_a_note(rsps, client):
    body = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": obs(1)},
            {"fullUrl": f"{BASE}/Observation/o2"},
            "junk",
            {"resource": {"id": "no-type"}},
            {"resource": outcome("too many results"), "search": {"mode": "outcome"}},
            {"resource": obs(3)},
        ],
    }
    rsps.get(f"{BASE}/Observation", json=body)
    notes: list[str] = []
    found = client.search_all("Observation", {"patient": PATIENT_ID}, notes=notes)
    assert [r["id"] for r in found] == ["o1", "o3"]
    assert any("3 entries without a resource" in note for note in notes)
    assert any("server messages" in note for note in notes)


def test_each_entry_is_handed_to_take_as_it_is_decoded_and_only_what_take_returns_is_kept(rsps, client):
    """``search_each`` decodes a page one entry at a time (the page is never held as Python objects)."""
    rsps.get(f"{BASE}/Observation", json=bundle([obs(1), obs(2)], f"{BASE}/Observation?page=2"))
    rsps.get(
        f"{BASE}/Observation", json=bundle([obs(3)]), match=[matchers.query_param_matcher({"page": "2"})]
    )
    seen: list[str] = []

    def take(resource: dict[str, Any]) -> str:
        seen.append(resource["id"])
        return resource["id"].upper()

    assert list(client.search_each("Observation", {"patient": PATIENT_ID}, take)) == ["O1", "O2", "O3"]
    assert seen == ["o1", "o2", "o3"]


def test_a_page_the_entry_splitter_cannot_vouch_for_is_decoded_whole_once(rsps, client, monkeypatch):
    """Many false entry boundaries inside one resource (components whose first key is ``id``): the
    splitter gives up mid-page, what it gave is dropped and the page is read again whole, so every
    resource is taken once and the notes are not doubled."""
    components = [{"id": f"c{i}", "code": {"text": "x"}, "valueString": "y"} for i in range(100)]
    tricky = {**obs(2), "component": components}
    body = bundle([obs(1), tricky, obs(3)])
    body["entry"].append({"fullUrl": f"{BASE}/Observation/o4"})  # no resource: a note
    rsps.get(f"{BASE}/Observation", json=body)
    decodes: list[int] = []
    whole = fj.decode_json

    def counting(data: Any, **kwargs: Any) -> Any:
        decodes.append(len(data))
        return whole(data, **kwargs)

    monkeypatch.setattr(fj, "decode_json", counting)
    notes: list[str] = []
    found = list(client.search_each("Observation", {"patient": PATIENT_ID}, lambda r: r["id"], notes=notes))
    assert found == ["o1", "o2", "o3"]
    assert len(decodes) == 1  # the page, whole, once
    assert notes == ["Observation search: 1 entry without a resource skipped"]


ONE_OBSERVATION = b'{"resourceType": "Observation", "id": "o1"}'


@pytest.mark.parametrize(
    "body",
    [
        b'{"resourceType": "Bundle", "entry": [{"resource": ' + ONE_OBSERVATION + b"}], ",
        b'{"resourceType": "Patient", "entry": [{"resource": ' + ONE_OBSERVATION + b"}]}",
    ],
    ids=["cut-after-the-entries", "not-a-bundle"],
)
def test_a_page_found_malformed_after_its_entries_yields_nothing(rsps, client, body):
    rsps.get(f"{BASE}/Observation", body=body, content_type="application/fhir+json")
    taken: list[str] = []
    with pytest.raises(FhirMalformedResponse):
        for resource in client.search_each("Observation", {"patient": PATIENT_ID}, lambda r: r):
            taken.append(resource["id"])
    assert taken == []


def test_empty_bundle_without_entry_is_fine(rsps, client):
    rsps.get(f"{BASE}/Procedure", json={"resourceType": "Bundle", "type": "searchset", "total": 0})
    assert client.search_all("Procedure", {"patient": PATIENT_ID}) == []


# -- status → error class, OperationOutcome -------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (401, FhirUnauthorized),
        (403, FhirForbidden),
        (404, FhirNotFound),
        (410, FhirNotFound),
        (400, FhirClientError),
        (422, FhirClientError),
        (500, FhirServerError),
        (501, FhirServerError),
    ],
)
def test_status_maps_to_error_class_with_operation_outcome(rsps, client, status, error_class):
    rsps.get(f"{BASE}/Patient/{PATIENT_ID}", status=status, json=outcome(f"diagnostic for {status}"))
    with pytest.raises(error_class) as info:
        client.read("Patient", PATIENT_ID)
    error = info.value
    assert error.status == status
    assert error.outcome is not None and error.outcome["resourceType"] == "OperationOutcome"
    assert error.issues() == [f"diagnostic for {status}"]
    assert f"diagnostic for {status}" in error.message
    assert len(rsps.calls) == 1  # none of these is retried


def test_issues_fall_back_to_details_text_and_tolerate_non_outcome_bodies(rsps, client):
    rsps.get(f"{BASE}/Patient/a", status=403, json=outcome(text="Scope patient/Patient.rs not granted"))
    rsps.get(f"{BASE}/Patient/b", status=403, body="Forbidden", content_type="text/plain")
    with pytest.raises(FhirForbidden) as first:
        client.read("Patient", "a")
    assert first.value.issues() == ["Scope patient/Patient.rs not granted"]
    with pytest.raises(FhirForbidden) as second:
        client.read("Patient", "b")
    assert second.value.outcome is None
    assert second.value.issues() == []


# -- retries --------------------------------------------------------------------------------------------


def test_429_honours_retry_after_seconds_then_succeeds(rsps, client, sleeps):
    rsps.get(f"{BASE}/Patient/p1", status=429, headers={"Retry-After": "2"})
    rsps.get(f"{BASE}/Patient/p1", json={"resourceType": "Patient", "id": "p1"})
    assert client.read("Patient", "p1")["id"] == "p1"
    assert sleeps == [2.0]
    assert client.round_trips == 2


def test_429_honours_retry_after_http_date(rsps, client, sleeps):
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=5), usegmt=True)
    rsps.get(f"{BASE}/Patient/p1", status=429, headers={"Retry-After": when})
    rsps.get(f"{BASE}/Patient/p1", json={"resourceType": "Patient", "id": "p1"})
    client.read("Patient", "p1")
    assert len(sleeps) == 1 and 3.0 <= sleeps[0] <= 5.0


def test_retry_after_beyond_the_cap_gives_up_at_once(rsps, client, sleeps):
    rsps.get(f"{BASE}/Patient/p1", status=429, headers={"Retry-After": "120"}, json=outcome("slow down"))
    with pytest.raises(FhirRateLimited) as info:
        client.read("Patient", "p1")
    assert info.value.retry_after == 120.0
    assert info.value.issues() == ["slow down"]
    assert sleeps == []
    assert len(rsps.calls) == 1


def test_429_retries_are_bounded(rsps, sleeps):
    client = FhirClient(BASE, token=TOKEN, max_retries=2, sleep=sleeps)
    rsps.get(f"{BASE}/Patient/p1", status=429)
    with pytest.raises(FhirRateLimited):
        client.read("Patient", "p1")
    assert len(rsps.calls) == 3
    assert sleeps == [0.5, 1.0]  # exponential backoff when no Retry-After


def test_502_503_504_are_retried_with_exponential_backoff_then_succeed(rsps, client, sleeps):
    for status in (502, 503, 504):
        rsps.get(f"{BASE}/Observation", status=status)
    rsps.get(f"{BASE}/Observation", json=bundle([obs(1)]))
    assert [r["id"] for r in client.search("Observation", {"patient": PATIENT_ID})] == ["o1"]
    assert sleeps == [0.5, 1.0, 2.0]
    assert client.round_trips == 4


def test_500_is_not_retried(rsps, client, sleeps):
    rsps.get(f"{BASE}/Observation", status=500, json=outcome("NullPointerException"))
    with pytest.raises(FhirServerError):
        client.search_all("Observation")
    assert len(rsps.calls) == 1 and sleeps == []


def test_connection_error_is_retried_then_reported(rsps, client, sleeps):
    rsps.get(f"{BASE}/Patient/p1", body=requests.exceptions.ConnectionError("refused"))
    rsps.get(f"{BASE}/Patient/p1", json={"resourceType": "Patient", "id": "p1"})
    assert client.read("Patient", "p1")["id"] == "p1"
    assert sleeps == [0.5]
    rsps.get(f"{BASE}/Patient/p2", body=requests.exceptions.ConnectionError("refused"))
    with pytest.raises(FhirConnectionError):
        client.read("Patient", "p2")


def test_connect_timeout_is_retried_and_reported_as_timeout(rsps, client):
    rsps.get(f"{BASE}/Patient/p1", body=requests.exceptions.ConnectTimeout("slow connect"))
    with pytest.raises(FhirTimeout):
        client.read("Patient", "p1")
    assert len(rsps.calls) == 4


def test_read_timeout_raises_fhir_timeout_without_retry(rsps, client, sleeps):
    rsps.get(f"{BASE}/Observation", body=requests.exceptions.ReadTimeout("read timed out"))
    with pytest.raises(FhirTimeout) as info:
        client.search_all("Observation", {"patient": PATIENT_ID})
    assert info.value.status is None
    assert len(rsps.calls) == 1 and sleeps == []
    assert PATIENT_ID not in info.value.message


def test_post_is_never_retried(rsps, client, sleeps):
    rsps.post(BASE, status=503)
    with pytest.raises(FhirServerError):
        client.transaction({"resourceType": "Bundle", "type": "transaction", "entry": []})
    rsps.post(f"{BASE}/Observation", body=requests.exceptions.ConnectionError("reset"))
    with pytest.raises(FhirConnectionError):
        client.create(obs(1))
    assert len(rsps.calls) == 2 and sleeps == []


def test_retry_after_parsing():
    assert _retry_after_seconds("7") == 7.0
    assert _retry_after_seconds(None) is None
    assert _retry_after_seconds("soon") is None
    past = format_datetime(datetime.now(UTC) - timedelta(seconds=30), usegmt=True)
    assert _retry_after_seconds(past) == 0.0


# -- writes ---------------------------------------------------------------------------------------------


def transaction_bundle() -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:1",
                "resource": {"resourceType": "ClinicalImpression", "status": "in-progress"},
                "request": {"method": "POST", "url": "ClinicalImpression", "ifNoneExist": "identifier=s|v1"},
            },
            {
                "fullUrl": "urn:uuid:2",
                "resource": {"resourceType": "ServiceRequest", "status": "draft"},
                "request": {"method": "POST", "url": "ServiceRequest", "ifNoneExist": "identifier=s|v2"},
            },
        ],
    }


def test_transaction_posts_to_the_base_and_returns_the_response_bundle(rsps, client):
    answer = {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [
            {"response": {"status": "201 Created", "location": "ClinicalImpression/ci1/_history/1"}},
            {"response": {"status": "200 OK", "location": "ServiceRequest/sr1/_history/4"}},
        ],
    }
    rsps.post(BASE, json=answer)
    result = client.transaction(transaction_bundle())
    assert result == answer
    request = rsps.calls[0].request
    assert request.headers["Content-Type"] == "application/fhir+json"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert orjson.loads(request.body)["type"] == "transaction"


def test_transaction_failure_carries_the_operation_outcome(rsps, client):
    rsps.post(BASE, status=422, json=outcome("ServiceRequest.intent: missing required element"))
    with pytest.raises(FhirClientError) as info:
        client.transaction(transaction_bundle())
    assert info.value.status == 422
    assert info.value.issues() == ["ServiceRequest.intent: missing required element"]


@pytest.mark.parametrize(
    "answer",
    [
        {"resourceType": "Bundle", "type": "searchset", "entry": []},
        {
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [{"response": {"status": "201"}}],
        },
        {"resourceType": "Bundle", "type": "transaction-response", "entry": [{}, {}]},
        {
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [{"response": {"status": "201"}}, {"response": {"status": "400 Bad Request"}}],
        },
    ],
)
def test_transaction_response_is_validated(rsps, client, answer):
    rsps.post(BASE, json=answer)
    with pytest.raises(FhirMalformedResponse):
        client.transaction(transaction_bundle())


def test_transaction_rejects_a_non_transaction_bundle_without_sending(rsps, client):
    with pytest.raises(ValueError):
        client.transaction({"resourceType": "Bundle", "type": "collection"})
    assert len(rsps.calls) == 0


def test_create_sends_if_none_exist_and_parses_location(rsps, client):
    created = {"resourceType": "Device", "id": "dev1", "meta": {"versionId": "1"}}
    rsps.post(
        f"{BASE}/Device",
        status=201,
        json=created,
        headers={"Location": f"{BASE}/Device/dev1/_history/1", "ETag": 'W/"1"'},
    )
    result = client.create({"resourceType": "Device"}, if_none_exist="identifier=https://x.example|dev")
    request = rsps.calls[0].request
    assert request.headers["If-None-Exist"] == "identifier=https://x.example|dev"
    assert request.headers["Content-Type"] == "application/fhir+json"
    assert result.status == 201
    assert (result.id, result.version_id) == ("dev1", "1")
    assert result.location == f"{BASE}/Device/dev1/_history/1"
    assert result.resource == created and result.outcome is None


def test_create_matching_existing_returns_200_with_etag_version(rsps, client):
    rsps.post(f"{BASE}/Device", status=200, body=b"", headers={"ETag": 'W/"3"'})
    result = client.create({"resourceType": "Device"}, if_none_exist="identifier=s|v")
    assert result.status == 200
    assert result.version_id == "3" and result.resource is None


def test_create_returning_an_operation_outcome(rsps, client):
    rsps.post(
        f"{BASE}/Observation",
        status=201,
        json=outcome("created with warnings"),
        headers={"Location": "Observation/o9/_history/2"},
    )
    result = client.create(obs(9))
    assert "If-None-Exist" not in rsps.calls[0].request.headers
    assert result.outcome is not None and result.resource is None
    assert (result.id, result.version_id) == ("o9", "2")


def test_create_conflict_412_raises_client_error(rsps, client):
    rsps.post(f"{BASE}/Device", status=412, json=outcome("multiple matches for If-None-Exist"))
    with pytest.raises(FhirClientError) as info:
        client.create({"resourceType": "Device"}, if_none_exist="identifier=s|v")
    assert info.value.status == 412


# -- logging --------------------------------------------------------------------------------------------


def test_logs_never_include_the_token_or_query_values(rsps, client, caplog):
    caplog.set_level(logging.DEBUG, logger="smart_app.fhir")
    rsps.get(f"{BASE}/Patient/{PATIENT_ID}", json={"resourceType": "Patient", "id": PATIENT_ID})
    rsps.get(f"{BASE}/Observation", status=503)
    rsps.get(f"{BASE}/Observation", json=bundle([obs(1)], f"{BASE}/Observation?cursor=SECRETCURSOR"))
    rsps.get(
        f"{BASE}/Observation",
        json=bundle([obs(2)], "https://evil.example/fhir/x"),
        match=[matchers.query_param_matcher({"cursor": "SECRETCURSOR"})],
    )
    rsps.get(f"{BASE}/Condition", status=401, json=outcome("token expired"))
    rsps.get(f"{BASE}/Procedure", body=requests.exceptions.ReadTimeout())
    rsps.post(BASE, status=400, json=outcome("bad"))
    client.read("Patient", PATIENT_ID)
    with pytest.raises(ForeignLinkError):
        client.search_all("Observation", {"patient": PATIENT_ID, "code": "http://loinc.org|72514-3"})
    with pytest.raises(FhirUnauthorized):
        client.search_all("Condition", {"patient": PATIENT_ID})
    with pytest.raises(FhirTimeout):
        client.search_all("Procedure", {"patient": PATIENT_ID})
    with pytest.raises(FhirClientError):
        client.transaction(transaction_bundle())
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert caplog.records, "requests are logged"
    assert "Observation?patient&code" in text
    for secret in (TOKEN, "Bearer", "Authorization", PATIENT_ID, "SECRETCURSOR", "72514-3"):
        assert secret not in text


def test_vread_reads_one_version(rsps, client):
    rsps.get(f"{BASE}/Observation/o1/_history/3", json={**obs(1), "meta": {"versionId": "3"}})
    assert client.vread("Observation", "o1", "3")["meta"]["versionId"] == "3"
    with pytest.raises(ValueError):
        client.vread("Observation", "o1", "../4")
    assert len(rsps.calls) == 1
