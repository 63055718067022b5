"""Every draft the engine can produce: all sandbox patients (launch/data) and all clinical cases
(tests/cases), through ``assess`` and ``build_transaction``, in both assessment forms, against the
profiles; and the golden drafts of the sandbox patients (tests/golden/<patient>.json).

Regenerate the golden files after an intended change with ``UPDATE_GOLDEN=1 pytest
tests/test_drafting_corpus.py`` and review the diff: it is what auditors see of a change to what is
written.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.bundle import Bundle
from writeback_fixtures import (
    AUTHOR,
    GOLDEN_DIR,
    RECORDED,
    corpus_assessment,
    corpus_names,
    patient_files,
)

from smart_app.drafts.build import DRAFT_BANNER, AssessmentAs, build_transaction, narrative_text
from smart_app.drafts.profiles import check_bundle
from smart_app.drafts.provenance import versioned_reference
from smart_app.writeback import validate_drafts

FORMS: tuple[AssessmentAs, ...] = ("ClinicalImpression", "DocumentReference")
#: A UTC instant as the app writes it; the R4 models write the same instant with ``+00:00``.
UTC_INSTANT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def as_the_models_write(node: Any) -> Any:
    """``node`` with every UTC instant spelt ``+00:00``, the one way the R4 models rewrite a draft."""
    if isinstance(node, dict):
        return {key: as_the_models_write(value) for key, value in node.items()}
    if isinstance(node, list):
        return [as_the_models_write(value) for value in node]
    if isinstance(node, str) and UTC_INSTANT.fullmatch(node):
        return f"{node[:-1]}+00:00"
    return node


@pytest.mark.parametrize("kind, name", list(corpus_names()))
def test_every_draft_conforms(kind: str, name: str) -> None:
    assessment = corpus_assessment(kind, name)
    blocked = any(f["level"] == "block" for f in assessment["red_flags"])
    for form in FORMS:
        for author in (AUTHOR, None):
            bundle = build_transaction(
                assessment, author=author, encounter=None, recorded=RECORDED, assessment_as=form
            )
            assert [str(i) for i in check_bundle(bundle)] == []
            assert validate_drafts(bundle) == []
            types = [e["resource"]["resourceType"] for e in bundle["entry"]]
            assert types[0] == "Device" and types[1] == form and types[-1] == "Provenance"
            assert types.count("DetectedIssue") == len(assessment["red_flags"])
            has_request = "ServiceRequest" in types
            assert has_request == (bool(assessment["procedure_suggestion"]) and not blocked)
            for entry in bundle["entry"][1:]:
                assert narrative_text(entry["resource"]["text"]["div"]).startswith(DRAFT_BANNER)
            prov = bundle["entry"][-1]["resource"]
            expected = [versioned_reference(s["reference"], s["version_id"]) for s in assessment["sources"]]
            assert [e["what"]["reference"] for e in prov.get("entity", [])] == expected
            assert [t["reference"] for t in prov["target"]] == [e["fullUrl"] for e in bundle["entry"][1:-1]]
        # the models read the drafts whole: nothing dropped, coerced or reformatted, so what the review
        # page shows (built, not parsed) is what the write sends
        assert json.loads(Bundle.parse_obj(bundle).json()) == as_the_models_write(bundle)


def normalised(bundle: dict[str, Any]) -> dict[str, Any]:
    """The Bundle with its volatile field (Provenance.recorded) replaced."""
    out: dict[str, Any] = json.loads(json.dumps(bundle))
    for entry in out["entry"]:
        if entry["resource"]["resourceType"] == "Provenance":
            entry["resource"]["recorded"] = "<recorded>"
    return out


@pytest.mark.parametrize("path", patient_files(), ids=lambda p: p.stem)
def test_golden_drafts(path: Path) -> None:
    bundle = normalised(
        build_transaction(
            corpus_assessment("patient", path.name), author=AUTHOR, encounter=None, recorded=RECORDED
        )
    )
    golden = GOLDEN_DIR / f"{path.stem}.json"
    text = json.dumps(bundle, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert golden.exists(), f"no golden file {golden.name}: run with UPDATE_GOLDEN=1"
    assert json.loads(golden.read_text(encoding="utf-8")) == bundle, f"{golden.name} differs from the drafts"


def test_golden_files_match_patients() -> None:
    expected = {f"{p.stem}.json" for p in patient_files()}
    assert {p.name for p in GOLDEN_DIR.glob("*.json")} == expected
