"""Sandbox EHR FHIR server: bearer tokens and scopes, search and paging, read/vread/history, create with
If-None-Exist, transaction and batch Bundles, validation, faults."""

from __future__ import annotations

import gzip
import json
import re
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from launch.sandbox import create_app
from tests.sandbox_fixtures import FHIR_BASE, LOINC, PAIN_CODE, SandboxActions, make_sandbox

IDENT = "https://smart-app.example/fhir/identifier/draft"


@pytest.fixture
def token(actions: SandboxActions) -> str:
    return actions.access_token("launch patient/*.cruds")


def _ids(bundle) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


def _issue(response) -> str:
    assert response.json["resourceType"] == "OperationOutcome", response.json
    return response.json["issue"][0]["diagnostics"]


def _obs(patient: str = "p1", ident: str | None = None, **extra) -> dict:
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": PAIN_CODE}]},
        "subject": {"reference": f"Patient/{patient}"},
        **extra,
    }
    if ident:
        resource["identifier"] = [{"system": IDENT, "value": ident}]
    return resource


# -- authentication and scopes -----------------------------------------------------------------------------
def test_bearer_token_required(actions: SandboxActions, client):
    missing = client.get("/fhir/Patient/p1")
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert _issue(missing)
    bad = actions.fhir("GET", "/Patient/p1", "not-a-token")
    assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["WWW-Authenticate"]
    assert client.get("/fhir/metadata").status_code == 200  # open


def test_expired_access_token(data_dir, signing_key_path, client_key):
    app = make_sandbox(data_dir, signing_key_path, client_key, ACCESS_TOKEN_TTL=-1)
    acts = SandboxActions(app.test_client(), client_key)
    token = acts.access_token()
    assert acts.fhir("GET", "/Patient/p1", token).status_code == 401


def test_scope_per_type_and_interaction(actions: SandboxActions):
    token = actions.access_token("launch patient/Observation.rs patient/Patient.r")
    assert actions.fhir("GET", "/Observation/o1", token).status_code == 200
    assert actions.fhir("GET", "/Patient/p1", token).status_code == 200
    assert actions.fhir("GET", "/Patient?_id=p1", token).status_code == 403  # r without s
    forbidden = actions.fhir("GET", "/Condition?patient=p1", token)
    assert forbidden.status_code == 403 and forbidden.json["issue"][0]["code"] == "forbidden"
    assert forbidden.headers["WWW-Authenticate"] == 'Bearer error="insufficient_scope"'
    assert actions.fhir("POST", "/Observation", token, json=_obs()).status_code == 403


def test_v1_scopes(actions: SandboxActions):
    token = actions.access_token("launch patient/*.read")
    assert actions.fhir("GET", "/Condition?patient=p1", token).status_code == 200
    assert actions.fhir("POST", "/Observation", token, json=_obs()).status_code == 403
    token = actions.access_token("launch patient/Observation.write patient/Observation.read")
    assert actions.fhir("POST", "/Observation", token, json=_obs()).status_code == 201


def test_patient_compartment(actions: SandboxActions, token: str):
    assert actions.fhir("GET", "/Patient/p2", token).status_code == 403
    assert actions.fhir("GET", "/Observation/o-p2", token).status_code == 403
    other = actions.fhir("GET", "/Observation", token, query_string={"patient": "p2"})
    assert other.status_code == 200 and other.json["total"] == 0
    everything = actions.fhir("GET", "/Observation", token, query_string={"_count": "100"}).json
    assert everything["total"] == 12 and all(
        e["resource"]["subject"]["reference"] == "Patient/p1" for e in everything["entry"]
    )
    assert actions.fhir("POST", "/Observation", token, json=_obs("p2")).status_code == 403
    user = actions.access_token("launch user/*.rs")
    assert actions.fhir("GET", "/Patient/p2", user).status_code == 200


