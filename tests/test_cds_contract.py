"""CDS Hooks 2.0 contract (https://cds-hooks.hl7.org/2.0/): the discovery document, a call with and without
prefetch, the shapes of cards and suggestions, feedback, and the errors a service must give (400, 412).
Where the specification gives an example (a request, a response, feedback bodies), the test starts from it."""

from __future__ import annotations

import copy
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient

from smart_app.cds.prefetch import SEARCH_KEYS
from smart_app.fhir.record import SEARCH_TYPES
from tests import cds_support as cs
from tests.views_fixtures import PROBABLE, RED_FLAG, patient

#: The example request of CDS Hooks 2.0 "Calling a CDS Service" (its prefetch key is not one of ours).
SPEC_REQUEST: dict[str, Any] = {
    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "fhirServer": "http://hooks.smarthealthit.org:9080",
    "hook": "patient-view",
    "fhirAuthorization": {
        "access_token": "some-opaque-fhir-access-token",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "user/Patient.read user/Observation.read",
        "subject": "cds-service4",
    },
    "context": {"userId": "Practitioner/example", "patientId": "1288992", "encounterId": "89284"},
    "prefetch": {
        "patientToGreet": {
            "resourceType": "Patient",
            "gender": "male",
            "birthDate": "1925-12-23",
            "id": "1288992",
            "active": True,
        }
    },
}
#: The example response of CDS Hooks 2.0 "CDS Service Response", "Example".
SPEC_RESPONSE: dict[str, Any] = {
    "cards": [
        {
            "uuid": "4e0a3a1e-3283-4575-ab82-028d55fe2719",
            "summary": "Example Card",
            "indicator": "info",
            "detail": "This is an example card.",
            "source": {
                "label": "Static CDS Service Example",
                "url": "https://example.com",
                "icon": "https://example.com/img/icon-100px.png",
            },
            "links": [
                {"label": "Google", "url": "https://google.com", "type": "absolute"},
                {"label": "Github", "url": "https://github.com", "type": "absolute"},
                {
                    "label": "SMART Example App",
                    "url": "https://smart.example.com/launch",
                    "type": "smart",
                    "appContext": '{"session":3456356,"settings":{"module":4235}}',
                },
            ],
        },
        {
            "summary": "Another card",
            "indicator": "warning",
            "source": {"label": "Static CDS Service Example"},
            "overrideReasons": [
                {
                    "code": "reason-code-provided-by-service",
                    "system": "http://example.org/cds-services/fhir/CodeSystem/override-reasons",
                    "display": "Patient refused",
                },
                {
                    "code": "12354",
                    "system": "http://example.org/cds-services/fhir/CodeSystem/override-reasons",
                    "display": "Contraindicated",
                },
            ],
        },
    ]
}


@pytest.fixture
def keys() -> cs.ClientKeys:
    return cs.ClientKeys()


@pytest.fixture
def cds_app(tmp_path: Path, keys: cs.ClientKeys) -> Flask:
    spec_server = cs.registration(
        keys, id="spec-ehr", iss="https://spec-ehr.example", fhir_servers=[SPEC_REQUEST["fhirServer"]]
    )
    return cs.make_app(tmp_path, cs.registration(keys), spec_server)


@pytest.fixture
def client(cds_app: Flask) -> FlaskClient:
    return cds_app.test_client()


# -- discovery --
def test_discovery_lists_both_services_with_prefetch_of_what_a_launch_reads(client: FlaskClient) -> None:
    answer = client.get("/cds-services")
    assert answer.status_code == 200 and answer.mimetype == "application/json"
    services = answer.get_json()["services"]
    assert {(s["id"], s["hook"]) for s in services} == {
        (cs.PATIENT_VIEW, "patient-view"),
        (cs.ORDER_SIGN, "order-sign"),
    }
    for service in services:
        assert set(service) <= {"hook", "title", "description", "id", "prefetch", "usageRequirements"}
        for required in ("hook", "description", "id"):
            assert isinstance(service[required], str) and service[required]
        assert isinstance(service["title"], str) and isinstance(service["usageRequirements"], str)
        prefetch = service["prefetch"]
        assert prefetch["patient"] == "Patient/{{context.patientId}}"
        searched = {t.split("?")[0] for k, t in prefetch.items() if k != "patient"}
        assert searched == set(SEARCH_TYPES)  # exactly the types a launch reads, nothing else
        for template in prefetch.values():
            # "Prefetch query restrictions": an instance read or a patient= type search, the one token
            assert re.fullmatch(r"[A-Z][A-Za-z]+(/|\?patient=)\{\{context\.patientId\}\}", template), template


