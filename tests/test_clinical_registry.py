"""Criteria as versioned data: pinned release, registry with extra versions, operators, package boundary."""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from clinical_builders import AS_OF, bundle_bytes, confirmed, pain, probable
from criteria_support import RELEASES, hypothetical_release, manifest_for, release_dir, released

from smart_app.clinical import CriteriaError, assess, load_bundle, load_registry
from smart_app.clinical.criteria import FORMAT_1_DEFAULTS, default_registry
from smart_app.clinical.record import PatientRecord
from smart_app.clinical.rules import OPERATORS, Context, FindingResult, FlagResult

ROOT = Path(__file__).resolve().parent.parent
RELEASED = release_dir("1.0.0") / "criteria.json"
# A released criteria version is never edited: add a new version file beside it instead.
RELEASED_SHA256 = "d0cfad3fde6715f82cc19c8cf78ce281212f7fbda761d7ea387a89602bbe89a5"
#: sha256 of each released version's manifest. The manifest records the sha256 of every file of the
#: release (criteria.json and each ValueSet and CodeSystem it pins) and the app refuses a release whose
#: files differ from it, so this one pin per version fails on any change to any file of that version.
RELEASE_MANIFEST_SHA256 = {
    "1.0.0": "00008b7d7b16327c0eedeabe205c1078cf50a087aa0bbca15e7682921935e870",
    "1.1.0": "ad454a7f9679e0b7dc26c9fa35cfa149f856851ba9659e21c0344ecbb54d6b81",
}
#: The same for the reading terminology of format 1 (the sign ValueSets 1.0.0 reads NEURO_DEFICIT with).
FORMAT_1_MANIFEST_SHA256 = "67ad97f7c73e6c8b271a6b3253a38db35c4cb7f494577d011f13528573ddc683"


def test_released_criteria_file_is_unchanged() -> None:
    assert hashlib.sha256(RELEASED.read_bytes()).hexdigest() == RELEASED_SHA256


@pytest.mark.parametrize("version", sorted(RELEASE_MANIFEST_SHA256))
def test_every_file_of_a_released_version_is_pinned(version: str) -> None:
    directory = release_dir(version)
    manifest = directory / "release.json"
    assert hashlib.sha256(manifest.read_bytes()).hexdigest() == RELEASE_MANIFEST_SHA256[version]
    pinned = json.loads(manifest.read_text())["sha256"]
    assert set(pinned) == {p.name for p in directory.glob("*.json")} - {"release.json"}
    for name, digest in pinned.items():
        assert hashlib.sha256((directory / name).read_bytes()).hexdigest() == digest, name
    assert manifest.read_text() == json.dumps(manifest_for(directory), indent=2, sort_keys=True) + "\n"


def test_every_shipped_release_is_pinned_here() -> None:
    assert default_registry().versions() == sorted(RELEASE_MANIFEST_SHA256)


def test_format_1_reading_terminology_is_pinned() -> None:
    directory = RELEASES / "format-1"
    manifest = directory / "terminology.json"
    assert hashlib.sha256(manifest.read_bytes()).hexdigest() == FORMAT_1_MANIFEST_SHA256
    pinned = json.loads(manifest.read_text())["sha256"]
    assert set(pinned) == {p.name for p in directory.glob("*.json")} - {"terminology.json"}
    for name, digest in pinned.items():
        assert hashlib.sha256((directory / name).read_bytes()).hexdigest() == digest, name


def test_release_1_1_0_differs_from_1_0_0_only_where_the_contract_says() -> None:
    """docs/clinical-criteria.md#criteria-110: preliminary danger, M46.5-, medication intent, the opening
    sentence; the format-1 defaults stated explicitly; the decisions rewritten for the reading decisions."""
    old, new = released("1.0.0"), released("1.1.0")
    explicit = {"preliminary_danger", "site_finding", "pain_missing", "checklist_order"}
    assert new["preliminary_danger"] is True and "preliminary_danger" not in old
    for key in explicit - {"preliminary_danger"}:
        assert new[key] == FORMAT_1_DEFAULTS[key]
    deficit = next(f for f in new["findings"] if f["id"] == "NEURO_DEFICIT")
    assert {k: deficit[k] for k in ("danger", "signs")} == FORMAT_1_DEFAULTS["findings"]["NEURO_DEFICIT"]
    medication = next(
        e for e in new["definitions"]["conservative_care_tried"]["of"] if e["op"] == "medication_taken"
    )
    assert medication["intents"] == {
        "MedicationRequest": ["order", "original-order", "reflex-order", "filler-order", "instance-order"]
    }
    assert set(new["summary"]["opening"]) == {r["id"] for r in new["classification"]}
    suspected = {k for k, v in new["summary"]["opening"].items() if "painful episacral lipoma" in v.lower()}
    assert suspected == {"probable", "possible", "confirmed"}

    def without_changes(data: dict[str, Any]) -> dict[str, Any]:
        out = json.loads(json.dumps(data))
        for key in (*explicit, "version", "date", "description", "decisions"):
            out.pop(key, None)
        out["summary"].pop("opening")
        for finding in out["findings"]:
            for key in ("danger", "signs"):
                finding.pop(key, None)
        for entry in out["definitions"]["conservative_care_tried"]["of"]:
            entry.pop("intents", None)
        for flag in out["red_flags"]:  # citations only: 1.1.0 cites the project's own document
            flag.pop("source", None)
        return out

    assert without_changes(new) == without_changes(old)
    assert {d["id"] for d in old["decisions"]} <= {d["id"] for d in new["decisions"]}
    pins = {
        v: {
            p["url"]: p["version"]
            for p in json.loads((release_dir(v) / "release.json").read_text())["valuesets"]
        }
        for v in ("1.0.0", "1.1.0")
    }
    changed = {url for url, version in pins["1.1.0"].items() if pins["1.0.0"].get(url) != version}
    assert changed == {
        "https://smart-app.example/fhir/ValueSet/back-mice-rf-spinal-infection",  # 1.1.0 (adds M46.5-)
        *(sign["valueset"] for sign in deficit["signs"]),  # the signs, new in the release (1.0.0 files)
    }
    assert pins["1.1.0"]["https://smart-app.example/fhir/ValueSet/back-mice-rf-spinal-infection"] == "1.1.0"


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


