"""The app's FHIR package (smart_app/data/profiles) and the snapshot-driven checker, rule by rule."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from writeback_fixtures import RECORDED, ROOT, hand_assessment

import smart_app
from smart_app.drafts.build import AssessmentAs, build_transaction
from smart_app.drafts.profiles import ProfileChecker, check_bundle, load_checker

PACKAGE_DIR = ROOT / "smart_app" / "data" / "profiles"

TYPES = ["ClinicalImpression", "ServiceRequest", "DetectedIssue", "Provenance", "DocumentReference", "Device"]
CANONICAL = "https://smart-app.example/fhir"
EXTENSIONS = {
    "back-mice-next-step": ["ClinicalImpression", "DocumentReference"],
    "back-mice-classification": ["DocumentReference"],
}
CONCLUSION_KINDS = ("CodeSystem", "ValueSet")
CLASSIFICATION_VS = f"{CANONICAL}/ValueSet/back-mice-classification|1.0.0"
FINDING_ITEM = "ClinicalImpression.finding[0].itemCodeableConcept"
NEXT_STEP_VS = f"{CANONICAL}/ValueSet/back-mice-next-step|1.0.0"


def build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_snapshots", ROOT / "fhir_profiles" / "build_snapshots.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RESOLVE: dict[str, str] = {}


def drafts(
    assessment_as: AssessmentAs = "ClinicalImpression", name: str = "red-flag-block"
) -> dict[str, dict[str, Any]]:
    bundle = build_transaction(
        hand_assessment(name),
        author="Practitioner/d1",
        encounter=None,
        recorded=RECORDED,
        assessment_as=assessment_as,
    )
    RESOLVE.update({e["fullUrl"]: e["resource"]["resourceType"] for e in bundle["entry"]})
    return {e["resource"]["resourceType"]: e["resource"] for e in bundle["entry"]}


def resource(resource_type: str) -> dict[str, Any]:
    if resource_type == "ServiceRequest":
        return copy.deepcopy(drafts(name="probable")["ServiceRequest"])
    if resource_type == "DocumentReference":
        return copy.deepcopy(drafts("DocumentReference")["DocumentReference"])
    return copy.deepcopy(drafts()[resource_type])


def messages(res: dict[str, Any]) -> list[str]:
    return [str(i) for i in load_checker().check(res, resolve=RESOLVE)]


# -- the package ---------------------------------------------------------------------------------


def test_package_manifest() -> None:
    manifest = json.loads((PACKAGE_DIR / "package.json").read_text(encoding="utf-8"))
    assert manifest["name"] == "smart-app.back-mice"
    assert manifest["version"] == "0.2.0"  # 0.2.0: the Provenance names the software version
    assert manifest["canonical"] == CANONICAL
    assert manifest["fhirVersions"] == ["4.0.1"]
    assert manifest["type"] == "fhir.ig"


def test_index_lists_every_resource_file() -> None:
    index = json.loads((PACKAGE_DIR / ".index.json").read_text(encoding="utf-8"))
    listed = {f["filename"] for f in index["files"]}
    ours = {p.name for p in PACKAGE_DIR.glob("StructureDefinition-*.json")}
    ours |= {p.name for p in PACKAGE_DIR.glob("ValueSet-draft-*.json")} | {"CodeSystem-workflow.json"}
    ours |= {
        f"{kind}-back-mice-{name}.json"
        for kind in CONCLUSION_KINDS
        for name in ("classification", "next-step")
    }
    assert ours <= listed
    assert listed <= {p.name for p in PACKAGE_DIR.glob("*.json")}


@pytest.mark.parametrize("resource_type", TYPES)
def test_structure_definitions(resource_type: str) -> None:
    path = PACKAGE_DIR / f"StructureDefinition-back-mice-{resource_type.lower()}.json"
    sd = json.loads(path.read_text(encoding="utf-8"))
    assert sd["url"] == f"{CANONICAL}/StructureDefinition/back-mice-{resource_type.lower()}"
    assert sd["fhirVersion"] == "4.0.1"
    assert sd["derivation"] == "constraint"
    assert sd["baseDefinition"] == f"http://hl7.org/fhir/StructureDefinition/{resource_type}"
    assert sd["type"] == resource_type and sd["kind"] == "resource"
    assert sd["differential"]["element"] and sd["snapshot"]["element"]
    snapshot_ids = [e["id"] for e in sd["snapshot"]["element"]]
    assert snapshot_ids[0] == resource_type
    assert {e["id"] for e in sd["differential"]["element"]} <= set(snapshot_ids)


@pytest.mark.parametrize("name", sorted(EXTENSIONS))
def test_extension_definitions(name: str) -> None:
    sd = json.loads((PACKAGE_DIR / f"StructureDefinition-{name}.json").read_text(encoding="utf-8"))
    url = f"{CANONICAL}/StructureDefinition/{name}"
    assert (sd["url"], sd["type"], sd["kind"], sd["derivation"]) == (
        url,
        "Extension",
        "complex-type",
        "constraint",
    )
    assert sd["baseDefinition"] == "http://hl7.org/fhir/StructureDefinition/Extension"
    assert [c["expression"] for c in sd["context"] if c["type"] == "element"] == EXTENSIONS[name]
    snapshot = {e["id"]: e for e in sd["snapshot"]["element"]}
    assert {e["id"] for e in sd["differential"]["element"]} <= set(snapshot)
    assert snapshot["Extension.url"]["fixedUri"] == url
    assert snapshot["Extension.extension"]["max"] == "0"
    value = snapshot["Extension.value[x]"]
    assert (value["min"], [t["code"] for t in value["type"]]) == (1, ["Coding"])
    assert value["binding"] == {
        "strength": "required",
        "valueSet": f"{CANONICAL}/ValueSet/{name}|1.0.0",
    }


@pytest.mark.parametrize("name", ["classification", "next-step"])
def test_conclusion_code_systems(name: str) -> None:
    code_system = json.loads((PACKAGE_DIR / f"CodeSystem-back-mice-{name}.json").read_text(encoding="utf-8"))
    value_set = json.loads((PACKAGE_DIR / f"ValueSet-back-mice-{name}.json").read_text(encoding="utf-8"))
    url = f"{CANONICAL}/CodeSystem/back-mice-{name}"
    assert (code_system["url"], code_system["version"], code_system["status"]) == (url, "1.0.0", "active")
    assert (code_system["content"], code_system["caseSensitive"]) == ("complete", True)
    assert code_system["count"] == len(code_system["concept"])
    assert all(c["display"] and c["definition"] for c in code_system["concept"])
    assert value_set["compose"]["include"] == [{"system": url, "version": "1.0.0"}]
    expansion = load_checker().expand(value_set["url"])
    assert expansion == {(url, c["code"]) for c in code_system["concept"]}


def test_slice_profiles() -> None:
    checker = load_checker()
    for rtype, slices in [
        ("ClinicalImpression", {"nextStep": "back-mice-next-step"}),
        (
            "DocumentReference",
            {"classification": "back-mice-classification", "nextStep": "back-mice-next-step"},
        ),
    ]:
        sd = checker.profiles[f"{CANONICAL}/StructureDefinition/back-mice-{rtype.lower()}"]
        elements = {e["id"]: e for e in sd["snapshot"]["element"]}
        assert elements[f"{rtype}.extension"]["slicing"]["discriminator"] == [
            {"type": "value", "path": "url"}
        ]
        for name, extension in slices.items():
            element = elements[f"{rtype}.extension:{name}"]
            assert (element["sliceName"], element["min"], element["max"]) == (name, 1, "1")
            assert element["type"] == [
                {"code": "Extension", "profile": [f"{CANONICAL}/StructureDefinition/{extension}"]}
            ]
    ci = checker.profiles[f"{CANONICAL}/StructureDefinition/back-mice-clinicalimpression"]
    item = next(
        e for e in ci["snapshot"]["element"] if e["id"] == "ClinicalImpression.finding.itemCodeableConcept"
    )
    assert item["binding"] == {"strength": "required", "valueSet": CLASSIFICATION_VS}


def test_snapshots_are_up_to_date() -> None:
    from tests.setup_test_deps import install_fhir_server

    module = build_script()
    base = module.find_base_file()
    if base is None or not Path(base).is_file():
        # the R4 base definitions come with the test FHIR server's npm install (tests/fhir-server)
        base = install_fhir_server() / module._R4_RELATIVE
    assert Path(base).is_file(), base
    for path, text in module.build(PACKAGE_DIR, base).items():
        assert path.read_text(encoding="utf-8") == text, f"{path.name}: run fhir_profiles/build_snapshots.py"


def test_merge_refuses_to_loosen_the_base() -> None:
    module = build_script()
    base: dict[str, Any] = {
        "type": "X",
        "snapshot": {
            "element": [
                {"id": "X", "path": "X", "min": 0, "max": "*"},
                {"id": "X.a", "path": "X.a", "min": 1, "max": "1", "type": [{"code": "string"}]},
                {
                    "id": "X.r",
                    "path": "X.r",
                    "min": 0,
                    "max": "1",
                    "type": [
                        {
                            "code": "Reference",
                            "targetProfile": ["http://hl7.org/fhir/StructureDefinition/Patient"],
                        }
                    ],
                },
            ]
        },
    }
    for diff, message in [
        ({"id": "X.a", "min": 0}, "min"),
        ({"id": "X.a", "max": "*"}, "max"),
        ({"id": "X.a", "type": [{"code": "integer"}]}, "type"),
        (
            {
                "id": "X.r",
                "type": [
                    {"code": "Reference", "targetProfile": ["http://hl7.org/fhir/StructureDefinition/Group"]}
                ],
            },
            "target",
        ),
        ({"id": "X.b"}, "not an element"),
    ]:
        with pytest.raises(ValueError, match=message):
            module.merge_snapshot(base, {"id": "p", "differential": {"element": [diff]}})
    merged = module.merge_snapshot(
        base, {"id": "p", "differential": {"element": [{"id": "X.a", "fixedString": "v", "max": "1"}]}}
    )
    assert merged[1]["fixedString"] == "v" and "fixedString" not in base["snapshot"]["element"][1]


def test_merge_adds_slices() -> None:
    module = build_script()
    base: dict[str, Any] = {
        "type": "X",
        "snapshot": {
            "element": [
                {"id": "X", "path": "X", "min": 0, "max": "*"},
                {
                    "id": "X.extension",
                    "path": "X.extension",
                    "min": 0,
                    "max": "*",
                    "type": [{"code": "Extension"}],
                },
                {"id": "X.a", "path": "X.a", "min": 0, "max": "1", "type": [{"code": "BackboneElement"}]},
                {"id": "X.a.b", "path": "X.a.b", "min": 0, "max": "1", "type": [{"code": "string"}]},
            ]
        },
    }
    slicing = {"discriminator": [{"type": "value", "path": "url"}], "rules": "open"}
    typed = [{"code": "Extension", "profile": ["urn:e1"]}]
    merged = module.merge_snapshot(
        base,
        {
            "id": "p",
            "differential": {
                "element": [
                    {"id": "X.extension", "path": "X.extension", "slicing": slicing, "min": 2},
                    {
                        "id": "X.extension:one",
                        "path": "X.extension",
                        "sliceName": "one",
                        "min": 1,
                        "max": "1",
                        "type": typed,
                    },
                    {
                        "id": "X.extension:two",
                        "path": "X.extension",
                        "sliceName": "two",
                        "min": 1,
                        "max": "1",
                    },
                ]
            },
        },
    )
    assert [e["id"] for e in merged] == [
        "X",
        "X.extension",
        "X.extension:one",
        "X.extension:two",
        "X.a",
        "X.a.b",
    ]
    assert merged[1]["min"] == 2 and merged[1]["slicing"] == slicing
    assert (merged[2]["sliceName"], merged[2]["min"], merged[2]["max"], merged[2]["type"]) == (
        "one",
        1,
        "1",
        typed,
    )
    assert "slicing" not in merged[2] and merged[3]["type"] == [{"code": "Extension"}]
    for diffs, message in [
        ([{"id": "X.extension:one", "sliceName": "one"}], "declares no slicing"),
        ([{"id": "X.a", "slicing": slicing}, {"id": "X.a:s", "sliceName": "s"}], "children"),
        ([{"id": "X.extension", "slicing": slicing}, {"id": "X.extension:s", "sliceName": "t"}], "sliceName"),
        ([{"id": "X.nope:s", "sliceName": "s"}], "not an element"),
        (
            [
                {"id": "X.extension", "slicing": slicing},
                {"id": "X.extension:s", "max": "*", "type": [{"code": "string"}]},
            ],
            "type",
        ),
    ]:
        with pytest.raises(ValueError, match=message):
            module.merge_snapshot(base, {"id": "p", "differential": {"element": diffs}})


def test_value_set_expansion() -> None:
    checker = load_checker()
    flags = checker.expand(f"{CANONICAL}/ValueSet/draft-red-flag")
    assert flags is not None and len(flags) == 9
    assert (f"{CANONICAL}/CodeSystem/back-mice-red-flag", "cauda-equina") in flags
    assert checker.expand(f"{CANONICAL}/ValueSet/draft-workflow") == frozenset(
        {
            (f"{CANONICAL}/CodeSystem/workflow", "draft-requires-review"),
            (f"{CANONICAL}/CodeSystem/workflow", "entered-through-app"),
        }
    )
    assert checker.expand("http://hl7.org/fhir/ValueSet/other") is None


# -- the checker, one rule at a time -----------------------------------------------------------------


@pytest.mark.parametrize("resource_type", TYPES)
def test_valid_drafts_pass(resource_type: str) -> None:
    assert messages(resource(resource_type)) == []


def test_missing_required_element() -> None:
    sr = resource("ServiceRequest")
    del sr["instantiatesUri"]
    assert messages(sr) == ["ServiceRequest.instantiatesUri: at least 1 required, found 0"]


def test_too_many() -> None:
    ci = resource("ClinicalImpression")
    ci["identifier"].append({"system": "urn:x", "value": "2"})
    assert any("ClinicalImpression.identifier: at most 1 allowed, found 2" in m for m in messages(ci))
    ci = resource("ClinicalImpression")
    ci["assessor"] = {"reference": "Practitioner/d1"}
    assert messages(ci) == ["ClinicalImpression.assessor: at most 0 allowed, found 1"]


def test_base_cardinality_inside_backbone() -> None:
    ci = resource("ClinicalImpression")
    del ci["investigation"][0]["code"]
    assert messages(ci) == ["ClinicalImpression.investigation[0].code: at least 1 required, found 0"]


def test_fixed_value() -> None:
    sr = resource("ServiceRequest")
    sr["status"] = "active"
    assert messages(sr) == ['ServiceRequest.status: does not match the fixed value "draft"']
    prov = resource("Provenance")
    prov["entity"][0]["role"] = "source"
    assert messages(prov) == ['Provenance.entity[0].role: does not match the fixed value "derivation"']


def test_pattern_value() -> None:
    ci = resource("ClinicalImpression")
    ci["meta"]["security"] = []
    assert [m.split(":")[0] for m in messages(ci)] == ["ClinicalImpression.meta"]
    prov = resource("Provenance")
    prov["activity"]["coding"][0]["code"] = "UPDATE"
    assert [m.split(":")[0] for m in messages(prov)] == ["Provenance.activity"]
    ci = resource("ClinicalImpression")
    ci["identifier"][0]["system"] = "urn:other"
    assert [m.split(":")[0] for m in messages(ci)] == ["ClinicalImpression.identifier"]
    ci = resource("ClinicalImpression")
    ci["meta"]["tag"] = [{"system": "urn:x", "code": "y"}]
    assert "pattern" in messages(ci)[0]


def test_required_binding_codeable_concept() -> None:
    issue = resource("DetectedIssue")
    issue["code"]["coding"][0]["code"] = "headache"
    assert messages(issue) == [
        "DetectedIssue.code: not in the required value set https://smart-app.example/fhir/ValueSet/draft-red-flag"
    ]


def test_required_binding_code() -> None:
    issue = resource("DetectedIssue")
    issue["severity"] = "low"
    assert messages(issue) == [
        "DetectedIssue.severity: not in the required value set "
        "https://smart-app.example/fhir/ValueSet/draft-red-flag-severity"
    ]


def test_required_binding_inside_backbone() -> None:
    prov = resource("Provenance")
    prov["agent"][1]["type"]["coding"][0]["code"] = "verifier"
    assert messages(prov) == [
        "Provenance.agent[1].type: not in the required value set "
        "https://smart-app.example/fhir/ValueSet/draft-provenance-agent-type"
    ]


def test_classification_coding_required() -> None:
    ci = resource("ClinicalImpression")
    ci["finding"][0]["itemCodeableConcept"]["coding"][0]["code"] = "likely"
    assert messages(ci) == [f"{FINDING_ITEM}: not in the required value set {CLASSIFICATION_VS}"]
    ci = resource("ClinicalImpression")
    ci["finding"][0]["itemCodeableConcept"]["coding"][0]["system"] = (
        f"{CANONICAL}/CodeSystem/back-mice-next-step"
    )
    assert len(messages(ci)) == 1
    ci = resource("ClinicalImpression")
    del ci["finding"][0]["itemCodeableConcept"]["coding"]
    assert messages(ci) == [f"{FINDING_ITEM}: not in the required value set {CLASSIFICATION_VS}"]


def test_next_step_extension_checked() -> None:
    ci = resource("ClinicalImpression")
    ci["extension"][0]["valueCoding"]["code"] = "wait-and-see"
    assert messages(ci) == [
        f"ClinicalImpression.extension[0].valueCoding: not in the required value set {NEXT_STEP_VS}"
    ]
    ci = resource("ClinicalImpression")
    ci["extension"][0]["valueCoding"]["system"] = f"{CANONICAL}/CodeSystem/back-mice-classification"
    assert messages(ci) == [
        f"ClinicalImpression.extension[0].valueCoding: not in the required value set {NEXT_STEP_VS}"
    ]
    ci = resource("ClinicalImpression")
    ci["extension"][0] = {"url": ci["extension"][0]["url"], "valueCode": "focused-exam"}
    assert messages(ci) == ["ClinicalImpression.extension[0].valueCode: type not allowed; allowed: Coding"]
    ci = resource("ClinicalImpression")
    del ci["extension"]
    assert messages(ci) == [
        "ClinicalImpression.extension: at least 1 required, found 0",
        "ClinicalImpression.extension:nextStep: at least 1 required, found 0",
    ]
    ci = resource("ClinicalImpression")
    ci["extension"].append(copy.deepcopy(ci["extension"][0]))
    assert messages(ci) == ["ClinicalImpression.extension:nextStep: at most 1 allowed, found 2"]


def test_software_version_extension() -> None:
    """Each write's Provenance names the app version that concluded (back-mice-software-version)."""
    url = f"{CANONICAL}/StructureDefinition/back-mice-software-version"
    sd = json.loads((PACKAGE_DIR / "StructureDefinition-back-mice-software-version.json").read_text())
    assert (sd["url"], sd["type"], sd["baseDefinition"]) == (
        url,
        "Extension",
        "http://hl7.org/fhir/StructureDefinition/Extension",
    )
    assert [c["expression"] for c in sd["context"]] == ["Provenance"]
    snapshot = {e["id"]: e for e in sd["snapshot"]["element"]}
    assert snapshot["Extension.url"]["fixedUri"] == url and snapshot["Extension.extension"]["max"] == "0"
    value = snapshot["Extension.value[x]"]
    assert (value["min"], [t["code"] for t in value["type"]]) == (1, ["string"])
    checker = load_checker()
    provenance = checker.profiles[f"{CANONICAL}/StructureDefinition/back-mice-provenance"]
    elements = {e["id"]: e for e in provenance["snapshot"]["element"]}
    element = elements["Provenance.extension:softwareVersion"]
    assert (element["min"], element["max"], element["type"]) == (
        1,
        "1",
        [{"code": "Extension", "profile": [url]}],
    )

    prov = resource("Provenance")
    assert prov["extension"] == [{"url": url, "valueString": smart_app.__version__}]
    assert messages(prov) == []
    del prov["extension"]
    assert messages(prov) == [
        "Provenance.extension: at least 1 required, found 0",
        "Provenance.extension:softwareVersion: at least 1 required, found 0",
    ]
    prov = resource("Provenance")
    prov["extension"][0] = {"url": url, "valueCode": "0.2.0"}
    assert messages(prov) == ["Provenance.extension[0].valueCode: type not allowed; allowed: string"]
    ci = resource("ClinicalImpression")
    ci["extension"].append({"url": url, "valueString": "0.2.0"})
    assert messages(ci) == [
        f"ClinicalImpression.extension[1]: extension {url} is not allowed on ClinicalImpression; "
        "allowed: Provenance"
    ]


