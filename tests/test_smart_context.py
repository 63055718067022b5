"""Launch context as EHRs send it (smart_app.smart.context): ids, relative and absolute references on the
launched base, fhirContext items; anything else is the EHR's mistake, shown on a launch error page
before any FHIR request is sent."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from launch_support import launch_of
from smart_support import ISS, TOKEN, id_token, make_app, mock_discovery, token_response

from smart_app.smart.context import InvalidLaunchContext, check_context
from smart_app.smart.token import LaunchContext


def checked(**fields: Any) -> Any:
    fields.setdefault("patient", "p1")
    return check_context(LaunchContext(**fields), ISS, ehr_name="Test EHR")


@pytest.mark.parametrize(
    ("sent", "patient"),
    [
        ("p1", "p1"),
        ("Patient/p1", "p1"),
        (f"{ISS}/Patient/p1", "p1"),
        (f"{ISS}/Patient/p1/_history/3", "p1"),
        ("HTTPS://EHR.test:443/fhir/Patient/p-1.a", "p-1.a"),
    ],
)
def test_patient_as_id_or_reference_on_the_base(sent, patient):
    assert checked(patient=sent).patient == patient


@pytest.mark.parametrize(
    ("sent", "encounter"),
    [
        (None, None),
        ("bm-probable-enc-1", "Encounter/bm-probable-enc-1"),
        ("Encounter/e1", "Encounter/e1"),
        (f"{ISS}/Encounter/e1", "Encounter/e1"),
        (f"{ISS}/Encounter/e1/_history/2", "Encounter/e1"),
    ],
)
def test_encounter_becomes_a_reference(sent, encounter):
    assert checked(encounter=sent).encounter == encounter


@pytest.mark.parametrize(
    "item",
    [
        {"reference": "Encounter/e2"},
        {"reference": f"{ISS}/Encounter/e2"},
        {"type": "Encounter", "reference": "Encounter/e2"},
    ],
)
def test_encounter_from_fhir_context_when_the_parameter_is_absent(item):
    result = checked(fhir_context=({"reference": "Questionnaire/q1"}, item))
    assert result.encounter == "Encounter/e2"
    assert {"reference": "Encounter/e2"}.items() <= result.fhir_context[1].items()


def test_top_level_encounter_wins_over_fhir_context():
    assert checked(encounter="e1", fhir_context=({"reference": "Encounter/e2"},)).encounter == "Encounter/e1"


def test_fhir_context_keeps_only_what_smart_defines():
    items = (
        {"reference": f"{ISS}/Observation/o1", "role": "launch", "extra": {"deep": [1, 2]}},
        {"canonical": "https://ehr.test/Questionnaire/q|1.0"},
        {"type": "Encounter", "identifier": {"system": "urn:visit", "value": "V-9", "use": "x"}},
    )
    assert checked(fhir_context=items).fhir_context == (
        {"reference": "Observation/o1", "role": "launch"},
        {"canonical": "https://ehr.test/Questionnaire/q|1.0"},
        {"type": "Encounter", "identifier": {"value": "V-9", "system": "urn:visit"}},
    )


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"patient": "../Practitioner/x"}, "a patient '../Practitioner/x'"),
        ({"patient": ".."}, "a patient '..'"),
        ({"patient": "Practitioner/x"}, "a patient 'Practitioner/x'"),
        ({"patient": "https://evil.test/fhir/Patient/p1"}, "nor a Patient reference"),
        ({"patient": "p1\u202e"}, "a patient 'p1'"),
        ({"patient": "a" * 65}, "neither a FHIR id"),
        ({"encounter": "../../Patient/p2"}, "an encounter '../../Patient/p2'"),
        ({"encounter": "Observation/o1"}, "nor an Encounter reference"),
        ({"encounter": "https://other.test/fhir/Encounter/e1"}, "an encounter"),
        ({"fhir_context": ({"reference": "Encounter/../x"},)}, "fhirContext item 1 has a reference"),
        ({"fhir_context": ({"reference": "https://other.test/fhir/Encounter/e1"},)}, "not a reference on"),
        (
            {"fhir_context": ({"type": "not a type", "reference": "Encounter/e1"},)},
            "not a FHIR resource type",
        ),
        ({"fhir_context": ({"type": "Observation", "reference": "Encounter/e1"},)}, "names type Observation"),
        ({"fhir_context": ({"role": "launch"},)}, "has none of reference, canonical"),
        ({"fhir_context": ({"reference": 7},)}, "has a reference '7'"),
        (
            {"fhir_context": tuple({"reference": f"Encounter/e{i}"} for i in range(51))},
            "51 fhirContext items",
        ),
    ],
)
def test_unusable_context_names_the_ehrs_mistake(fields, named):
    with pytest.raises(InvalidLaunchContext) as info:
        checked(**fields)
    text = info.value.description
    assert text.startswith("Test EHR launched the app with ") and named in text
    assert "\u202e" not in text and info.value.status == 502


def _start(tmp_path: Any, rsps: responses.RequestsMock) -> tuple[Any, dict[str, str]]:
    client = make_app(tmp_path).test_client()
    mock_discovery(rsps)
    started = client.get("/launch", query_string={"iss": ISS, "launch": "L"})
    return client, {k: v[0] for k, v in parse_qs(urlsplit(started.location).query).items()}


@pytest.mark.parametrize(
    "context",
    [
        {"patient": "../Practitioner/x"},
        {"encounter": "../../Patient/p2"},
        {"fhirContext": [{"reference": "https://evil.test/fhir/Encounter/e1"}]},
    ],
)
def test_callback_refuses_bad_context_and_sends_no_fhir_request(tmp_path, rsps, context):
    client, params = _start(tmp_path, rsps)
    rsps.add(responses.POST, TOKEN, json=token_response(**context))
    page = client.get("/callback", query_string={"code": "CODE-1", "state": params["state"]})
    assert page.status_code == 502
    html = page.get_data(as_text=True)
    assert "Test EHR launched the app with" in html and "invalid_launch_context" in html
    assert launch_of(client.application, client) is None
    fhir_calls = [
        c for c in rsps.calls if c.request.url.startswith(ISS) and ".well-known" not in c.request.url
    ]
    assert fhir_calls == []


def test_callback_keeps_the_encounter_as_a_reference(tmp_path, rsps):
    client, params = _start(tmp_path, rsps)
    body = token_response(
        patient=f"{ISS}/Patient/p1",
        encounter="bm-probable-enc-1",
        fhirContext=None,
        id_token=id_token(params["nonce"]),
    )
    rsps.add(responses.POST, TOKEN, json=body)
    page = client.get("/callback", query_string={"code": "CODE-1", "state": params["state"]})
    assert page.status_code == 302
    launch = launch_of(client.application, client)
    assert launch is not None
    assert (launch.patient, launch.encounter) == ("p1", "Encounter/bm-probable-enc-1")