# -- a call with prefetch --
def test_call_with_full_prefetch_answers_from_it_without_any_fhir_request(
    client: FlaskClient, keys: cs.ClientKeys
) -> None:
    body = cs.hook_body(prefetch=cs.prefetch_of(patient(), PROBABLE))
    with responses.RequestsMock() as rsps:  # any outbound request would fail the test
        answer = cs.post(client, keys, cs.PATIENT_VIEW, body)
        assert len(rsps.calls) == 0
    assert answer.status_code == 200
    payload = answer.get_json()
    assert cs.response_problems(payload) == []
    [card] = payload["cards"]
    assert card["indicator"] == "info" and card["summary"].startswith("Probable back mice")
    assert card["links"] == [
        {"label": "Open the back-mice review (SMART app)", "url": f"{cs.PUBLIC_URL}/launch", "type": "smart"}
    ]
    [suggestion] = card["suggestions"]
    assert card["selectionBehavior"] == "at-most-one" and suggestion["isRecommended"] is True
    assert [a["resource"]["resourceType"] for a in suggestion["actions"]] == [
        "ClinicalImpression",
        "ServiceRequest",
        "Provenance",
    ]
    assert all(a["type"] == "create" for a in suggestion["actions"])


def _spec_call(client: FlaskClient, keys: cs.ClientKeys, request: dict[str, Any]) -> Any:
    token = keys.token(cs.service_url(cs.PATIENT_VIEW), iss="https://spec-ehr.example")
    return client.post(
        f"/cds-services/{cs.PATIENT_VIEW}", json=request, headers={"Authorization": f"Bearer {token}"}
    )


def test_specification_example_request_is_412_when_its_scope_cannot_read_conditions(
    client: FlaskClient, keys: cs.ClientKeys
) -> None:
    """The specification's example request as it stands: its one prefetch key is not ours, and its token
    (user/Patient.read user/Observation.read) cannot read the Conditions the criteria need."""
    with responses.RequestsMock() as rsps:
        answer = _spec_call(client, keys, SPEC_REQUEST)
        assert len(rsps.calls) == 0  # nothing is read when the answer cannot be given anyway
    assert answer.status_code == 412
    assert "Condition not prefetched" in answer.get_json()["error_description"]
    assert "scope does not allow" in answer.get_json()["error_description"]


def test_call_without_prefetch_reads_every_type_from_fhir_server_with_the_token(
    client: FlaskClient, keys: cs.ClientKeys
) -> None:
    """The specification's example request with a token that may read the record: everything is read
    from its fhirServer, with its access token, and nowhere else."""
    request = copy.deepcopy(SPEC_REQUEST)
    request["fhirAuthorization"]["scope"] = "user/*.read"
    base = request["fhirServer"]
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, f"{base}/Patient/1288992", json=request["prefetch"]["patientToGreet"])
        for rtype in SEARCH_TYPES:
            rsps.add(responses.GET, re.compile(re.escape(f"{base}/{rtype}") + r"\?"), json=cs.searchset([]))
        answer = _spec_call(client, keys, request)
        sent = [(c.request.method, c.request.url, c.request.headers["Authorization"]) for c in rsps.calls]
    assert answer.status_code == 200 and answer.get_json() == {
        "cards": []
    }  # an empty record: nothing to act on
    assert sorted(url.split("?")[0] for _, url, _ in sent) == sorted(
        [f"{base}/Patient/1288992", *(f"{base}/{t}" for t in SEARCH_TYPES)]
    )
    assert all("patient=1288992" in url for _, url, _ in sent if "?" in url)
    assert {auth for _, _, auth in sent} == {"Bearer some-opaque-fhir-access-token"}
    assert {method for method, _, _ in sent} == {"GET"}


def test_missing_optional_types_are_read_and_their_results_used(
    client: FlaskClient, keys: cs.ClientKeys, ehr: Any
) -> None:
    ehr.serve(RED_FLAG)
    prefetch = cs.prefetch_of(patient(), RED_FLAG, leave_out=("Condition", "Procedure"))
    answer = cs.post(
        client, keys, cs.PATIENT_VIEW, cs.hook_body(prefetch=prefetch, authorization=cs.authorization())
    )
    read = sorted({c.request.url.split("?")[0] for c in ehr.rsps.calls})
    assert read == [f"{cs.FHIR_BASE}/Condition", f"{cs.FHIR_BASE}/Procedure"]
    [card] = answer.get_json()["cards"]  # the malignancy Condition came from the read, not the prefetch
    assert card["indicator"] == "critical" and "Malignancy" in card["summary"]


