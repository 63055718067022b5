"""Resource types that could not be read (PatientRecord.unavailable; criteria ``data_dependencies``).

Silence of an unread type is not evidence of absence: findings read from it may be present, never absent;
an incomplete red-flag screen withholds any procedure; the treatment ladder never escalates on an unknown
history (docs/clinical-criteria.md#data-that-could-not-be-read).
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Mapping
from typing import Any

import pytest
from clinical_builders import (
    AS_OF,
    FIRST_RELEASE,
    RXNORM,
    bundle_bytes,
    cond,
    confirmed,
    lbp,
    nodule,
    obs,
    pain,
    probable,
    proc,
    relief,
    repro,
    run,
)

from smart_app.clinical import assess, load_bundle
from smart_app.clinical.criteria import default_registry
from smart_app.clinical.facts import READ_TYPES

NOT_GRANTED = "scope not granted"


def assess_with(unavailable: Mapping[str, str], *resources: dict[str, Any]) -> dict[str, Any]:
    record = dataclasses.replace(load_bundle(bundle_bytes(*resources)), unavailable=dict(unavailable))
    out: dict[str, Any] = assess(record, AS_OF, FIRST_RELEASE).to_json()
    return out


def status(out: dict[str, Any], fid: str) -> str:
    return str(out["findings"][fid]["status"])


def missing(out: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {m["finding"]: m for m in out["missing"]}


def trace(unavailable: Mapping[str, str], *resources: dict[str, Any]) -> list[dict[str, Any]]:
    record = dataclasses.replace(load_bundle(bundle_bytes(*resources)), unavailable=dict(unavailable))
    return list(assess(record, AS_OF, FIRST_RELEASE).trace)


def nsaid(rtype: str = "MedicationStatement", status_: str = "active") -> dict[str, Any]:
    return {
        "resourceType": rtype,
        "id": "m1",
        "status": status_,
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "197806"}]},
    }


# -- the record and the output key ---------------------------------------------------------------
def test_load_bundle_leaves_unavailable_empty_and_output_lists_none() -> None:
    record = load_bundle(bundle_bytes(*probable()))
    assert dict(record.unavailable) == {}
    out = assess(record, AS_OF).to_json()
    assert out["unavailable"] == []


def test_empty_unavailable_is_unchanged_behaviour() -> None:
    for resources in (probable(), [*confirmed(), pain("o-p", 5)], [lbp()], []):
        assert assess_with({}, *resources) == run(*resources)


def test_unavailable_is_a_sorted_list_and_deterministic() -> None:
    unavailable = {
        "Procedure": NOT_GRANTED,
        "Condition": "read failed: 503",
        "MedicationRequest": NOT_GRANTED,
    }
    resources = [*confirmed(), pain("o-p", 5)]
    first = assess_with(unavailable, *resources)
    assert first["unavailable"] == [
        {"resource_type": "Condition", "reason": "read failed: 503"},
        {"resource_type": "MedicationRequest", "reason": NOT_GRANTED},
        {"resource_type": "Procedure", "reason": NOT_GRANTED},
    ]
    reordered = dict(reversed(list(unavailable.items())))
    rng = random.Random(7)
    for _ in range(5):
        shuffled = resources[:]
        rng.shuffle(shuffled)
        again = assess_with(reordered, *shuffled)
        assert json.dumps(again, sort_keys=True) == json.dumps(first, sort_keys=True)


def test_a_type_no_rule_reads_is_listed_but_changes_nothing() -> None:
    base = run(*probable())
    out = assess_with({"DiagnosticReport": NOT_GRANTED}, *probable())
    assert out["unavailable"] == [{"resource_type": "DiagnosticReport", "reason": NOT_GRANTED}]
    assert (out["classification"], out["next_step"]) == ("probable", "diagnostic-injection")
    assert out["procedure_suggestion"] == base["procedure_suggestion"]
    assert out["findings"] == base["findings"] and out["missing"] == base["missing"]
    assert "Not read: DiagnosticReport (scope not granted)." in out["summary"]


# -- findings --------------------------------------------------------------------------------------
def test_lbp_reads_condition_unread_is_unknown_not_absent() -> None:
    assert status(run(nodule()), "LBP") == "absent"  # Condition read and silent: absent
    out = assess_with({"Condition": NOT_GRANTED}, nodule())
    lbp_out = out["findings"]["LBP"]
    assert lbp_out["status"] == "unknown"
    assert "Condition (scope not granted) could not be read" in lbp_out["reason"]
    assert out["classification"] != "unlikely" and out["next_step"] == "focused-exam"
    assert "Condition (scope not granted) could not be read" in missing(out)["LBP"]["what"]
    assert any(line.startswith("LBP is unknown: Condition") for line in out["rationale"])


def test_lbp_present_via_pain_reproduced_when_condition_unread() -> None:
    out = assess_with({"Condition": NOT_GRANTED}, nodule(), repro())
    assert status(out, "LBP") == "present"
    assert out["classification"] == "probable"


def test_a_condition_read_anyway_still_counts_when_the_type_is_marked_unread() -> None:
    """Resources present in the record (e.g. entered in this session) are used; only silence is not."""
    out = assess_with({"Condition": NOT_GRANTED}, lbp())
    assert status(out, "LBP") == "present"


def test_nodule_reads_observation() -> None:
    out = assess_with({"Observation": NOT_GRANTED}, lbp())
    assert status(out, "NODULE") == "unknown"
    assert "Observation (scope not granted)" in out["findings"]["NODULE"]["reason"]
    lipoma = cond("c-lip", "D17.1", bodySite=[{"text": "sacral region"}])
    out = assess_with({"Observation": NOT_GRANTED}, lbp(), lipoma)
    assert (status(out, "NODULE"), status(out, "TYPICAL_SITE")) == ("present", "present")
    assert out["classification"] == "possible"


def test_nodule_recorded_absent_is_unknown_when_condition_unread() -> None:
    assert status(run(lbp(), nodule(value="absent")), "NODULE") == "absent"
    out = assess_with({"Condition": "read failed: 500"}, nodule(value="absent"))
    found = out["findings"]["NODULE"]
    assert found["status"] == "unknown" and found["evidence"] == ["Observation/o-nod"]
    assert found["reason"].startswith("Observation, SNOMED 95325000 Subcutaneous nodule, absent")
    assert "Condition (read failed: 500) could not be read and may record it present" in found["reason"]
    assert out["classification"] == "insufficient-data"


def test_typical_site_has_no_source_of_its_own() -> None:
    """An atypical site is read from the nodule's own bodySite: an unread Condition does not change it."""
    out = assess_with({"Condition": NOT_GRANTED}, nodule(site="forearm"), repro())
    assert (status(out, "NODULE"), status(out, "TYPICAL_SITE")) == ("present", "absent")
    deps = default_registry().get("1.0.0").data["data_dependencies"]["findings"]
    assert deps["TYPICAL_SITE"] == {"types": [], "via": "NODULE"}


