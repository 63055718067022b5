"""Clinical case suite: every tests/cases/*.json file against `load_bundle` + `assess`
(docs/clinical-criteria.md).

Each case holds a Patient, FHIR R4 resources, an evaluation time, the criteria version it belongs to
(``criteria_version``: a case is evaluated under that release, so every 1.0.0 case keeps passing under
1.0.0 when a newer release is the default) and the expected classification, next step, exact red-flag set
(id and level), procedure-suggestion kind, and optionally a subset of finding statuses, of ignored
references and of ignored element paths (``ignored_paths``: ``[reference, path]`` pairs of malformed
elements reported but not costing their resource), and the opening words of the summary
(``summary_opening``). An optional ``unavailable`` maps resource types that could not be read to the
reason (``{"Condition": "scope not granted"}``); it is passed into ``PatientRecord``. The expectations
are written from the clinical contract, not from the implementation.
"""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from smart_app.clinical import assess, default_registry, load_bundle

ROOT = Path(__file__).resolve().parent.parent
CASES_DIR = Path(__file__).resolve().parent / "cases"
DATA_DIR = ROOT / "launch" / "data"
CASE_FILES = sorted(CASES_DIR.glob("*.json"))
DATA_FILES = sorted(DATA_DIR.glob("patient-*.json"))

CLASSIFICATIONS = {
    "red-flags",
    "not-consistent",
    "unlikely",
    "confirmed",
    "probable",
    "possible",
    "insufficient-data",
}
NEXT_STEPS = {
    "urgent-work-up",
    "work-up",
    "none",
    "surgical-referral",
    "therapeutic-injection",
    "conservative-care",
    "diagnostic-injection",
    "focused-exam",
}
PROCEDURE_KINDS = {"diagnostic-injection", "therapeutic-injection", "surgical-referral"}
FINDING_IDS = {"LBP", "NODULE", "TYPICAL_SITE", "PAIN_REPRODUCED", "NEURO_DEFICIT", "INJECTION_RELIEF"}
RED_FLAG_LEVELS = {
    "cauda-equina": "block",
    "spinal-infection": "block",
    "malignancy": "block",
    "fracture": "block",
    "weight-loss": "warn",
    "inflammatory": "warn",
    "bone-fragility": "warn",
    "subjective-sensory": "warn",
    "age-new-onset": "warn",
}
# Terminologies the cases may use (docs/clinical-criteria.md#codes, R4 code systems).
ALLOWED_SYSTEMS = {
    "http://snomed.info/sct",
    "http://hl7.org/fhir/sid/icd-10-cm",
    "http://loinc.org",
    "http://www.nlm.nih.gov/research/umls/rxnorm",
    "http://unitsofmeasure.org",
    "https://smart-app.example/fhir/CodeSystem/back-mice-finding",
    "http://terminology.hl7.org/CodeSystem/condition-clinical",
    "http://terminology.hl7.org/CodeSystem/condition-ver-status",
    "http://terminology.hl7.org/CodeSystem/condition-category",
    "http://terminology.hl7.org/CodeSystem/observation-category",
    "http://terminology.hl7.org/CodeSystem/data-absent-reason",
    "https://ehr.example/fhir/sid/mrn",
}
SUBJECT_TYPES = {"Observation", "Condition", "Procedure", "MedicationStatement", "MedicationRequest"}


def load_case(path: Path) -> dict[str, Any]:
    """Read one case file."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def case_bundle(case: dict[str, Any]) -> dict[str, Any]:
    """A collection Bundle holding the case's Patient (under ``patient_full_url`` when the case gives
    one) and resources, in file order."""
    patient: dict[str, Any] = {"resource": case["patient"]}
    if "patient_full_url" in case:
        patient["fullUrl"] = case["patient_full_url"]
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [patient, *({"resource": r} for r in case["resources"])],
    }


def parse_instant(text: str) -> datetime:
    """ISO-8601 with a trailing Z as an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """Bytes -> record -> assessment JSON, as the CLI does."""
    record = load_bundle(orjson.dumps(case_bundle(case)))
    if "unavailable" in case:
        record = dataclasses.replace(record, unavailable=dict(case["unavailable"]))
    result: dict[str, Any] = assess(record, parse_instant(case["as_of"]), case["criteria_version"]).to_json()
    return result