def test_prefetch_failures_and_pages_are_read_again(
    client: FlaskClient, keys: cs.ClientKeys, ehr: Any
) -> None:
    ehr.serve(PROBABLE)
    prefetch = cs.prefetch_of(patient(), PROBABLE)
    prefetch["conditions"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout", "diagnostics": "prefetch timed out"}],
    }
    paged = cs.searchset([r for r in PROBABLE if r["resourceType"] == "Observation"][:1])
    paged["link"] = [{"relation": "next", "url": f"{cs.FHIR_BASE}/Observation?patient=p1&page=2"}]
    prefetch["observations"] = paged
    answer = cs.post(
        client, keys, cs.PATIENT_VIEW, cs.hook_body(prefetch=prefetch, authorization=cs.authorization())
    )
    assert sorted({c.request.url.split("?")[0] for c in ehr.rsps.calls}) == [
        f"{cs.FHIR_BASE}/Condition",
        f"{cs.FHIR_BASE}/Observation",
    ]
    assert answer.get_json()["cards"][0]["summary"].startswith("Probable back mice")


def test_optional_types_neither_prefetched_nor_readable_are_reported_unknown(
    client: FlaskClient, keys: cs.ClientKeys
) -> None:
    prefetch = cs.prefetch_of(patient(), PROBABLE, leave_out=("Procedure", "MedicationStatement"))
    answer = cs.post(client, keys, cs.PATIENT_VIEW, cs.hook_body(prefetch=prefetch))
    [card] = answer.get_json()["cards"]
    assert "Not read: MedicationStatement (not prefetched); Procedure (not prefetched)" in card["detail"]


def test_null_prefetch_is_an_empty_search(client: FlaskClient, keys: cs.ClientKeys) -> None:
    prefetch = cs.prefetch_of(patient(), PROBABLE)
    for key in ("procedures", "medicationStatements", "medicationRequests"):
        prefetch[key] = None
    answer = cs.post(client, keys, cs.PATIENT_VIEW, cs.hook_body(prefetch=prefetch))
    [card] = answer.get_json()["cards"]
    assert "Not read" not in card["detail"]


# -- 412 and 400 --
def test_required_data_missing_without_access_is_412(client: FlaskClient, keys: cs.ClientKeys) -> None:
    prefetch = cs.prefetch_of(patient(), PROBABLE, leave_out=("Observation",))
    answer = cs.post(client, keys, cs.PATIENT_VIEW, cs.hook_body(prefetch=prefetch))
    assert answer.status_code == 412
    assert answer.get_json()["error"] == "data_unavailable"
    assert "Observation not prefetched" in answer.get_json()["error_description"]


def test_unregistered_fhir_server_gets_no_request_and_412(client: FlaskClient, keys: cs.ClientKeys) -> None:
    body = cs.hook_body(
        prefetch={}, authorization=cs.authorization(), fhir_server="https://elsewhere.example/fhir"
    )
    with responses.RequestsMock() as rsps:
        answer = cs.post(client, keys, cs.PATIENT_VIEW, body)
        assert len(rsps.calls) == 0
    assert answer.status_code == 412
    assert "not a FHIR server registered" in answer.get_json()["error_description"]


def test_refused_token_is_412(client: FlaskClient, keys: cs.ClientKeys, ehr: Any) -> None:
    ehr.serve(PROBABLE, fail={t: 401 for t in ("Patient", *SEARCH_TYPES)})
    answer = cs.post(
        client, keys, cs.PATIENT_VIEW, cs.hook_body(prefetch={}, authorization=cs.authorization())
    )
    assert (
        answer.status_code == 412
        and "refused the fhirAuthorization" in answer.get_json()["error_description"]
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.update(hook="order-select"), "hook must be 'patient-view'"),
        (lambda b: b.update(hookInstance="not-a-uuid"), "hookInstance must be a UUID"),
        (lambda b: b["context"].pop("patientId"), "context.patientId"),
        (lambda b: b["context"].update(userId="Device/x"), "context.userId"),
        (lambda b: b["context"].update(encounterId="bad id!"), "context.encounterId"),
        (lambda b: b.update(fhirAuthorization=cs.authorization()), "fhirServer is required"),
        (
            lambda b: b.update(fhirServer="ftp://x", fhirAuthorization=cs.authorization()),
            "fhirServer must be",
        ),
        (lambda b: b.update(prefetch=[]), "prefetch must be an object"),
        (
            lambda b: b["prefetch"].update(patient={"resourceType": "Patient", "id": "other"}),
            "not the Patient",
        ),
        (lambda b: b["prefetch"].update(observations=[1]), "prefetch.observations"),
    ],
)
def test_malformed_requests_are_400_naming_the_field(
    client: FlaskClient, keys: cs.ClientKeys, change: Any, message: str
) -> None:
    body = cs.hook_body(prefetch=cs.prefetch_of(patient(), PROBABLE))
    body.pop("fhirServer", None)
    change(body)
    answer = cs.post(client, keys, cs.PATIENT_VIEW, body)
    assert answer.status_code == 400
    assert message in answer.get_json()["error_description"]


