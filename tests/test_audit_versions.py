"""Versions as the server gives them: ``audit list`` and ``audit verify`` on servers whose ``versionId``s
are not integers, the independent FHIR server (Medplum, UUID versions) and the sandbox with
``VERSION_IDS=opaque``; the written version is learned from the resource's history, never assumed.
Drafts written with an encounter reference ``Encounter/<id>`` on both."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from medplum_server import MEDPLUM_TRANSACTION_LIMIT, MedplumPool, MedplumServer

from smart_app import pipeline
from smart_app.audit.cli import run_list
from smart_app.audit.listing import list_writes
from smart_app.audit.source import BundleSource, FhirSource
from smart_app.audit.verify import verify_assessment
from smart_app.fhir.client import FhirClient
from smart_app.fhirjson import Ref
from smart_app.smart.context import check_context
from smart_app.smart.scopes import ScopeSet
from smart_app.smart.token import LaunchContext
from smart_app.writeback import write_drafts
from tests.audit_fixtures import AS_OF, AUTHOR, Sandbox, http_sandbox

DATA = Path(__file__).resolve().parent.parent / "launch" / "data"
#: Possible, red flag, probable with a WARN flag and a ServiceRequest, confirmed.
PATIENTS = ("apatel", "evance", "jkowalski", "lchen", "rsantos")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
FHIR_JSON = {"Content-Type": "application/fhir+json", "Prefer": "return=representation"}


def records(patient: str) -> list[dict[str, Any]]:
    """The patient's record and visits as the sandbox data has them (stored dates)."""
    out = []
    for path in (DATA / f"patient-{patient}.json", DATA / "encounters" / f"{patient}.json"):
        out += [e["resource"] for e in json.loads(path.read_text())["entry"]]
    return out


def latest_encounter(patient: str) -> str:
    encounters = [r for r in records(patient) if r["resourceType"] == "Encounter"]
    return max(encounters, key=lambda e: e["period"]["start"])["id"]


def seed(base: str, resources: list[dict[str, Any]]) -> None:
    entries = [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
        for r in resources
    ]
    answer = requests.post(
        base,
        json={"resourceType": "Bundle", "type": "batch", "entry": entries},
        headers=FHIR_JSON,
        timeout=60,
    )
    assert answer.status_code == 200, answer.text[:500]
    failed = [e["response"] for e in answer.json()["entry"] if not e["response"]["status"].startswith("20")]
    assert failed == [], failed[:3]


def write_with_encounter(
    client: FhirClient, patient: str, *, sequential_over: int | None = None
) -> dict[str, Any]:
    """What a launch with a bare encounter id does: the context normalised at the callback, then read,
    assess, draft and write through the app's pipeline."""
    context = check_context(
        LaunchContext(patient=patient, encounter=latest_encounter(patient)), client.base_url, ehr_name="EHR"
    )
    review = pipeline.review_patient(
        client,
        context.patient,
        ScopeSet.parse("user/*.cruds"),
        author=AUTHOR,
        encounter=context.encounter,
        as_of=AS_OF,
    )
    assert review.drafts is not None
    outcome = write_drafts(client, review.drafts, "transaction", max_transaction_entries=sequential_over)
    assert outcome.ok, outcome.to_json()
    refs = [w.reference for w in outcome.written if w.reference]
    return {
        "encounter": context.encounter,
        "refs": refs,
        "assessment": next(r for r in refs if r.startswith(("ClinicalImpression/", "DocumentReference/"))),
        "provenance": next(r for r in refs if r.startswith("Provenance/")),
        "classification": (review.assessment or {})["classification"],
    }


def assert_encounter_referenced(client: FhirClient, info: dict[str, Any]) -> None:
    expected = {"reference": info["encounter"]}
    for ref in info["refs"]:
        parsed = Ref.parse(ref)
        assert parsed is not None
        resource = client.read(parsed.type, parsed.id)
        if parsed.type == "ClinicalImpression":
            assert resource["encounter"] == expected
        elif parsed.type == "DocumentReference":
            assert resource["context"]["encounter"] == [expected]
        elif parsed.type == "ServiceRequest":
            assert resource["encounter"] == expected


def assert_listed_and_reproduced(client: FhirClient, written: dict[str, dict[str, Any]]) -> None:
    source = FhirSource(client)
    data, code = run_list(source)
    assert code == 0 and data["findings"] == [], data["findings"]
    got = {w["assessment"]: w for w in data["writes"]}
    assert set(got) == {i["assessment"] for i in written.values()}
    for listed in list_writes(source).writes:
        for resource in listed.resources:  # learned from the history, equal to the current version
            assert (
                resource.written_version is not None and resource.written_version == resource.current_version
            )
    for patient, info in written.items():
        write = got[info["assessment"]]
        assert write["status"] == "draft" and write["patient"] == f"Patient/{patient}"
        assert write["provenance"] == info["provenance"]
        report = verify_assessment(source, info["assessment"])
        assert report.reproduced, (patient, report.to_json())
        assert not any("written as version" in n or "not known" in n for n in report.notes), report.notes
        assert report.written["classification"] == info["classification"]


