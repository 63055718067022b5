"""Write-back against an independent FHIR R4 server: Medplum's FHIR router (``tests/fhir-server``),
which validates every create against the R4 StructureDefinitions.

For every sandbox patient and clinical case: seed its resources (a batch of PUTs, so the server assigns
versions), assess what the server returned, write the drafts in both assessment forms, and check that
the server accepted them, that writing again creates nothing, and that each written resource reads back
as sent. Medplum refuses transactions with ``ifNoneExist`` beyond 8 entries; those Bundles go as
sequential conditional creates (``max_transaction_entries``).
"""

from __future__ import annotations

import copy
import json
from datetime import datetime
from typing import Any

import pytest
import requests
from medplum_server import MEDPLUM_TRANSACTION_LIMIT, MedplumServer
from writeback_fixtures import (
    AUTHOR,
    CASES_DIR,
    DATA_DIR,
    RECORDED,
    case_input,
    corpus_names,
    hand_assessment,
    hand_assessment_names,
    patient_input,
    seed_resources,
)

from smart_app.drafts.build import AssessmentAs, build_transaction
from smart_app.fhir.client import FhirClient
from smart_app.writeback import WriteOutcome, write_drafts

pytestmark = pytest.mark.medplum
FORMS: tuple[AssessmentAs, ...] = ("ClinicalImpression", "DocumentReference")
FHIR_JSON = {"Content-Type": "application/fhir+json", "Prefer": "return=representation"}


def seed(server: MedplumServer, resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """PUT each resource (a batch: one invalid resource does not stop the others); the stored copies."""
    entries = [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
        for r in resources
        if r.get("id")
    ]
    answer = requests.post(
        server.base_url,
        json={"resourceType": "Bundle", "type": "batch", "entry": entries},
        headers=FHIR_JSON,
        timeout=30,
    )
    assert answer.status_code == 200, answer.text[:500]
    return [e["resource"] for e in answer.json().get("entry", []) if isinstance(e.get("resource"), dict)]


def write(server: MedplumServer, bundle: dict[str, Any]) -> WriteOutcome:
    with FhirClient(server.base_url, max_retries=0) as client:
        return write_drafts(client, bundle, "transaction", max_transaction_entries=MEDPLUM_TRANSACTION_LIMIT)


def _rewrite(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, dict):
        out = {k: _rewrite(v, ids) for k, v in value.items()}
        if out.get("reference") in ids:
            out["reference"] = ids[out["reference"]]
        return out
    if isinstance(value, list):
        return [_rewrite(v, ids) for v in value]
    return value


def check_write(server: MedplumServer, bundle: dict[str, Any], label: str) -> tuple[int, int]:
    """Write twice and read back; returns (entries, created on the first write)."""
    first = write(server, bundle)
    assert first.ok, f"{label}: {first.errors} {first.notes}"
    assert len(first.written) == len(bundle["entry"])
    second = write(server, bundle)
    assert second.ok, f"{label} (repeat): {second.errors}"
    assert second.created == 0, f"{label}: the repeated write created {second.created}"
    assert [w.reference for w in second.written] == [w.reference for w in first.written]
    ids = {str(w.full_url): str(w.reference) for w in first.written}
    with FhirClient(server.base_url, max_retries=0) as client:
        for entry, written in zip(bundle["entry"], first.written, strict=True):
            if entry["resource"]["resourceType"] == "Device":
                continue
            stored = client.read(written.resource_type, str(written.id))
            stored.pop("id")
            meta = stored.pop("meta")
            expected = _rewrite(copy.deepcopy(entry["resource"]), ids)
            sent_meta = expected.pop("meta")
            assert {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")} == sent_meta, (
                label
            )
            assert stored == expected, f"{label}: {written.resource_type} reads back changed"
    return len(bundle["entry"]), first.created


@pytest.mark.parametrize("name", hand_assessment_names())
def test_hand_drafts_accepted(medplum: MedplumServer, name: str) -> None:
    for form in FORMS:
        bundle = build_transaction(
            hand_assessment(name),
            author=AUTHOR,
            encounter="Encounter/e1",
            recorded=RECORDED,
            assessment_as=form,
        )
        entries, created = check_write(medplum, bundle, f"{name}/{form}")
        assert created >= entries - 1  # all but perhaps the Device are new


def test_sequential_mode_accepted(medplum: MedplumServer) -> None:
    assessment = hand_assessment("red-flag-block")
    assessment["patient"] = "Patient/sequential-1"
    bundle = build_transaction(assessment, author=None, encounter=None, recorded=RECORDED)
    with FhirClient(medplum.base_url, max_retries=0) as client:
        first = write_drafts(client, bundle, "sequential")
        again = write_drafts(client, bundle, "sequential")
        assert first.ok and again.ok and again.created == 0
        prov = client.read("Provenance", str(first.written[-1].id))
    assert [t["reference"] for t in prov["target"]] == [str(w.reference) for w in first.written[1:-1]]


def test_transaction_over_the_limit_is_refused_by_medplum(medplum: MedplumServer) -> None:
    assessment = hand_assessment("all-flags")
    assessment["patient"] = "Patient/over-the-limit-1"  # drafts no other test wrote
    bundle = build_transaction(assessment, author=None, encounter=None, recorded=RECORDED)
    with FhirClient(medplum.base_url, max_retries=0) as client:
        refused = write_drafts(client, bundle, "transaction")
    assert not refused.ok and refused.status == 400 and refused.errors
    # read back by identifier: nothing of this draft is in the chart (the shared Device may be)
    assert refused.read_back and refused.result == "refused" and refused.unknown == []
    assert [w.resource_type for w in refused.written] in ([], ["Device"])


@pytest.mark.parametrize("kind, name", list(corpus_names()))
def test_corpus_drafts_accepted(medplum: MedplumServer, kind: str, name: str) -> None:
    from smart_app.clinical import assess, load_bundle

    path = (DATA_DIR if kind == "patient" else CASES_DIR) / name
    _, as_of = patient_input(path) if kind == "patient" else case_input(path)
    stored = seed(medplum, seed_resources(kind, name))
    patients = [r for r in stored if r["resourceType"] == "Patient"]
    others = [r for r in stored if r["resourceType"] != "Patient"]
    data = json.dumps(
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": r} for r in patients + others],
        }
    ).encode("utf-8")
    assessment = assess(load_bundle(data), as_of).to_json()
    assert all(
        s.get("version_id") for s in assessment["sources"] if s["reference"].split("/")[0] != "Patient"
    )
    for form in FORMS:
        bundle = build_transaction(
            assessment, author=AUTHOR, encounter=None, recorded=RECORDED, assessment_as=form
        )
        check_write(medplum, bundle, f"{name}/{form}")


