"""The repository's independent FHIR R4 server (``tests/fhir-server``) does what the integration tests
rely on, with FHIR R4 semantics (http.html, search.html, bundle.html): versions as Medplum assigns them
(opaque), conditional create, all-or-nothing transactions, paging links, and an OperationOutcome for
every error."""


from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from medplum_server import MedplumPool, MedplumServer

pytestmark = pytest.mark.medplum
FHIR_JSON = {"Content-Type": "application/fhir+json"}
TAG_SYSTEM = "urn:test:fhir-server"


def post(server: MedplumServer, path: str, body: Any, **headers: str) -> requests.Response:
    return requests.post(f"{server.base_url}/{path}", json=body, headers={**FHIR_JSON, **headers}, timeout=30)


def observation(patient: str, tag: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "pain score"},
        "subject": {"reference": f"Patient/{patient}"},
        "meta": {"tag": [{"system": TAG_SYSTEM, "code": tag}]},
        **extra,
    }


def new_patient(server: MedplumServer) -> dict[str, Any]:
    identifier = {"system": "urn:test:mrn", "value": str(uuid.uuid4())}
    created = post(server, "Patient", {"resourceType": "Patient", "identifier": [identifier]})
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


def outcome_text(response: requests.Response) -> str:
    """The issues' texts and the elements they name, of an OperationOutcome answer."""
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    return " ".join(
        " ".join([str(issue.get("details", {}).get("text", "")), *issue.get("expression", [])])
        for issue in body["issue"]
    )


def test_versions_are_opaque_and_history_is_newest_first(medplum: MedplumServer) -> None:
    patient = new_patient(medplum)
    url = f"{medplum.base_url}/Patient/{patient['id']}"
    versions = [patient["meta"]["versionId"]]
    for gender in ("female", "other"):
        updated = requests.put(url, json={**patient, "gender": gender}, headers=FHIR_JSON, timeout=30)
        assert updated.status_code == 200, updated.text
        assert updated.headers["ETag"] == f'W/"{updated.json()["meta"]["versionId"]}"'
        assert updated.headers["Location"] == f"{url}/_history/{updated.json()['meta']['versionId']}"
        versions.append(updated.json()["meta"]["versionId"])
    assert len(set(versions)) == 3 and all(uuid.UUID(v) for v in versions)  # Medplum's UUIDs, not 1, 2, 3
    for _ in range(2):  # the same order every time
        history = requests.get(f"{url}/_history", timeout=30).json()
        assert history["type"] == "history" and history["total"] == 3
        assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == versions[::-1]
        assert [e["request"]["method"] for e in history["entry"]] == ["PUT", "PUT", "POST"]
    for version, expected in zip(versions, (None, "female", "other"), strict=True):
        old = requests.get(f"{url}/_history/{version}", timeout=30)
        assert old.status_code == 200 and old.json().get("gender") == expected
    assert requests.get(url, timeout=30).json()["gender"] == "other"
    assert requests.get(f"{url}/_history/{uuid.uuid4()}", timeout=30).status_code == 404


def test_update_creates_with_201_and_checks_if_match(medplum: MedplumServer) -> None:
    resource_id = f"put-{uuid.uuid4()}"
    url = f"{medplum.base_url}/Patient/{resource_id}"
    created = requests.put(
        url, json={"resourceType": "Patient", "id": resource_id}, headers=FHIR_JSON, timeout=30
    )
    assert created.status_code == 201
    version = created.json()["meta"]["versionId"]
    stale = {**FHIR_JSON, "If-Match": 'W/"not-the-version"'}
    assert (
        requests.put(
            url, json={"resourceType": "Patient", "id": resource_id}, headers=stale, timeout=30
        ).status_code
        == 412
    )
    current = {**FHIR_JSON, "If-Match": f'W/"{version}"'}
    assert (
        requests.put(
            url, json={"resourceType": "Patient", "id": resource_id}, headers=current, timeout=30
        ).status_code
        == 200
    )


def test_conditional_create_answers_with_what_exists(medplum: MedplumServer) -> None:
    patient = new_patient(medplum)
    identifier = patient["identifier"][0]
    criteria = f"identifier={identifier['system']}|{identifier['value']}"
    again = post(
        medplum,
        "Patient",
        {"resourceType": "Patient", "identifier": [identifier]},
        **{"If-None-Exist": criteria},
    )
    assert again.status_code == 200 and again.json()["id"] == patient["id"]
    assert again.json()["meta"]["versionId"] == patient["meta"]["versionId"]
    assert (
        post(medplum, "Patient", {"resourceType": "Patient", "identifier": [identifier]}).status_code == 201
    )
    ambiguous = post(medplum, "Patient", {"resourceType": "Patient"}, **{"If-None-Exist": criteria})
    assert ambiguous.status_code == 412, ambiguous.text


