"""Auditor logic on hand-made resources, offline (BundleSource): grouping, status, findings, conclusion
read-back and the verify comparison with a stub evaluator."""

from __future__ import annotations

import copy
import json
from datetime import date
from typing import Any

import pytest

from smart_app.audit.cli import render_list, render_verify, run_list, run_verify
from smart_app.audit.errors import AuditInputError
from smart_app.audit.listing import changed_elements, list_writes, resource_state
from smart_app.audit.source import BundleSource, NotFound
from smart_app.audit.verify import verify_assessment
from smart_app.drafts.readback import recomputed_conclusion, written_conclusion
from smart_app.fhirjson import Ref
from smart_app.vocabulary import (
    CLASSIFICATION_EXTENSION,
    CLASSIFICATION_SYSTEM,
    DEVICE_IDENTIFIER_SYSTEM,
    DRAFT_IDENTIFIER_SYSTEM,
    NEXT_STEP_EXTENSION,
    NEXT_STEP_SYSTEM,
    RED_FLAG_SYSTEM,
    UNAVAILABLE_EXTENSION,
    WORKFLOW_CODE,
    WORKFLOW_SYSTEM,
)

CRIT = "https://smart-app.example/fhir/criteria/back-mice|1.0.0"
TAG = {"system": WORKFLOW_SYSTEM, "code": WORKFLOW_CODE}


def meta(version: str = "1", tag: bool = True) -> dict[str, Any]:
    m: dict[str, Any] = {"versionId": version, "lastUpdated": "2026-11-24T10:00:05Z"}
    if tag:
        m["tag"] = [dict(TAG)]
    return m


def ci(
    rid: str, patient: str, classification: str = "probable", step: str = "diagnostic-injection"
) -> dict[str, Any]:
    return {
        "resourceType": "ClinicalImpression",
        "id": rid,
        "meta": meta(),
        "identifier": [{"system": DRAFT_IDENTIFIER_SYSTEM, "value": f"key-{rid}"}],
        "status": "in-progress",
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": "2026-11-24T10:00:00Z",
        "protocol": [CRIT],
        "text": {
            "status": "generated",
            "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><p>Classification: {classification}; '
            f"next step: {step}.</p></div>",
        },
        "summary": "Probable back mouse",
    }


def coded(resource: dict[str, Any], classification: str, step: str) -> dict[str, Any]:
    """``resource`` as the drafts write it now: classification and next step coded."""
    out = copy.deepcopy(resource)
    step_ext = {"url": NEXT_STEP_EXTENSION, "valueCoding": {"system": NEXT_STEP_SYSTEM, "code": step}}
    if out["resourceType"] == "ClinicalImpression":
        out["finding"] = [
            {"itemCodeableConcept": {"coding": [{"system": CLASSIFICATION_SYSTEM, "code": classification}]}}
        ]
        out["extension"] = [step_ext]
    else:
        out["extension"] = [
            {
                "url": CLASSIFICATION_EXTENSION,
                "valueCoding": {"system": CLASSIFICATION_SYSTEM, "code": classification},
            },
            step_ext,
        ]
    return out


def sr(rid: str, patient: str, ci_id: str) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": rid,
        "meta": meta(),
        "identifier": [{"system": DRAFT_IDENTIFIER_SYSTEM, "value": f"key-{rid}"}],
        "status": "draft",
        "intent": "proposal",
        "subject": {"reference": f"Patient/{patient}"},
        "code": {
            "coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "20552"}],
            "text": "Injection",
        },
        "bodySite": [{"text": "left posterior iliac crest"}],
        "supportingInfo": [{"reference": f"ClinicalImpression/{ci_id}"}],
    }


def provenance(
    rid: str, targets: list[str], sources: list[str], recorded: str = "2026-11-24T10:00:05Z"
) -> dict[str, Any]:
    return {
        "resourceType": "Provenance",
        "id": rid,
        "meta": meta(),
        "target": [{"reference": t} for t in targets],
        "recorded": recorded,
        "policy": [CRIT],
        "agent": [
            {"type": {"coding": [{"code": "author"}]}, "who": {"reference": "Practitioner/doc"}},
            {"type": {"coding": [{"code": "assembler"}]}, "who": {"reference": "Device/dev1"}},
        ],
        "entity": [{"role": "derivation", "what": {"reference": s}} for s in sources],
    }


