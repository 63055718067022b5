"""Drafting of the write-back transaction from hand-written assessments (the Assessment's shape)."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from writeback_fixtures import AUTHOR, RECORDED, hand_assessment, hand_assessment_names

from smart_app.drafts.build import (
    DRAFT_BANNER,
    DraftingError,
    build_transaction,
    draft_key,
    narrative_text,
)
from smart_app.drafts.profiles import check_bundle
from smart_app.drafts.provenance import software_version_of, versioned_reference
from smart_app.vocabulary import (
    CLASSIFICATION_EXTENSION,
    CLASSIFICATION_SYSTEM,
    DRAFT_IDENTIFIER_SYSTEM,
    NEXT_STEP_EXTENSION,
    NEXT_STEP_SYSTEM,
    UNAVAILABLE_EXTENSION,
    classifications,
    next_steps,
    profile_url,
)

CRITERIA = "https://smart-app.example/fhir/criteria/back-mice|1.0.0"


def build(name: str = "probable", **kwargs: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"author": AUTHOR, "encounter": "Encounter/e1", "recorded": RECORDED}
    options.update(kwargs)
    return build_transaction(hand_assessment(name), **options)


def by_type(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type]


def one(bundle: dict[str, Any], resource_type: str) -> dict[str, Any]:
    found = by_type(bundle, resource_type)
    assert len(found) == 1, resource_type
    return found[0]


def full_url(bundle: dict[str, Any], resource_type: str) -> str:
    return str(next(e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type))


def test_probable_bundle_shape() -> None:
    bundle = build()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == [
        "Device",
        "ClinicalImpression",
        "ServiceRequest",
        "Provenance",
    ]
    for entry in bundle["entry"]:
        assert re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", entry["fullUrl"])
        assert entry["request"]["method"] == "POST"
        assert entry["request"]["url"] == entry["resource"]["resourceType"]
        assert entry["request"]["ifNoneExist"]


def test_device_is_conditional_on_its_identifier() -> None:
    entry = build()["entry"][0]
    assert entry["resource"]["identifier"] == [
        {"system": "https://smart-app.example/fhir/identifier/device", "value": "smart-app-back-mice"}
    ]
    assert entry["request"]["ifNoneExist"] == (
        "identifier=https://smart-app.example/fhir/identifier/device|smart-app-back-mice"
    )
    assert entry["resource"]["meta"]["profile"] == [profile_url("Device")]


def test_clinical_impression_content() -> None:
    bundle = build()
    ci = one(bundle, "ClinicalImpression")
    assert ci["status"] == "in-progress"
    assert ci["subject"] == {"reference": "Patient/p1"}
    assert ci["encounter"] == {"reference": "Encounter/e1"}
    assert ci["effectiveDateTime"].startswith("2026-11-24T10:00:00")
    assert ci["problem"] == [{"reference": "Condition/c1"}]
    items = [i["reference"] for i in ci["investigation"][0]["item"]]
    assert items == ["Observation/o1", "Observation/o2", "Observation/o3", "Observation/o5"]
    assert all(i.startswith("Observation/") for i in items)
    assert ci["protocol"] == [CRITERIA]
    basis = ci["finding"][0]["basis"]
    assert "Criteria met: Low back pain, Palpable nodule" in basis
    assert "no neurological deficit" in basis
    assert "Unknown: Relief after diagnostic injection" in basis
    assert ci["supportingInfo"] == [{"reference": "Condition/c3"}]
    assert ci["summary"].startswith("Suspected painful episacral lipoma")
    assert ci["note"][0]["text"].startswith(DRAFT_BANNER)
    assert ci["statusReason"]["text"]
    assert "assessor" not in ci
    item = ci["finding"][0]["itemCodeableConcept"]
    assert item["coding"] == [
        {"system": CLASSIFICATION_SYSTEM, "code": "probable", "display": "Probable back mice"}
    ]
    assert item["text"] == hand_assessment("probable")["headline"]
    assert ci["extension"] == [
        {
            "url": NEXT_STEP_EXTENSION,
            "valueCoding": {
                "system": NEXT_STEP_SYSTEM,
                "code": "diagnostic-injection",
                "display": "Diagnostic local anaesthetic injection",
            },
        }
    ]
    assert "Classification: probable; next step: diagnostic-injection." in narrative_text(ci["text"]["div"])


def test_conclusion_codes_are_written_with_the_code_systems_displays() -> None:
    """Each drafted conclusion coding is the one the package CodeSystem defines, display included."""
    for assessment_name in hand_assessment_names():
        assessment = hand_assessment(assessment_name)
        ci = one(build(assessment_name), "ClinicalImpression")
        coding = ci["finding"][0]["itemCodeableConcept"]["coding"][0]
        assert coding == classifications().coding(assessment["classification"])
        step = next(e for e in ci["extension"] if e["url"] == NEXT_STEP_EXTENSION)["valueCoding"]
        assert step == next_steps().coding(assessment["next_step"])


def test_service_request_content() -> None:
    bundle = build()
    sr = one(bundle, "ServiceRequest")
    assert (sr["status"], sr["intent"], sr["priority"]) == ("draft", "proposal", "routine")
    assert sr["code"]["coding"][0] == {
        "system": "http://www.ama-assn.org/go/cpt",
        "code": "20552",
        "display": "Injection(s); single or multiple trigger point(s), 1 or 2 muscle(s)",
    }
    assert sr["code"]["text"].startswith("Diagnostic local anaesthetic injection")
    assert sr["bodySite"] == [{"text": "left posterior iliac crest"}]
    assert [r["reference"] for r in sr["reasonReference"]] == [
        "Condition/c1",
        "Observation/o1",
        "Observation/o2",
    ]
    assert sr["supportingInfo"] == [{"reference": full_url(bundle, "ClinicalImpression")}]
    assert sr["instantiatesUri"] == [CRITERIA]
    assert "NICE NG59" in sr["note"][0]["text"]


def test_body_site_coded_when_given_and_reason_types_filtered() -> None:
    assessment = hand_assessment("probable")
    site = {
        "coding": [{"system": "http://snomed.info/sct", "code": "37822005", "display": "Sacral region"}],
        "text": "sacral region",
    }
    assessment["procedure_suggestion"]["body_site"] = site
    assessment["procedure_suggestion"]["reason_references"].append("ClinicalImpression/ci0")
    bundle = build_transaction(assessment, author=None, encounter=None, recorded=RECORDED)
    sr = one(bundle, "ServiceRequest")
    assert sr["bodySite"] == [site]
    assert {r["reference"].split("/")[0] for r in sr["reasonReference"]} == {"Condition", "Observation"}


def test_block_red_flag_means_no_service_request() -> None:
    assessment = hand_assessment("red-flag-block")
    assert assessment["procedure_suggestion"]  # even when the input (wrongly) has one
    bundle = build("red-flag-block")
    assert by_type(bundle, "ServiceRequest") == []
    issues = by_type(bundle, "DetectedIssue")
    assert [(i["code"]["coding"][0]["code"], i["severity"]) for i in issues] == [
        ("malignancy", "high"),
        ("weight-loss", "moderate"),
    ]
    ci_url = full_url(bundle, "ClinicalImpression")
    device_url = bundle["entry"][0]["fullUrl"]
    for issue in issues:
        assert issue["status"] == "preliminary"
        assert issue["author"] == {"reference": device_url}
        assert issue["implicated"] == [{"reference": ci_url}]
        assert issue["patient"] == {"reference": "Patient/p2"}
    assert issues[0]["evidence"] == [{"detail": [{"reference": "Condition/c9"}]}]
    assert "Procedure suggestion withheld" in issues[0]["detail"]


def test_warn_flag_keeps_suggestion_and_implicates_it() -> None:
    assessment = hand_assessment("red-flag-block")
    assessment["red_flags"] = [f for f in assessment["red_flags"] if f["level"] == "warn"]
    bundle = build_transaction(assessment, author=AUTHOR, encounter=None, recorded=RECORDED)
    issue = one(bundle, "DetectedIssue")
    assert issue["severity"] == "moderate"
    assert [r["reference"] for r in issue["implicated"]] == [
        full_url(bundle, "ClinicalImpression"),
        full_url(bundle, "ServiceRequest"),
    ]


def test_every_draft_is_marked() -> None:
    for name in hand_assessment_names():
        for assessment_as in ("ClinicalImpression", "DocumentReference"):
            bundle = build(name, assessment_as=assessment_as)
            for entry in bundle["entry"][1:]:
                resource = entry["resource"]
                meta = resource["meta"]
                assert meta["profile"] == [profile_url(resource["resourceType"])]
                assert {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                    "code": "AIAST",
                    "display": "Artificial Intelligence asserted",
                } in meta["security"]
                assert meta["tag"][0]["code"] == "draft-requires-review"
                assert resource["text"]["status"] == "generated"
                assert resource["text"]["div"].startswith('<div xmlns="http://www.w3.org/1999/xhtml">')
                assert narrative_text(resource["text"]["div"]).startswith(DRAFT_BANNER)
                if resource["resourceType"] != "Provenance":
                    (identifier,) = resource["identifier"]
                    assert identifier["system"] == DRAFT_IDENTIFIER_SYSTEM
                    assert re.fullmatch(r"[0-9a-f]{64}", identifier["value"])
                    assert (
                        entry["request"]["ifNoneExist"]
                        == f"identifier={DRAFT_IDENTIFIER_SYSTEM}|{identifier['value']}"
                    )
                else:
                    key = [t["code"] for t in meta["tag"] if t["system"] == DRAFT_IDENTIFIER_SYSTEM][0]
                    assert entry["request"]["ifNoneExist"] == f"_tag={DRAFT_IDENTIFIER_SYSTEM}|{key}"


def test_narrative_escapes_ehr_text() -> None:
    bundle = build("red-flag-block")
    divs = " ".join(e["resource"]["text"]["div"] for e in bundle["entry"])
    assert "<script>" not in divs
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in divs
    ci_div = one(build(), "ClinicalImpression")["text"]["div"]
    assert "<b>bold</b>" not in ci_div and "&lt;b&gt;bold&lt;/b&gt; &amp; co" in ci_div


def test_provenance_names_every_source_versioned() -> None:
    assessment = hand_assessment("probable")
    bundle = build()
    prov = one(bundle, "Provenance")
    expected = [versioned_reference(s["reference"], s["version_id"]) for s in assessment["sources"]]
    assert [e["what"]["reference"] for e in prov["entity"]] == expected
    assert "Observation/o1/_history/3" in expected and "Condition/c3" in expected
    assert all(e["role"] == "derivation" for e in prov["entity"])
    drafts = [e["fullUrl"] for e in bundle["entry"][1:-1]]
    assert [t["reference"] for t in prov["target"]] == drafts
    assert prov["recorded"].startswith("2026-11-24T12:30:00")
    assert prov["policy"] == [CRITERIA]
    assert prov["reason"][0]["coding"][0]["code"] == "AIAST"
    assert prov["activity"]["coding"][0]["code"] == "CREATE"
    agents = [(a["type"]["coding"][0]["code"], a["who"]["reference"]) for a in prov["agent"]]
    device = bundle["entry"][0]["fullUrl"]
    assert agents == [("author", AUTHOR), ("assembler", device)]


def test_provenance_without_user_has_the_device_as_author() -> None:
    bundle = build(author=None)
    device = bundle["entry"][0]["fullUrl"]
    agents = [
        (a["type"]["coding"][0]["code"], a["who"]["reference"]) for a in one(bundle, "Provenance")["agent"]
    ]
    assert agents == [("author", device), ("assembler", device)]


def test_deterministic_apart_from_recorded() -> None:
    first = build(recorded=datetime(2026, 11, 24, 12, 30, tzinfo=UTC))
    second = build(recorded=datetime(2026, 12, 1, 8, 0, tzinfo=UTC))
    one(second, "Provenance")["recorded"] = one(first, "Provenance")["recorded"]
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def test_same_evidence_same_identifiers_new_evidence_new_ones() -> None:
    def keys(bundle: dict[str, Any]) -> list[str]:
        return [e["request"]["ifNoneExist"] for e in bundle["entry"]]

    base = hand_assessment("probable")
    reordered = copy.deepcopy(base)
    reordered["sources"].reverse()
    reworded = copy.deepcopy(base)
    reworded["headline"] = "other words"
    assert (
        keys(build_transaction(base, author=None, encounter=None, recorded=RECORDED))
        == keys(build_transaction(reordered, author=AUTHOR, encounter="Encounter/x", recorded=RECORDED))
        == keys(build_transaction(reworded, author=None, encounter=None, recorded=RECORDED))
    )
    newer = copy.deepcopy(base)
    newer["sources"][2]["version_id"] = "4"
    changed = keys(build_transaction(newer, author=None, encounter=None, recorded=RECORDED))
    original = keys(build_transaction(base, author=None, encounter=None, recorded=RECORDED))
    assert changed[0] == original[0]  # the Device
    assert all(a != b for a, b in zip(changed[1:], original[1:], strict=True))


def test_draft_key_definition() -> None:
    sources: list[dict[str, Any]] = [
        {"reference": "Observation/o1", "version_id": "3"},
        {"reference": "Condition/c1", "version_id": None},
    ]
    key = draft_key("Patient/p1", CRITERIA, "ClinicalImpression", sources)
    assert key == draft_key("Patient/p1", CRITERIA, "ClinicalImpression", list(reversed(sources)))
    assert key != draft_key("Patient/p2", CRITERIA, "ClinicalImpression", sources)
    assert key != draft_key("Patient/p1", CRITERIA.replace("1.0.0", "1.1.0"), "ClinicalImpression", sources)
    assert key != draft_key("Patient/p1", CRITERIA, "ServiceRequest", sources)


def test_document_reference_option() -> None:
    bundle = build(assessment_as="DocumentReference")
    assert by_type(bundle, "ClinicalImpression") == []
    doc = one(bundle, "DocumentReference")
    assert (doc["status"], doc["docStatus"]) == ("current", "preliminary")
    assert doc["subject"] == {"reference": "Patient/p1"}
    assert doc["context"]["encounter"] == [{"reference": "Encounter/e1"}]
    attachment = doc["content"][0]["attachment"]
    assert attachment["contentType"] == "text/html"
    import base64

    html_text = base64.b64decode(attachment["data"]).decode("utf-8")
    assert html_text == doc["text"]["div"]
    assert [a["reference"] for a in doc["author"]] == [AUTHOR, bundle["entry"][0]["fullUrl"]]
    assert doc["extension"] == [
        {
            "url": CLASSIFICATION_EXTENSION,
            "valueCoding": {
                "system": CLASSIFICATION_SYSTEM,
                "code": "probable",
                "display": "Probable back mice",
            },
        },
        {
            "url": NEXT_STEP_EXTENSION,
            "valueCoding": {
                "system": NEXT_STEP_SYSTEM,
                "code": "diagnostic-injection",
                "display": "Diagnostic local anaesthetic injection",
            },
        },
    ]
    assert "type" in doc and "category" not in doc
    sr = one(bundle, "ServiceRequest")
    assert sr["supportingInfo"] == [{"reference": full_url(bundle, "DocumentReference")}]
    ci_keys = {e["request"]["ifNoneExist"] for e in build()["entry"][1:]}
    doc_keys = {e["request"]["ifNoneExist"] for e in bundle["entry"][1:]}
    assert not ci_keys & doc_keys


def test_age_flag_with_patient_evidence_is_not_supporting_info() -> None:
    bundle = build("insufficient", author=None)
    ci = one(bundle, "ClinicalImpression")
    assert "supportingInfo" not in ci
    issue = one(bundle, "DetectedIssue")
    assert {"reference": "Patient/p4"} in issue["evidence"][0]["detail"]
    assert by_type(bundle, "ServiceRequest") == []


@pytest.mark.parametrize("name", hand_assessment_names())
@pytest.mark.parametrize("assessment_as", ["ClinicalImpression", "DocumentReference"])
def test_hand_drafts_conform_to_profiles(name: str, assessment_as: str) -> None:
    assert [str(i) for i in check_bundle(build(name, assessment_as=assessment_as))] == []


@pytest.mark.parametrize("assessment_as", ["ClinicalImpression", "DocumentReference"])
def test_broken_conclusion_coding_fails_the_profile_check(assessment_as: str) -> None:
    bundle = build(assessment_as=assessment_as)
    entry = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == assessment_as)
    index = bundle["entry"].index(entry)
    step = next(e for e in entry["resource"]["extension"] if e["url"] == NEXT_STEP_EXTENSION)
    step["valueCoding"]["code"] = "watchful-waiting"
    issues = [str(i) for i in check_bundle(bundle)]
    assert len(issues) == 1 and issues[0].startswith(
        f"Bundle.entry[{index}].resource/{assessment_as}.extension"
    )
    assert "not in the required value set" in issues[0] and "back-mice-next-step" in issues[0]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"patient": None}, "patient"),
        ({"patient": "Group/g1"}, "patient"),
        ({"criteria": {"url": "x"}}, "criteria"),
        ({"as_of": ""}, "as_of"),
        ({"classification": "likely"}, "classification 'likely' is not in"),
        ({"classification": None}, "classification None"),
        ({"next_step": "wait"}, "next_step 'wait' is not in"),
    ],
)
def test_unusable_assessment(change: dict[str, Any], message: str) -> None:
    assessment = hand_assessment("probable")
    assessment.update(change)
    with pytest.raises(DraftingError, match=message):
        build_transaction(assessment, author=None, encounter=None, recorded=RECORDED)


def test_naive_recorded_refused() -> None:
    with pytest.raises(DraftingError):
        build(recorded=datetime(2026, 11, 24, 12, 0))


def test_unknown_assessment_form_refused() -> None:
    with pytest.raises(DraftingError):
        build(assessment_as="Observation")


# -- data that could not be read ---------------------------------------------------------------------
UNREAD = [
    {"resource_type": "Procedure", "reason": "read failed (HTTP 503): <server down>"},
    {"resource_type": "Condition", "reason": "scope not granted"},
]


def unread(name: str = "probable") -> dict[str, Any]:
    assessment = hand_assessment(name)
    assessment["unavailable"] = copy.deepcopy(UNREAD)
    return assessment


@pytest.mark.parametrize("assessment_as", ["ClinicalImpression", "DocumentReference"])
def test_unavailable_types_are_recorded_on_the_assessment(assessment_as: str) -> None:
    bundle = build_transaction(
        unread(), author=AUTHOR, encounter=None, recorded=RECORDED, assessment_as=assessment_as
    )
    assert [str(i) for i in check_bundle(bundle)] == []
    resource = one(bundle, assessment_as)
    assert [e for e in resource["extension"] if e["url"] == UNAVAILABLE_EXTENSION] == [
        {
            "url": UNAVAILABLE_EXTENSION,
            "extension": [
                {"url": "resourceType", "valueCode": "Condition"},
                {"url": "reason", "valueString": "scope not granted"},
            ],
        },
        {
            "url": UNAVAILABLE_EXTENSION,
            "extension": [
                {"url": "resourceType", "valueCode": "Procedure"},
                {"url": "reason", "valueString": "read failed (HTTP 503): <server down>"},
            ],
        },
    ]
    text = narrative_text(resource["text"]["div"])
    assert (
        "Data that could not be read: Condition (scope not granted); Procedure (read failed (HTTP 503): "
        "<server down>). What these types would decide was treated as unknown, not as absent." in text
    )
    assert "&lt;server down&gt;" in resource["text"]["div"]  # escaped in the XHTML


def test_no_unavailable_types_no_extension_and_the_same_identifiers() -> None:
    def keys(bundle: dict[str, Any]) -> list[str]:
        return [e["request"]["ifNoneExist"] for e in bundle["entry"]]

    base = hand_assessment("probable")
    empty = copy.deepcopy(base)
    empty["unavailable"] = []
    plain = build_transaction(base, author=None, encounter=None, recorded=RECORDED)
    assert keys(plain) == keys(build_transaction(empty, author=None, encounter=None, recorded=RECORDED))
    ci = one(plain, "ClinicalImpression")
    assert all(e["url"] != UNAVAILABLE_EXTENSION for e in ci["extension"])
    assert "could not be read" not in narrative_text(ci["text"]["div"])
    # the key of a complete read is the pre-existing derivation (no "unavailable" in the hashed input)
    payload = {"patient": "Patient/p1", "criteria": CRITERIA, "role": "ClinicalImpression", "sources": []}
    expected = hashlib.sha256(
        json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")
    ).hexdigest()
    assert draft_key("Patient/p1", CRITERIA, "ClinicalImpression", [], []) == expected


def test_unavailable_types_are_part_of_the_evidence() -> None:
    def keys(bundle: dict[str, Any]) -> list[str]:
        return [e["request"]["ifNoneExist"] for e in bundle["entry"]]

    base = hand_assessment("probable")
    plain = keys(build_transaction(base, author=None, encounter=None, recorded=RECORDED))
    with_unread = keys(build_transaction(unread(), author=None, encounter=None, recorded=RECORDED))
    assert with_unread[0] == plain[0]  # the Device
    assert all(a != b for a, b in zip(with_unread[1:], plain[1:], strict=True))
    reordered = unread()
    reordered["unavailable"].reverse()
    assert keys(build_transaction(reordered, author=None, encounter=None, recorded=RECORDED)) == with_unread
    other_reason = unread()
    other_reason["unavailable"][1]["reason"] = "read failed (HTTP 500): x"
    edited = keys(build_transaction(other_reason, author=None, encounter=None, recorded=RECORDED))
    assert edited != with_unread


# -- the opening sentence of the written assessment (docs/clinical-criteria.md#what-the-app-writes) ----
CASES_DIR = Path(__file__).resolve().parent / "cases"
SUSPECTED = "Suspected painful episacral lipoma ('back mouse')."
#: classification -> (a 1.1.0 case of it, the sentence the written assessment must open with)
OPENINGS = {
    "red-flags": (
        "420-v110-opening-red-flags",
        "Red flag present: Malignancy, current or history — no back-mouse procedure suggested; "
        "urgent work-up.",
    ),
    "not-consistent": (
        "425-v110-opening-not-consistent",
        "Not consistent with back mice: an objective neurological deficit is recorded — "
        "work-up for another cause.",
    ),
    "unlikely": (
        "421-v110-opening-unlikely",
        "Back mice unlikely: pressure on the nodule does not reproduce the pain (a painless nodule) — "
        "no back-mouse procedure.",
    ),
    "confirmed": (
        "426-v110-opening-confirmed-pain-3",
        "Painful episacral lipoma ('back mouse') confirmed by relief after the diagnostic injection, left "
        "posterior iliac crest — conservative care first (NSAIDs and heat).",
    ),
    "probable": (
        "422-v110-opening-probable",
        "Probable painful episacral lipoma ('back mouse'), left posterior iliac crest — suggest diagnostic "
        "local anaesthetic injection into the nodule.",
    ),
    "possible": (
        "423-v110-opening-possible",
        "Possible painful episacral lipoma ('back mouse'), left forearm — focused examination.",
    ),
    "insufficient-data": (
        "424-v110-opening-insufficient-data",
        "Not enough data to assess for back mice: palpable subcutaneous nodule, nodule at a typical site, "
        "pressure on the nodule reproduces the pain, relief after diagnostic injection into the nodule not "
        "established — focused examination.",
    ),
}


def case_drafts(name: str, version: str, form: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The assessment of a case under ``version`` and the written assessment drafted from it."""
    from smart_app.clinical import assess, load_bundle

    case = json.loads((CASES_DIR / f"{name}.json").read_text(encoding="utf-8"))
    entries = [{"resource": case["patient"]}, *({"resource": r} for r in case["resources"])]
    data = json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}).encode()
    as_of = datetime.fromisoformat(case["as_of"].replace("Z", "+00:00"))
    assessment = assess(load_bundle(data), as_of, version).to_json()
    bundle = build_transaction(
        assessment, author=AUTHOR, encounter=None, recorded=RECORDED, assessment_as=form
    )
    return assessment, one(bundle, form)


