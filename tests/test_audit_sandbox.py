"""Auditor tools end to end against the sandbox EHR over HTTP .

Writes go through the app's own pipeline and write-back; tampering goes through the FHIR API (PUT,
POST) where the sandbox offers it. The sandbox has no DELETE interaction, so the deleted-Provenance case
removes it from the sandbox's store directly (``Store.drop_version``, its rollback hook).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import requests
from criteria_support import hypothetical_release

from smart_app.audit.cli import run_list, run_verify
from smart_app.audit.listing import list_writes
from smart_app.audit.source import FhirSource
from smart_app.audit.verify import verify_assessment
from smart_app.cli import main as cli_main
from smart_app.fhirjson import Ref
from smart_app.vocabulary import (
    CLASSIFICATION_EXTENSION,
    CLASSIFICATION_SYSTEM,
    NEXT_STEP_EXTENSION,
    NEXT_STEP_SYSTEM,
    UNAVAILABLE_EXTENSION,
    WORKFLOW_CODE,
    WORKFLOW_SYSTEM,
)
from tests.audit_fixtures import AUTHOR, Sandbox

pytestmark = pytest.mark.e2e

PATIENTS = sorted(p.stem.removeprefix("patient-") for p in Path("launch/data").glob("patient-*.json"))
#: A mix of outcomes: possible, red flag (BLOCK, DetectedIssue), probable with a WARN flag and a
#: ServiceRequest, confirmed with surgical referral, confirmed with therapeutic injection.
WRITE_SET = [p for p in ("apatel", "evance", "jkowalski", "lchen", "rsantos") if p in PATIENTS] or PATIENTS[
    :4
]


def _put(box: Sandbox, resource: dict[str, Any]) -> dict[str, Any]:
    response = requests.put(
        f"{box.base}/{resource['resourceType']}/{resource['id']}",
        data=json.dumps(resource),
        headers={
            "Authorization": f"Bearer {box.token}",
            "Content-Type": "application/fhir+json",
            "Accept": "application/fhir+json",
            "Prefer": "return=representation",
        },
        timeout=10,
    )
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


def _read(box: Sandbox, ref: str) -> dict[str, Any]:
    r = Ref.parse(ref)
    assert r is not None
    return dict(box.client().read(r.type, r.id))


def _source(box: Sandbox) -> FhirSource:
    return FhirSource(box.client())


@pytest.fixture
def written(sandbox: Sandbox) -> Sandbox:
    for patient in WRITE_SET:
        sandbox.write_for(patient)
    return sandbox


def _with_request(box: Sandbox) -> dict[str, Any]:
    info = next(
        (i for i in box.written.values() if any(r.startswith("ServiceRequest/") for r in i["refs"])), None
    )
    if info is None:
        info = box.write_for(next(p for p in PATIENTS if p not in box.written and _has_suggestion(box, p)))
    return info


def _has_suggestion(box: Sandbox, patient: str) -> bool:
    from smart_app import pipeline
    from smart_app.smart.scopes import ScopeSet

    review = pipeline.review_patient(
        box.client(), patient, ScopeSet.parse("user/*.rs"), author=AUTHOR, encounter=None
    )
    return bool(
        review.drafts
        and any(e["resource"]["resourceType"] == "ServiceRequest" for e in review.drafts["entry"])
    )


def test_list_finds_exactly_the_writes(written: Sandbox) -> None:
    data, code = run_list(_source(written))
    assert code == 0, data["findings"]
    assert data["findings"] == []
    got = {w["assessment"]: w for w in data["writes"]}
    assert set(got) == {i["assessment"] for i in written.written.values()}
    for info in written.written.values():
        write = got[info["assessment"]]
        assert write["patient"] == info["patient"]
        assert write["provenance"] == info["provenance"]
        assert sorted(write["resources"]) == sorted(
            r for r in info["refs"] if not r.startswith(("Provenance/", "Device/"))
        )
        assert write["status"] == "draft"
        assert write["author"] == AUTHOR
        assert write["criteria"] == {
            "url": "https://smart-app.example/fhir/criteria/back-mice",
            "version": "1.1.0",  # new writes use the newest release
        }
        assert write["written_at"].startswith("2026-11-24T10:00:00")
    one = written.written[WRITE_SET[0]]
    only, _ = run_list(_source(written), patient=WRITE_SET[0])
    assert [w["assessment"] for w in only["writes"]] == [one["assessment"]]


def test_rewrite_with_same_evidence_adds_no_write(written: Sandbox) -> None:
    before = len(list_writes(_source(written)).writes)
    written.write_for(WRITE_SET[0])
    assert len(list_writes(_source(written)).writes) == before


def test_verify_reproduces_every_untampered_write(sandbox: Sandbox) -> None:
    for patient in PATIENTS:
        sandbox.write_for(patient)
    written = sandbox
    assert len(list_writes(_source(written)).writes) == len(PATIENTS)
    for info in written.written.values():
        report = verify_assessment(_source(written), info["assessment"])
        assert report.reproduced, (info["patient"], report.to_json())
        assert report.provenance == info["provenance"]
        assert report.criteria["version"] == "1.1.0"
        assert report.written["classification"] == info["assessment_json"]["classification"]
        assert report.written["next_step"] == info["assessment_json"]["next_step"]
        assert not any("narrative" in n for n in report.notes), report.notes  # read from the codings
        assert all(s["status"] == "read" and s["version"] for s in report.sources), report.sources


def test_assessment_written_as_document_reference(sandbox: Sandbox) -> None:
    infos = [sandbox.write_for(p, assessment_as="DocumentReference") for p in WRITE_SET[:3]]
    data, code = run_list(_source(sandbox))
    assert code == 0, data["findings"]
    assert sorted(w["assessment"] for w in data["writes"]) == sorted(i["assessment"] for i in infos)
    assert all(
        w["assessment"].startswith("DocumentReference/") and w["status"] == "draft" for w in data["writes"]
    )
    for info in infos:
        report = verify_assessment(_source(sandbox), info["assessment"])
        assert report.reproduced, report.to_json()
        assert report.written["classification"] == info["assessment_json"]["classification"]


def test_source_amended_after_the_write(written: Sandbox) -> None:
    info = written.written[WRITE_SET[0]]
    prov = _read(written, info["provenance"])
    entity = next(
        e["what"]["reference"] for e in prov["entity"] if e["what"]["reference"].startswith("Observation/")
    )
    obs = _read(written, entity.split("/_history/")[0])
    changed = copy.deepcopy(obs)
    changed["status"] = "amended"
    changed["note"] = [{"text": "amended after the write"}]
    _put(written, changed)

    data, code = run_list(_source(written))
    assert code == 1
    assert [(f["kind"], f["reference"]) for f in data["findings"]] == [("source-amended", entity)]
    report = verify_assessment(_source(written), info["assessment"])
    assert report.reproduced, report.to_json()  # the recorded version is what counts
    assert any("has changed since the write" in n for n in report.notes)


def test_drafted_resource_edited(written: Sandbox) -> None:
    info = _with_request(written)
    sr_ref = next(r for r in info["refs"] if r.startswith("ServiceRequest/"))
    sr = _read(written, sr_ref)
    sr["bodySite"] = [{"text": "right forearm"}]
    stored = _put(written, sr)

    data, code = run_list(_source(written))
    assert code == 1
    kinds = [(f["kind"], f["reference"]) for f in data["findings"]]
    assert kinds == [("changed-since-written", f"{sr_ref}/_history/{stored['meta']['versionId']}")]
    assert "bodySite" in data["findings"][0]["detail"]
    write = next(w for w in data["writes"] if w["assessment"] == info["assessment"])
    assert write["status"] == "changed-since-written"

    report, code = run_verify(_source(written), info["assessment"])
    assert code == 1 and report["reproduced"] is False
    assert [d["field"] for d in report["differences"]] == ["procedure_suggestion"]
    diff = report["differences"][0]
    assert diff["written"]["body_site"]["text"] == "right forearm"
    assert diff["recomputed"]["body_site"]["text"] != "right forearm"


def _other(code: str, choices: tuple[str, str]) -> str:
    return choices[0] if code != choices[0] else choices[1]


def test_assessment_conclusion_edited(written: Sandbox) -> None:
    """The coded classification is what verify compares: editing the coding is a difference even though
    the narrative still states the original (which verify notes)."""
    info = written.written[WRITE_SET[0]]
    ci = _read(written, info["assessment"])
    original = info["assessment_json"]["classification"]
    other = _other(original, ("possible", "unlikely"))
    coding = ci["finding"][0]["itemCodeableConcept"]["coding"][0]
    assert (coding["system"], coding["code"]) == (CLASSIFICATION_SYSTEM, original)
    coding["code"] = other
    _put(written, ci)
    data, code = run_list(_source(written))
    assert code == 1 and [f["kind"] for f in data["findings"]] == ["changed-since-written"]
    report = verify_assessment(_source(written), info["assessment"])
    assert not report.reproduced
    assert [(d.field, d.written, d.recomputed) for d in report.differences] == [
        ("classification", other, original)
    ]
    assert any(f"narrative states classification {original!r}" in n for n in report.notes), report.notes


def test_next_step_coding_edited_to_an_unknown_code(written: Sandbox) -> None:
    info = written.written[WRITE_SET[0]]
    ci = _read(written, info["assessment"])
    step = info["assessment_json"]["next_step"]
    [ext] = [e for e in ci["extension"] if e["url"] == NEXT_STEP_EXTENSION]
    assert ext["valueCoding"]["system"] == NEXT_STEP_SYSTEM and ext["valueCoding"]["code"] == step
    ext["valueCoding"]["code"] = "wait-and-see"
    _put(written, ci)
    report = verify_assessment(_source(written), info["assessment"])
    assert [(d.field, d.written, d.recomputed) for d in report.differences] == [
        ("next_step", "wait-and-see", step)
    ]


def test_narrative_edit_alone_is_noted_not_compared(written: Sandbox) -> None:
    info = written.written[WRITE_SET[0]]
    ci = _read(written, info["assessment"])
    original = info["assessment_json"]["classification"]
    other = _other(original, ("possible", "unlikely"))
    ci["text"]["div"] = ci["text"]["div"].replace(f"Classification: {original};", f"Classification: {other};")
    _put(written, ci)
    data, code = run_list(_source(written))
    assert code == 1 and [f["kind"] for f in data["findings"]] == ["changed-since-written"]
    report = verify_assessment(_source(written), info["assessment"])
    assert report.reproduced, report.to_json()
    assert report.written["classification"] == original
    assert any(f"narrative states classification {other!r}" in n for n in report.notes), report.notes


def test_older_write_without_codes_is_read_from_the_narrative(written: Sandbox) -> None:
    """A write made before the conclusion was coded: no coding on the finding, no next-step extension."""
    info = written.written[WRITE_SET[0]]
    ci = _read(written, info["assessment"])
    del ci["extension"]
    del ci["finding"][0]["itemCodeableConcept"]["coding"]
    _put(written, ci)
    report = verify_assessment(_source(written), info["assessment"])
    assert report.reproduced, report.to_json()
    assert report.written["classification"] == info["assessment_json"]["classification"]
    assert report.written["next_step"] == info["assessment_json"]["next_step"]
    assert sum("read from the narrative" in n for n in report.notes) == 2, report.notes

    original = info["assessment_json"]["classification"]
    other = _other(original, ("possible", "unlikely"))
    ci = _read(written, info["assessment"])
    ci["text"]["div"] = ci["text"]["div"].replace(f"Classification: {original};", f"Classification: {other};")
    _put(written, ci)
    report = verify_assessment(_source(written), info["assessment"])
    assert [(d.field, d.written, d.recomputed) for d in report.differences] == [
        ("classification", other, original)
    ]


def test_document_reference_coded_conclusion(sandbox: Sandbox) -> None:
    info = sandbox.write_for(WRITE_SET[0], assessment_as="DocumentReference")
    doc = _read(sandbox, info["assessment"])
    by_url = {e["url"]: e["valueCoding"] for e in doc["extension"]}
    assert by_url[CLASSIFICATION_EXTENSION]["code"] == info["assessment_json"]["classification"]
    assert by_url[NEXT_STEP_EXTENSION]["code"] == info["assessment_json"]["next_step"]
    report = verify_assessment(_source(sandbox), info["assessment"])
    assert report.reproduced and not any("narrative" in n for n in report.notes), report.to_json()
    original = info["assessment_json"]["classification"]
    other = _other(original, ("possible", "unlikely"))
    for ext in doc["extension"]:
        if ext["url"] == CLASSIFICATION_EXTENSION:
            ext["valueCoding"] = {"system": CLASSIFICATION_SYSTEM, "code": other}
    _put(sandbox, doc)
    report = verify_assessment(_source(sandbox), info["assessment"])
    assert [(d.field, d.written, d.recomputed) for d in report.differences] == [
        ("classification", other, original)
    ]


def test_signed_off_is_not_a_finding(written: Sandbox) -> None:
    info = written.written[WRITE_SET[0]]
    ci = _read(written, info["assessment"])
    ci["status"] = "completed"
    _put(written, ci)
    data, code = run_list(_source(written))
    assert code == 0, data["findings"]
    assert next(w for w in data["writes"] if w["assessment"] == info["assessment"])["status"] == "signed"
    assert verify_assessment(_source(written), info["assessment"]).reproduced


def test_provenance_deleted(written: Sandbox) -> None:
    info = written.written[WRITE_SET[1]]
    prov_id = info["provenance"].split("/")[1]
    written.state.store.drop_version("Provenance", prov_id)  # no DELETE interaction in the sandbox
    data, code = run_list(_source(written))
    assert code == 1
    expected = sorted(r for r in info["refs"] if not r.startswith(("Provenance/", "Device/")))
    assert sorted(f["reference"] for f in data["findings"]) == expected
    assert {f["kind"] for f in data["findings"]} == {"missing-provenance"}
    orphan = next(w for w in data["writes"] if w["assessment"] == info["assessment"])
    assert orphan["provenance"] is None and sorted(orphan["resources"]) == expected
    report = verify_assessment(_source(written), info["assessment"])
    assert not report.reproduced and [d.field for d in report.differences] == ["provenance"]


def test_resource_written_by_something_else_with_our_tag(written: Sandbox) -> None:
    patient = written.written[WRITE_SET[0]]["patient"]
    foreign = {
        "resourceType": "ClinicalImpression",
        "meta": {"tag": [{"system": WORKFLOW_SYSTEM, "code": WORKFLOW_CODE}]},
        "status": "in-progress",
        "subject": {"reference": patient},
        "effectiveDateTime": "2026-11-24T11:00:00Z",
        "summary": "written by another tool",
    }
    result = written.client().create(foreign)
    ref = f"ClinicalImpression/{result.id}"
    data, code = run_list(_source(written))
    assert code == 1
    assert [(f["kind"], f["reference"]) for f in data["findings"]] == [("tag-without-provenance", ref)]
    assert ref not in {w["assessment"] for w in data["writes"]}
    report = verify_assessment(_source(written), ref)
    assert not report.reproduced and report.differences[0].field == "provenance"


def test_a_newer_hypothetical_release_does_not_disturb_earlier_writes(
    written: Sandbox, tmp_path: Path
) -> None:
    def newer(data: dict[str, Any]) -> None:
        data["thresholds"]["relief_percent"] = 50
        data["thresholds"]["pain_high"] = 5

    extra = tmp_path / "criteria"
    extra.mkdir()
    hypothetical_release(extra, "9.1.0", newer)

    for info in written.written.values():
        report = verify_assessment(_source(written), info["assessment"], criteria_dirs=[extra])
        assert report.reproduced, report.to_json()
        assert report.criteria["version"] == "1.1.0"

    from smart_app.audit.verify import registry_with

    registry = registry_with([extra])
    assert {"1.0.0", "1.1.0", "9.1.0"} <= set(registry.versions())


def _export(box: Sandbox, info: dict[str, Any]) -> dict[str, Any]:
    """An offline export: the written resources, their Provenance and every source at its version."""
    client = box.client()
    entries: list[dict[str, Any]] = []
    for ref in info["refs"]:
        entries.append({"resource": _read(box, ref)})
    prov = _read(box, info["provenance"])
    for entity in prov.get("entity", []):
        r = Ref.parse(entity["what"]["reference"])
        assert r is not None and r.version
        resource = FhirSource(client).vread(r.type, r.id, r.version)
        entries.append({"fullUrl": f"{box.base}/{r}", "resource": resource})
    entries.append({"resource": _read(box, info["patient"])})
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def test_offline_bundle_verify_and_list(
    written: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    info = written.written[WRITE_SET[2]]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(_export(written, info)))
    assert cli_main(["audit", "verify", "--bundle", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reproduced"] is True and out["differences"] == []
    assert cli_main(["audit", "list", "--bundle", str(path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [w["assessment"] for w in listed["writes"]] == [info["assessment"]]


def test_cli_against_the_server(
    written: Sandbox, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SMART_APP_FHIR_TOKEN", written.token)
    assert cli_main(["audit", "list", "--fhir-base", written.base, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["writes"]) == len(written.written)
    assert cli_main(["audit", "list", "--fhir-base", written.base, "--since", "2099-01-01", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["writes"] == []
    assert cli_main(["audit", "list", "--fhir-base", written.base]) == 0
    assert "write(s) by the app" in capsys.readouterr().out
    info = written.written[WRITE_SET[0]]
    assert cli_main(["audit", "verify", "--fhir-base", written.base, "--assessment", info["assessment"]]) == 0
    assert "REPRODUCED" in capsys.readouterr().out
    # Unusable input: exit 2.
    assert cli_main(["audit", "list", "--fhir-base", written.base, "--since", "yesterday"]) == 2
    assert cli_main(["audit", "verify", "--fhir-base", written.base, "--assessment", "Patient/x"]) == 2
    monkeypatch.setenv("SMART_APP_FHIR_TOKEN", "wrong-token")
    capsys.readouterr()
    assert cli_main(["audit", "list", "--fhir-base", written.base, "--json"]) == 2
    assert "error" in json.loads(capsys.readouterr().out)


# -- data that could not be read (back-mice-unavailable-data) and the Patient version ----------------
UNREAD_PATIENT = "apatel" if "apatel" in PATIENTS else PATIENTS[0]


def _no_condition(resource_type: str) -> bool:
    return resource_type != "Condition"


def _unread_write(box: Sandbox, assessment_as: str = "ClinicalImpression") -> dict[str, Any]:
    info = box.write_for(UNREAD_PATIENT, readable=_no_condition, assessment_as=assessment_as)
    assert info["assessment_json"]["unavailable"] == [
        {"resource_type": "Condition", "reason": "scope not granted"}
    ]
    return info


def _unread_extensions(resource: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in resource.get("extension", []) if e["url"] == UNAVAILABLE_EXTENSION]


@pytest.mark.parametrize("form", ["ClinicalImpression", "DocumentReference"])
def test_write_with_condition_unread_reproduces_exactly(sandbox: Sandbox, form: str) -> None:
    info = _unread_write(sandbox, form)
    assessment = _read(sandbox, info["assessment"])
    assert _unread_extensions(assessment) == [
        {
            "url": UNAVAILABLE_EXTENSION,
            "extension": [
                {"url": "resourceType", "valueCode": "Condition"},
                {"url": "reason", "valueString": "scope not granted"},
            ],
        }
    ]
    seen: list[dict[str, str]] = []

    def evaluator(record: Any, as_of: Any, version: str, dirs: Any) -> dict[str, Any]:
        from smart_app.audit.verify import default_evaluator

        seen.append(dict(record.unavailable))
        return default_evaluator(record, as_of, version, dirs)

    report = verify_assessment(_source(sandbox), info["assessment"], evaluator=evaluator)
    assert report.reproduced, report.to_json()
    assert seen == [{"Condition": "scope not granted"}]
    assert report.recomputed["classification"] == info["assessment_json"]["classification"]
    assert report.recomputed["next_step"] == info["assessment_json"]["next_step"]
    assert any("could not be read: Condition (scope not granted)" in n for n in report.notes), report.notes


def test_removing_the_unavailable_extension_is_a_difference(sandbox: Sandbox) -> None:
    """Without the record of the unread Conditions, LBP reads as absent: the conclusion no longer
    reproduces, and the identifier (which hashes the unread types) no longer matches the evidence."""
    info = _unread_write(sandbox)
    ci = _read(sandbox, info["assessment"])
    ci["extension"] = [e for e in ci["extension"] if e["url"] != UNAVAILABLE_EXTENSION]
    _put(sandbox, ci)
    report = verify_assessment(_source(sandbox), info["assessment"])
    assert not report.reproduced
    fields = [d.field for d in report.differences]
    assert "classification" in fields and fields[-1] == "evidence", report.to_json()
    written = info["assessment_json"]["classification"]
    assert next(d for d in report.differences if d.field == "classification").written == written


def test_editing_the_unread_reason_is_a_difference(sandbox: Sandbox) -> None:
    """A change that leaves the conclusion alone still breaks the identifier's hash of the evidence."""
    info = _unread_write(sandbox)
    ci = _read(sandbox, info["assessment"])
    [ext] = _unread_extensions(ci)
    ext["extension"][1]["valueString"] = "read failed (HTTP 500): edited"
    _put(sandbox, ci)
    report = verify_assessment(_source(sandbox), info["assessment"])
    assert not report.reproduced
    assert [d.field for d in report.differences] == ["evidence"], report.to_json()