def world() -> list[dict[str, Any]]:
    return [
        {
            "resourceType": "Device",
            "id": "dev1",
            "meta": {"versionId": "1"},
            "identifier": [{"system": DEVICE_IDENTIFIER_SYSTEM, "value": "smart-app-back-mice"}],
        },
        {"resourceType": "Patient", "id": "p1", "meta": {"versionId": "1"}},
        {"resourceType": "Observation", "id": "o1", "meta": {"versionId": "1"}, "status": "final"},
        ci("ci1", "p1"),
        sr("sr1", "p1", "ci1"),
        provenance("prov1", ["ClinicalImpression/ci1", "ServiceRequest/sr1"], ["Observation/o1/_history/1"]),
    ]


def test_ref_parse_forms() -> None:
    assert Ref.parse("Observation/o1/_history/2") == Ref("Observation", "o1", "2")
    assert Ref.parse("http://x/fhir/Patient/p1").plain == "Patient/p1"  # type: ignore[union-attr]
    assert Ref.parse("urn:uuid:1234") is None
    assert Ref.parse("#contained") is None


def test_bundle_source_versions() -> None:
    v1 = {"resourceType": "Observation", "id": "o1", "meta": {"versionId": "1"}, "status": "final"}
    v2 = {"resourceType": "Observation", "id": "o1", "meta": {"versionId": "2"}, "status": "amended"}
    src = BundleSource([v2, v1])
    assert src.read("Observation", "o1")["status"] == "amended"
    assert src.vread("Observation", "o1", "1")["status"] == "final"
    with pytest.raises(NotFound):
        src.vread("Observation", "o1", "3")
    data = json.dumps(
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {
                    "fullUrl": "Observation/o9/_history/4",
                    "resource": {"resourceType": "Observation", "id": "o9"},
                }
            ],
        }
    ).encode()
    assert BundleSource.from_bytes(data).vread("Observation", "o9", "4")["id"] == "o9"
    with pytest.raises(AuditInputError):
        BundleSource.from_bytes(b"not json")
    with pytest.raises(AuditInputError):
        BundleSource.from_bytes(b'{"resourceType": "Patient"}')


def test_clean_write_listed_once() -> None:
    report = list_writes(BundleSource(world()))
    data = report.to_json()
    assert data["findings"] == []
    assert len(data["writes"]) == 1
    write = data["writes"][0]
    assert set(write) == {
        "kind",
        "assessment",
        "patient",
        "written_at",
        "author",
        "criteria",
        "resources",
        "provenance",
        "status",
    }
    assert write["assessment"] == "ClinicalImpression/ci1"
    assert write["patient"] == "Patient/p1"
    assert write["author"] == "Practitioner/doc"
    assert write["criteria"] == {"url": CRIT.split("|")[0], "version": "1.0.0"}
    assert write["resources"] == ["ClinicalImpression/ci1", "ServiceRequest/sr1"]
    assert write["provenance"] == "Provenance/prov1"
    assert write["status"] == "draft"
    assert write["kind"] == "assessment"
    assert "1 write(s)" in render_list(report)


def test_patient_and_since_filters() -> None:
    src = BundleSource(world())
    assert list_writes(src, patient="p2").writes == []
    assert len(list_writes(src, patient="Patient/p1").writes) == 1
    assert list_writes(src, since=date(2026, 11, 25)).writes == []
    assert len(list_writes(src, since=date(2026, 11, 24)).writes) == 1


def test_signed_is_not_a_finding_but_an_edit_is() -> None:
    res = world()
    signed = copy.deepcopy(res[3])
    signed["meta"]["versionId"] = "2"
    signed["status"] = "completed"
    report = list_writes(BundleSource([*res, signed]))
    assert report.findings == []
    assert report.writes[0].status == "signed"

    edited = copy.deepcopy(res[4])
    edited["meta"]["versionId"] = "2"
    edited["bodySite"] = [{"text": "right forearm"}]
    report = list_writes(BundleSource([*res, edited]))
    assert [(f.kind, f.reference) for f in report.findings] == [
        ("changed-since-written", "ServiceRequest/sr1/_history/2")
    ]
    assert "bodySite" in report.findings[0].detail
    assert report.writes[0].status == "changed-since-written"


