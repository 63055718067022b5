"""The helpers behind ``smart-app draft`` and ``smart-app write``: JSON-ready output and exit codes
(0 ok, 2 unusable input, 3 server refused)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import responses
from writeback_fixtures import AUTHOR, RECORDED, corpus_assessment, patient_files

from smart_app.clinical.drafting import build_transaction
from smart_app.writeback import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNUSABLE_INPUT,
    draft_for_cli,
    validate_drafts,
    write_for_cli,
)

BASE = "https://ehr.example/fhir"


def patient() -> tuple[bytes, Any]:
    from writeback_fixtures import patient_input

    path = patient_files()[0]
    data, as_of = patient_input(path)
    return data, as_of


def test_draft_is_what_the_write_back_sends() -> None:
    data, as_of = patient()
    bundle, code = draft_for_cli(data, as_of=as_of, author=AUTHOR, recorded=RECORDED)
    assert code == EXIT_OK
    expected = build_transaction(
        corpus_assessment("patient", patient_files()[0].name),
        author=AUTHOR,
        encounter=None,
        recorded=RECORDED,
    )
    assert bundle == expected
    assert validate_drafts(bundle) == []
    json.dumps(bundle)


def test_draft_document_reference_form() -> None:
    data, as_of = patient()
    bundle, code = draft_for_cli(data, as_of=as_of, assessment_as="DocumentReference")
    assert code == EXIT_OK
    assert bundle["entry"][1]["resource"]["resourceType"] == "DocumentReference"


@pytest.mark.parametrize(
    "data, options",
    [
        (b"not json", {}),
        (b'{"resourceType": "Patient", "id": "x"}', {}),
        (b'{"resourceType": "Bundle", "type": "collection", "entry": []}', {}),
        (None, {"author": "Device/x"}),
        (None, {"encounter": "Patient/x"}),
    ],
)
def test_unusable_input(data: bytes | None, options: dict[str, Any]) -> None:
    payload, code = draft_for_cli(data if data is not None else patient()[0], **options)
    assert code == EXIT_UNUSABLE_INPUT
    assert payload["error"] == "unusable-input" and payload["message"]


@responses.activate
def test_write_ok_and_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMART_APP_FHIR_TOKEN", "abc")
    data, as_of = patient()

    def answer(request: Any) -> tuple[int, dict[str, str], str]:
        assert request.headers["Authorization"] == "Bearer abc"
        sent = json.loads(request.body)
        entries = [
            {"response": {"status": "201 Created", "location": f"{e['request']['url']}/{i}/_history/1"}}
            for i, e in enumerate(sent["entry"])
        ]
        body = {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}
        return 200, {"Content-Type": "application/fhir+json"}, json.dumps(body)

    responses.add_callback(responses.POST, BASE, callback=answer)
    result, code = write_for_cli(data, fhir_base=BASE, as_of=as_of, author=AUTHOR)
    assert code == EXIT_OK and result["ok"] and result["created"] == len(result["written"])
    json.dumps(result)

    responses.replace(
        responses.POST,
        BASE,
        status=422,
        json={
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "invalid", "diagnostics": "no ClinicalImpression here"}],
        },
    )
    result, code = write_for_cli(data, fhir_base=BASE, as_of=as_of)
    assert code == EXIT_REFUSED and not result["ok"] and result["errors"] == ["no ClinicalImpression here"]


def test_write_unusable_input_is_not_sent() -> None:
    result, code = write_for_cli(b"[]", fhir_base="http://127.0.0.1:9/fhir")
    assert code == EXIT_UNUSABLE_INPUT


def test_write_unreachable_server() -> None:
    data, as_of = patient()
    result, code = write_for_cli(data, fhir_base="http://127.0.0.1:9/fhir", as_of=as_of)
    assert code == EXIT_REFUSED and result["errors"]