# -- search ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (
            {"patient": "p1", "code": f"{LOINC}|{PAIN_CODE}", "_count": "9"},
            ["o1", "o3", "o5", "o7", "o9", "o11"],
        ),
        ({"subject": "Patient/p1", "code": PAIN_CODE, "_count": "50"}, ["o1", "o3", "o5", "o7", "o9", "o11"]),
        ({"patient": "Patient/p1", "category": "vital-signs", "_count": "2"}, ["o2", "o4"]),
        ({"patient": "p1", "code": f"http://other|{PAIN_CODE}"}, []),
        ({"_id": "o1,o2"}, ["o1", "o2"]),
        (
            {"patient": "p1", "code": f"{LOINC}|", "_sort": "-_lastUpdated", "_count": "3"},
            ["o12", "o11", "o10"],
        ),
        ({"patient": "p1", "unknown-param": "x", "_count": "1"}, ["o1"]),
    ],
)
def test_search_params(actions: SandboxActions, token: str, params, expected):
    response = actions.fhir("GET", "/Observation", token, query_string=params)
    assert response.status_code == 200 and response.mimetype == "application/fhir+json"
    assert response.json["type"] == "searchset"
    assert _ids(response.json) == expected


def test_search_paging_follows_next_links(actions: SandboxActions, token: str):
    url = "/Observation?patient=p1"
    seen: list[str] = []
    pages = 0
    while url:
        bundle = actions.fhir("GET", url, token).json
        assert bundle["total"] == 12
        seen += _ids(bundle)
        pages += 1
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        assert all(u.startswith(FHIR_BASE + "/Observation?") for u in nxt)
        url = urlsplit(nxt[0]).path.removeprefix("/fhir") + "?" + urlsplit(nxt[0]).query if nxt else ""
    assert pages == 3 and seen == [f"o{i}" for i in range(1, 13)]