def _hypothetical(data: dict[str, Any]) -> None:
    data["title"] += " (hypothetical)"
    data["thresholds"]["pain_high"] = 6  # a hypothetical change of the ladder


def _write_1_1_0(tmp_path: Path) -> Path:
    d = tmp_path / "criteria"
    d.mkdir()
    hypothetical_release(d, "9.1.0", _hypothetical)
    return d


def test_a_new_version_is_evaluable_beside_the_released_one(tmp_path: Path) -> None:
    registry = load_registry([_write_1_1_0(tmp_path)])
    assert registry.versions()[-1] == "9.1.0" and "1.0.0" in registry
    record = load_bundle(bundle_bytes(*confirmed(), pain("o-p", 6)))
    old = assess(record, AS_OF, "1.0.0", registry=registry).to_json()
    new = assess(record, AS_OF, "9.1.0", registry=registry).to_json()
    assert (old["next_step"], new["next_step"]) == ("conservative-care", "therapeutic-injection")
    assert new["criteria"]["version"] == "9.1.0" and old["criteria"]["version"] == "1.0.0"
    assert assess(record, AS_OF, registry=registry).to_json()["criteria"]["version"] == "9.1.0"


def test_registry_errors(tmp_path: Path) -> None:
    with pytest.raises(CriteriaError, match="unknown criteria version"):
        default_registry().get("0.9.0")
    d = _write_1_1_0(tmp_path)
    with pytest.raises(CriteriaError, match="defined twice"):
        load_registry([d, d])
    with pytest.raises(CriteriaError, match="defined twice"):
        load_registry([release_dir("1.0.0")])


def test_a_release_with_an_unpinned_valueset_is_refused(tmp_path: Path) -> None:
    def unpinned(data: dict[str, Any]) -> None:
        data["findings"][0]["observations"][0]["valueset"] = "https://smart-app.example/fhir/ValueSet/nope"

    with pytest.raises(CriteriaError, match="not in the release"):
        hypothetical_release(tmp_path, "2.0.0", unpinned)


def test_an_edited_file_of_a_sealed_release_is_refused(tmp_path: Path) -> None:
    """Editing a ValueSet of a sealed release changes nothing silently: the release no longer loads."""
    target = tmp_path / "back-mice-1.0.0"
    shutil.copytree(release_dir("1.0.0"), target)
    vs = target / "ValueSet-back-mice-rf-malignancy.json"
    data = json.loads(vs.read_text())
    data["compose"]["include"][0]["concept"] = data["compose"]["include"][0]["concept"][1:]
    vs.write_text(json.dumps(data))
    with pytest.raises(CriteriaError, match="changed after the release was sealed"):
        load_registry([target], shipped=False).get("1.0.0")
    with pytest.raises(CriteriaError, match="changed after the release was sealed"):
        load_registry([target], shipped=False).load_all()
    (target / "ValueSet-extra.json").write_text("{}")
    with pytest.raises(CriteriaError, match="not sealed"):
        load_registry([target], shipped=False).get("1.0.0")


# -- operators -------------------------------------------------------------------------------------
def _ctx(**findings: str) -> Context:
    criteria = default_registry().get("1.0.0")
    from smart_app.clinical.facts import Extractor

    ctx = Context(
        criteria=criteria,
        facts=Extractor(AS_OF, criteria).facts,
        record=PatientRecord({"id": "p1"}, []),
        as_of=AS_OF,
        operators=OPERATORS,
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
        inside = tuple(b + "." for b in banned)
        assert [m for m in names if m in banned or m.startswith(inside)] == [], path.name


def test_assess_returns_a_fresh_dict() -> None:
    a = assess(load_bundle(bundle_bytes(*probable())), AS_OF)
    first = a.to_json()
    first["findings"]["LBP"]["status"] = "changed"
    assert a.to_json()["findings"]["LBP"]["status"] == "present"