def opening_text(written: dict[str, Any]) -> str:
    text = narrative_text(written["text"]["div"])
    assert text.startswith(DRAFT_BANNER)
    return text[len(DRAFT_BANNER) :]


@pytest.mark.parametrize("form", ["ClinicalImpression", "DocumentReference"])
@pytest.mark.parametrize("classification", sorted(OPENINGS))
def test_the_written_assessment_opens_with_its_classification(classification: str, form: str) -> None:
    """Criteria 1.1.0: the narrative (and ClinicalImpression.summary) opens with a sentence that states
    the classification; only probable, possible and confirmed speak of a painful episacral lipoma."""
    name, sentence = OPENINGS[classification]
    assessment, written = case_drafts(name, "1.1.0", form)
    assert assessment["classification"] == classification
    text = opening_text(written)
    assert text.startswith(sentence + f"Classification: {classification};")
    if form == "ClinicalImpression":
        assert written["summary"].startswith(sentence)
        assert written["finding"][0]["itemCodeableConcept"]["coding"][0]["code"] == classification
    else:
        html = base64.b64decode(written["content"][0]["attachment"]["data"]).decode("utf-8")
        assert narrative_text(html)[len(DRAFT_BANNER) :].startswith(sentence)
    suspects = classification in ("probable", "possible", "confirmed")
    assert ("painful episacral lipoma" in text.split("Classification:")[0].lower()) is suspects
    assert "Suspected painful episacral lipoma" not in text
    assert text.count(sentence) == 1  # the summary that follows does not repeat it