def test_search_count_limits_and_errors(actions: SandboxActions, token: str):
    summary = actions.fhir("GET", "/Observation?patient=p1&_count=0", token).json
    assert summary["total"] == 12 and "entry" not in summary
    assert actions.fhir("GET", "/Observation?_count=-1", token).status_code == 400
    assert actions.fhir("GET", "/Observation?_count=abc", token).status_code == 400
    modifier = actions.fhir("GET", "/Observation?code:text=pain", token)
    assert modifier.status_code == 400 and "modifier" in _issue(modifier)
    strict = actions.fhir("GET", "/Observation?foo=bar", token, headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400


def test_search_by_post(actions: SandboxActions, token: str):
    response = actions.fhir(
        "POST", "/Observation/_search", token, data={"patient": "p1", "code": PAIN_CODE, "_count": "100"}
    )
    assert response.status_code == 200 and len(response.json["entry"]) == 6


def test_identifier_and_tag_search(actions: SandboxActions, token: str):
    tagged = _obs(ident="abc", meta={"tag": [{"system": "https://t.example", "code": "draft"}]})
    assert actions.fhir("POST", "/Observation", token, json=tagged).status_code == 201
    assert actions.fhir("GET", f"/Observation?identifier={IDENT}|abc", token).json["total"] == 1
    assert actions.fhir("GET", "/Observation?identifier=abc", token).json["total"] == 1
    assert actions.fhir("GET", f"/Observation?identifier={IDENT}|zzz", token).json["total"] == 0
    assert actions.fhir("GET", "/Observation?_tag=https://t.example|draft", token).json["total"] == 1


# -- read, vread, history, update --------------------------------------------------------------------------
def test_read_vread_history_update(actions: SandboxActions, token: str):
    first = actions.fhir("GET", "/Observation/o1", token)
    assert first.status_code == 200 and first.headers["ETag"] == 'W/"1"'
    assert first.json["meta"]["versionId"] == "1"
    changed = {**first.json, "status": "amended"}
    updated = actions.fhir("PUT", "/Observation/o1", token, json=changed)
    assert updated.status_code == 200 and updated.headers["ETag"] == 'W/"2"'
    assert updated.headers["Location"] == f"{FHIR_BASE}/Observation/o1/_history/2"
    assert updated.json["meta"]["lastUpdated"] != first.json["meta"]["lastUpdated"]
    assert actions.fhir("GET", "/Observation/o1/_history/1", token).json["status"] == "final"
    assert actions.fhir("GET", "/Observation/o1/_history/2", token).json["status"] == "amended"
    assert actions.fhir("GET", "/Observation/o1/_history/3", token).status_code == 404
    history = actions.fhir("GET", "/Observation/o1/_history", token).json
    assert history["type"] == "history" and [
        e["resource"]["meta"]["versionId"] for e in history["entry"]
    ] == ["2", "1"]
    stale = actions.fhir("PUT", "/Observation/o1", token, json=changed, headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    fresh = actions.fhir("PUT", "/Observation/o1", token, json=changed, headers={"If-Match": 'W/"2"'})
    assert fresh.status_code == 200
    missing = actions.fhir("GET", "/Observation/nope", token)
    assert missing.status_code == 404 and missing.json["issue"][0]["code"] == "not-found"


def test_update_as_create_and_id_rules(actions: SandboxActions, token: str):
    created = actions.fhir("PUT", "/Observation/new-1", token, json=_obs(id="new-1"))
    assert created.status_code == 201
    mismatch = actions.fhir("PUT", "/Observation/new-2", token, json=_obs(id="other"))
    assert mismatch.status_code == 400 and "URL id" in _issue(mismatch)
    bad_id = actions.fhir("PUT", "/Observation/bad_id", token, json=_obs(id="bad_id"))
    assert bad_id.status_code == 400


# -- create and validation ---------------------------------------------------------------------------------
def test_create_assigns_id_and_version(actions: SandboxActions, token: str):
    response = actions.fhir("POST", "/Observation", token, json=_obs(id="client-chosen"))
    assert response.status_code == 201
    body = response.json
    assert body["id"] != "client-chosen" and body["meta"]["versionId"] == "1"
    assert response.headers["Location"] == f"{FHIR_BASE}/Observation/{body['id']}/_history/1"
    assert response.headers["ETag"] == 'W/"1"' and response.headers["Last-Modified"]
    minimal = actions.fhir("POST", "/Observation", token, json=_obs(), headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 201 and minimal.data == b""


def test_if_none_exist_zero_one_many(actions: SandboxActions, token: str):
    cond = {"If-None-Exist": f"identifier={IDENT}|d1"}
    first = actions.fhir("POST", "/Observation", token, json=_obs(ident="d1"), headers=cond)
    assert first.status_code == 201
    again = actions.fhir("POST", "/Observation", token, json=_obs(ident="d1"), headers=cond)
    assert again.status_code == 200 and again.json["id"] == first.json["id"]
    assert actions.fhir("GET", f"/Observation?identifier={IDENT}|d1", token).json["total"] == 1
    actions.fhir("POST", "/Observation", token, json=_obs(ident="dup"))
    actions.fhir("POST", "/Observation", token, json=_obs(ident="dup"))
    many = actions.fhir(
        "POST",
        "/Observation",
        token,
        json=_obs(ident="dup"),
        headers={"If-None-Exist": f"identifier={IDENT}|dup"},
    )
    assert many.status_code == 412 and "matched 2" in _issue(many)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"resourceType": "Nonsense"}, "resourceType"),
        ({"resourceType": "Condition", "subject": {"reference": "Patient/p1"}}, "does not match"),
        (["not", "an", "object"], "JSON object"),
        ({**_obs(), "status": ""}, "empty string"),
        ({**_obs(), "note": []}, "empty array"),
        ({**_obs(), "valueString": None}, "null"),
    ],
)
def test_validation_errors(actions: SandboxActions, token: str, body, fragment):
    response = actions.fhir("POST", "/Observation", token, json=body)
    assert response.status_code == 400 and fragment in _issue(response)


def test_malformed_requests(actions: SandboxActions, token: str):
    not_json = actions.fhir(
        "POST", "/Observation", token, data="{oops", headers={"Content-Type": "application/fhir+json"}
    )
    assert not_json.status_code == 400
    wrong_type = actions.fhir("POST", "/Observation", token, data="x", headers={"Content-Type": "text/plain"})
    assert wrong_type.status_code == 415
    unknown = actions.fhir("GET", "/Nonsense/1", token)
    assert unknown.status_code == 404 and unknown.json["resourceType"] == "OperationOutcome"
    not_allowed = actions.fhir("DELETE", "/Observation/o1", token)
    assert not_allowed.status_code == 405 and not_allowed.json["resourceType"] == "OperationOutcome"


# -- transaction and batch ---------------------------------------------------------------------------------
def _transaction(*entries) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def _post(resource: dict, *, full_url: str | None = None, if_none_exist: str | None = None) -> dict:
    request = {"method": "POST", "url": resource["resourceType"]}
    if if_none_exist:
        request["ifNoneExist"] = if_none_exist
    return {"fullUrl": full_url or f"urn:uuid:{uuid.uuid4()}", "resource": resource, "request": request}