def observed(expected: dict[str, Any], actual: dict[str, Any]) -> dict[str, Any]:
    """Project the assessment onto the shape of `expected` (exact flags, subsets for findings/ignored)."""
    suggestion = actual.get("procedure_suggestion")
    out: dict[str, Any] = {
        "classification": actual.get("classification"),
        "next_step": actual.get("next_step"),
        "red_flags": sorted(
            ({"id": f["id"], "level": f["level"]} for f in actual.get("red_flags", [])),
            key=lambda f: (f["id"], f["level"]),
        ),
        "procedure_suggestion": None if suggestion is None else {"kind": suggestion.get("kind")},
    }
    if "findings" in expected:
        findings = actual.get("findings", {})
        out["findings"] = {k: (findings.get(k) or {}).get("status") for k in expected["findings"]}
    if "ignored_references" in expected:
        ignored = {i.get("reference") for i in actual.get("ignored", [])}
        out["ignored_references"] = [r for r in expected["ignored_references"] if r in ignored]
    if "ignored_paths" in expected:
        paths = {(i.get("reference"), i.get("path")) for i in actual.get("ignored", [])}
        out["ignored_paths"] = [p for p in expected["ignored_paths"] if tuple(p) in paths]
    if "summary_opening" in expected:
        summary = str(actual.get("summary"))
        out["summary_opening"] = (
            expected["summary_opening"] if summary.startswith(expected["summary_opening"]) else summary[:160]
        )
    if "preliminary_evidence" in expected:
        out["preliminary_evidence"] = actual.get("preliminary_evidence")
    return out


def normalised(expected: dict[str, Any]) -> dict[str, Any]:
    """Expected block with the red-flag list in a canonical order."""
    out = dict(expected)
    out["red_flags"] = sorted(expected["red_flags"], key=lambda f: (f["id"], f["level"]))
    return out


@pytest.mark.parametrize("path", CASE_FILES, ids=[p.stem for p in CASE_FILES])
def test_case(path: Path) -> None:
    case = load_case(path)
    actual = run_case(case)
    expected = normalised(case["expected"])
    got = observed(expected, actual)
    assert got == expected, (
        f"{path.name}: {case['description']} [{case['rule']}]\n"
        f"findings: { {k: v.get('status') for k, v in actual.get('findings', {}).items()} }\n"
        f"ignored: {actual.get('ignored')}\nrationale: {actual.get('rationale')}"
    )


def test_suite_size() -> None:
    assert len(CASE_FILES) >= 60


def test_every_classification_and_next_step_has_a_case() -> None:
    cases = [load_case(p)["expected"] for p in CASE_FILES]
    assert {c["classification"] for c in cases} == CLASSIFICATIONS
    assert {c["next_step"] for c in cases} == NEXT_STEPS
    assert {(c["procedure_suggestion"] or {}).get("kind") for c in cases} == PROCEDURE_KINDS | {None}
    assert {f["id"] for c in cases for f in c["red_flags"]} == set(RED_FLAG_LEVELS)


def test_every_release_has_cases_and_every_opening_of_the_newest_is_pinned() -> None:
    """Each shipped criteria version is evaluated by cases of its own; the newest release's opening
    sentence is pinned for every classification by at least one case."""
    cases = [load_case(p) for p in CASE_FILES]
    assert {c["criteria_version"] for c in cases} == set(default_registry().versions())
    newest = default_registry().newest().version
    pinned = {
        c["expected"]["classification"]
        for c in cases
        if c["criteria_version"] == newest and "summary_opening" in c["expected"]
    }
    assert pinned == CLASSIFICATIONS


@pytest.mark.parametrize("path", CASE_FILES, ids=[p.stem for p in CASE_FILES])
def test_case_file_well_formed(path: Path) -> None:
    case = load_case(path)
    assert path.stem[:3].isdigit() and path.stem[3] == "-"
    assert {"description", "rule", "as_of", "criteria_version", "patient", "resources", "expected"} <= set(
        case
    )
    parse_instant(case["as_of"])
    assert case["criteria_version"] in default_registry()
    unavailable = case.get("unavailable", {})
    assert isinstance(unavailable, dict)
    assert all(t in SUBJECT_TYPES and isinstance(r, str) and r for t, r in unavailable.items())
    patient = case["patient"]
    assert patient["resourceType"] == "Patient" and patient["id"]
    exp = case["expected"]
    assert exp["classification"] in CLASSIFICATIONS
    assert exp["next_step"] in NEXT_STEPS
    for flag in exp["red_flags"]:
        assert RED_FLAG_LEVELS[flag["id"]] == flag["level"]
    kind = (exp["procedure_suggestion"] or {}).get("kind")
    assert kind == (exp["next_step"] if exp["next_step"] in PROCEDURE_KINDS else None)
    assert set(exp.get("findings", {})) <= FINDING_IDS
    refs = [f"{r['resourceType']}/{r['id']}" for r in case["resources"]]
    assert len(refs) == len(set(refs))
    assert set(exp.get("ignored_references", [])) <= set(refs)
    assert {r for r, _ in exp.get("ignored_paths", [])} <= {*refs, f"Patient/{patient['id']}"}
    for resource in case["resources"]:
        assert resource["resourceType"] in SUBJECT_TYPES
        assert isinstance(resource["subject"]["reference"], str)
        if resource["resourceType"] == "Observation":
            assert resource["status"] and resource["code"]
        _check_systems(resource)