@pytest.mark.parametrize("classification", sorted(OPENINGS))
def test_a_1_0_0_assessment_keeps_its_fixed_opening(classification: str) -> None:
    """Criteria 1.0.0 is released: its written assessment opens with the same sentence whatever the
    classification, and the coded conclusion follows at once."""
    name, _ = OPENINGS[classification]
    assessment, written = case_drafts(name, "1.0.0", "ClinicalImpression")
    assert assessment["opening"] == SUSPECTED
    assert opening_text(written).startswith(f"{SUSPECTED}Classification: {assessment['classification']};")
    assert written["summary"].startswith(SUSPECTED)


def test_a_hand_written_assessment_without_an_opening_opens_with_its_headline() -> None:
    assessment = hand_assessment("red-flag-block")
    assert "opening" not in assessment
    written = one(
        build_transaction(assessment, author=AUTHOR, encounter=None, recorded=RECORDED), "ClinicalImpression"
    )
    assert opening_text(written).startswith(str(assessment["headline"]))


def test_each_write_names_the_software_version_that_made_it() -> None:
    """The Device is created once on its identifier (its version is that of the first write), so each
    Provenance names the app version that concluded (back-mice-software-version)."""
    import smart_app

    bundle = build()
    prov = one(bundle, "Provenance")
    assert prov["extension"] == [
        {
            "url": "https://smart-app.example/fhir/StructureDefinition/back-mice-software-version",
            "valueString": smart_app.__version__,
        }
    ]
    assert smart_app.__version__ == "0.2.0"
    assert f"version {smart_app.__version__}" in narrative_text(prov["text"]["div"])
    assert one(bundle, "Device")["version"] == [{"value": smart_app.__version__}]
    assert software_version_of(prov) == smart_app.__version__
    assert software_version_of({"resourceType": "Provenance"}) is None
