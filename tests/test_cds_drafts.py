"""The card's suggestion carries the drafts the app writes: the same ServiceRequest, built by the same
code from the same record, compared with what the app's own write-back sends
(docs/cds-hooks.md#the-suggestion)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from smart_app.cds.actions import app_device_reference, suggestion_actions
from smart_app.clinical import PatientRecord, assess
from smart_app.drafts.build import DraftingError, build_transaction
from smart_app.drafts.profiles import check_bundle, load_checker
from smart_app.vocabulary import APP_DEVICE
from tests import cds_support as cs
from tests.launch_support import start_launch
from tests.test_views_review import digest_from
from tests.views_fixtures import PROBABLE, FakeEhr, condition, fake_launch, patient

UUID = "urn:uuid:"


def app_transaction(client: FlaskClient, ehr: FakeEhr, resources: list[dict[str, Any]]) -> dict[str, Any]:
    """What the app writes for the launched patient: review, then write-back, as a clinician does."""
    ehr.serve(resources)
    ehr.accept_transactions()
    start_launch(client.application, client, **fake_launch())
    html = client.get("/review").get_data(as_text=True)
    assert client.post("/writeback", data={"draft_digest": digest_from(html)}).status_code == 200
    [bundle] = ehr.writes
    return bundle


def card_actions(app: Flask, tmp_path: Path, resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The actions of the card's suggestion for the same record, user and patient."""
    keys = cs.ClientKeys()
    (tmp_path / "registrations" / "cds-client.json").write_text(json.dumps(cs.registration(keys)))
    app.config["PUBLIC_URL"] = cs.PUBLIC_URL  # the audience of the client's JWTs
    body = cs.hook_body(prefetch=cs.prefetch_of(patient(), resources), user="Practitioner/dr1")
    answer = cs.post(app.test_client(), keys, cs.PATIENT_VIEW, body)
    [card] = answer.get_json()["cards"]
    [suggestion] = card["suggestions"]
    return list(suggestion["actions"])


def by_type(entries: list[dict[str, Any]], rtype: str) -> dict[str, Any]:
    return next(e for e in entries if e["resource"]["resourceType"] == rtype)


def test_the_suggested_service_request_is_the_one_the_app_writes(
    app: Flask, client: FlaskClient, ehr: FakeEhr, tmp_path: Path
) -> None:
    written = app_transaction(client, ehr, PROBABLE)
    actions = card_actions(app, tmp_path, PROBABLE)
    app_entry = by_type(written["entry"], "ServiceRequest")
    assessment_entry = by_type(written["entry"], "ClinicalImpression")
    suggested = by_type(actions, "ServiceRequest")["resource"]

    # the one difference a suggestion needs: the transaction's urn:uuid becomes the resource id, and the
    # reference to the assessment the same uuid as a relative reference
    expected = json.loads(json.dumps(app_entry["resource"]))
    expected["id"] = app_entry["fullUrl"].removeprefix(UUID)
    assert expected["supportingInfo"] == [{"reference": assessment_entry["fullUrl"]}]
    expected["supportingInfo"] = [
        {"reference": f"ClinicalImpression/{assessment_entry['fullUrl'].removeprefix(UUID)}"}
    ]
    assert suggested == expected
    # what matters, spelled out: the app's profile, identifier, draft status and AI label
    assert suggested["meta"]["profile"] == app_entry["resource"]["meta"]["profile"]
    assert suggested["identifier"] == app_entry["resource"]["identifier"]
    assert (suggested["status"], suggested["intent"]) == ("draft", "proposal")
    assert suggested["meta"]["security"][0]["code"] == "AIAST"


def test_the_suggestion_carries_every_draft_but_the_device_with_the_same_identities(
    app: Flask, client: FlaskClient, ehr: FakeEhr, tmp_path: Path
) -> None:
    warn = [*PROBABLE, condition("c-wl", "R63.4", "Abnormal weight loss")]
    written = app_transaction(client, ehr, warn)
    actions = card_actions(app, tmp_path, warn)
    drafts = [e for e in written["entry"] if e["resource"]["resourceType"] != "Device"]
    assert [a["resource"]["resourceType"] for a in actions] == [e["resource"]["resourceType"] for e in drafts]
    for action, entry in zip(actions, drafts, strict=True):
        assert action["type"] == "create" and action["description"]
        resource = action["resource"]
        assert resource["id"] == entry["fullUrl"].removeprefix(UUID)
        assert resource.get("identifier") == entry["resource"].get("identifier")
        assert resource["meta"] == entry["resource"]["meta"]  # profiles, AI label, workflow tag (+ key)
    provenance = by_type(actions, "Provenance")["resource"]
    app_provenance = by_type(written["entry"], "Provenance")["resource"]
    assert provenance["entity"] == app_provenance["entity"]  # derived from the same versioned sources
    assert (
        provenance["policy"] == app_provenance["policy"] and provenance["reason"] == app_provenance["reason"]
    )
    who = {a["type"]["coding"][0]["code"]: a["who"] for a in provenance["agent"]}
    assert who == {"author": {"reference": "Practitioner/dr1"}, "assembler": app_device_reference()}
    assert sorted(t["reference"] for t in provenance["target"]) == sorted(
        f"{a['resource']['resourceType']}/{a['resource']['id']}"
        for a in actions
        if a["resource"] is not provenance
    )
    issue = by_type(actions, "DetectedIssue")["resource"]
    assert issue["author"] == app_device_reference()
    assert not any(UUID in json.dumps(a["resource"]) for a in actions)  # no transaction-only reference left
    assert all(load_checker().check(a["resource"]) == [] for a in actions)


def test_actions_are_derived_from_the_drafts_without_a_device_write() -> None:
    case = cs.load_case("001-probable-basic.json")
    from datetime import datetime

    from smart_app.clinical import PatientRecord, assess

    as_of = datetime.fromisoformat(case["as_of"].replace("Z", "+00:00"))
    assessment = assess(PatientRecord(patient=case["patient"], resources=case["resources"]), as_of).to_json()
    drafts = build_transaction(assessment, author=None, encounter="Encounter/e1", recorded=as_of)
    actions = suggestion_actions(drafts)
    assert "Device" not in {a["resource"]["resourceType"] for a in actions}
    assert APP_DEVICE not in json.dumps(actions)
    request = by_type(actions, "ServiceRequest")["resource"]
    assert request["encounter"] == {"reference": "Encounter/e1"}
    # without a user the app Device is the author, named by its identifier, as the assembler is
    provenance = by_type(actions, "Provenance")["resource"]
    assert [a["who"] for a in provenance["agent"]] == [app_device_reference(), app_device_reference()]


def test_drafts_that_are_not_valid_r4_are_not_suggested() -> None:
    case = cs.load_case("001-probable-basic.json")
    as_of = datetime.fromisoformat(case["as_of"].replace("Z", "+00:00"))
    assessment = assess(PatientRecord(patient=case["patient"], resources=case["resources"]), as_of).to_json()
    drafts = build_transaction(assessment, author=None, encounter=None, recorded=as_of)
    by_type(drafts["entry"], "ServiceRequest")["resource"]["authoredOn"] = "24 November 2026"
    assert check_bundle(drafts) == []  # the app's profiles check no primitive formats
    with pytest.raises(DraftingError, match=r"not valid FHIR R4: Bundle\.entry\[2\]\.resource\.authoredOn"):
        suggestion_actions(drafts)