def test_extension_context_and_unknown_extensions() -> None:
    ci = resource("ClinicalImpression")
    doc = resource("DocumentReference")
    classification = next(e for e in doc["extension"] if e["url"].endswith("/back-mice-classification"))
    ci["extension"].append(copy.deepcopy(classification))
    assert messages(ci) == [
        f"ClinicalImpression.extension[1]: extension {classification['url']} is not allowed on "
        "ClinicalImpression; allowed: DocumentReference"
    ]
    ci = resource("ClinicalImpression")
    ci["extension"].append({"url": f"{CANONICAL}/StructureDefinition/back-mice-mood", "valueString": "x"})
    assert messages(ci) == [
        f"ClinicalImpression.extension[1]: unknown extension {CANONICAL}/StructureDefinition/back-mice-mood "
        "(not defined in the package)"
    ]
    ci = resource("ClinicalImpression")
    ci["extension"].append({"url": "http://example.org/ehr-extension", "valueString": "an EHR's own"})
    assert messages(ci) == []  # open slicing: other extensions are allowed
    doc = resource("DocumentReference")
    doc["extension"] = [e for e in doc["extension"] if not e["url"].endswith("/back-mice-classification")]
    assert messages(doc) == [
        "DocumentReference.extension: at least 2 required, found 1",
        "DocumentReference.extension:classification: at least 1 required, found 0",
    ]
    doc = resource("DocumentReference")
    doc["extension"][0]["valueCoding"]["code"] = "diagnostic-injection"
    assert messages(doc) == [
        f"DocumentReference.extension[0].valueCoding: not in the required value set {CLASSIFICATION_VS}"
    ]


