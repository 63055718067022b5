"""Terminology of the criteria releases and the app's package: check digits, criteria coverage, category
rules (docs/clinical-criteria.md#codes)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from smart_app.clinical import terminology
from smart_app.clinical.criteria import coded_references, default_registry, valueset_urls

ROOT = Path(__file__).resolve().parent.parent
SCT = "http://snomed.info/sct"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
RELEASES_DIR = ROOT / "smart_app" / "data" / "criteria"
TERMINOLOGY_DIR = RELEASES_DIR / "back-mice-1.0.0"
CRITERIA = orjson.loads((TERMINOLOGY_DIR / "criteria.json").read_bytes())
OUR_FILES = sorted(RELEASES_DIR.glob("*/ValueSet-back-mice-*.json")) + sorted(
    (ROOT / "smart_app" / "data" / "profiles").glob("CodeSystem-back-mice-*.json")
)

# Verhoeff tables (the SNOMED CT check digit)
_D = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
    [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
    [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
    [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
    [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
    [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
    [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
    [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
]
_P = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
    [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
    [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
    [9, 4, 5, 3, 1, 2, 6, 8, 7, 0],
    [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
    [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
    [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
]


def sctid_checksum_ok(sctid: str) -> bool:
    if not sctid.isdigit() or not 6 <= len(sctid) <= 18:
        return False
    c = 0
    for i, ch in enumerate(reversed(sctid)):
        c = _D[c][_P[i % 8][int(ch)]]
    return c == 0


def _snomed_codes(node: Any, system: str | None = None) -> Iterator[str]:
    """Every SNOMED code in a FHIR JSON tree: codings, compose includes, and sct:// valueCodings."""
    if isinstance(node, dict):
        sys = node.get("system", system)
        if sys == SCT:
            if isinstance(node.get("code"), str):
                yield node["code"]
            for c in node.get("concept", []):
                yield c["code"]
        for key, value in node.items():
            if key != "concept":
                yield from _snomed_codes(value, sys if key in ("include", "exclude") else None)
    elif isinstance(node, list):
        for item in node:
            yield from _snomed_codes(item, system)


def test_verhoeff_examples() -> None:
    for good in ("279039007", "278860009", "95325000", "93163002", "274068006"):
        assert sctid_checksum_ok(good)
    for bad in ("274030003", "182024006", "122497005", "24026003", "76783986"):
        assert not sctid_checksum_ok(bad)


def test_every_snomed_code_in_fhir_profiles_passes_the_check_digit() -> None:
    found: set[str] = set()
    for path in sorted((ROOT / "smart_app" / "data").rglob("*.json")):
        found |= set(_snomed_codes(orjson.loads(path.read_bytes())))
    assert len(found) > 60
    assert sorted(c for c in found if not sctid_checksum_ok(c)) == []


def test_known_wrong_codes_are_absent() -> None:
    text = "".join(p.read_text() for p in OUR_FILES) + (TERMINOLOGY_DIR / "criteria.json").read_text()
    for wrong in (
        "274030003",
        "182024006",
        "122497005",
        "24026003",
        "76783986",
        "24531-6",
        '"M62.89"',
        '"code": "2123154"',
    ):
        assert wrong not in text


@pytest.mark.parametrize("path", OUR_FILES, ids=lambda p: p.name)
def test_terminology_resources_are_well_formed(path: Path) -> None:
    res = orjson.loads(path.read_bytes())
    rid = path.stem.split("-", 1)[1]
    assert res["id"] == rid and res["resourceType"] == path.stem.split("-", 1)[0]
    assert res["url"] == f"https://smart-app.example/fhir/{res['resourceType']}/{rid}"
    assert res["status"] == "active" and len(res["description"]) > 20
    manifest = path.parent / "release.json"
    if manifest.is_file():  # a release pins each ValueSet at its version; unchanged ones stay 1.0.0
        pins = {v["url"]: v["version"] for v in orjson.loads(manifest.read_bytes())["valuesets"]}
        assert res["version"] == pins[res["url"]]
    else:
        assert res["version"] == "1.0.0"
    if res["resourceType"] == "ValueSet":
        for inc in res["compose"]["include"]:
            assert "system" in inc or "valueSet" in inc
            if inc.get("system") == ICD:
                assert inc["version"] == "2026"
    else:
        assert res["content"] == "complete" and res["count"] == len(res["concept"])