def test_the_token_is_not_quoted_in_errors(client: FlaskClient, keys: cs.ClientKeys) -> None:
    auth = cs.authorization(token="secret-token-value")
    auth["token_type"] = "MAC"
    answer = cs.post(client, keys, cs.PATIENT_VIEW, cs.hook_body(prefetch={}, authorization=auth))
    assert answer.status_code == 400 and b"secret-token-value" not in answer.data


def test_body_over_the_limit_is_413(tmp_path: Path, keys: cs.ClientKeys) -> None:
    app = cs.make_app(tmp_path, cs.registration(keys), CDS_MAX_REQUEST_BYTES=2000)
    body = cs.hook_body(prefetch=cs.prefetch_of(patient(), PROBABLE))
    assert cs.post(app.test_client(), keys, cs.PATIENT_VIEW, body).status_code == 413


def test_unknown_service_is_404(client: FlaskClient, keys: cs.ClientKeys) -> None:
    assert cs.post(client, keys, "no-such-service", cs.hook_body()).status_code == 404


# -- shapes --
def test_shape_checker_accepts_the_specification_example_and_refuses_broken_cards() -> None:
    assert cs.response_problems(SPEC_RESPONSE) == []
    broken = copy.deepcopy(SPEC_RESPONSE)
    broken["cards"][0]["summary"] = "x" * 140
    broken["cards"][1]["indicator"] = "hard-stop"
    broken["cards"][1]["suggestions"] = [
        {"label": "Do it", "actions": [{"type": "create", "description": "x"}]}
    ]
    problems = cs.response_problems(broken)
    assert any("summary" in p for p in problems) and any("indicator" in p for p in problems)
    assert any("selectionBehavior" in p for p in problems) and any("FHIR resource" in p for p in problems)


def test_card_uuid_is_stable_for_a_hook_instance(client: FlaskClient, keys: cs.ClientKeys) -> None:
    body = cs.hook_body(prefetch=cs.prefetch_of(patient(), PROBABLE))
    first = cs.post(client, keys, cs.PATIENT_VIEW, body).get_json()["cards"][0]
    again = cs.post(client, keys, cs.PATIENT_VIEW, body).get_json()["cards"][0]
    other = cs.post(client, keys, cs.PATIENT_VIEW, {**body, "hookInstance": str(uuid.uuid4())}).get_json()
    assert first["uuid"] == again["uuid"] != other["cards"][0]["uuid"]
    assert first["suggestions"][0]["uuid"] == again["suggestions"][0]["uuid"]


# -- feedback --
SPEC_FEEDBACK = [
    {  # "Example suggestion accepted"
        "card": "4e0a3a1e-3283-4575-ab82-028d55fe2719",
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": "e56e1945-20b3-4393-8503-a1a20fd73152"}],
        "outcomeTimestamp": "2021-12-11T10:05:31Z",
    },
    {  # "Example overridden guidance without overrideReason"
        "card": "f6b95768-b1c8-40dc-8385-bf3504b82ffb",
        "outcome": "overridden",
        "outcomeTimestamp": "2020-12-11T00:00:00Z",
    },
    {  # "Example overridden guidance with overrideReason"
        "card": "9368d37b-283f-44a0-93ea-547cebab93ed",
        "outcome": "overridden",
        "overrideReason": {
            "reason": {"code": "d7ecf885", "system": "https://example.com/cds-hooks/override-reason-system"},
            "userComment": "A comment entered by the clinician.",
        },
        "outcomeTimestamp": "2020-12-11T00:00:00Z",
    },
]