def test_missing_provenance_and_foreign_tag() -> None:
    res = [r for r in world() if r["resourceType"] != "Provenance"]
    foreign = ci("x1", "p1")
    del foreign["identifier"]
    report = list_writes(BundleSource([*res, foreign]))
    kinds = sorted((f.kind, f.reference) for f in report.findings)
    assert kinds == [
        ("missing-provenance", "ClinicalImpression/ci1"),
        ("missing-provenance", "ServiceRequest/sr1"),
        ("tag-without-provenance", "ClinicalImpression/x1"),
    ]
    # The orphaned write is still listed, grouped around its assessment, without a Provenance.
    assert [(w.assessment, w.provenance, len(w.resources)) for w in report.writes] == [
        ("ClinicalImpression/ci1", None, 2)
    ]
    data, code = run_list(BundleSource([*res, foreign]))
    assert code == 1 and len(data["findings"]) == 3


def test_source_amended_and_target_missing() -> None:
    res = world()
    amended = {"resourceType": "Observation", "id": "o1", "meta": {"versionId": "2"}, "status": "amended"}
    gone = [r for r in res if r["resourceType"] != "ServiceRequest"]
    report = list_writes(BundleSource([*gone, amended]))
    kinds = sorted((f.kind, f.reference) for f in report.findings)
    assert kinds == [
        ("provenance-target-missing", "ServiceRequest/sr1"),
        ("source-amended", "Observation/o1/_history/1"),
    ]


def test_resource_state_codes() -> None:
    assert (
        resource_state({"resourceType": "ClinicalImpression", "status": "entered-in-error"})
        == "entered-in-error"
    )
    assert resource_state({"resourceType": "DocumentReference", "docStatus": "preliminary"}) == "draft"
    assert resource_state({"resourceType": "DocumentReference", "docStatus": "final"}) == "signed"
    assert resource_state({"resourceType": "DetectedIssue", "status": "preliminary"}) == "draft"
    assert changed_elements({"a": 1, "status": "x", "meta": {}}, {"a": 1, "status": "y"}) == []


def test_written_conclusion_reads_codes_narrative_and_flags() -> None:
    issue = {
        "resourceType": "DetectedIssue",
        "severity": "high",
        "code": {"coding": [{"system": RED_FLAG_SYSTEM, "code": "malignancy"}]},
    }
    written = written_conclusion([ci("c", "p", "red-flags", "urgent-work-up"), issue])
    assert written == {
        "classification": "red-flags",
        "next_step": "urgent-work-up",
        "red_flags": ["malignancy:block"],
        "procedure_suggestion": None,
    }
    coded = ci("c", "p", "possible", "focused-exam")
    coded["finding"] = [
        {
            "itemCodeableConcept": {
                "coding": [
                    {
                        "system": "https://smart-app.example/fhir/CodeSystem/back-mice-classification",
                        "code": "probable",
                    }
                ]
            }
        }
    ]
    notes: list[str] = []
    assert written_conclusion([coded], notes)["classification"] == "probable"  # coded value wins
    assert notes == [
        "The narrative states classification 'possible' but the coded value is 'probable'; "
        "the coded value is compared.",
        "The written next step is read from the narrative (no coded value: an older write).",
    ]
    again = recomputed_conclusion(
        {
            "classification": "red-flags",
            "next_step": "urgent-work-up",
            "red_flags": [{"id": "malignancy", "level": "block"}],
            "procedure_suggestion": {"codes": [{"system": "s", "code": "c"}]},
        }
    )
    assert again == written  # a BLOCK flag withholds the suggestion, as in the drafts