def test_every_code_and_valueset_of_the_criteria_is_defined() -> None:
    term = default_registry().get("1.0.0").terminology
    urls = set(valueset_urls(CRITERIA))
    assert len(urls) >= 30
    term.require(urls)
    for system, code in coded_references(CRITERIA):
        assert term.match(system, code), f"{system}|{code} is in no ValueSet"
    # the codes named in the criteria's guidance texts are defined too
    for text in (m["how"] for m in CRITERIA["missing"].values()):
        for code in re.findall(r"SNOMED (\d+)", text) + re.findall(r"\b(\d{6,})\b", text):
            assert term.match(SCT, code), code


@pytest.mark.parametrize(
    "code,valueset,expected",
    [
        ("Z85.3", "rf-malignancy", True),
        ("Z85", "rf-malignancy", True),
        ("Z8546", "rf-malignancy", True),
        ("Z86.3", "rf-malignancy", False),
        ("S32.009A", "rf-fracture", True),
        ("S32.2XXA", "rf-fracture", False),
        ("M48.56XA", "rf-fracture", True),
        ("M80.08XA", "rf-fracture", True),
        ("M81.0", "rf-fracture", False),
        ("M54.50", "low-back-pain", True),
        ("m54.59", "low-back-pain", True),
        ("M54.42", "low-back-pain", True),
        ("M54.6", "low-back-pain", False),
        ("M46.26", "rf-spinal-infection", True),
        ("D84.9", "rf-spinal-infection", True),
        ("M46.1", "rf-inflammatory", True),
        ("M46.1", "rf-spinal-infection", False),
        ("M45.6", "rf-inflammatory", True),
        ("M21.372", "neuro-deficit", True),
        ("R20.2", "neuro-deficit", False),
        ("R20.2", "rf-subjective-sensory", True),
        ("M79.18", "dx-myofascial", True),
        ("M79.7", "dx-myofascial", True),
        ("M51.16", "dx-radiculopathy", True),
        ("D17.1", "nodule-condition", True),
        ("R22.2", "nodule-condition", True),
    ],
)
def test_icd_category_rules(code: str, valueset: str, expected: bool) -> None:
    term = default_registry().get("1.0.0").terminology
    url = f"https://smart-app.example/fhir/ValueSet/back-mice-{valueset}"
    assert term.contains(url, ICD, code) is expected


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
@pytest.mark.parametrize(
    "code,system,spelling",
    [
        ("Z85.46", ICD, "z8546"),
        ("Z85.46", ICD, "Z8546"),
        ("M54.50", ICD, " m54.50 "),
        ("279039007", SCT, "279039007"),
    ],
)
def test_codes_compare_as_the_reading_decisions_say(
    version: str, code: str, system: str, spelling: str
) -> None:
    """ICD-10-CM ignores case and the dot; SNOMED CT compares exactly (docs/clinical-criteria.md#codes)."""
    term = default_registry().get(version).terminology
    assert term.match(system, spelling) == term.match(system, code) != frozenset()
    assert term.match(SCT, "0279039007") == frozenset()


@pytest.mark.parametrize(("version", "expected"), [("1.0.0", False), ("1.1.0", True)])
@pytest.mark.parametrize("code", ["M46.5", "M46.50", "M46.56", "m4658"])
def test_spinal_infection_m46_5_only_from_1_1_0(version: str, expected: bool, code: str) -> None:
    term = default_registry().get(version).terminology
    url = "https://smart-app.example/fhir/ValueSet/back-mice-rf-spinal-infection"
    assert term.contains(url, ICD, code) is expected
    assert term.contains(url, ICD, "M46.6") is False  # only the M46.5 category is added


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_the_signs_cover_the_neuro_deficit_valueset_exactly(version: str) -> None:
    """Each NEURO_DEFICIT code belongs to exactly one sign, and every sign code is a deficit code."""
    criteria = default_registry().get(version)
    term = criteria.terminology
    deficit = next(f for f in criteria.findings if f["id"] == "NEURO_DEFICIT")
    signs = [s["valueset"] for s in deficit["signs"]]
    deficit_url = deficit["conditions"]["valueset"]
    probes = [
        (system, c["code"])
        for url in [deficit_url, *signs]
        for inc in term.valuesets[url]["compose"]["include"]
        for system in [inc["system"]]
        for c in [*inc.get("concept", []), *({"code": f["value"] + "1"} for f in inc.get("filter", []))]
    ]
    assert len(probes) >= 8
    for system, code in probes:
        hits = term.match(system, code)
        assert deficit_url in hits, code
        assert len([s for s in signs if s in hits]) == 1, code