def test_transaction_rewrites_urn_uuids_and_answers_each_entry(medplum: MedplumServer) -> None:
    full_url = f"urn:uuid:{uuid.uuid4()}"
    tag = str(uuid.uuid4())
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": full_url,
                "resource": {"resourceType": "Patient"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {**observation("x", tag), "subject": {"reference": full_url}},
                "request": {
                    "method": "POST",
                    "url": "Observation",
                    "ifNoneExist": f"_tag={TAG_SYSTEM}|{tag}",
                },
            },
        ],
    }
    answer = post(medplum, "", bundle)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["type"] == "transaction-response"
    patient, obs = (entry["resource"] for entry in body["entry"])
    assert obs["subject"]["reference"] == f"Patient/{patient['id']}"
    for entry in body["entry"]:
        resource = entry["resource"]
        assert entry["response"]["status"] == "201 Created"
        version = resource["meta"]["versionId"]
        location = f"{medplum.base_url}/{resource['resourceType']}/{resource['id']}/_history/{version}"
        assert entry["response"]["location"] == location
        assert entry["response"]["etag"] == f'W/"{resource["meta"]["versionId"]}"'
    repeat = post(medplum, "", bundle).json()
    assert repeat["entry"][1]["response"]["status"] == "200 OK"
    assert repeat["entry"][1]["resource"]["id"] == obs["id"]


def test_failed_transaction_leaves_nothing_behind(medplum: MedplumServer) -> None:
    patient = new_patient(medplum)
    url = f"{medplum.base_url}/Patient/{patient['id']}"
    tag = str(uuid.uuid4())
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {**patient, "gender": "female"},
                "request": {"method": "PUT", "url": f"Patient/{patient['id']}"},
            },
            {
                "resource": observation(patient["id"], tag),
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "resource": {"resourceType": "Patient", "birthDate": "not a date"},
                "request": {"method": "POST", "url": "Patient"},
            },
        ],
    }
    refused = post(medplum, "", bundle)
    assert refused.status_code == 400 and "birthDate" in refused.text
    assert requests.get(url, timeout=30).json() == patient
    assert requests.get(f"{url}/_history", timeout=30).json()["total"] == 1
    assert (
        requests.get(
            f"{medplum.base_url}/Observation", params={"_tag": f"{TAG_SYSTEM}|{tag}"}, timeout=30
        ).json()["total"]
        == 0
    )