def test_offline_bundle_with_condition_unread(
    sandbox: Sandbox,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    info = _unread_write(sandbox)
    export = _export(sandbox, info)
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    assert cli_main(["audit", "verify", "--bundle", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reproduced"] is True and out["differences"] == [], out
    for entry in export["entry"]:
        if entry["resource"]["resourceType"] == "ClinicalImpression":
            entry["resource"]["extension"] = [
                e for e in entry["resource"]["extension"] if e["url"] != UNAVAILABLE_EXTENSION
            ]
    path.write_text(json.dumps(export))
    assert cli_main(["audit", "verify", "--bundle", str(path), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["reproduced"] is False
    assert {"classification", "evidence"} <= {d["field"] for d in out["differences"]}


def test_patient_is_read_at_the_recorded_version(sandbox: Sandbox) -> None:
    """The birth date decides age-new-onset, so the Patient is a versioned source: a later edit of the
    Patient does not change what verify recomputes."""
    info = sandbox.write_for(WRITE_SET[0])
    prov = _read(sandbox, info["provenance"])
    named = [e["what"]["reference"] for e in prov["entity"] if e["what"]["reference"].startswith("Patient/")]
    patient = _read(sandbox, info["patient"])
    assert named == [f"{info['patient']}/_history/{patient['meta']['versionId']}"]
    calls: list[tuple[str, ...]] = []
    source = _source(sandbox)
    original_vread = source.vread

    def vread(resource_type: str, resource_id: str, version_id: str) -> dict[str, Any]:
        calls.append((resource_type, resource_id, version_id))
        return original_vread(resource_type, resource_id, version_id)

    source.vread = vread  # type: ignore[method-assign]
    patient["birthDate"] = "1930-01-01"
    _put(sandbox, patient)
    report = verify_assessment(source, info["assessment"])
    assert report.reproduced, report.to_json()
    assert ("Patient", patient["id"], named[0].rsplit("/", 1)[1]) in calls
    assert any(n.startswith(f"{info['patient']} has changed since the write") for n in report.notes)


# --- the exam a clinician entered through the app: its own kind of write -------------------------------
def _exam(sandbox: Sandbox) -> dict[str, Any]:
    from smart_app.drafts.exam import ExamAnswers, ExamSite

    answers = ExamAnswers(
        {"NODULE": "present", "PAIN_REPRODUCED": "present", "NEURO_DEFICIT": "none"},
        ExamSite(text="posterior iliac crest", side="left"),
    )
    return sandbox.exam_for("dnguyen", answers)


def test_list_finds_an_exam_as_its_own_kind_and_verify_explains_it(sandbox: Sandbox) -> None:
    sandbox.write_for("apatel")
    exam = _exam(sandbox)
    data, code = run_list(_source(sandbox), patient="dnguyen")
    assert code == 0, data
    (write,) = data["writes"]
    assert write["kind"] == "exam" and write["status"] == "recorded"
    assert write["provenance"] == exam["provenance"] and write["author"] == "Practitioner/dr-ada"
    assert sorted(write["resources"]) == sorted(exam["observations"])
    everyone, _ = run_list(_source(sandbox))
    assert sorted(w["kind"] for w in everyone["writes"]) == ["assessment", "exam"]

    for reference in (exam["observations"][0], exam["provenance"]):
        report, code = run_verify(_source(sandbox), reference)
        assert code == 0 and report["reproduced"] is True and report["kind"] == "exam", report
        notes = "\n".join(report["notes"])
        assert "Exam entered by Practitioner/dr-ada through the back mice app" in notes
        assert "Subcutaneous nodule: Present, left posterior iliac crest" in notes
        assert "the criterion 'Palpable subcutaneous nodule'" in notes
        assert "criteria 1.1.0" in notes


def test_an_exam_edited_after_it_was_entered_is_reported(sandbox: Sandbox) -> None:
    exam = _exam(sandbox)
    nodule = next(
        o
        for o in (_read(sandbox, r) for r in exam["observations"])
        if o["code"]["coding"][0]["code"] == "95325000"
    )
    nodule["bodySite"] = {"text": "right forearm"}
    _put(sandbox, nodule)
    report, code = run_verify(_source(sandbox), f"Observation/{nodule['id']}")
    assert code == 1 and report["reproduced"] is False
    assert {d["field"] for d in report["differences"]} >= {"content"}
    data, _ = run_list(_source(sandbox), patient="dnguyen")
    assert data["writes"][0]["status"] == "changed-since-written"
    assert any(f["kind"] == "changed-since-written" for f in data["findings"])


def test_an_observation_not_entered_through_the_app_is_not_an_exam(sandbox: Sandbox) -> None:
    data, code = run_verify(_source(sandbox), "Observation/apatel-obs-nodule")
    assert code == 2 and "not an exam Observation entered through the app" in data["error"]


def test_the_cli_prints_the_kind_and_the_exam_verdict(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    exam = _exam(sandbox)
    monkeypatch.setenv("SMART_APP_FHIR_TOKEN", sandbox.token)
    assert cli_main(["audit", "list", "--fhir-base", sandbox.base, "--patient", "dnguyen"]) == 0
    listed = capsys.readouterr().out
    assert " exam " in listed and "recorded" in listed
    assert cli_main(["audit", "verify", "--fhir-base", sandbox.base, "--assessment", exam["provenance"]]) == 0
    assert "AS ENTERED" in capsys.readouterr().out