def test_nested_valueset_include() -> None:
    term = default_registry().get("1.0.0").terminology
    assert term.contains(
        "https://smart-app.example/fhir/ValueSet/back-mice-nodule-condition", SCT, "93163002"
    )


def test_pain_answer_codes_carry_their_values() -> None:
    term = default_registry().get("1.0.0").terminology
    codes = [
        "LA6111-4",
        "LA6112-2",
        "LA6113-0",
        "LA6114-8",
        "LA6115-5",
        "LA10137-0",
        "LA10138-8",
        "LA10139-6",
        "LA10140-4",
        "LA10141-2",
        "LA13942-0",
    ]
    assert [term.ordinal(LOINC, c) for c in codes] == list(range(11))


def test_unsupported_filter_is_refused() -> None:
    vs = {
        "resourceType": "ValueSet",
        "url": "urn:x",
        "compose": {
            "include": [{"system": ICD, "filter": [{"property": "concept", "op": "regex", "value": "Z.*"}]}]
        },
    }
    term = terminology.build([vs])
    with pytest.raises(terminology.TerminologyError):
        term.require(["urn:x"])
    with pytest.raises(terminology.TerminologyError):
        term.require(["urn:missing"])


def test_no_second_code_list_in_python() -> None:
    """Codes live in the released terminology files only: the clinical core, the drafts (the exam's
    included) and the exam form hold no SNOMED/ICD/LOINC/RxNorm/CPT literals."""
    mine = [
        *sorted((ROOT / "smart_app" / "clinical").glob("*.py")),
        *sorted((ROOT / "smart_app" / "drafts").glob("*.py")),
        ROOT / "smart_app" / "web" / "exam.py",
        ROOT / "smart_app" / "fhirjson.py",
        ROOT / "smart_app" / "vocabulary.py",
    ]
    assert ROOT / "smart_app" / "drafts" / "exam.py" in mine
    pattern = re.compile(r"^(\d{5,18}|[A-Z]\d{2}(\.\d{1,4}[A-Z]?)?|\d{4,5}-\d|LA\d+-\d)$")
    for name in mine:
        tree = ast.parse(name.read_text())
        literals = [
            n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
        ]
        assert [v for v in literals if pattern.match(v)] == [], name


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_the_exam_records_each_finding_with_a_code_its_release_reads(version: str) -> None:
    """Every code the exam form writes is one the release reads that finding with (its ValueSet), the
    present/absent values are the release's, and its sites are typical sites of the release."""
    from smart_app.clinical.recording import exam_terms

    criteria = default_registry().get(version)
    terms = exam_terms(criteria)
    term = criteria.terminology
    specs = {spec["id"]: spec for spec in criteria.findings}
    assert [q.finding for q in terms.questions] == [
        "NODULE",
        "PAIN_REPRODUCED",
        "NEURO_DEFICIT",
        "INJECTION_RELIEF",
    ]
    for question in terms.questions:
        spec = specs[question.finding]
        if question.coding is not None:
            assert term.contains(
                spec["observations"][0]["valueset"], question.coding["system"], question.coding["code"]
            )
        for sign in question.signs:
            valueset = next(s["valueset"] for s in spec["signs"] if s["id"] == sign.id)
            assert term.contains(valueset, sign.coding["system"], sign.coding["code"])
    reading = criteria.data["reading"]
    assert term.contains(reading["present_valueset"], terms.present["system"], terms.present["code"])
    assert term.contains(reading["absent_valueset"], terms.absent["system"], terms.absent["code"])
    assert terms.sites and all(
        term.contains(criteria.data["typical_site"]["valueset"], c["system"], c["code"]) for c in terms.sites
    )
