"""The card rules (docs/cds-hooks.md#cards), one test per rule on the clinical cases of ``tests/cases``, and
the whole case corpus through the rules: every card keeps the CDS Hooks shape, and a card only comes when
there is something to act on."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from smart_app.cds import cards
from smart_app.cds.clients import CdsClient
from smart_app.cds.discovery import ORDER_SIGN, PATIENT_VIEW, Service
from smart_app.cds.request import HookRequest
from smart_app.cds.service import Answer, Settings, answer_hook
from tests import cds_support as cs

CLIENT = CdsClient(id="ehr-cds", name="Test EHR", iss=cs.EHR_ISS)
SETTINGS = Settings(public_url=cs.PUBLIC_URL)
CASE_FILES = sorted(cs.CASES_DIR.glob("*.json"))


def answer(
    name: str,
    service: Service = PATIENT_VIEW,
    *,
    orders: list[dict[str, Any]] | None = None,
    user: str = "Practitioner/dr1",
) -> Answer:
    """The service's answer for a clinical case, evaluated at the case's ``as_of``."""
    case = cs.load_case(name)
    pid = case["patient"]["id"]
    request = HookRequest(
        hook=service.hook,
        hook_instance=str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
        patient_id=pid,
        user_id=user,
        prefetch=cs.prefetch_of(case["patient"], case["resources"]),
        draft_orders=tuple(orders or ()),
    )
    as_of = datetime.fromisoformat(case["as_of"].replace("Z", "+00:00"))
    return answer_hook(service, request, CLIENT, SETTINGS, as_of=as_of)


def only_card(result: Answer) -> dict[str, Any]:
    assert cs.response_problems(result.body) == []
    [card] = result.body["cards"]
    return card


# -- rule 1: a BLOCK red flag beside a recorded nodule --
def test_rule_1_red_flag_with_a_nodule_is_critical_with_the_flag_and_its_evidence() -> None:
    card = only_card(answer("184-prec-multiple-flags.json"))
    assert card["indicator"] == "critical"
    assert card["summary"] == (
        "Red flag (Vertebral or sacral fracture; Malignancy, current or history): no back-mouse procedure"
    )
    detail = card["detail"]
    assert "No back-mouse procedure (injection or excision) while this is unexplained" in detail
    assert "- **Vertebral or sacral fracture**: " in detail and "evidence `Condition/c-fx`" in detail
    assert "- **Malignancy, current or history**: " in detail and "evidence `Condition/c-ca`" in detail
    assert "Nodule recorded: " in detail and "evidence `Observation/o-nodule`" in detail
    assert "suggestions" not in card  # nothing to accept: no procedure
    assert card["source"]["topic"]["code"] == "red-flags"


def test_rule_1_red_flag_without_a_nodule_gives_no_card() -> None:
    result = answer("179-prec-block-beats-unlikely.json")
    assert result.audit["classification"] == "red-flags" and result.body == {"cards": []}


# -- rule 2: probable or confirmed --
def test_rule_2_probable_is_info_with_next_step_suggestion_and_smart_link() -> None:
    card = only_card(answer("001-probable-basic.json"))
    assert card["indicator"] == "info"
    assert card["summary"] == "Probable back mice: Diagnostic local anaesthetic injection"
    assert "Next step: diagnostic local anaesthetic injection." in card["detail"]
    assert "- Palpable subcutaneous nodule (present): `Observation/o-nodule`" in card["detail"]
    assert card["links"][0]["type"] == "smart" and card["links"][0]["url"] == f"{cs.PUBLIC_URL}/launch"
    [suggestion] = card["suggestions"]
    request = next(
        a["resource"] for a in suggestion["actions"] if a["resource"]["resourceType"] == "ServiceRequest"
    )
    assert (request["status"], request["intent"]) == ("draft", "proposal")
    assert request["code"]["coding"][0]["code"] == "11900"
    assert card["overrideReasons"] and all(r["display"] for r in card["overrideReasons"])


def test_rule_2_warn_flag_makes_it_a_warning_and_the_suggestion_stays() -> None:
    card = only_card(answer("156-rf-weight-loss-r63-4.json"))
    assert card["indicator"] == "warning"
    assert "Warnings (the suggestion stands; review these first):" in card["detail"]
    assert "Unexplained weight loss" in card["detail"]
    kinds = [a["resource"]["resourceType"] for a in card["suggestions"][0]["actions"]]
    assert kinds == ["ClinicalImpression", "ServiceRequest", "DetectedIssue", "Provenance"]


def test_rule_2_confirmed_names_the_treatment_step() -> None:
    card = only_card(answer("017-confirmed-complete-pain-8.json"))
    assert card["summary"].startswith("Back mice confirmed by diagnostic injection: ")
    assert card["indicator"] == "info"


def test_rule_2_confirmed_without_a_procedure_step_has_no_suggestion() -> None:
    """Conservative care first: the card says so, and there is nothing to draft."""
    name = next(
        p.name
        for p in CASE_FILES
        if (a := answer(p.name)).audit.get("classification") == "confirmed"
        and a.body["cards"]
        and "suggestions" not in a.body["cards"][0]
    )
    card = only_card(answer(name))
    assert "Suggested:" not in card["detail"] and card["links"]


# -- rule 3: possible or insufficient data with a nodule --
def test_rule_3_possible_is_info_with_what_to_examine() -> None:
    card = only_card(answer("002-possible-repro-unknown.json"))
    assert card["indicator"] == "info" and card["summary"] == "Possible back mice: Focused examination"
    assert "To examine and record:" in card["detail"]
    assert "Whether pressure on the nodule reproduces the pain" in card["detail"]
    assert "suggestions" not in card and card["links"][0]["type"] == "smart"


def test_rule_3_insufficient_data_with_conflicting_nodule_records_gets_a_card() -> None:
    card = only_card(answer("060-nodule-conflict-same-time.json"))
    assert card["summary"].startswith("Insufficient data")
    assert "records conflict" in card["detail"]


def test_rule_3_insufficient_data_without_a_nodule_gives_no_card() -> None:
    assert answer("007-insufficient-lbp-only.json").body == {"cards": []}


# -- no card --
@pytest.mark.parametrize(
    "name",
    [
        "010-unlikely-nodule-absent.json",
        "011-unlikely-painless-nodule.json",
        "106-neuro-m62-81.json",
        "206-neuro-with-warn.json",
    ],
)
def test_unlikely_and_not_consistent_give_no_card(name: str) -> None:
    result = answer(name)
    assert result.audit["classification"] in ("unlikely", "not-consistent")
    assert result.body == {"cards": []}


def test_a_patient_viewing_their_record_gets_no_card() -> None:
    assert answer("001-probable-basic.json", user="Patient/p1").body == {"cards": []}


# -- rule 4: order-sign --
def test_rule_4_back_mouse_procedure_with_a_block_flag_is_critical_with_evidence() -> None:
    result = answer("178-prec-block-beats-confirmed.json", ORDER_SIGN, orders=[cs.order("11900")])
    card = only_card(result)
    assert card["indicator"] == "critical"
    assert card["summary"].startswith("Back-mouse procedure ordered despite ")
    assert "Red flags:" in card["detail"] and "`ServiceRequest/sr-1`" in card["detail"]
    assert re.search(r"evidence `(Condition|Observation)/", card["detail"])
    [remove] = card["suggestions"]
    assert remove["actions"] == [
        {
            "type": "delete",
            "description": remove["actions"][0]["description"],
            "resourceId": "ServiceRequest/sr-1",
        }
    ]


def test_rule_4_neurological_deficit_is_critical() -> None:
    card = only_card(answer("106-neuro-m62-81.json", ORDER_SIGN, orders=[cs.order("21930")]))
    assert "an objective neurological deficit" in card["summary"]
    assert "Objective neurological deficit:" in card["detail"]


def test_rule_4_without_flag_or_deficit_gives_no_card() -> None:
    assert answer("001-probable-basic.json", ORDER_SIGN, orders=[cs.order("11900")]).body == {"cards": []}


def test_rule_4_other_orders_are_not_evaluated(monkeypatch: pytest.MonkeyPatch) -> None:
    def evaluated(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the criteria were evaluated for orders that are not back-mouse procedures")

    monkeypatch.setattr("smart_app.cds.service.pipeline.assess_prefetched", evaluated)
    other = [
        cs.order("99213"),
        cs.order("11900", system="http://snomed.info/sct"),
        cs.order("11900", patient="p2"),
    ]
    result = answer("178-prec-block-beats-confirmed.json", ORDER_SIGN, orders=other)
    assert result.body == {"cards": []} and result.audit["outcome"] == "no-back-mouse-order"


def test_suggested_codes_are_the_criteria_injection_and_excision_codes() -> None:
    from smart_app.clinical.engine import criteria_for

    assert cards.suggested_codes(criteria_for()) == {
        ("http://www.ama-assn.org/go/cpt", code) for code in ("11900", "21930", "21931")
    }


# -- the corpus --
@pytest.mark.parametrize("path", CASE_FILES, ids=[p.stem for p in CASE_FILES])
def test_every_case_gives_well_formed_cards_only_when_there_is_something_to_act_on(path: Path) -> None:
    result = answer(path.name)
    assert cs.response_problems(result.body) == []
    classification = result.audit["classification"]
    if classification in ("unlikely", "not-consistent"):
        assert result.body["cards"] == []
    if classification in cards.SUSPECTED:
        assert len(result.body["cards"]) == 1
    from smart_app.clinical.engine import criteria_for

    for card in result.body["cards"]:
        assert card["uuid"] and card["source"]["label"].endswith(f"criteria {criteria_for().version}")
        suggestions = card.get("suggestions", [])
        assert all(
            a["resource"]["meta"]["tag"][0]["code"] == "draft-requires-review"
            for s in suggestions
            for a in s["actions"]
        )


# -- markdown --
def test_text_from_the_record_cannot_add_markup_or_links() -> None:
    case = cs.load_case("001-probable-basic.json")
    nodule = next(r for r in case["resources"] if r["id"] == "o-nodule")
    nodule["bodySite"]["text"] = "left [crest](https://evil.example) **now** <img src=x> www.evil.example"
    request = HookRequest(
        hook="patient-view",
        hook_instance=str(uuid.uuid4()),
        patient_id="p1",
        user_id="Practitioner/dr1",
        prefetch=cs.prefetch_of(case["patient"], case["resources"]),
    )
    as_of = datetime.fromisoformat(case["as_of"].replace("Z", "+00:00"))
    detail = answer_hook(PATIENT_VIEW, request, CLIENT, SETTINGS, as_of=as_of).body["cards"][0]["detail"]
    assert "\\[crest\\](https:\\/\\/evil" in detail and "\\*\\*now\\*\\*" in detail and "\\<img" in detail
    assert "https://evil" not in detail and "www.evil" not in detail


def test_summary_is_cut_below_140_characters_at_a_word() -> None:
    text = cards.summary_text(
        "Red flag (" + "; ".join(["Spinal infection or its risk"] * 8) + "): no procedure"
    )
    assert len(text) < 140 and text.endswith("…") and not text[:-1].endswith(" ")