def test_pain_reproduced_reads_only_observation() -> None:
    out = assess_with({"Condition": NOT_GRANTED}, nodule(), repro(value="absent"))
    assert status(out, "PAIN_REPRODUCED") == "absent" and out["classification"] == "unlikely"
    out = assess_with({"Observation": NOT_GRANTED}, lbp())
    assert status(out, "PAIN_REPRODUCED") == "unknown"
    assert "Observation (scope not granted)" in out["findings"]["PAIN_REPRODUCED"]["reason"]


def test_neuro_deficit_reads_observation_and_condition() -> None:
    weak_absent = obs("o-weak", "26544005", value="absent")
    assert status(run(*probable(), weak_absent), "NEURO_DEFICIT") == "absent"
    out = assess_with({"Condition": NOT_GRANTED}, nodule(), repro(), weak_absent)
    assert status(out, "NEURO_DEFICIT") == "unknown"
    assert "Condition (scope not granted)" in missing(out)["NEURO_DEFICIT"]["what"]
    out = assess_with({"Condition": NOT_GRANTED}, nodule(), repro(), obs("o-weak", "26544005"))
    assert status(out, "NEURO_DEFICIT") == "present" and out["classification"] == "not-consistent"
    out = assess_with({"Observation": NOT_GRANTED}, lbp())
    assert status(out, "NEURO_DEFICIT") == "unknown"


def test_injection_relief_reads_only_observation() -> None:
    out = assess_with({"Condition": NOT_GRANTED}, nodule(), repro(), relief(percent=50))
    assert status(out, "INJECTION_RELIEF") == "absent"
    assert (out["classification"], out["next_step"]) == ("unlikely", "work-up")
    out = assess_with({"Observation": NOT_GRANTED}, lbp())
    assert status(out, "INJECTION_RELIEF") == "unknown"


