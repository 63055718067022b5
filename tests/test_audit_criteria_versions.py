"""``audit verify`` across criteria versions and app versions (docs/clinical-criteria.md#criteria-110,
docs/clinical-criteria.md#what-the-app-writes).

A write is made offline: the drafted transaction gets server ids (``Type/wN``, version 1) and its
``urn:uuid`` references are resolved to them, as a server does (R4 http.html#trules), and the export holds
the Patient and the source resources at their versions. Verification must re-run the criteria version the
Provenance's ``policy`` names, whatever the newest release is, and say which app version wrote and which
reproduced.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

import smart_app
from smart_app.audit.source import BundleSource
from smart_app.audit.verify import verify_assessment
from smart_app.clinical import assess, default_registry, load_bundle
from smart_app.drafts.build import build_transaction
from smart_app.vocabulary import NEXT_STEP_EXTENSION, SOFTWARE_VERSION_EXTENSION

CASES_DIR = Path(__file__).resolve().parent / "cases"
RECORDED = datetime(2026, 11, 24, 12, 30, tzinfo=UTC)


def case_record(name: str) -> tuple[dict[str, Any], list[dict[str, Any]], datetime]:
    case = json.loads((CASES_DIR / f"{name}.json").read_text(encoding="utf-8"))
    versioned = [{**r, "meta": {"versionId": "1"}} for r in [case["patient"], *case["resources"]]]
    return versioned[0], versioned[1:], datetime.fromisoformat(case["as_of"].replace("Z", "+00:00"))


def write_offline(transaction: dict[str, Any]) -> list[dict[str, Any]]:
    """The resources a server would hold after the transaction: ids assigned, references resolved."""
    ids = {e["fullUrl"]: f"{e['resource']['resourceType']}/w{i}" for i, e in enumerate(transaction["entry"])}

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: ids.get(v, v) if k == "reference" else resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    written = []
    for entry in transaction["entry"]:
        resource = resolve(copy.deepcopy(entry["resource"]))
        resource["id"] = ids[entry["fullUrl"]].split("/", 1)[1]
        resource["meta"] = {**resource.get("meta", {}), "versionId": "1"}
        written.append(resource)
    return written


def write(name: str, version: str) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    """Assess a case under ``version``, draft, write offline: (export, assessment reference, assessment)."""
    patient, resources, as_of = case_record(name)
    data = orjson.dumps({"resourceType": "Bundle", "entry": [{"resource": r} for r in [patient, *resources]]})
    assessment = assess(load_bundle(data), as_of, version).to_json()
    written = write_offline(build_transaction(assessment, author=None, encounter=None, recorded=RECORDED))
    ci = next(r for r in written if r["resourceType"] == "ClinicalImpression")
    return [patient, *resources, *written], f"ClinicalImpression/{ci['id']}", assessment


def test_a_1_0_0_write_reproduces_under_1_0_0_when_1_1_0_is_the_default() -> None:
    """M46.56 is a spinal-infection code from 1.1.0 only: the 1.0.0 write concluded 'probable'; a new
    assessment today (1.1.0) would say 'red-flags'; verify re-runs 1.0.0 and reproduces the write."""
    assert default_registry().newest().version == "1.1.0"
    export, ref, assessment = write("408-v100-m46-5-not-listed", "1.0.0")
    assert (assessment["classification"], assessment["criteria"]["version"]) == ("probable", "1.0.0")
    patient, resources, as_of = case_record("408-v100-m46-5-not-listed")
    data = orjson.dumps({"resourceType": "Bundle", "entry": [{"resource": r} for r in [patient, *resources]]})
    assert assess(load_bundle(data), as_of).to_json()["classification"] == "red-flags"  # today's default

    report = verify_assessment(BundleSource(export), ref)
    assert report.reproduced, report.to_json()
    assert report.criteria == {"url": "https://smart-app.example/fhir/criteria/back-mice", "version": "1.0.0"}
    assert report.recomputed["classification"] == "probable"
    assert f"Written and reproduced by app version {smart_app.__version__}." in report.notes


def test_a_1_1_0_write_reproduces_under_1_1_0() -> None:
    export, ref, assessment = write("407-v110-m46-5-spinal-infection", "1.1.0")
    assert assessment["classification"] == "red-flags"
    report = verify_assessment(BundleSource(export), ref)
    assert report.reproduced and report.criteria["version"] == "1.1.0"


def provenance_of(export: list[dict[str, Any]]) -> dict[str, Any]:
    return next(r for r in export if r["resourceType"] == "Provenance")


def test_verify_says_which_software_wrote_and_that_the_conclusion_still_matches() -> None:
    export, ref, _ = write("001-probable-basic", "1.0.0")
    provenance_of(export)["extension"] = [{"url": SOFTWARE_VERSION_EXTENSION, "valueString": "0.1.9"}]
    report = verify_assessment(BundleSource(export), ref)
    assert report.reproduced
    assert (
        f"Written by app version 0.1.9; reproduced by app version {smart_app.__version__}: "
        "the conclusion still matches."
    ) in report.notes
    assert report.to_json()["notes"] == report.notes


def test_verify_says_when_an_older_write_no_longer_matches() -> None:
    """A write of app 0.1.0 (no software extension) whose conclusion the reading decisions changed: the
    pain score coded '{score}' with unit text 'points' was read as invalid then (next step focused-exam),
    and counts now (therapeutic-injection)."""
    export, ref, assessment = write("336-pain-ucum-code-decides", "1.0.0")
    assert assessment["next_step"] == "therapeutic-injection"
    old = next(r for r in export if f"ClinicalImpression/{r['id']}" == ref)
    next_step = next(e for e in old["extension"] if e["url"] == NEXT_STEP_EXTENSION)
    next_step["valueCoding"] = {
        **next_step["valueCoding"],
        "code": "focused-exam",
        "display": "Focused examination",
    }
    del provenance_of(export)["extension"]
    report = verify_assessment(BundleSource(export), ref)
    assert not report.reproduced
    assert [d.field for d in report.differences] == ["next_step"]
    assert (
        "The write does not name the app version that concluded (written before app 0.2.0); reproduced by "
        f"app version {smart_app.__version__}: the conclusion does not match (next_step differ)."
    ) in report.notes