def test_coded_conclusion_read_from_codings_and_extensions() -> None:
    narrative = ci("c", "p", "probable", "diagnostic-injection")
    notes: list[str] = []
    both = coded(narrative, "probable", "diagnostic-injection")
    written = written_conclusion([both], notes)
    assert (written["classification"], written["next_step"], notes) == (
        "probable",
        "diagnostic-injection",
        [],
    )
    doc = coded({**narrative, "resourceType": "DocumentReference"}, "confirmed", "surgical-referral")
    del doc["text"]
    written = written_conclusion([doc], notes)
    assert (written["classification"], written["next_step"], notes) == ("confirmed", "surgical-referral", [])


def test_coded_conclusion_edits_are_never_hidden_by_the_narrative() -> None:
    base = coded(ci("c", "p", "probable", "diagnostic-injection"), "probable", "diagnostic-injection")
    unknown = copy.deepcopy(base)
    unknown["extension"][0]["valueCoding"]["code"] = "wait-and-see"  # not a next-step code
    assert written_conclusion([unknown])["next_step"] == "wait-and-see"
    other_system = copy.deepcopy(base)
    other_system["extension"][0]["valueCoding"]["system"] = "http://example.org/steps"
    assert written_conclusion([other_system])["next_step"] == "http://example.org/steps|diagnostic-injection"
    two = copy.deepcopy(base)
    two["finding"].append(
        {"itemCodeableConcept": {"coding": [{"system": CLASSIFICATION_SYSTEM, "code": "possible"}]}}
    )
    notes: list[str] = []
    assert written_conclusion([two], notes)["classification"] == ["probable", "possible"]
    assert notes == ["Several coded classification values are written: probable, possible."]
    foreign = copy.deepcopy(base)
    foreign["extension"].append({"url": "http://example.org/other", "valueCode": "none"})
    foreign["finding"][0]["itemCodeableConcept"]["coding"].append(
        {"system": "http://snomed.info/sct", "code": "1"}
    )
    assert written_conclusion([foreign])["next_step"] == "diagnostic-injection"


def _stub(classification: str, step: str) -> Any:
    def evaluate(record: Any, as_of: Any, version: str, dirs: Any) -> dict[str, Any]:
        assert version == "1.0.0"
        assert as_of.isoformat() == "2026-11-24T10:00:00+00:00"
        assert [r["id"] for r in record.resources] == ["o1"]
        return {
            "classification": classification,
            "next_step": step,
            "red_flags": [],
            "procedure_suggestion": {
                "codes": [{"system": "http://www.ama-assn.org/go/cpt", "code": "20552"}],
                "body_site": {"text": "left posterior iliac crest"},
            },
        }

    return evaluate


def test_verify_compares_field_by_field() -> None:
    src = BundleSource(world())
    ok = verify_assessment(src, "ClinicalImpression/ci1", evaluator=_stub("probable", "diagnostic-injection"))
    assert ok.reproduced, ok.to_json()
    assert ok.provenance == "Provenance/prov1"
    assert ok.sources == [{"reference": "Observation/o1", "version": "1", "status": "read"}]
    bad = verify_assessment(src, "ClinicalImpression/ci1", evaluator=_stub("possible", "focused-exam"))
    assert not bad.reproduced
    assert [(d.field, d.written, d.recomputed) for d in bad.differences] == [
        ("classification", "probable", "possible"),
        ("next_step", "diagnostic-injection", "focused-exam"),
    ]
    assert "NOT REPRODUCED" in render_verify(bad)


def test_verify_prefers_the_coded_conclusion() -> None:
    resources = world()
    resources[3] = coded(resources[3], "probable", "diagnostic-injection")
    src = BundleSource(resources)
    ok = verify_assessment(src, "ClinicalImpression/ci1", evaluator=_stub("probable", "diagnostic-injection"))
    assert ok.reproduced and not [n for n in ok.notes if "narrative" in n], ok.to_json()
    # the coding edited after the write (the narrative still says probable): a difference
    resources[3]["finding"][0]["itemCodeableConcept"]["coding"][0]["code"] = "possible"
    edited = verify_assessment(
        BundleSource(resources), "ClinicalImpression/ci1", evaluator=_stub("probable", "diagnostic-injection")
    )
    assert [(d.field, d.written, d.recomputed) for d in edited.differences] == [
        ("classification", "possible", "probable")
    ]
    assert any("narrative states classification 'probable'" in n for n in edited.notes)