# -- red-flag screen -------------------------------------------------------------------------------
@pytest.mark.parametrize("rtype", ["Condition", "Observation"])
def test_incomplete_red_flag_screen_withholds_the_diagnostic_injection(rtype: str) -> None:
    """Observation unread: the exam was entered in this session, the stored Observations failed."""
    out = assess_with({rtype: "read failed: 503"}, *probable())
    assert out["classification"] == "probable"
    assert out["next_step"] == "focused-exam" and out["procedure_suggestion"] is None
    assert out["headline"] == (
        "Probable painful episacral lipoma (back mouse), left posterior iliac crest — focused examination: "
        f"red flags could not be excluded ({rtype} could not be read), no procedure suggested"
    )
    withheld = [line for line in out["rationale"] if line.startswith("Red-flag screen incomplete")]
    assert len(withheld) == 1
    assert f"not read: {rtype} (read failed: 503)" in withheld[0]
    assert "suggest diagnostic local anaesthetic injection into the nodule) is not suggested" in withheld[0]
    screen = missing(out)["RED_FLAG_SCREEN"]
    assert screen["what"] == (
        f"Red-flag screen: {rtype} (read failed: 503) could not be read, so red flags could not be excluded"
    )
    assert f"read access to {rtype}" in screen["how"]
    assert "Red flags could not be excluded" in out["summary"]
    steps = [t for t in trace({rtype: "read failed: 503"}, *probable()) if t["stage"] == "next_step"]
    assert steps[-1]["rule"] == "red-flag-screen-incomplete"


def test_confirmed_stays_confirmed_but_no_treatment_is_suggested_without_the_screen() -> None:
    out = assess_with({"Condition": NOT_GRANTED}, nodule(), repro(), relief(), pain("o-p", 8))
    assert (out["classification"], out["next_step"]) == ("confirmed", "focused-exam")
    assert out["procedure_suggestion"] is None
    assert "anaesthetic + corticosteroid injection into the nodule) is not suggested" in " ".join(
        out["rationale"]
    )


def test_surgical_referral_is_withheld_without_the_screen() -> None:
    injections = [
        proc("pr-1", "therapeutic-nodule-injection", "2026-08-01"),
        proc("pr-2", "therapeutic-nodule-injection", "2026-10-01"),
    ]
    assert run(*confirmed(), *injections, pain("o-p", 6))["next_step"] == "surgical-referral"
    out = assess_with({"Condition": NOT_GRANTED}, *confirmed()[1:], *injections, pain("o-p", 6))
    assert (out["next_step"], out["procedure_suggestion"]) == ("focused-exam", None)


def test_incomplete_screen_without_a_procedure_step_keeps_the_step_and_says_so() -> None:
    out = assess_with({"Condition": NOT_GRANTED}, nodule())
    assert out["next_step"] == "focused-exam"
    assert out["headline"].endswith("; red flags could not be excluded (Condition could not be read)")
    assert any("could not be excluded: review them before acting" in line for line in out["rationale"])
    out = assess_with({"Condition": NOT_GRANTED}, nodule(), repro(), relief(), pain("o-p", 2))
    assert (out["classification"], out["next_step"]) == ("confirmed", "conservative-care")
    assert "RED_FLAG_SCREEN" in missing(out)


def test_block_flag_found_in_observations_while_condition_unread() -> None:
    retention = obs("o-ret", "236648008", value=None, when="2026-11-10T09:00:00Z")
    out = assess_with({"Condition": NOT_GRANTED}, nodule(), repro(), retention)
    assert (out["classification"], out["next_step"]) == ("red-flags", "urgent-work-up")
    assert [f["id"] for f in out["red_flags"]] == ["cauda-equina"]
    assert out["procedure_suggestion"] is None
    assert out["headline"].startswith("Back-mouse procedure withheld: red flag")
    assert "could not be excluded" not in out["headline"]
    assert "RED_FLAG_SCREEN" in missing(out)


def test_block_flag_found_in_conditions_while_observation_unread() -> None:
    out = assess_with({"Observation": NOT_GRANTED}, lbp(), cond("c-ca", "Z85.3", clinical="resolved"))
    assert out["classification"] == "red-flags" and [f["id"] for f in out["red_flags"]] == ["malignancy"]


def test_complete_screen_has_no_screen_entry() -> None:
    out = assess_with({"Procedure": NOT_GRANTED}, *probable())
    assert out["next_step"] == "diagnostic-injection" and out["procedure_suggestion"] is not None
    assert "RED_FLAG_SCREEN" not in missing(out)
    assert not any(line.startswith("Red-flag screen") for line in out["rationale"])


