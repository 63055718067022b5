"""``smart-app draft`` and ``smart-app write``: JSON output and exit codes (0 ok, 2 unusable input,
3 server refused)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import responses
from writeback_fixtures import AUTHOR, RECORDED, corpus_assessment, patient_files, patient_input

from smart_app.cli import EXIT_OK, EXIT_REFUSED, EXIT_UNUSABLE, main
from smart_app.drafts.build import build_transaction
from smart_app.writeback import validate_drafts

BASE = "https://ehr.example/fhir"


def stamp(moment: Any) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


def test_draft_is_what_the_write_back_sends(capsys: pytest.CaptureFixture[str]) -> None:
    path = patient_files()[0]
    _, as_of = patient_input(path)
    code, bundle, _ = run(capsys, "draft", "--bundle", str(path), "--as-of", stamp(as_of), "--author", AUTHOR)
    assert code == EXIT_OK
    expected = build_transaction(
        corpus_assessment("patient", path.name), author=AUTHOR, encounter=None, recorded=as_of
    )
    assert bundle == json.loads(json.dumps(expected))
    assert validate_drafts(bundle) == []


def test_draft_document_reference_form(capsys: pytest.CaptureFixture[str]) -> None:
    path = patient_files()[0]
    code, bundle, _ = run(capsys, "draft", "--bundle", str(path), "--assessment-as", "DocumentReference")
    assert code == EXIT_OK
    assert bundle["entry"][1]["resource"]["resourceType"] == "DocumentReference"


@pytest.mark.parametrize(
    "content, extra",
    [
        (b"not json", []),
        (b'{"resourceType": "Patient", "id": "x"}', []),
        (b'{"resourceType": "Bundle", "type": "collection", "entry": []}', []),
        (None, ["--author", "Device/x"]),
        (None, ["--criteria", "0.0.1"]),
    ],
)
def test_unusable_input(
    content: bytes | None, extra: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "input.json"
    path.write_bytes(content if content is not None else patient_files()[0].read_bytes())
    code, out, err = run(capsys, "draft", "--bundle", str(path), *extra)
    assert code == EXIT_UNUSABLE and out is None
    assert err.startswith("smart-app: ") and len(err.strip().splitlines()) == 1


@responses.activate
def test_write_ok_and_refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SMART_APP_FHIR_TOKEN", "abc")
    path = patient_files()[0]
    _, as_of = patient_input(path)

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
    argv = ["write", "--bundle", str(path), "--fhir-base", BASE, "--as-of", stamp(as_of), "--author", AUTHOR]
    code, result, _ = run(capsys, *argv)
    assert code == EXIT_OK and result["ok"] and result["created"] == len(result["written"])

    responses.replace(
        responses.POST,
        BASE,
        status=422,
        json={
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "invalid", "diagnostics": "no ClinicalImpression here"}],
        },
    )
    code, result, _ = run(capsys, *argv)
    assert code == EXIT_REFUSED and not result["ok"] and result["errors"] == ["no ClinicalImpression here"]


def test_write_unusable_input_is_not_sent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "input.json"
    path.write_bytes(b"[]")
    code, out, _ = run(capsys, "write", "--bundle", str(path), "--fhir-base", "http://127.0.0.1:9/fhir")
    assert code == EXIT_UNUSABLE and out is None


def test_write_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    path = patient_files()[0]
    code, result, _ = run(capsys, "write", "--bundle", str(path), "--fhir-base", "http://127.0.0.1:9/fhir")
    assert code == EXIT_REFUSED and result["errors"]


def test_recorded_is_the_evaluation_time_with_as_of(capsys: pytest.CaptureFixture[str]) -> None:
    path = patient_files()[0]
    code, bundle, _ = run(capsys, "draft", "--bundle", str(path), "--as-of", stamp(RECORDED))
    provenance = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Provenance")
    assert code == EXIT_OK
    assert datetime.fromisoformat(provenance["recorded"].replace("Z", "+00:00")) == RECORDED