def test_reference_target_types() -> None:
    ci = resource("ClinicalImpression")
    ci["investigation"][0]["item"].append({"reference": "Condition/c1"})
    assert messages(ci) == [
        "ClinicalImpression.investigation[0].item[5]: reference to Condition not allowed; "
        "allowed: Observation"
    ]
    sr = resource("ServiceRequest")
    sr["reasonReference"].append({"reference": "https://ehr.example/fhir/ClinicalImpression/x/_history/2"})
    assert "reference to ClinicalImpression not allowed" in messages(sr)[0]
    sr = resource("ServiceRequest")
    sr["subject"] = {"reference": "Group/g1"}
    assert messages(sr) == ["ServiceRequest.subject: reference to Group not allowed; allowed: Patient"]


def test_reference_to_our_profile_resolves_bundle_urls() -> None:
    checker = load_checker()
    issue = resource("DetectedIssue")
    device_url = issue["author"]["reference"]
    assert (
        checker.check(
            issue,
            resolve={
                device_url: "Device",
                **dict.fromkeys([r["reference"] for r in issue["implicated"]], "ClinicalImpression"),
            },
        )
        == []
    )
    bad = checker.check(issue, resolve={device_url: "Patient"})
    assert any("DetectedIssue.author: reference to Patient not allowed" in str(i) for i in bad)
    issue["author"] = {"reference": "not a reference"}
    assert any("cannot be resolved" in str(i) for i in checker.check(issue))