# -- treatment ladder ----------------------------------------------------------------------------
@pytest.mark.parametrize("rtype", ["Procedure", "MedicationStatement", "MedicationRequest", "Condition"])
def test_conservative_care_tried_is_unknown_when_a_source_is_unread(rtype: str) -> None:
    resources = [nodule(), repro(), relief(), pain("o-p", 5)]
    if rtype != "Condition":
        resources.insert(0, lbp())
    out = assess_with({rtype: NOT_GRANTED}, *resources)
    assert (out["classification"], out["next_step"]) == ("confirmed", "conservative-care")
    assert out["procedure_suggestion"] is None
    care = missing(out)["CONSERVATIVE_CARE"]
    assert f"{rtype} (scope not granted) could not be read" in care["what"]
    assert any("whether conservative care was already tried could not be read" in r for r in out["rationale"])
    assert not any("without a conservative-care trial" in r for r in out["rationale"])
    assert ("INJECTION_HISTORY" in missing(out)) is (rtype == "Procedure")


def test_conservative_care_known_from_a_read_source() -> None:
    out = assess_with({"Procedure": NOT_GRANTED}, *confirmed(), pain("o-p", 5), nsaid())
    assert out["next_step"] == "therapeutic-injection"
    assert "CONSERVATIVE_CARE" not in missing(out)
    assert "INJECTION_HISTORY" in missing(out)


def test_injection_count_reads_procedure_no_referral_on_unknown_history() -> None:
    unavailable = {"Procedure": "read failed: timeout"}
    out = assess_with(unavailable, *confirmed(), pain("o-p", 8))
    assert out["next_step"] == "therapeutic-injection"
    assert out["procedure_suggestion"] is not None
    assert any("surgical referral is not considered on an unknown" in r for r in out["rationale"])
    assert "Procedure (read failed: timeout) could not be read" in missing(out)["INJECTION_HISTORY"]["what"]
    refractory = next(
        t for t in trace(unavailable, *confirmed(), pain("o-p", 8)) if t["rule"] == "refractory"
    )
    assert (
        refractory["value"] is False
        and "unknown: Procedure (read failed: timeout) not read" in (refractory["detail"])
    )


def test_ladder_inputs_are_not_reported_outside_the_ladder() -> None:
    out = assess_with({"Procedure": NOT_GRANTED, "MedicationStatement": NOT_GRANTED}, *probable())
    assert not {"CONSERVATIVE_CARE", "INJECTION_HISTORY"} & set(missing(out))


def test_pain_score_reads_observation() -> None:
    unavailable = {"Observation": NOT_GRANTED}
    steps = trace(unavailable, *confirmed())
    no_pain = next(t for t in steps if t["rule"] == "no-pain-score")
    assert no_pain["value"] is True and "not read: Observation (scope not granted)" in no_pain["detail"]


# -- criteria data -----------------------------------------------------------------------------------
def test_data_dependencies_cover_every_finding_flag_and_input() -> None:
    data = default_registry().get("1.0.0").data
    deps = data["data_dependencies"]
    assert set(deps["findings"]) == {f["id"] for f in data["findings"]}
    assert deps["findings"]["LBP"]["types"] == ["Condition"]
    assert deps["findings"]["NODULE"]["types"] == ["Observation", "Condition"]
    assert deps["red_flags"]["types"] == ["Condition", "Observation"]
    assert deps["ladder"]["conservative_care_tried"]["types"] == [
        "Procedure",
        "MedicationStatement",
        "MedicationRequest",
        "Condition",
    ]
    assert deps["ladder"]["therapeutic_injections"]["types"] == ["Procedure"]
    assert deps["red_flags"]["step_instead"] not in data["suggestions"]
    every = [t for f in deps["findings"].values() for t in f["types"]]
    every += deps["red_flags"]["types"] + deps["pain"]["types"]
    every += [t for spec in deps["ladder"].values() for t in spec["types"]]
    assert set(every) <= set(READ_TYPES)

    def inputs(node: Any) -> set[str]:
        if isinstance(node, dict):
            found = {node["input"]} if isinstance(node.get("input"), str) else set()
            return found.union(*(inputs(v) for v in node.values()))
        if isinstance(node, list):
            return set().union(*(inputs(v) for v in node))
        return set()

    assert inputs(data["treatment_ladder"]) == set(deps["ladder"])
    ids = {d["id"] for d in data["decisions"]}
    assert {"unavailable-types", "unavailable-findings", "unavailable-red-flags", "unavailable-ladder"} <= ids