def test_verify_older_write_from_the_narrative() -> None:
    report = verify_assessment(
        BundleSource(world()), "ClinicalImpression/ci1", evaluator=_stub("probable", "diagnostic-injection")
    )
    assert report.reproduced
    assert [n for n in report.notes if "narrative" in n] == [
        "The written classification is read from the narrative (no coded value: an older write).",
        "The written next step is read from the narrative (no coded value: an older write).",
    ]


def test_verify_without_provenance_and_bad_input() -> None:
    src = BundleSource([r for r in world() if r["resourceType"] != "Provenance"])
    report = verify_assessment(
        src, "ClinicalImpression/ci1", evaluator=_stub("probable", "diagnostic-injection")
    )
    assert not report.reproduced
    assert [d.field for d in report.differences] == ["provenance"]
    data, code = run_verify(src, "Observation/o1")
    assert code == 2 and "error" in data
    data, code = run_verify(src, "ClinicalImpression/nope")
    assert code == 2


def test_page_words_for_written_codes() -> None:
    from smart_app.vocabulary import classifications
    from smart_app.web.audit import _in_words

    words = classifications().displays
    assert _in_words("probable", words) == "Probable back mice"
    assert _in_words(["probable", "oddity"], words) == "Probable back mice / oddity"
    assert _in_words(None, words) is None


def test_verify_patient_at_recorded_version_or_current_with_a_note() -> None:
    """A Patient named by the Provenance is read at that version (vread); otherwise the current one,
    with a note."""
    versions = world()
    versions.append({"resourceType": "Patient", "id": "p1", "meta": {"versionId": "2"}, "birthDate": "1930"})
    named = copy.deepcopy(versions)
    named[5]["entity"].append({"role": "derivation", "what": {"reference": "Patient/p1/_history/1"}})
    patients: list[dict[str, Any]] = []

    def evaluate(record: Any, as_of: Any, version: str, dirs: Any) -> dict[str, Any]:
        patients.append(record.patient)
        return {"classification": "probable", "next_step": "diagnostic-injection", "red_flags": []}

    report = verify_assessment(BundleSource(named), "ClinicalImpression/ci1", evaluator=evaluate)
    assert patients[-1]["meta"]["versionId"] == "1"
    assert any(n.startswith("Patient/p1 has changed since the write") for n in report.notes), report.notes
    report = verify_assessment(BundleSource(versions), "ClinicalImpression/ci1", evaluator=evaluate)
    assert patients[-1]["meta"]["versionId"] == "2"
    assert "Patient/p1 is not a Provenance entity; its current version was used." in report.notes


def test_verify_passes_the_written_unavailable_types_to_the_record() -> None:
    from smart_app.audit.verify import written_unavailable

    resources = world()
    resources[3]["extension"] = [
        {
            "url": UNAVAILABLE_EXTENSION,
            "extension": [
                {"url": "resourceType", "valueCode": "Condition"},
                {"url": "reason", "valueString": "scope not granted"},
            ],
        },
        {"url": UNAVAILABLE_EXTENSION, "extension": [{"url": "resourceType", "valueCode": "Procedure"}]},
        {"url": UNAVAILABLE_EXTENSION, "extension": [{"url": "reason", "valueString": "no type"}]},
    ]
    notes: list[str] = []
    assert written_unavailable(resources[3], notes) == {"Condition": "scope not granted", "Procedure": ""}
    assert notes == ["An unavailable-data extension without a resource type was skipped."]
    seen: list[dict[str, str]] = []

    def evaluate(record: Any, as_of: Any, version: str, dirs: Any) -> dict[str, Any]:
        seen.append(dict(record.unavailable))
        return _stub("probable", "diagnostic-injection")(record, as_of, version, dirs)

    report = verify_assessment(BundleSource(resources), "ClinicalImpression/ci1", evaluator=evaluate)
    assert seen == [{"Condition": "scope not granted", "Procedure": ""}]
    assert report.reproduced  # a hand-made identifier (not a sha256) is not checked against the evidence
    assert any("could not be read: Condition (scope not granted); Procedure" in n for n in report.notes)