def test_batch_entries_succeed_or_fail_one_by_one(medplum: MedplumServer) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
            {
                "resource": {"resourceType": "Patient", "gender": 7},
                "request": {"method": "POST", "url": "Patient"},
            },
            {"request": {"method": "GET", "url": f"Patient/{uuid.uuid4()}"}},
        ],
    }
    body = post(medplum, "", bundle).json()
    assert body["type"] == "batch-response"
    assert [e["response"]["status"] for e in body["entry"]] == [
        "201 Created",
        "400 Bad Request",
        "404 Not Found",
    ]
    assert body["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"


def test_search_pages_with_links_until_every_match_is_read(medplum: MedplumServer) -> None:
    patient = new_patient(medplum)
    tag = str(uuid.uuid4())
    made = {post(medplum, "Observation", observation(patient["id"], tag)).json()["id"] for _ in range(5)}
    url: str | None = f"{medplum.base_url}/Observation?_tag={TAG_SYSTEM}|{tag}&_count=2"
    seen: list[str] = []
    pages = 0
    while url:
        page = requests.get(url, timeout=30).json()
        assert page["type"] == "searchset" and page["total"] == 5
        links = {link["relation"]: link["url"] for link in page["link"]}
        assert links["self"].startswith(f"{medplum.base_url}/Observation?")
        assert ("previous" in links) == (pages > 0)
        seen += [entry["resource"]["id"] for entry in page["entry"]]
        assert all(entry["search"]["mode"] == "match" for entry in page["entry"])
        pages += 1
        url = links.get("next")
    assert pages == 3 and len(seen) == 5 and set(seen) == made


def test_search_by_tag_identifier_patient_and_subject(medplum: MedplumServer) -> None:
    patient, other = new_patient(medplum), new_patient(medplum)
    tag = str(uuid.uuid4())
    mine = post(medplum, "Observation", observation(patient["id"], tag)).json()["id"]
    post(medplum, "Observation", observation(other["id"], tag))
    identifier = patient["identifier"][0]

    def ids(resource_type: str, **params: str) -> list[str]:
        answer = requests.get(f"{medplum.base_url}/{resource_type}", params=params, timeout=30)
        assert answer.status_code == 200, answer.text
        return [entry["resource"]["id"] for entry in answer.json().get("entry", [])]

    assert len(ids("Observation", _tag=f"{TAG_SYSTEM}|{tag}")) == 2
    assert ids("Patient", identifier=f"{identifier['system']}|{identifier['value']}") == [patient["id"]]
    assert ids("Observation", _tag=f"{TAG_SYSTEM}|{tag}", patient=patient["id"]) == [mine]
    assert ids("Observation", _tag=f"{TAG_SYSTEM}|{tag}", subject=f"Patient/{patient['id']}") == [mine]
    assert ids("Observation", _tag=f"{TAG_SYSTEM}|{tag}", **{"subject:Patient": patient["id"]}) == [mine]
    assert ids("Observation", _tag=f"{TAG_SYSTEM}|{uuid.uuid4()}") == []


def test_a_write_between_pages_starts_the_search_again(medplum: MedplumServer) -> None:
    """Pages are slices of one result (the server keeps it for its next links) only while nothing is
    written: a create, an update that moves a resource out of the result, or a delete is seen at once."""
    patient = new_patient(medplum)
    tag = str(uuid.uuid4())
    made = [post(medplum, "Observation", observation(patient["id"], tag)).json() for _ in range(3)]
    query = {"_tag": f"{TAG_SYSTEM}|{tag}", "_count": "2"}

    def page(offset: int = 0) -> dict[str, Any]:
        answer = requests.get(
            f"{medplum.base_url}/Observation", params={**query, "_offset": str(offset)}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    assert page()["total"] == 3
    added = post(medplum, "Observation", observation(patient["id"], tag)).json()
    assert page()["total"] == 4
    assert added["id"] in [e["resource"]["id"] for e in page(0)["entry"] + page(2)["entry"]]
    moved = {**made[0], "meta": {"tag": [{"system": TAG_SYSTEM, "code": "elsewhere"}]}}
    assert requests.put(
        f"{medplum.base_url}/Observation/{moved['id']}", json=moved, headers=FHIR_JSON, timeout=30
    ).ok
    assert page()["total"] == 3
    assert requests.delete(f"{medplum.base_url}/Observation/{made[1]['id']}", timeout=30).ok
    assert page()["total"] == 2
    assert {e["resource"]["id"] for e in page()["entry"]} == {made[2]["id"], added["id"]}


@pytest.mark.parametrize(
    "resource_type, element",
    [
        ("Observation", "subject"),
        ("Condition", "subject"),
        ("Procedure", "subject"),
        ("MedicationStatement", "subject"),
        ("AllergyIntolerance", "patient"),
    ],
)
def test_patient_parameter_matches_what_its_shared_definition_says(
    medplum: MedplumServer, resource_type: str, element: str
) -> None:
    """``patient`` is one definition over 32 types; each type is matched with its own member of it
    (``Observation.subject.where(resolve() is Patient)``, ``AllergyIntolerance.patient``): a reference
    to the Patient matches, one to a Group or to another Patient does not."""
    patient, other = new_patient(medplum), new_patient(medplum)
    group = post(medplum, "Group", {"resourceType": "Group", "type": "person", "actual": True}).json()
    tag = str(uuid.uuid4())
    minimal = {
        "Observation": {"status": "final", "code": {"text": "x"}},
        "Condition": {},
        "Procedure": {"status": "completed"},
        "MedicationStatement": {"status": "active", "medicationCodeableConcept": {"text": "x"}},
        "AllergyIntolerance": {
            "clinicalStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                        "code": "active",
                    }
                ]
            }
        },
    }[resource_type]

    def create(reference: str) -> str:
        body = {
            "resourceType": resource_type,
            **minimal,
            element: {"reference": reference},
            "meta": {"tag": [{"system": TAG_SYSTEM, "code": tag}]},
        }
        created = post(medplum, resource_type, body)
        assert created.status_code == 201, created.text
        return str(created.json()["id"])

    mine = create(f"Patient/{patient['id']}")
    create(f"Patient/{other['id']}")
    if element == "subject":
        create(f"Group/{group['id']}")
    for value in (patient["id"], f"Patient/{patient['id']}"):
        answer = requests.get(
            f"{medplum.base_url}/{resource_type}",
            params={"_tag": f"{TAG_SYSTEM}|{tag}", "patient": value},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert [e["resource"]["id"] for e in answer.json().get("entry", [])] == [mine]


@pytest.mark.parametrize(
    "query, says",
    [
        ({"value-quantity": "5"}, "quantity"),
        ({"no-such-parameter": "1"}, "no-such-parameter"),
        ({"code:text": "pain"}, ":text"),
        ({"_has:Observation:patient:code": "1"}, "_has"),
        ({"_count": "-1"}, "_count"),
        ({"_elements": "id"}, "_elements"),
    ],
)
def test_searches_the_matcher_cannot_answer_are_refused(
    medplum: MedplumServer, query: dict[str, str], says: str
) -> None:
    answer = requests.get(f"{medplum.base_url}/Observation", params=query, timeout=30)
    assert answer.status_code == 400
    assert says in outcome_text(answer)


@pytest.mark.parametrize(
    "method, path, body, headers, status, says",
    [
        ("GET", "Patient/no-such-patient", None, {}, 404, "Not found"),
        ("GET", "NoSuchType/1", None, {}, 404, "NoSuchType"),
        ("POST", "Patient", b"{not json", FHIR_JSON, 400, "not valid JSON"),
        ("POST", "Patient", b"{}", {"Content-Type": "text/plain"}, 415, ""),
        ("POST", "Patient", b'{"resourceType": "Patient", "gender": 7}', FHIR_JSON, 400, "Patient.gender"),
        ("POST", "Patient", b'{"resourceType": "Observation"}', FHIR_JSON, 400, "resource type"),
        ("DELETE", "metadata", None, {}, 405, "DELETE"),
        ("PATCH", "Patient/x/_history", None, {}, 405, "PATCH"),
        ("GET", "", None, {}, 400, "System-level search"),
        ("PUT", "Patient", b'{"resourceType": "Patient"}', FHIR_JSON, 400, "criteria"),
        ("GET", "Patient/x/_history", None, {}, 404, ""),
    ],
)
def test_every_error_is_an_operation_outcome(
    medplum: MedplumServer,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    status: int,
    says: str,
) -> None:
    answer = requests.request(method, f"{medplum.base_url}/{path}", data=body, headers=headers, timeout=30)
    assert answer.status_code == status, answer.text
    assert says in outcome_text(answer)


def test_seed_base_url_and_capability_statement(medplum_pool: MedplumPool, tmp_path: Path) -> None:
    seed = tmp_path / "seed.json"
    seed.write_text(
        json.dumps(
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {
                        "resource": {"resourceType": "Patient", "id": "seeded"},
                        "request": {"method": "PUT", "url": "Patient/seeded"},
                    }
                ],
            }
        )
    )
    base = "http://fhir.example.test/r4"
    server = MedplumServer(
        medplum_pool.directory, medplum_pool.node, ["--quiet", "--seed", str(seed), "--base-url", base]
    )
    try:
        assert server.base_url == base and server.address.startswith("http://127.0.0.1:")
        found = requests.get(f"{server.address}/Patient", timeout=30).json()
        assert [entry["fullUrl"] for entry in found["entry"]] == [f"{base}/Patient/seeded"]
        assert found["link"][0]["url"].startswith(f"{base}/Patient?")
        statement = requests.get(f"{server.address}/metadata", timeout=30).json()
        assert statement["fhirVersion"] == "4.0.1" and statement["implementation"]["url"] == base
        patient = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
        assert patient["conditionalCreate"] is True and "identifier" in {
            p["name"] for p in patient["searchParam"]
        }
    finally:
        server.stop()


@pytest.mark.parametrize(
    "options, says",
    [
        (["--host", "0.0.0.0"], "loopback"),
        (["--port", "seventy"], "--port"),
        (["--seed", "/no/such/seed.json"], "--seed"),
        (["--no-such-option"], "no-such-option"),
    ],
)
def test_bad_options_stop_the_server_with_a_message(
    medplum_pool: MedplumPool, options: list[str], says: str
) -> None:
    done = subprocess.run(
        [medplum_pool.node, "server.mjs", *options],
        cwd=medplum_pool.directory,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and says in done.stderr