def _drafts(ident: str) -> dict:
    impression_urn = f"urn:uuid:{uuid.uuid4()}"
    impression = {
        "resourceType": "ClinicalImpression",
        "status": "in-progress",
        "subject": {"reference": "Patient/p1"},
        "identifier": [{"system": IDENT, "value": ident}],
        "text": {
            "status": "generated",
            "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><a href="{impression_urn}">draft</a></div>',
        },
    }
    provenance = {
        "resourceType": "Provenance",
        "target": [{"reference": impression_urn}],
        "recorded": "2026-11-24T10:00:00Z",
        "agent": [{"who": {"reference": "Practitioner/dr-ada"}}],
        "entity": [{"role": "derivation", "what": {"reference": "Observation/o1/_history/1"}}],
    }
    return _transaction(
        _post(impression, full_url=impression_urn, if_none_exist=f"identifier={IDENT}|{ident}"),
        _post(provenance),
    )


def test_transaction_resolves_urn_uuid_and_is_idempotent(actions: SandboxActions, token: str):
    response = actions.fhir("POST", "", token, json=_drafts("t1"))
    assert response.status_code == 200, response.json
    bundle = response.json
    assert bundle["type"] == "transaction-response"
    first, second = bundle["entry"]
    assert first["response"]["status"] == "201 Created" and second["response"]["status"] == "201 Created"
    impression_id = first["resource"]["id"]
    assert first["response"]["location"] == f"ClinicalImpression/{impression_id}/_history/1"
    assert first["response"]["etag"] == 'W/"1"' and first["response"]["lastModified"]
    provenance = actions.fhir("GET", f"/Provenance/{second['resource']['id']}", token).json
    assert provenance["target"] == [{"reference": f"ClinicalImpression/{impression_id}"}]
    assert f"ClinicalImpression/{impression_id}" in first["resource"]["text"]["div"]
    retry = actions.fhir("POST", "", token, json=_drafts("t1")).json
    assert retry["entry"][0]["response"]["status"] == "200 OK"
    assert retry["entry"][0]["response"]["location"] == f"ClinicalImpression/{impression_id}/_history/1"
    assert actions.fhir("GET", f"/ClinicalImpression?identifier={IDENT}|t1", token).json["total"] == 1


def test_transaction_is_all_or_nothing(actions: SandboxActions, token: str, sandbox_app):
    store = sandbox_app.extensions["sandbox"].store
    before = store.count()
    bad = _drafts("t2")
    bad["entry"].append(_post({"resourceType": "Observation", "status": ""}))
    response = actions.fhir("POST", "", token, json=bad)
    assert response.status_code == 400 and "Bundle.entry[2]" in _issue(response)
    assert store.count() == before
    # A failure found while applying (after earlier entries were written) is undone too.
    late = _drafts("t3")
    late["entry"].append({"request": {"method": "GET", "url": "Observation/does-not-exist"}})
    response = actions.fhir("POST", "", token, json=late)
    assert response.status_code == 404 and store.count() == before
    assert actions.fhir("GET", f"/ClinicalImpression?identifier={IDENT}|t3", token).json["total"] == 0


def test_transaction_refusals(actions: SandboxActions, token: str, sandbox_app):
    store = sandbox_app.extensions["sandbox"].store
    before = store.count()
    dangling = _transaction(_post(_obs(subject={"reference": f"urn:uuid:{uuid.uuid4()}"})))
    assert actions.fhir("POST", "", token, json=dangling).status_code == 400
    other_patient = _transaction(_post(_obs()), _post(_obs("p2")))
    assert actions.fhir("POST", "", token, json=other_patient).status_code == 403
    actions.fhir("POST", "/Observation", token, json=_obs(ident="twice"))
    actions.fhir("POST", "/Observation", token, json=_obs(ident="twice"))
    before = store.count()
    many = _transaction(_post(_obs(), if_none_exist=f"identifier={IDENT}|twice"))
    assert actions.fhir("POST", "", token, json=many).status_code == 412
    duplicate_urls = _transaction(_post(_obs(), full_url="urn:uuid:1"), _post(_obs(), full_url="urn:uuid:1"))
    assert actions.fhir("POST", "", token, json=duplicate_urls).status_code == 400
    not_bundle = actions.fhir("POST", "", token, json={"resourceType": "Bundle", "type": "collection"})
    assert not_bundle.status_code == 400
    assert store.count() == before