def test_feedback_examples_are_recorded_in_the_audit_log(
    cds_app: Flask, client: FlaskClient, keys: cs.ClientKeys
) -> None:
    for item in SPEC_FEEDBACK:
        answer = cs.post(client, keys, cs.PATIENT_VIEW, {"feedback": [item]}, feedback=True)
        assert answer.status_code == 200
    lines = [line for line in cs.audit_lines(cds_app) if line["kind"] == "cds-feedback"]
    assert [(line["card"], line["outcome"]) for line in lines] == [
        (item["card"], item["outcome"]) for item in SPEC_FEEDBACK
    ]
    assert lines[0]["suggestions"] == ["e56e1945-20b3-4393-8503-a1a20fd73152"]
    assert lines[2]["override_reason"] == "d7ecf885" and "suggestions" not in lines[2]
    assert all(line["service"] == cs.PATIENT_VIEW and line["registration"] == "ehr-cds" for line in lines)
    assert "comment entered" not in (Path(cds_app.instance_path) / "audit.jsonl").read_text()


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"card": "x", "outcome": "accepted"}, "card must be the uuid"),
        ({**SPEC_FEEDBACK[0], "outcome": "ignored"}, "outcome must be"),
        ({**SPEC_FEEDBACK[0], "acceptedSuggestions": []}, "acceptedSuggestions is required"),
        ({**SPEC_FEEDBACK[0], "outcomeTimestamp": "yesterday"}, "outcomeTimestamp"),
        ({**SPEC_FEEDBACK[2], "overrideReason": {"reason": {"system": "x"}}}, "Coding with a code"),
    ],
)
def test_malformed_feedback_is_400(client: FlaskClient, keys: cs.ClientKeys, item: Any, message: str) -> None:
    answer = cs.post(client, keys, cs.PATIENT_VIEW, {"feedback": [item]}, feedback=True)
    assert answer.status_code == 400 and message in answer.get_json()["error_description"]


def test_feedback_needs_the_feedback_url_as_audience(client: FlaskClient, keys: cs.ClientKeys) -> None:
    token = keys.token(cs.service_url(cs.PATIENT_VIEW))  # the service's URL, not its feedback URL
    answer = client.post(
        f"/cds-services/{cs.PATIENT_VIEW}/feedback",
        json={"feedback": SPEC_FEEDBACK[:1]},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 401 and answer.get_json()["error"] == "wrong_audience"


def test_a_call_is_audited_with_its_cards(cds_app: Flask, client: FlaskClient, keys: cs.ClientKeys) -> None:
    body = cs.hook_body(prefetch=cs.prefetch_of(patient(), PROBABLE))
    card = cs.post(client, keys, cs.PATIENT_VIEW, body).get_json()["cards"][0]
    [line] = [line for line in cs.audit_lines(cds_app) if line["kind"] == "cds"]
    assert line["outcome"] == "answered" and line["cards"] == [card["uuid"]]
    assert line["hook_instance"] == body["hookInstance"] and line["patient"] == "p1"
    assert line["classification"] == "probable" and line["registration"] == "ehr-cds"
    assert line["counts"] == {"Condition": 1, "Observation": 2} and "dropped_fields" not in line


def test_search_keys_match_the_discovery_templates() -> None:
    from smart_app.cds.prefetch import templates

    assert set(templates()) == {"patient", *SEARCH_KEYS}


# -- order-sign --
def test_order_sign_call_with_a_back_mouse_order_despite_a_red_flag(
    client: FlaskClient, keys: cs.ClientKeys
) -> None:
    body = cs.hook_body(
        hook="order-sign",
        prefetch=cs.prefetch_of(patient(), RED_FLAG),
        draft_orders=[cs.order("11900"), cs.order("80053", oid="sr-lab")],
    )
    answer = cs.post(client, keys, cs.ORDER_SIGN, body)
    assert answer.status_code == 200 and cs.response_problems(answer.get_json()) == []
    [card] = answer.get_json()["cards"]
    assert card["indicator"] == "critical" and "Malignancy" in card["summary"]
    assert "`ServiceRequest/sr-1`" in card["detail"] and "sr-lab" not in card["detail"]
    assert [s["actions"][0]["resourceId"] for s in card["suggestions"]] == ["ServiceRequest/sr-1"]


def test_order_sign_needs_draft_orders_and_a_clinician(client: FlaskClient, keys: cs.ClientKeys) -> None:
    body = cs.hook_body(hook="order-sign", prefetch=cs.prefetch_of(patient(), RED_FLAG))
    answer = cs.post(client, keys, cs.ORDER_SIGN, body)
    assert answer.status_code == 400 and "draftOrders" in answer.get_json()["error_description"]
    body = cs.hook_body(hook="order-sign", user="Patient/p1", draft_orders=[cs.order()])
    answer = cs.post(client, keys, cs.ORDER_SIGN, body)
    assert answer.status_code == 400 and "context.userId" in answer.get_json()["error_description"]