def test_choice_type_restricted() -> None:
    ci = resource("ClinicalImpression")
    ci["effectivePeriod"] = {"start": ci.pop("effectiveDateTime")}
    assert messages(ci) == ["ClinicalImpression.effectivePeriod: type not allowed; allowed: dateTime"]
    ci = resource("ClinicalImpression")
    ci["effectivePeriod"] = {"start": "2026-01-01"}
    assert "more than one choice type" in messages(ci)[0]


def test_unknown_element() -> None:
    sr = resource("ServiceRequest")
    sr["colour"] = "blue"
    sr["_status"] = {"extension": []}
    assert messages(sr) == ["ServiceRequest.colour: element not allowed here (not in the profile's snapshot)"]
    prov = resource("Provenance")
    prov["agent"][0]["whom"] = {"reference": "Practitioner/x"}
    assert messages(prov) == [
        "Provenance.agent[0].whom: element not allowed here (not in the profile's snapshot)"
    ]


def test_profile_claims() -> None:
    sr = resource("ServiceRequest")
    sr["meta"]["profile"] = ["http://hl7.org/fhir/us/core/StructureDefinition/x"]
    assert messages(sr) == ["ServiceRequest.meta.profile: claims none of the package's profiles"]
    checker = load_checker()
    wrong = checker.check(
        resource("ServiceRequest"), profile=f"{CANONICAL}/StructureDefinition/back-mice-device"
    )
    assert "is for Device" in wrong[0].message
    unknown = checker.check(resource("ServiceRequest"), profile=f"{CANONICAL}/StructureDefinition/nope")
    assert "unknown profile" in unknown[0].message


