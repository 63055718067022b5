"""Launch context as EHRs send it: Encounters for every sandbox patient, ``encounter`` as a bare id (or
a relative or absolute reference), and SMART App Launch 2.x ``fhirContext`` items."""

from __future__ import annotations

from typing import Any

import pytest

from launch.sandbox import create_app
from tests.sandbox_fixtures import FHIR_BASE, SandboxActions, make_sandbox


def _token_body(acts: SandboxActions, **launch: Any) -> dict[str, Any]:
    response = acts.client.post("/ehr/launches", json={"patient": "p1", **launch})
    assert response.status_code == 201, response.json
    code, verifier = acts.authorize(launch=response.json["launch"], scope="launch patient/*.rs")
    body = acts.exchange(code, verifier).json
    assert body["patient"] == "p1"
    return dict(body)


def _sandbox(data_dir, signing_key_path, client_key, **config: Any) -> SandboxActions:
    return SandboxActions(
        make_sandbox(data_dir, signing_key_path, client_key, **config).test_client(), client_key
    )


@pytest.mark.parametrize(
    ("form", "expected"),
    [("id", "e1"), ("reference", "Encounter/e1"), ("absolute", f"{FHIR_BASE}/Encounter/e1")],
)
def test_encounter_parameter_forms(data_dir, signing_key_path, client_key, form, expected):
    acts = _sandbox(data_dir, signing_key_path, client_key, EHR_LAUNCH_ENCOUNTER_FORMAT=form)
    body = _token_body(acts)
    assert body["encounter"] == expected and "fhirContext" not in body


def test_fhir_context_items_for_the_encounter_and_from_the_launch(data_dir, signing_key_path, client_key):
    acts = _sandbox(
        data_dir,
        signing_key_path,
        client_key,
        EHR_LAUNCH_FHIR_CONTEXT=["reference", "absolute", "identifier"],
    )
    order = {"reference": "ServiceRequest/sr-9", "role": "https://ehr.test/role/order"}
    body = _token_body(acts, fhirContext=[order])
    assert body["encounter"] == "e1"
    assert body["fhirContext"] == [
        {"reference": "Encounter/e1"},
        {"reference": f"{FHIR_BASE}/Encounter/e1"},
        {"type": "Encounter", "identifier": {"system": "https://ehr.test/visit", "value": "V-1"}},
        order,
    ]
    token = body["access_token"]
    assert acts.fhir("GET", "/Encounter/e1", token).json["subject"] == {"reference": "Patient/p1"}


def test_launches_name_encounters_only_when_asked_by_default(data_dir, signing_key_path, client_key):
    acts = _sandbox(data_dir, signing_key_path, client_key, EHR_LAUNCH_ENCOUNTER="named")
    assert "encounter" not in _token_body(acts)
    assert _token_body(acts, encounter="@latest")["encounter"] == "e1"
    assert _token_body(acts, encounter="Encounter/e1")["encounter"] == "e1"
    assert "encounter" not in _token_body(acts, encounter="")


@pytest.mark.parametrize(
    ("launch", "message"),
    [
        ({"patient": "p2", "encounter": "e1"}, "unknown encounter for this patient"),
        ({"encounter": "nope"}, "unknown encounter"),
        ({"fhirContext": {"reference": "Encounter/e1"}}, "must be a list"),
        ({"fhirContext": [{"reference": "e1"}]}, "Type/id"),
        ({"fhirContext": [{"identifier": {"value": "V-1"}}]}, "needs a resource type"),
        ({"fhirContext": [{"role": "x"}]}, "needs reference"),
        ({"fhirContext": [{"reference": "Encounter/e1"}] * 11}, "at most 10"),
    ],
)
def test_bad_launch_context_is_refused(client, launch, message):
    response = client.post("/ehr/launches", json={"patient": "p1", **launch})
    assert response.status_code == 400 and message in response.json["error_description"]


def test_every_sandbox_patient_has_encounters_and_launches_into_the_latest(signing_key_path):
    app = create_app({"TESTING": True, "SIGNING_KEY_PATH": str(signing_key_path), "DATES": "stored"})
    store = app.extensions["sandbox"].store
    client = app.test_client()
    for patient in store.all_of_type("Patient"):
        encounters = store.search("Encounter", [("patient", patient["id"])])
        assert len(encounters) >= 2, patient["id"]
        for encounter in encounters:
            assert encounter["status"] == "finished" and encounter["class"]["code"] == "AMB"
            assert encounter["period"]["start"] < encounter["period"]["end"]
            assert encounter["identifier"][0]["value"]
        latest = max(encounters, key=lambda e: e["period"]["start"])
        made = client.post("/ehr/launches", json={"patient": patient["id"], "encounter": "@latest"}).json
        assert made["encounter"] == latest["id"]


def test_ehr_page_offers_the_latest_visit(client):
    index = client.get("/ehr").get_data(as_text=True)
    assert '<option value="@latest" selected>' in index  # the fixture's EHR opens charts within a visit
    page = client.get("/ehr/launch", query_string={"patient": "p1", "encounter": "@latest"})
    assert page.status_code == 200 and "encounter <code>e1</code>" in page.get_data(as_text=True)
    page = client.get("/ehr/launch", query_string={"patient": "p1", "encounter": ""})
    assert "encounter <code>" not in page.get_data(as_text=True)