def edit_and_expect_change(
    client: FhirClient, base: str, info: dict[str, Any], headers: dict[str, str]
) -> None:
    """An edit after the write is reported against the version the app wrote, learned from history."""
    ref = Ref.parse(info["assessment"])
    assert ref is not None
    current = client.read(ref.type, ref.id)
    edited = copy.deepcopy(current)
    edited["note"] = [*edited.get("note", []), {"text": "Edited after the write."}]
    answer = requests.put(f"{base}/{ref.type}/{ref.id}", data=json.dumps(edited), headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text[:500]
    report = list_writes(FhirSource(client))
    write = next(w for w in report.writes if w.assessment == info["assessment"])
    assert write.status == "changed-since-written"
    main = next(r for r in write.resources if r.reference == info["assessment"])
    assert main.written_version == current["meta"]["versionId"] and main.changed == ["note"]
    assert [f.kind for f in report.findings] == ["changed-since-written"]


# --- the independent FHIR server (UUID versions) --------------------------------------------------------


@pytest.fixture
def own_medplum(medplum_pool: MedplumPool) -> Iterator[MedplumServer]:
    """A server of its own: the audit lists every write on the server, so it must hold only these."""
    server = MedplumServer(medplum_pool.directory, medplum_pool.node)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def medplum_writes(own_medplum: MedplumServer) -> Iterator[tuple[FhirClient, dict[str, dict[str, Any]]]]:
    with FhirClient(own_medplum.base_url, max_retries=0) as client:
        seed(own_medplum.base_url, [r for p in PATIENTS for r in records(p)])
        written = {
            p: write_with_encounter(client, p, sequential_over=MEDPLUM_TRANSACTION_LIMIT) for p in PATIENTS
        }
        yield client, written


@pytest.mark.medplum
def test_medplum_writes_with_encounters_are_listed_as_drafts_and_reproduced(medplum_writes):
    client, written = medplum_writes
    info = written["jkowalski"]
    versions = client.history(*info["assessment"].split("/"))
    assert len(versions) == 1 and UUID.match(versions[0]["meta"]["versionId"])
    for each in written.values():
        assert_encounter_referenced(client, each)
    assert_listed_and_reproduced(client, written)


@pytest.mark.medplum
def test_medplum_edit_after_the_write_is_found_against_the_uuid_version_written(medplum_writes, own_medplum):
    client, written = medplum_writes
    edit_and_expect_change(client, own_medplum.base_url, written["jkowalski"], FHIR_JSON)


# --- the sandbox with opaque version ids ----------------------------------------------------------------


@pytest.fixture
def opaque_sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    with http_sandbox(tmp_path, VERSION_IDS="opaque") as box:
        yield box


@pytest.mark.e2e
def test_opaque_sandbox_writes_with_encounters_are_listed_and_reproduced(opaque_sandbox: Sandbox):
    client = opaque_sandbox.client()
    written = {p: write_with_encounter(client, p) for p in PATIENTS}
    assert UUID.match(client.read(*written["apatel"]["assessment"].split("/"))["meta"]["versionId"])
    for each in written.values():
        assert_encounter_referenced(client, each)
    assert_listed_and_reproduced(client, written)
    headers = {**FHIR_JSON, "Authorization": f"Bearer {opaque_sandbox.token}"}
    edit_and_expect_change(client, opaque_sandbox.base, written["lchen"], headers)


def test_an_export_with_opaque_versions_is_ordered_by_last_updated():
    def version(vid: str, when: str, note: str) -> dict[str, Any]:
        return {
            "resourceType": "ClinicalImpression",
            "id": "ci1",
            "meta": {"versionId": vid, "lastUpdated": when},
            "note": [{"text": note}],
        }

    older = version("f3c1e7a0-0000-4000-8000-000000000002", "2026-11-24T10:00:00Z", "as written")
    newer = version("0a9b1c2d-0000-4000-8000-000000000001", "2026-11-25T08:00:00+01:00", "edited")
    source = BundleSource([newer, older])
    assert source.read("ClinicalImpression", "ci1")["note"][0]["text"] == "edited"
    assert [v["meta"]["versionId"] for v in source.history("ClinicalImpression", "ci1")] == [
        newer["meta"]["versionId"],
        older["meta"]["versionId"],
    ]


def test_history_follows_next_pages_under_the_base_and_skips_deletions():
    import responses

    from smart_app.fhir.errors import ForeignLinkError

    base = "https://ehr.test/fhir"

    def page(versions: list[str | None], next_url: str | None) -> dict[str, Any]:
        entries: list[dict[str, Any]] = [
            {"resource": {"resourceType": "Observation", "id": "o1", "meta": {"versionId": v}}}
            if v
            else {"request": {"method": "DELETE", "url": "Observation/o1"}}
            for v in versions
        ]
        links = [{"relation": "next", "url": next_url}] if next_url else []
        return {"resourceType": "Bundle", "type": "history", "entry": entries, "link": links}

    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, f"{base}/Observation/o1/_history", json=page(["c", None], f"{base}/p2"))
        rsps.add(responses.GET, f"{base}/p2", json=page(["b", "a"], None))
        versions = FhirClient(base, max_retries=0).history("Observation", "o1")
        assert [v["meta"]["versionId"] for v in versions] == ["c", "b", "a"]
        rsps.replace(responses.GET, f"{base}/p2", json=page(["b"], "https://elsewhere.test/fhir/p3"))
        with pytest.raises(ForeignLinkError):
            FhirClient(base, max_retries=0).history("Observation", "o1")