def test_bundle_paths_and_missing_resource() -> None:
    bundle = build_transaction(hand_assessment("probable"), author=None, encounter=None, recorded=RECORDED)
    bundle["entry"][2]["resource"]["priority"] = "urgent"
    bundle["entry"].append({"request": {"method": "POST", "url": "Basic"}})
    assert [str(i) for i in check_bundle(bundle)] == [
        'Bundle.entry[2].resource/ServiceRequest.priority: does not match the fixed value "routine"',
        "Bundle.entry[4]: no resource",
    ]


def test_checker_loads_from_a_directory(tmp_path: Path) -> None:
    for path in PACKAGE_DIR.glob("*.json"):
        (tmp_path / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    checker = ProfileChecker(tmp_path)
    assert len(checker.profiles) >= 6


# -- the unavailable-data extension (a complex extension) ------------------------------------------
UNAVAILABLE_URL = f"{CANONICAL}/StructureDefinition/back-mice-unavailable-data"


def unread_drafts(assessment_as: AssessmentAs) -> dict[str, Any]:
    assessment = hand_assessment("probable")
    assessment["unavailable"] = [
        {"resource_type": "Condition", "reason": "scope not granted"},
        {"resource_type": "Procedure", "reason": "read failed (HTTP 503): unavailable"},
    ]
    bundle = build_transaction(
        assessment, author="Practitioner/d1", encounter=None, recorded=RECORDED, assessment_as=assessment_as
    )
    RESOLVE.update({e["fullUrl"]: e["resource"]["resourceType"] for e in bundle["entry"]})
    return copy.deepcopy(bundle["entry"][1]["resource"])


def test_unavailable_data_definition() -> None:
    sd = json.loads(
        (PACKAGE_DIR / "StructureDefinition-back-mice-unavailable-data.json").read_text(encoding="utf-8")
    )
    assert (sd["url"], sd["type"], sd["kind"], sd["derivation"]) == (
        UNAVAILABLE_URL,
        "Extension",
        "complex-type",
        "constraint",
    )
    assert [c["expression"] for c in sd["context"]] == ["ClinicalImpression", "DocumentReference"]
    snapshot = {e["id"]: e for e in sd["snapshot"]["element"]}
    assert {e["id"] for e in sd["differential"]["element"]} <= set(snapshot)
    assert snapshot["Extension.url"]["fixedUri"] == UNAVAILABLE_URL
    assert snapshot["Extension.value[x]"]["max"] == "0"
    assert snapshot["Extension.extension"]["min"] == 1
    for name, card, value_type in [("resourceType", (1, "1"), "code"), ("reason", (0, "1"), "string")]:
        sub = f"Extension.extension:{name}"
        assert (snapshot[sub]["sliceName"], snapshot[sub]["min"], snapshot[sub]["max"]) == (name, *card)
        assert snapshot[f"{sub}.url"]["fixedUri"] == name
        assert snapshot[f"{sub}.extension"]["max"] == "0"
        value = snapshot[f"{sub}.value[x]"]
        assert (value["min"], [t["code"] for t in value["type"]]) == (1, [value_type])
        assert value["path"] == "Extension.extension.value[x]"
    for rtype in ("ClinicalImpression", "DocumentReference"):
        profile = load_checker().profiles[f"{CANONICAL}/StructureDefinition/back-mice-{rtype.lower()}"]
        element = next(
            e for e in profile["snapshot"]["element"] if e["id"] == f"{rtype}.extension:unavailableData"
        )
        assert (element["min"], element["max"]) == (0, "*")
        assert element["type"] == [{"code": "Extension", "profile": [UNAVAILABLE_URL]}]


@pytest.mark.parametrize("assessment_as", ["ClinicalImpression", "DocumentReference"])
def test_unavailable_data_extension_checked(assessment_as: AssessmentAs) -> None:
    res = unread_drafts(assessment_as)
    assert messages(res) == []
    first = next(i for i, e in enumerate(res["extension"]) if e["url"] == UNAVAILABLE_URL)
    here = f"{assessment_as}.extension[{first}]"
    broken = copy.deepcopy(res)
    broken["extension"][first]["extension"] = [{"url": "reason", "valueString": "no type"}]
    assert messages(broken) == [f"{here}.extension:resourceType: at least 1 required, found 0"]
    broken = copy.deepcopy(res)
    broken["extension"][first]["valueString"] = "a value as well"
    assert messages(broken) == [f"{here}.value[x]: at most 0 allowed, found 1"]
    broken = copy.deepcopy(res)
    broken["extension"][first]["extension"][0] = {"url": "resourceType", "valueString": "Condition"}
    assert messages(broken) == [f"{here}.extension:resourceType.valueString: type not allowed; allowed: code"]
    broken = copy.deepcopy(res)
    broken["extension"][first]["extension"].append({"url": "note", "valueString": "not a slice"})
    assert messages(broken) == [
        f"{here}.extension[2]: 'note' matches no slice (closed slicing; allowed: reason, resourceType)"
    ]


def test_merge_unrolls_the_children_of_a_slice() -> None:
    module = build_script()
    ext_type = {
        "snapshot": {
            "element": [
                {"id": "Extension", "path": "Extension", "min": 0, "max": "*"},
                {
                    "id": "Extension.extension",
                    "path": "Extension.extension",
                    "min": 0,
                    "max": "*",
                    "type": [{"code": "Extension"}],
                },
                {"id": "Extension.url", "path": "Extension.url", "min": 1, "max": "1"},
                {
                    "id": "Extension.value[x]",
                    "path": "Extension.value[x]",
                    "min": 0,
                    "max": "1",
                    "type": [{"code": "code"}, {"code": "string"}],
                },
            ]
        }
    }
    slicing = {"discriminator": [{"type": "value", "path": "url"}], "rules": "closed"}
    merged = module.merge_snapshot(
        ext_type,
        {
            "id": "p",
            "differential": {
                "element": [
                    {"id": "Extension.extension", "slicing": slicing},
                    {"id": "Extension.extension:a", "sliceName": "a", "min": 1, "max": "1"},
                    {"id": "Extension.extension:a.url", "fixedUri": "a"},
                    {"id": "Extension.extension:a.value[x]", "type": [{"code": "code"}]},
                    {"id": "Extension.extension:b", "sliceName": "b", "max": "1"},
                    {"id": "Extension.extension:b.url", "fixedUri": "b"},
                ]
            },
        },
        {"http://hl7.org/fhir/StructureDefinition/Extension": ext_type},
    )
    assert [e["id"] for e in merged] == [
        "Extension",
        "Extension.extension",
        "Extension.extension:a",
        "Extension.extension:a.extension",
        "Extension.extension:a.url",
        "Extension.extension:a.value[x]",
        "Extension.extension:b",
        "Extension.extension:b.extension",
        "Extension.extension:b.url",
        "Extension.extension:b.value[x]",
        "Extension.url",
        "Extension.value[x]",
    ]
    by_id = {e["id"]: e for e in merged}
    assert by_id["Extension.extension:a.url"]["path"] == "Extension.extension.url"
    assert by_id["Extension.extension:b.url"]["fixedUri"] == "b"
    assert by_id["Extension.extension:a.value[x]"]["type"] == [{"code": "code"}]
    with pytest.raises(ValueError, match="not available"):
        module.merge_snapshot(
            ext_type,
            {
                "id": "p",
                "differential": {
                    "element": [
                        {"id": "Extension.extension", "slicing": slicing},
                        {"id": "Extension.extension:a", "sliceName": "a"},
                        {"id": "Extension.extension:a.url", "fixedUri": "a"},
                    ]
                },
            },
        )