def test_new_evidence_creates_new_drafts(medplum: MedplumServer) -> None:
    from smart_app.clinical import assess, load_bundle

    path = sorted(DATA_DIR.glob("*.json"))[0]
    _, as_of = patient_input(path)

    def drafts(resources: list[dict[str, Any]], moment: datetime) -> dict[str, Any]:
        data = json.dumps(
            {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}
        ).encode("utf-8")
        return build_transaction(
            assess(load_bundle(data), moment).to_json(), author=AUTHOR, encounter=None, recorded=RECORDED
        )

    stored = seed(medplum, seed_resources("patient", path.name))
    first = write(medplum, drafts(stored, as_of))
    assert first.ok
    source = next(
        r
        for r in stored
        if f"{r['resourceType']}/{r['id']}"
        in {
            s["reference"]
            for s in assess(
                load_bundle(
                    json.dumps(
                        {
                            "resourceType": "Bundle",
                            "type": "collection",
                            "entry": [{"resource": x} for x in stored],
                        }
                    ).encode()
                ),
                as_of,
            ).to_json()["sources"]
        }
        and r["resourceType"] != "Patient"
    )
    changed = {**source, "meta": {}}
    changed.pop("meta")
    changed.setdefault("note", []).append({"text": "amended"}) if source["resourceType"] in (
        "Observation",
        "Condition",
    ) else None
    restored = seed(medplum, [changed])
    assert restored[0]["meta"]["versionId"] != source["meta"]["versionId"]
    updated = [restored[0] if r is source else r for r in stored]
    second = write(medplum, drafts(updated, as_of))
    assert second.ok
    assert second.created == len(second.written) - 1  # everything but the Device is new