def _check_systems(node: Any) -> None:
    """Every coding/quantity system is one the specification lists."""
    if isinstance(node, dict):
        system = node.get("system")
        if system is not None:
            assert system in ALLOWED_SYSTEMS, system
        for value in node.values():
            _check_systems(value)
    elif isinstance(node, list):
        for value in node:
            _check_systems(value)


# ---------------------------------------------------------------------------------------------------
# Sandbox patients (launch/data): structure, coverage, and that each has an identical case file.


def _bundle_resources(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    bundle = json.loads(path.read_text(encoding="utf-8"))
    resources = [e["resource"] for e in bundle["entry"]]
    patients = [r for r in resources if r["resourceType"] == "Patient"]
    assert len(patients) == 1
    return patients[0], [r for r in resources if r["resourceType"] != "Patient"]


def test_sandbox_patients_structure() -> None:
    assert len(DATA_FILES) >= 8
    seen: set[str] = set()
    for path in DATA_FILES:
        bundle = json.loads(path.read_text(encoding="utf-8"))
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
        patient, resources = _bundle_resources(path)
        pid = patient["id"]
        assert path.name == f"patient-{pid}.json"
        assert patient.get("name") and patient.get("birthDate")
        for resource in [patient, *resources]:
            assert "text" not in resource
            assert resource["meta"]["versionId"]
            key = f"{resource['resourceType']}/{resource['id']}"
            assert key not in seen, key
            seen.add(key)
            if resource is not patient:
                assert resource["id"].startswith(f"{pid}-")
                assert resource["subject"]["reference"] == f"Patient/{pid}"
            _check_systems(resource)


def test_sandbox_patients_have_identical_cases() -> None:
    by_source = {c.get("source"): c for c in map(load_case, CASE_FILES) if c.get("source")}
    for path in DATA_FILES:
        case = by_source.get(f"launch/data/{path.name}")
        assert case is not None, f"no case file for {path.name}"
        patient, resources = _bundle_resources(path)
        assert case["patient"] == patient
        assert case["resources"] == resources


def test_sandbox_patients_cover_every_classification() -> None:
    sandbox = [c["expected"] for c in map(load_case, CASE_FILES) if c.get("source")]
    assert {c["classification"] for c in sandbox} == CLASSIFICATIONS
    ladder = {c["next_step"] for c in sandbox if c["classification"] == "confirmed"}
    assert {"therapeutic-injection", "surgical-referral"} <= ladder
    assert any(
        c["procedure_suggestion"] and any(f["level"] == "warn" for f in c["red_flags"]) for c in sandbox
    )


def names_patient(reference: str, pid: str, full_url: str | None = None) -> bool:
    """``Patient/<id>``, versioned or not, relative or absolute (docs/clinical-criteria.md#subjects; the
    cases are files, so any base), or the fullUrl of the Patient's entry."""
    if full_url is not None and reference == full_url:
        return True
    return (
        re.fullmatch(rf"(https?://\S+/)?Patient/{re.escape(pid)}(/_history/[A-Za-z0-9.-]+)?", reference)
        is not None
    )


def test_evidence_is_traceable_to_versioned_sources() -> None:
    """Every evidence reference is an input resource of the launched patient and is listed in `sources`
    with that resource's meta.versionId (the Assessment's ``sources``)."""
    for path in CASE_FILES:
        case = load_case(path)
        pid = case["patient"]["id"]
        by_ref = {f"{r['resourceType']}/{r['id']}": r for r in [case["patient"], *case["resources"]]}
        actual = run_case(case)
        sources = {s["reference"]: s.get("version_id") for s in actual.get("sources", [])}
        evidence = [ref for f in actual["findings"].values() for ref in f.get("evidence", [])]
        evidence += [ref for f in actual["red_flags"] for ref in f.get("evidence", [])]
        assert len(actual["red_flags"]) == len({f["id"] for f in actual["red_flags"]}), path.name
        for ref in evidence:
            resource = by_ref.get(ref)
            assert resource is not None, f"{path.name}: evidence {ref} is not an input resource"
            if resource is not case["patient"]:
                subject = resource["subject"]["reference"]
                assert names_patient(subject, pid, case.get("patient_full_url")), f"{path.name}: {ref}"
            assert ref in sources, f"{path.name}: {ref} missing from sources"
            assert sources[ref] == resource.get("meta", {}).get("versionId"), f"{path.name}: {ref} version"
        for item in actual.get("ignored", []):
            assert item.get("reason"), f"{path.name}: {item}"
