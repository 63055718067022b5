"""Criteria 1.0.0 end to end: findings, red flags, classification, ladder, output
(docs/clinical-criteria.md)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import pytest
from clinical_builders import (
    APP,
    AS_OF,
    LOINC,
    RXNORM,
    SCT,
    bundle_bytes,
    cond,
    confirmed,
    flags,
    ignored,
    lbp,
    nodule,
    obs,
    pain,
    patient,
    probable,
    proc,
    relief,
    repro,
    run,
)

from smart_app.clinical import assess, assess_bundle, load_bundle

CONTRACT_KEYS = {
    "classification",
    "next_step",
    "headline",
    "patient",
    "as_of",
    "checklist",
    "criteria",
    "findings",
    "red_flags",
    "differentials",
    "missing",
    "procedure_suggestion",
    "latest_pain",
    "rationale",
    "summary",
    "ignored",
    "sources",
    "counts",
    "unavailable",
    "preliminary_evidence",
    "opening",
}


# -- output shape ----------------------------------------------------------------------------------
def test_probable_contract_shape() -> None:
    out = run(*probable())
    assert set(out) == CONTRACT_KEYS
    assert out["unavailable"] == []
    assert (out["classification"], out["next_step"]) == ("probable", "diagnostic-injection")
    assert out["headline"] == (
        "Probable painful episacral lipoma (back mouse), left posterior iliac crest — "
        "suggest diagnostic local anaesthetic injection into the nodule"
    )
    assert out["patient"] == "Patient/p1" and out["as_of"] == "2026-11-24T10:00:00Z"
    assert out["criteria"]["url"] == "https://smart-app.example/fhir/criteria/back-mice"
    assert out["criteria"]["version"] == "1.0.0"
    for fid in ("LBP", "NODULE", "TYPICAL_SITE", "PAIN_REPRODUCED", "NEURO_DEFICIT", "INJECTION_RELIEF"):
        assert set(out["findings"][fid]) == {"status", "evidence", "reason", "title"}
    assert [(row["finding"], row["verdict"]) for row in out["checklist"]] == [
        ("LBP", "met"),
        ("NODULE", "met"),
        ("TYPICAL_SITE", "met"),
        ("PAIN_REPRODUCED", "met"),
        ("NEURO_DEFICIT", "unknown"),
        ("INJECTION_RELIEF", "unknown"),
    ]
    deficit = next(row for row in out["checklist"] if row["finding"] == "NEURO_DEFICIT")
    assert (deficit["label"], deficit["met_when"]) == ("no objective neurological deficit", "absent")
    sug = out["procedure_suggestion"]
    assert sug["kind"] == "diagnostic-injection"
    assert [c["code"] for c in sug["codes"]] == ["11900"]
    assert sug["body_site"]["text"] == "left posterior iliac crest"
    assert "left posterior iliac crest" in sug["text"] and "NICE NG59" in sug["caveat"]
    assert sug["reason_references"] == ["Condition/c-lbp", "Observation/o-nod", "Observation/o-rep"]
    assert out["summary"].startswith("Suspected painful episacral lipoma ('back mouse'). Criteria met: ")
    assert "not a diagnosis" in out["summary"] and "Motyka 2000" in out["summary"]
    assert [m["finding"] for m in out["missing"]] == ["NEURO_DEFICIT", "INJECTION_RELIEF"]
    # the Patient is a source too: its birthDate decided age-new-onset (no flag at this age)
    expected = sorted([*sug["reason_references"], "Patient/p1"])
    assert out["sources"] == [{"reference": r, "version_id": None} for r in expected]
    assert out["counts"] == {"resources": 3, "used": 4, "ignored": 0}


def test_sources_carry_version_ids() -> None:
    res = nodule(meta={"versionId": "7"})
    out = run(lbp(), res, repro())
    assert {"reference": "Observation/o-nod", "version_id": "7"} in out["sources"]


def test_patient_is_a_versioned_source_when_its_birth_date_decides() -> None:
    """age-new-onset read Patient.birthDate: the Patient version is evidence even when no flag is raised."""
    versioned = {**patient(), "meta": {"versionId": "4"}}
    out = run(*probable(), pat=versioned)
    assert out["red_flags"] == []
    assert {"reference": "Patient/p1", "version_id": "4"} in out["sources"]
    no_birth = {k: v for k, v in versioned.items() if k != "birthDate"}
    out = run(*probable(), pat=no_birth)
    assert all(s["reference"] != "Patient/p1" for s in out["sources"])


def test_coded_body_site_is_copied_to_the_suggestion() -> None:
    site = {
        "coding": [
            {"system": SCT, "code": "1017210004", "display": "Structure of left lumbar region of back"}
        ]
    }
    out = run(lbp(), nodule(site=site), repro())
    assert out["findings"]["TYPICAL_SITE"]["status"] == "present"
    assert out["procedure_suggestion"]["body_site"]["coding"][0]["code"] == "1017210004"
    assert out["procedure_suggestion"]["body_site"]["text"] == "Structure of left lumbar region of back"


# -- classification rules --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "resources,classification,step",
    [
        ([lbp()], "insufficient-data", "focused-exam"),
        ([], "unlikely", "none"),
        ([lbp(), nodule(site="right buttock")], "possible", "focused-exam"),
        ([lbp(), nodule(site="thoracolumbar junction"), repro()], "possible", "focused-exam"),
        ([lbp(), nodule(), repro(value="absent")], "unlikely", "none"),
        ([lbp(), nodule(value="absent")], "unlikely", "none"),
        ([*probable(), relief(percent=50)], "unlikely", "work-up"),
        ([*probable(), relief(code="partial")], "unlikely", "work-up"),
        ([*probable(), cond("c-fd", "M21.372")], "not-consistent", "work-up"),
        ([*probable(), obs("o-weak", "26544005")], "not-consistent", "work-up"),
        ([*probable(), cond("c-ca", "Z85.3", clinical="resolved")], "red-flags", "urgent-work-up"),
        ([lbp(clinical="resolved"), nodule(), repro()], "probable", "diagnostic-injection"),
    ],
    ids=[
        "lbp-only",
        "empty",
        "buttock",
        "thoracolumbar",
        "painless",
        "nodule-absent",
        "relief-50",
        "relief-partial",
        "foot-drop",
        "weakness-obs",
        "malignancy-history",
        "lbp-resolved-but-repro",
    ],
)
def test_classification(resources: list[dict[str, object]], classification: str, step: str) -> None:
    out = run(*resources)
    assert (out["classification"], out["next_step"]) == (classification, step), out["rationale"]


def test_lbp_statuses() -> None:
    assert run(lbp(verification="provisional"))["findings"]["LBP"]["status"] == "unknown"
    assert run(lbp(clinical="resolved"))["findings"]["LBP"]["status"] == "absent"
    assert run(lbp(clinical=None, verification=None))["findings"]["LBP"]["status"] == "present"
    assert run(cond("c1", "M5450"))["findings"]["LBP"]["status"] == "present"  # dotless ICD
    assert run(cond("c1", "M54.42"))["findings"]["LBP"]["status"] == "present"  # M54.4- category
    assert run(cond("c1", "279039007", SCT))["findings"]["LBP"]["status"] == "present"
    assert run(cond("c1", "M54.5", verification="refuted"))["findings"]["LBP"]["status"] == "absent"


def test_block_flag_withholds_the_suggestion_and_says_so() -> None:
    out = run(*confirmed(), pain("o-p", 8), cond("c-fx", "S32.009A", clinical="resolved"))
    assert flags(out) == {"fracture": "block"}
    assert out["procedure_suggestion"] is None
    assert "Procedure suggestion withheld: Vertebral or sacral fracture" in out["summary"]
    assert out["headline"].startswith("Back-mouse procedure withheld")


# -- treatment ladder ------------------------------------------------------------------------------
def test_confirmed_without_pain_asks_for_a_pain_score() -> None:
    out = run(*confirmed())
    assert (out["classification"], out["next_step"]) == ("confirmed", "focused-exam")
    assert out["missing"][-1]["finding"] == "PAIN_SCORE" and "72514-3" in out["missing"][-1]["how"]
    assert out["procedure_suggestion"] is None


@pytest.mark.parametrize(
    "extra,step",
    [
        ([pain("o-p", 8)], "therapeutic-injection"),
        ([pain("o-p", 7)], "therapeutic-injection"),
        ([pain("o-p", 6)], "conservative-care"),
        ([pain("o-p", 5), proc("pr-c", "conservative-care")], "therapeutic-injection"),
        ([pain("o-p", 3), proc("pr-c", "conservative-care")], "conservative-care"),
        ([pain("o-p", 4), cond("c-nsaid", "Z79.1", clinical="resolved")], "therapeutic-injection"),
        (
            [
                pain("o-p", 5),
                proc("pr-1", "therapeutic-nodule-injection", "2026-08-01"),
                proc("pr-2", "therapeutic-nodule-injection", "2026-10-01"),
            ],
            "surgical-referral",
        ),
        (
            [
                pain("o-p", 3),
                proc("pr-1", "therapeutic-nodule-injection", "2026-08-01"),
                proc("pr-2", "therapeutic-nodule-injection", "2026-10-01"),
            ],
            "conservative-care",
        ),
        (
            [
                pain("o-p", 5, when="2026-11-22"),
                proc("pr-1", "therapeutic-nodule-injection", "2026-08-01"),
                proc("pr-2", "therapeutic-nodule-injection", "2026-11-23"),
            ],
            "therapeutic-injection",
        ),
        (
            [
                pain("o-p", 5),
                proc("pr-1", "therapeutic-nodule-injection", "2026-08-01"),
                proc("pr-2", "therapeutic-nodule-injection", "2026-10-01", status="in-progress"),
            ],
            "therapeutic-injection",
        ),
    ],
    ids=[
        "pain-8",
        "pain-7",
        "pain-6",
        "conservative-5",
        "conservative-3",
        "z79.1",
        "two-injections",
        "two-injections-pain-3",
        "pain-before-last",
        "one-completed",
    ],
)
def test_treatment_ladder(extra: list[dict[str, object]], step: str) -> None:
    out = run(*confirmed(), *extra)
    assert out["classification"] == "confirmed"
    assert out["next_step"] == step, out["rationale"]
    kinds = {"therapeutic-injection", "surgical-referral"}
    assert (out["procedure_suggestion"] or {}).get("kind") == (step if step in kinds else None)


def test_surgical_referral_codes() -> None:
    out = run(
        *confirmed(),
        pain("o-p", 6),
        proc("pr-1", "therapeutic-nodule-injection", "2026-08-01"),
        proc("pr-2", "therapeutic-nodule-injection", "2026-10-01"),
    )
    assert [c["code"] for c in out["procedure_suggestion"]["codes"]] == ["21930", "21931"]
    assert {"Procedure/pr-1", "Procedure/pr-2", "Observation/o-p"} <= set(
        out["procedure_suggestion"]["reason_references"]
    )


@pytest.mark.parametrize(
    "status,rtype,step",
    [
        ("active", "MedicationStatement", "therapeutic-injection"),
        ("stopped", "MedicationRequest", "therapeutic-injection"),
        ("entered-in-error", "MedicationStatement", "conservative-care"),
        ("not-taken", "MedicationStatement", "conservative-care"),
    ],
)
def test_nsaid_counts_as_conservative_care(status: str, rtype: str, step: str) -> None:
    med = {
        "resourceType": rtype,
        "id": "m1",
        "status": status,
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "197806"}]},
    }
    assert run(*confirmed(), pain("o-p", 5), med)["next_step"] == step


def test_contained_medication_is_resolved() -> None:
    med = {
        "resourceType": "MedicationStatement",
        "id": "m1",
        "status": "completed",
        "subject": {"reference": "Patient/p1"},
        "contained": [
            {
                "resourceType": "Medication",
                "id": "med",
                "code": {"coding": [{"system": RXNORM, "code": "198013"}]},
            }
        ],
        "medicationReference": {"reference": "#med"},
    }
    assert run(*confirmed(), pain("o-p", 5), med)["next_step"] == "therapeutic-injection"


# -- pain score ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value,score",
    [
        ({"valueInteger": 6}, 6),
        ({"valueQuantity": {"value": 7, "unit": "{score}", "code": "{score}"}}, 7),
        ({"valueQuantity": {"value": 3}}, 3),
        ({"valueQuantity": {"value": 2, "code": "1"}}, 2),
        ({"valueCodeableConcept": {"coding": [{"system": LOINC, "code": "LA10139-6"}]}}, 7),
        ({"valueCodeableConcept": {"coding": [{"system": LOINC, "code": "LA13942-0"}]}}, 10),
        ({"valueCodeableConcept": {"coding": [{"system": LOINC, "code": "LA6111-4"}]}}, 0),
        ({"valueInteger": 57}, None),
        ({"valueInteger": -1}, None),
        ({"valueQuantity": {"value": 6, "unit": "mm[Hg]"}}, None),
        ({"valueInteger": True}, None),
        ({"dataAbsentReason": {"coding": [{"code": "asked-declined"}]}}, None),
    ],
)
def test_pain_value_shapes(value: dict[str, object], score: int | None) -> None:
    out = run(*confirmed(), obs("o-p", "72514-3", LOINC, value=value, when="2026-11-22"))
    if score is None:
        assert out["latest_pain"] is None and "Observation/o-p" in ignored(out)
    else:
        assert out["latest_pain"] == {"score": score, "reference": "Observation/o-p", "time": "2026-11-22"}


def test_pain_window_newest_component_and_conflict() -> None:
    old = pain("o-old", 9, when="2026-10-20T09:00:00Z")  # 35 days: outside the 30-day window
    assert run(*confirmed(), old)["latest_pain"] is None
    assert "30-day" in ignored(run(*confirmed(), old))["Observation/o-old"]
    out = run(*confirmed(), pain("o-a", 2, when="2026-11-01"), pain("o-b", 8, when="2026-11-10"))
    assert out["latest_pain"]["reference"] == "Observation/o-b"
    panel = obs(
        "o-panel",
        "97339-6",
        LOINC,
        value=None,
        component=[{"code": {"coding": [{"system": LOINC, "code": "38208-5"}]}, "valueInteger": 4}],
    )
    assert run(*confirmed(), panel)["latest_pain"]["score"] == 4
    same = run(*confirmed(), pain("o-a", 2), pain("o-b", 8))
    assert same["latest_pain"] is None and "conflicting" in ignored(same)["Observation/o-a"]
    assert same["next_step"] == "focused-exam"


# -- findings: reading rules -----------------------------------------------------------------------
def test_newest_wins_and_equal_time_conflict() -> None:
    older = nodule("o-old", value="absent", when="2026-10-01")
    assert run(lbp(), older, nodule(), repro())["findings"]["NODULE"]["status"] == "present"
    assert (
        run(lbp(), nodule("o-new", value="absent"), nodule("o-old", when="2026-10-01"))["findings"]["NODULE"][
            "status"
        ]
        == "absent"
    )
    out = run(lbp(), nodule("o-a"), nodule("o-b", value="absent"), repro())
    assert out["findings"]["NODULE"]["status"] == "unknown"
    assert out["findings"]["NODULE"]["evidence"] == ["Observation/o-a", "Observation/o-b"]
    assert "conflict" in out["findings"]["NODULE"]["reason"]
    assert any("conflict" in m["what"] for m in out["missing"])
    assert out["classification"] == "insufficient-data"


def test_nodule_condition_and_newer_absent_exam() -> None:
    lipoma = cond("c-lip", "D17.1", recordedDate="2025-01-01", bodySite=[{"text": "sacral region"}])
    out = run(lbp(), lipoma, repro())
    assert out["findings"]["NODULE"]["status"] == "present"
    assert out["findings"]["TYPICAL_SITE"]["status"] == "present"
    assert out["classification"] == "probable"
    assert run(lbp(), lipoma, nodule(value="absent"))["findings"]["NODULE"]["status"] == "absent"
    unconfirmed = cond("c-lip", "R22.2", verification="provisional")
    assert run(lbp(), unconfirmed)["findings"]["NODULE"]["status"] == "unknown"


def test_site_falls_back_to_an_older_present_record() -> None:
    out = run(lbp(), nodule("o-new", site=None), nodule("o-old", when="2026-10-01"), repro())
    assert out["findings"]["TYPICAL_SITE"] == {
        **out["findings"]["TYPICAL_SITE"],
        "status": "present",
        "evidence": ["Observation/o-old"],
    }
    assert run(lbp(), nodule(site=None), repro())["findings"]["TYPICAL_SITE"]["status"] == "unknown"


@pytest.mark.parametrize(
    "value,status",
    [
        (True, "present"),
        (False, "absent"),
        (None, "present"),
        ("present", "present"),
        ("absent", "absent"),
        (
            {
                "valueCodeableConcept": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0136", "code": "N"}]
                }
            },
            "absent",
        ),
        ({"dataAbsentReason": {"coding": [{"code": "masked"}]}}, "unknown"),
        ({"valueString": "yes"}, "unknown"),
        ({"valueCodeableConcept": {"coding": [{"system": SCT, "code": "24484000"}]}}, "unknown"),
    ],
)
def test_observation_value_shapes(value: object, status: str) -> None:
    out = run(lbp(), nodule(value=value))
    assert out["findings"]["NODULE"]["status"] == status
    if status == "unknown":
        assert "Observation/o-nod" in ignored(out)


def test_component_and_value_pattern() -> None:
    exam = obs(
        "o-exam",
        "29545-1",
        LOINC,
        value=None,
        site="lumbar region",
        component=[
            {"code": {"coding": [{"system": SCT, "code": "95325000"}]}, "valueBoolean": True},
            {"code": {"coding": [{"system": APP, "code": "nodule-pain-reproduced"}]}, "valueBoolean": True},
        ],
    )
    out = run(lbp(), exam)
    assert (out["classification"], out["findings"]["TYPICAL_SITE"]["status"]) == ("probable", "present")
    pattern = obs(
        "o-pat",
        "29545-1",
        LOINC,
        value={"valueCodeableConcept": {"coding": [{"system": SCT, "code": "95319004"}]}},
        site="Left PSIS",
    )
    assert run(lbp(), pattern, repro())["classification"] == "probable"


def test_tenderness_needs_its_own_typical_site() -> None:
    tender = obs("o-t", "247348008", site="SI joint")
    assert run(lbp(), nodule(), tender)["findings"]["PAIN_REPRODUCED"]["status"] == "present"
    elsewhere = obs("o-t", "247348008", site="forearm")
    assert run(lbp(), nodule(), elsewhere)["findings"]["PAIN_REPRODUCED"]["status"] == "unknown"
    bare = obs("o-t", "247348008")
    assert run(lbp(), nodule(), bare)["findings"]["PAIN_REPRODUCED"]["status"] == "unknown"


def test_neuro_deficit_per_code() -> None:
    weak_old = obs("o-w1", "26544005", when="2026-10-01")
    weak_new = obs("o-w2", "26544005", value="absent", when="2026-11-01")
    numb = obs("o-h", "397974008", value="absent")
    assert run(*probable(), weak_old, weak_new, numb)["findings"]["NEURO_DEFICIT"]["status"] == "absent"
    assert run(*probable(), weak_old, numb)["findings"]["NEURO_DEFICIT"]["status"] == "present"
    assert (
        run(*probable(), cond("c-r", "R29.2", verification="differential"))["classification"]
        == "not-consistent"
    )


def test_relief_threshold_and_shapes() -> None:
    assert run(*probable(), relief(percent=80))["classification"] == "confirmed"
    assert run(*probable(), relief(percent=79.5))["classification"] == "unlikely"
    assert run(*probable(), relief(code="near-complete"))["classification"] == "confirmed"
    bad = run(*probable(), relief(percent=150))
    assert bad["findings"]["INJECTION_RELIEF"]["status"] == "unknown" and "Observation/o-rel" in ignored(bad)


def test_status_window_future_subject_focus() -> None:
    cases = {
        "prelim": nodule("o-x", status="preliminary"),
        "eie": nodule("o-x", status="entered-in-error"),
        "old": nodule("o-x", when="2026-08-01"),
        "future": nodule("o-x", when="2026-12-01"),
        "year-9999": nodule("o-x", when="9999-01-01"),
        "other-patient": nodule("o-x", subject={"reference": "Patient/p2"}),
        "focus": nodule("o-x", focus=[{"reference": "Patient/p1"}]),
        "no-time": nodule("o-x", when=None),
    }
    for name, res in cases.items():
        out = run(lbp(), res, repro())
        assert out["findings"]["NODULE"]["status"] == "unknown", name
        assert "Observation/o-x" in ignored(out), name
    assert "preliminary" in ignored(run(lbp(), cases["prelim"]))["Observation/o-x"]
    assert "90-day" in ignored(run(lbp(), cases["old"]))["Observation/o-x"]
    assert "after the evaluation time" in ignored(run(lbp(), cases["future"]))["Observation/o-x"]


def test_window_edges_are_inclusive_at_date_precision() -> None:
    assert run(lbp(), nodule(when="2026-08-26"))["findings"]["NODULE"]["status"] == "present"  # 90 days
    assert run(lbp(), nodule(when="2026-08-25"))["findings"]["NODULE"]["status"] == "unknown"
    assert run(lbp(), nodule(when="2026-11-24"))["findings"]["NODULE"]["status"] == "present"  # today
    assert run(lbp(), nodule(when="2026-11-24T10:00:01Z"))["findings"]["NODULE"]["status"] == "unknown"


def test_absolute_and_urn_subjects() -> None:
    absolute = nodule(subject={"reference": "http://127.0.0.1:8001/fhir/Patient/p1"})
    assert run(lbp(), absolute, repro())["classification"] == "probable"
    data = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:0001", "resource": {"resourceType": "Patient", "birthDate": "1980-01-01"}},
            *({"resource": {**r, "subject": {"reference": "urn:uuid:0001"}}} for r in probable()),
        ],
    }
    out = assess(load_bundle(json.dumps(data).encode()), AS_OF).to_json()
    assert out["classification"] == "probable" and out["patient"] == "urn:uuid:0001"


# -- red flags -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "resource,expected",
    [
        (cond("c", "Z85.46", clinical="resolved"), {"malignancy": "block"}),
        (cond("c", "C79.51", verification="provisional"), {"malignancy": "block"}),
        (cond("c", "M80.08XA", clinical="inactive"), {"fracture": "block"}),
        (cond("c", "R50.9", clinical="resolved"), {}),
        (cond("c", "R50.9"), {"spinal-infection": "block"}),
        (cond("c", "D84.9", clinical=None, recordedDate="2026-11-10"), {"spinal-infection": "block"}),
        (cond("c", "D84.9", clinical=None, recordedDate="2026-09-10"), {}),
        # no clinicalStatus and no date: its currency cannot be decided, so it counts (reading decisions)
        (cond("c", "G83.4", clinical=None), {"cauda-equina": "block"}),
        (cond("c", "R33.9"), {"cauda-equina": "block"}),
        (cond("c", "R63.4"), {"weight-loss": "warn"}),
        (cond("c", "M45.6"), {"inflammatory": "warn"}),
        (cond("c", "Z79.52", clinical="resolved"), {"bone-fragility": "warn"}),
        (cond("c", "R20.2"), {"subjective-sensory": "warn"}),
        (cond("c", "Z85.3", verification="refuted"), {}),
        (cond("c", "Z85.3", verification="entered-in-error"), {}),
        (obs("o", "386661006", when="2026-11-10"), {"spinal-infection": "block"}),
        (obs("o", "386661006", when="2026-10-01"), {}),
        (obs("o", "386661006", status="preliminary"), {}),
        (obs("o", "363346000", when="2020-01-01"), {"malignancy": "block"}),
        (obs("o", "44077006", value=False), {}),
    ],
)
def test_red_flags(resource: dict[str, object], expected: dict[str, str]) -> None:
    out = run(*probable(), resource)
    assert flags(out) == expected
    blocked = "block" in expected.values()
    assert (out["classification"] == "red-flags") is blocked
    assert (out["procedure_suggestion"] is None) is blocked


def test_state_flag_newer_absent_clears_older_present() -> None:
    out = run(
        *probable(),
        obs("o1", "386661006", when="2026-11-10"),
        obs("o2", "386661006", value="absent", when="2026-11-20"),
    )
    assert flags(out) == {}


def test_warn_keeps_the_suggestion() -> None:
    out = run(*probable(), cond("c-ss", "R20.2"))
    assert out["classification"] == "probable" and out["procedure_suggestion"] is not None
    assert any(line.startswith("Warning subjective-sensory") for line in out["rationale"])
    assert "Warning: Subjective numbness" in out["summary"]


@pytest.mark.parametrize(
    "birth,onset,flagged",
    [
        ("1960-01-01", "2026-11-01", True),
        ("2010-01-01", "2026-11-01", True),
        ("1980-01-01", "2026-11-01", False),
        ("1960-01-01", "2026-09-01", False),
        ("1976-11-25", "2026-11-01", False),
        ("1976-11-24", "2026-11-01", False),
        ("1975-11-24", "2026-11-01", True),
        (None, "2026-11-01", False),
    ],
)
def test_age_new_onset(birth: str | None, onset: str, flagged: bool) -> None:
    out = run(lbp(onsetDateTime=onset), nodule(), repro(), pat=patient(birth))
    assert ("age-new-onset" in flags(out)) is flagged
    if flagged:
        flag = out["red_flags"][0]
        assert flag["level"] == "warn" and flag["evidence"] == ["Condition/c-lbp", "Patient/p1"]
        assert out["classification"] == "probable"


def test_differentials_are_listed_and_explained() -> None:
    out = run(
        *probable(),
        cond("c-rad", "M54.16"),
        cond("c-fib", "M79.7", clinical="resolved"),
        obs("o-si", "202487003"),
    )
    assert [d["id"] for d in out["differentials"]] == ["radiculopathy", "sacroiliac-joint-pain"]
    assert out["differentials"][0] == {
        "id": "radiculopathy",
        "title": "Radiculopathy / sciatica",
        "evidence": ["Condition/c-rad"],
    }
    assert any("often mistaken" in line for line in out["rationale"])
    assert out["classification"] == "probable"


# -- determinism, streaming, counts ----------------------------------------------------------------
def _dump(out: dict[str, object]) -> str:
    return json.dumps(out, sort_keys=True)


def test_byte_stable_and_order_free() -> None:
    resources = [
        *confirmed(),
        pain("o-p", 8),
        cond("c-ss", "R20.2"),
        cond("c-rad", "M54.16"),
        nodule("o-old", value="absent", when="2026-01-01"),
        pain("o-57", 57),
        nodule("o-other", subject={"reference": "Patient/p9"}),
    ]
    first = _dump(run(*resources))
    assert first == _dump(run(*resources))
    rng = random.Random(3)
    for _ in range(5):
        rng.shuffle(resources)
        assert _dump(run(*resources)) == first


def test_streaming_equals_whole_decode() -> None:
    resources = [
        *confirmed(),
        pain("o-p", 8),
        cond("c-ss", "R20.2"),
        pain("o-57", 57),
        {"resourceType": "Encounter", "id": "e1", "subject": {"reference": "Patient/p1"}},
    ]
    data = bundle_bytes(*resources)
    assert _dump(assess_bundle(data, AS_OF).to_json()) == _dump(assess(load_bundle(data), AS_OF).to_json())
    pretty = json.dumps(json.loads(data), indent=2).encode()
    assert _dump(assess_bundle(pretty, AS_OF).to_json()) == _dump(assess(load_bundle(data), AS_OF).to_json())


def test_streaming_falls_back_and_rejects_like_load_bundle() -> None:
    from smart_app.clinical import UnusableInput

    data = bundle_bytes(*probable())
    with pytest.raises(UnusableInput):
        assess_bundle(data[:-30], AS_OF)
    with pytest.raises(UnusableInput):
        assess_bundle(bundle_bytes(*probable(), patient(pid="p2")), AS_OF)
    nested = json.dumps({"entry": json.loads(data)["entry"], "resourceType": "Bundle", "type": "batch"})
    assert assess_bundle(nested.encode(), AS_OF).to_json()["classification"] == "probable"


def test_naive_as_of_is_utc_and_past_assessments_reproduce() -> None:
    naive = run(*probable(), as_of=datetime(2026, 11, 24, 10, 0))
    assert naive == run(*probable(), as_of=datetime(2026, 11, 24, 10, 0, tzinfo=UTC))
    before = run(*probable(), as_of=datetime(2026, 11, 19, tzinfo=UTC))
    assert before["classification"] == "insufficient-data"  # the exam was in the future then


def test_counts_and_ignored_are_sorted() -> None:
    out = run(
        *probable(),
        nodule("o-z", status="cancelled"),
        nodule("o-a", status="cancelled"),
        {"resourceType": "Encounter", "id": "e1", "subject": {"reference": "Patient/p1"}},
        obs("o-hr", "8867-4", LOINC, value={"valueQuantity": {"value": 70}}),
    )
    refs = [i["reference"] for i in out["ignored"]]
    assert refs == sorted(refs) == ["Encounter/e1", "Observation/o-a", "Observation/o-z"]
    assert out["counts"] == {"resources": 7, "used": 4, "ignored": 3}  # 3 + the Patient (birthDate)


def test_trace_explains_each_rule() -> None:
    a = assess(load_bundle(bundle_bytes(*confirmed(), pain("o-p", 8))), AS_OF, "1.0.0")
    stages = [(t["stage"], t["rule"], t["value"]) for t in a.trace]
    assert stages[:4] == [
        ("classification", "red-flags", False),
        ("classification", "not-consistent", False),
        ("classification", "unlikely", False),
        ("classification", "confirmed", True),
    ]
    assert ("next_step", "severe-or-after-conservative", True) in stages
    assert all(t["criteria"] == "1.0.0" for t in a.trace)
    assert any("latest pain 8/10 ≥ 7" in line for line in a.rationale)
