"""Criteria as versioned data: pinned release, registry with extra versions, operators, package boundary."""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from test_clinical_builders import AS_OF, bundle_bytes, confirmed, pain, probable

from smart_app.clinical import CriteriaError, assess, load_bundle, load_registry
from smart_app.clinical.criteria import CRITERIA_DIR, TERMINOLOGY_DIR, default_registry
from smart_app.clinical.operators import OPERATORS, Context, FindingResult, FlagResult
from smart_app.clinical.record import PatientRecord

ROOT = Path(__file__).resolve().parent.parent
RELEASED = CRITERIA_DIR / "back-mice-1.0.0.json"
# A released criteria version is never edited: add a new version file beside it instead.
RELEASED_SHA256 = "d0cfad3fde6715f82cc19c8cf78ce281212f7fbda761d7ea387a89602bbe89a5"


def test_released_criteria_file_is_unchanged() -> None:
    assert hashlib.sha256(RELEASED.read_bytes()).hexdigest() == RELEASED_SHA256


def test_released_criteria_content() -> None:
    data = json.loads(RELEASED.read_text())
    assert (data["url"], data["version"]) == ("https://smart-app.example/fhir/criteria/back-mice", "1.0.0")
    assert data["thresholds"] == {
        "relief_percent": 80,
        "pain_high": 7,
        "pain_moderate": 4,
        "injections_for_referral": 2,
    }
    assert data["windows_days"] == {"exam": 90, "pain": 30, "state_flag": 30, "onset": 42}
    assert data["age_years"] == {"below": 20, "above": 50}
    assert [r["id"] for r in data["classification"]] == [
        "red-flags",
        "not-consistent",
        "unlikely",
        "confirmed",
        "probable",
        "possible",
        "insufficient-data",
    ]
    assert len(data["decisions"]) >= 20 and all(d["id"] and d["decision"] for d in data["decisions"])
    assert {f["id"] for f in data["red_flags"]} == {
        "cauda-equina",
        "spinal-infection",
        "malignancy",
        "fracture",
        "weight-loss",
        "inflammatory",
        "bone-fragility",
        "subjective-sensory",
        "age-new-onset",
    }


def _write_1_1_0(tmp_path: Path) -> Path:
    data = json.loads(RELEASED.read_text())
    data["version"] = "1.1.0"
    data["title"] += " (hypothetical 1.1.0)"
    data["thresholds"]["pain_high"] = 6  # a hypothetical change of the ladder
    d = tmp_path / "criteria"
    d.mkdir()
    (d / "back-mice-1.1.0.json").write_text(json.dumps(data))
    return d


def test_a_new_version_is_evaluable_beside_the_released_one(tmp_path: Path) -> None:
    registry = load_registry([CRITERIA_DIR, _write_1_1_0(tmp_path)])
    assert registry.versions() == ["1.0.0", "1.1.0"]
    record = load_bundle(bundle_bytes(*confirmed(), pain("o-p", 6)))
    old = assess(record, AS_OF, "1.0.0", registry=registry).to_json()
    new = assess(record, AS_OF, "1.1.0", registry=registry).to_json()
    assert (old["next_step"], new["next_step"]) == ("conservative-care", "therapeutic-injection")
    assert new["criteria"]["version"] == "1.1.0" and old["criteria"]["version"] == "1.0.0"


def test_registry_errors(tmp_path: Path) -> None:
    with pytest.raises(CriteriaError, match="unknown criteria version"):
        default_registry().get("0.9.0")
    d = _write_1_1_0(tmp_path)
    with pytest.raises(CriteriaError, match="defined twice"):
        load_registry([d, d])
    broken = json.loads(RELEASED.read_text())
    broken["version"] = "2.0.0"
    broken["findings"][0]["observations"][0]["valueset"] = "https://smart-app.example/fhir/ValueSet/nope"
    (d / "back-mice-2.0.0.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="not found"):
        load_registry([d], [TERMINOLOGY_DIR])


# -- operators -------------------------------------------------------------------------------------
def _ctx(**findings: str) -> Context:
    criteria = default_registry().get("1.0.0")
    from smart_app.clinical.facts import Extractor

    ctx = Context(
        criteria=criteria,
        facts=Extractor(AS_OF, criteria).facts,
        record=PatientRecord({"id": "p1"}, []),
        as_of=AS_OF,
    )
    for fid, status in findings.items():
        ctx.findings[fid] = FindingResult(status, (f"Observation/{fid}",), "test")
    return ctx


def test_operator_table_has_one_signature() -> None:
    ctx = _ctx(LBP="present", NODULE="absent")
    for name in ("always", "no_latest_pain"):
        assert OPERATORS[name](ctx, {"op": name}).value is True
    assert ctx.evaluate({"op": "finding", "id": "LBP", "is": "present"}).evidence == ("Observation/LBP",)
    both = {
        "op": "all",
        "of": [
            {"op": "finding", "id": "LBP", "is": "present"},
            {"op": "finding", "id": "NODULE", "is": "present"},
        ],
    }
    assert ctx.evaluate(both).value is False
    assert ctx.evaluate({"op": "any", "of": both["of"]}).value is True
    assert ctx.evaluate({"op": "not", "of": both}).value is True
    assert ctx.evaluate({"op": "latest_pain", "at_least": "pain_high"}).value is False
    assert ctx.evaluate({"op": "any_flag", "level": "block"}).value is False
    ctx.flags.append(FlagResult("malignancy", "block", "t", ("Condition/c",), "r", "s"))
    assert ctx.evaluate({"op": "any_flag", "level": "block"}).evidence == ("Condition/c",)
    with pytest.raises(CriteriaError):
        ctx.evaluate({"op": "nonsense"})


def test_every_operator_used_by_the_criteria_exists() -> None:
    def ops(node: Any) -> set[str]:
        if isinstance(node, dict):
            found = {node["op"]} if isinstance(node.get("op"), str) else set()
            return found.union(*(ops(v) for v in node.values()))
        if isinstance(node, list):
            return set().union(*(ops(v) for v in node))
        return set()

    assert ops(json.loads(RELEASED.read_text())) <= set(OPERATORS)


# -- boundary --------------------------------------------------------------------------------------
def test_clinical_package_imports_no_web_layer() -> None:
    banned = ("flask", "requests", "smart_app.web", "smart_app.fhir")
    for path in sorted((ROOT / "smart_app" / "clinical").glob("*.py")):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert [m for m in names if m.split(".")[0] in banned or m.startswith(banned)] == [], path.name


def test_assess_returns_a_fresh_dict() -> None:
    a = assess(load_bundle(bundle_bytes(*probable())), AS_OF)
    first = a.to_json()
    first["findings"]["LBP"]["status"] = "changed"
    assert a.to_json()["findings"]["LBP"]["status"] == "present"