def test_transaction_put_and_get(actions: SandboxActions, token: str):
    patient_urn = f"urn:uuid:{uuid.uuid4()}"
    bundle = _transaction(
        {
            "fullUrl": patient_urn,
            "resource": {"resourceType": "Observation", **_obs(), "id": "put-1"},
            "request": {"method": "PUT", "url": "Observation/put-1"},
        },
        {"request": {"method": "GET", "url": "Observation?_id=put-1"}},
    )
    response = actions.fhir("POST", "", token, json=bundle).json
    assert response["entry"][0]["response"]["status"] == "201 Created"
    assert response["entry"][1]["resource"]["total"] == 1


def test_batch_entries_are_independent(actions: SandboxActions, token: str):
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            _post(_obs()),
            _post({"resourceType": "Observation", "status": ""}),
            {"request": {"method": "GET", "url": "Observation?patient=p1&code=" + PAIN_CODE}},
            {"request": {"method": "GET", "url": "Patient/p1"}},
            {"request": {"method": "GET", "url": "Patient/p2"}},
        ],
    }
    response = actions.fhir("POST", "", token, json=bundle)
    assert response.status_code == 200
    entries = response.json["entry"]
    assert response.json["type"] == "batch-response"
    assert [e["response"]["status"] for e in entries] == [
        "201 Created",
        "400 Bad Request",
        "200 OK",
        "200 OK",
        "403 Forbidden",
    ]
    assert entries[1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert entries[2]["resource"]["total"] == 7
    assert entries[3]["resource"]["id"] == "p1"


# -- faults, compression, loading --------------------------------------------------------------------------
def test_faults_by_resource_type(data_dir, signing_key_path, client_key):
    faults = {
        "Observation": {"status": 500},
        "Condition": {"status": 429, "retry_after": 2, "times": 1},
        "Patient": {"status": 502, "body": "<html>proxy</html>"},
    }
    app = make_sandbox(data_dir, signing_key_path, client_key, FAULTS=faults)
    acts = SandboxActions(app.test_client(), client_key)
    token = acts.access_token()
    failed = acts.fhir("GET", "/Observation?patient=p1", token)
    assert failed.status_code == 500 and failed.json["resourceType"] == "OperationOutcome"
    limited = acts.fhir("GET", "/Condition?patient=p1", token)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "2"
    assert acts.fhir("GET", "/Condition?patient=p1", token).status_code == 200
    html = acts.fhir("GET", "/Patient/p1", token)
    assert html.status_code == 502 and html.mimetype == "text/html"


def test_fault_transaction_and_after_commit(data_dir, signing_key_path, client_key):
    app = make_sandbox(data_dir, signing_key_path, client_key, FAULTS={"transaction": {"status": 500}})
    acts = SandboxActions(app.test_client(), client_key)
    token = acts.access_token()
    assert acts.fhir("POST", "", token, json=_drafts("f1")).status_code == 500
    assert acts.fhir("GET", f"/ClinicalImpression?identifier={IDENT}|f1", token).json["total"] == 0
    app = make_sandbox(
        data_dir,
        signing_key_path,
        client_key,
        FAULTS={"transaction": {"status": 504, "after_commit": True, "times": 1}},
    )
    acts = SandboxActions(app.test_client(), client_key)
    token = acts.access_token()
    assert acts.fhir("POST", "", token, json=_drafts("f2")).status_code == 504
    assert acts.fhir("GET", f"/ClinicalImpression?identifier={IDENT}|f2", token).json["total"] == 1
    retry = acts.fhir("POST", "", token, json=_drafts("f2")).json
    assert retry["entry"][0]["response"]["status"] == "200 OK"


def test_fault_delay(data_dir, signing_key_path, client_key):
    app = make_sandbox(data_dir, signing_key_path, client_key, FAULTS={"delay": 0.2})
    acts = SandboxActions(app.test_client(), client_key)
    token = acts.access_token()
    started = time.monotonic()
    assert acts.fhir("GET", "/Patient/p1", token).status_code == 200
    assert time.monotonic() - started >= 0.2


def test_gzip_when_accepted(actions: SandboxActions, token: str):
    plain = actions.fhir("GET", "/Observation?_count=100", token)
    zipped = actions.fhir("GET", "/Observation?_count=100", token, headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(zipped.data)) == plain.json


def test_transaction_bundle_file_loaded_with_references(actions: SandboxActions):
    token = actions.access_token(patient="p3")
    bundle = actions.fhir("GET", "/Observation?patient=p3", token).json
    assert _ids(bundle) == ["o-p3"] and bundle["entry"][0]["resource"]["subject"] == {
        "reference": "Patient/p3"
    }


def test_project_patient_data_loads(signing_key_path, tmp_path: Path):
    app = create_app({"TESTING": True, "SIGNING_KEY_PATH": str(signing_key_path)})
    store = app.extensions["sandbox"].store
    patients = store.all_of_type("Patient")
    assert len(patients) >= 8
    assert store.read("Practitioner", "dr-ada") is not None
    with pytest.raises(ValueError, match="not JSON"):
        (tmp_path / "broken.json").write_text("{")
        create_app({"TESTING": True, "SIGNING_KEY_PATH": str(signing_key_path), "DATA_DIR": str(tmp_path)})


# -- server-chosen version ids and proxied Location headers ------------------------------------------------
UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def test_opaque_version_ids(data_dir, signing_key_path, client_key):
    app = make_sandbox(data_dir, signing_key_path, client_key, VERSION_IDS="opaque")
    acts = SandboxActions(app.test_client(), client_key)
    token = acts.access_token()
    first = acts.fhir("GET", "/Observation/o1", token)
    v1 = first.json["meta"]["versionId"]
    assert re.fullmatch(UUID_RE, v1) and first.headers["ETag"] == f'W/"{v1}"'
    updated = acts.fhir("PUT", "/Observation/o1", token, json={**first.json, "status": "amended"})
    v2 = updated.json["meta"]["versionId"]
    assert re.fullmatch(UUID_RE, v2) and v2 != v1
    assert updated.headers["Location"] == f"{FHIR_BASE}/Observation/o1/_history/{v2}"
    assert acts.fhir("GET", f"/Observation/o1/_history/{v1}", token).json["status"] == "final"
    history = acts.fhir("GET", "/Observation/o1/_history", token).json["entry"]
    assert [e["resource"]["meta"]["versionId"] for e in history] == [v2, v1]
    assert [e["request"]["method"] for e in history] == ["PUT", "POST"]
    stale = {"If-Match": f'W/"{v1}"'}
    assert acts.fhir("PUT", "/Observation/o1", token, json=updated.json, headers=stale).status_code == 412
    fresh = {"If-Match": f'W/"{v2}"'}
    assert acts.fhir("PUT", "/Observation/o1", token, json=updated.json, headers=fresh).status_code == 200
    written = acts.fhir("POST", "", token, json=_drafts("opaque")).json["entry"][0]
    vid = written["resource"]["meta"]["versionId"]
    assert re.fullmatch(UUID_RE, vid) and written["response"]["etag"] == f'W/"{vid}"'
    assert written["response"]["location"].endswith(f"/_history/{vid}")


def test_location_names_the_server_own_base_behind_a_proxy(data_dir, signing_key_path, client_key):
    internal = "http://internal.example:8080/fhir"
    app = make_sandbox(data_dir, signing_key_path, client_key, LOCATION_BASE=internal)
    acts = SandboxActions(app.test_client(), client_key)
    token = acts.access_token()
    created = acts.fhir("POST", "/Observation", token, json=_obs())
    assert created.headers["Location"] == f"{internal}/Observation/{created.json['id']}/_history/1"
    entry = acts.fhir("POST", "", token, json=_drafts("proxied")).json["entry"][0]
    assert (
        entry["response"]["location"] == f"{internal}/ClinicalImpression/{entry['resource']['id']}/_history/1"
    )
    assert entry["fullUrl"].startswith(FHIR_BASE + "/")  # links and fullUrls stay on the public base
    page = acts.fhir("GET", "/Observation?patient=p1&_count=2", token).json
    assert all(link["url"].startswith(FHIR_BASE + "/") for link in page["link"])
