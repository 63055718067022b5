"""The CLI contract integrators and auditors rely on (issue "Clinical core", item 6; "Write-back", item 6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smart_app.cli import main

DATA = Path(__file__).resolve().parents[1] / "launch" / "data"
AS_OF = "2026-11-24T12:00:00Z"
CONTRACT_KEYS = {
    "classification", "next_step", "red_flags", "findings", "differentials", "missing",
    "procedure_suggestion", "ignored", "criteria", "as_of",
}  # fmt: skip


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_assess_json_prints_exactly_one_object_with_the_contract_keys(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, err = run(
        capsys, "assess", "--bundle", str(DATA / "patient-evance.json"), "--as-of", AS_OF, "--json"
    )
    assert status == 0, err
    assessment = json.loads(out)
    assert CONTRACT_KEYS <= assessment.keys()
    assert assessment["classification"] == "red-flags"
    assert assessment["next_step"] == "urgent-work-up"
    assert assessment["procedure_suggestion"] is None
    assert {flag["id"] for flag in assessment["red_flags"]} == {"malignancy"}
    assert all(flag["level"] in ("block", "warn") and flag["evidence"] for flag in assessment["red_flags"])
    assert assessment["criteria"] == {
        "url": "https://smart-app.example/fhir/criteria/back-mice",
        "version": "1.1.0",  # the newest release is the default
        **({"title": assessment["criteria"]["title"]} if "title" in assessment["criteria"] else {}),
    }
    assert assessment["as_of"] == AS_OF


def test_assess_criteria_chooses_the_release(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ("assess", "--bundle", str(DATA / "patient-evance.json"), "--as-of", AS_OF, "--json")
    status, out, err = run(capsys, *argv, "--criteria", "1.0.0")
    assert status == 0, err
    old = json.loads(out)
    new = json.loads(run(capsys, *argv)[1])
    assert (old["criteria"]["version"], new["criteria"]["version"]) == ("1.0.0", "1.1.0")
    assert old["summary"].startswith("Suspected painful episacral lipoma")
    assert new["summary"].startswith("Red flag present: Malignancy, current or history")


def test_assess_is_byte_stable(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ("assess", "--bundle", str(DATA / "patient-lchen.json"), "--as-of", AS_OF, "--json")
    first = run(capsys, *argv)[1]
    assert run(capsys, *argv)[1] == first


def test_assess_without_json_prints_a_readable_summary(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "assess", "--bundle", str(DATA / "patient-jkowalski.json"), "--as-of", AS_OF)
    assert status == 0
    assert "Classification: probable" in out
    assert "bone-fragility" in out


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "not usable JSON"),
        (b'{"resourceType": "Patient", "id": "x"}', "Bundle"),
        (b'{"resourceType": "Bundle", "type": "collection", "entry": []}', "Patient"),
    ],
)
def test_unusable_input_exits_2_with_a_one_line_reason(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "input.json"
    path.write_bytes(content)
    status, out, err = run(capsys, "assess", "--bundle", str(path), "--json")
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1 and reason in err


def test_missing_file_and_bad_as_of_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(capsys, "assess", "--bundle", str(tmp_path / "absent.json"))[0] == 2
    bundle = str(DATA / "patient-apatel.json")
    assert run(capsys, "assess", "--bundle", bundle, "--as-of", "yesterday")[0] == 2


def test_draft_prints_the_transaction_the_write_back_would_send(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ("draft", "--bundle", str(DATA / "patient-jkowalski.json"), "--as-of", AS_OF)
    status, out, err = run(capsys, *argv, "--author", "Practitioner/dr-ada")
    assert status == 0, err
    bundle = json.loads(out)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    types = [entry["resource"]["resourceType"] for entry in bundle["entry"]]
    assert {"ClinicalImpression", "ServiceRequest", "DetectedIssue", "Provenance"} <= set(types)
    assert all(entry["request"]["method"] == "POST" for entry in bundle["entry"])
    assert run(capsys, *argv, "--author", "Practitioner/dr-ada")[1] == out  # deterministic


def test_draft_for_a_red_flag_patient_has_no_service_request(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "draft", "--bundle", str(DATA / "patient-evance.json"), "--as-of", AS_OF)
    assert status == 0
    types = [entry["resource"]["resourceType"] for entry in json.loads(out)["entry"]]
    assert "ServiceRequest" not in types
    assert "DetectedIssue" in types


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The sandbox EHR over HTTP, with a user-level bearer token in the CLI's token variable."""
    import time

    from launch.sandbox.oauth import Grant
    from launch.sandbox.server import BackgroundServer

    config = {"TESTING": True, "SIGNING_KEY_PATH": str(tmp_path / "key.pem"), "DATES": "stored"}  # at AS_OF
    with BackgroundServer(config) as server:
        token = server.app.extensions["sandbox"].auth.add_access(
            Grant(
                client_id="cli-tests",
                scopes=("user/*.cruds",),
                user="Practitioner/dr-ada",
                patient=None,
                encounter=None,
                expires_at=time.time() + 3600,
            )
        )
        monkeypatch.setenv("SMART_APP_FHIR_TOKEN", token)
        yield server


def test_write_sends_once_and_a_repeat_creates_nothing(capsys: pytest.CaptureFixture[str], sandbox) -> None:
    argv = ("write", "--bundle", str(DATA / "patient-jkowalski.json"), "--fhir-base", sandbox.fhir_base)
    status, out, err = run(capsys, *argv, "--as-of", AS_OF, "--author", "Practitioner/dr-ada")
    assert status == 0, err
    first = json.loads(out)
    assert first["ok"] is True
    created = {(e["resource_type"], e["id"]) for e in first["written"]}
    assert {"ClinicalImpression", "ServiceRequest", "DetectedIssue", "Provenance"} <= {t for t, _ in created}
    status, out, _ = run(capsys, *argv, "--as-of", AS_OF, "--author", "Practitioner/dr-ada")
    again = json.loads(out)
    assert status == 0
    assert {(e["resource_type"], e["id"]) for e in again["written"]} == created
    assert not any(e["created"] for e in again["written"] if e["resource_type"] != "Provenance")


def test_assess_straight_from_a_fhir_server_matches_the_bundle(
    capsys: pytest.CaptureFixture[str], sandbox
) -> None:
    from_server = run(
        capsys, "assess", "--fhir-base", sandbox.fhir_base, "--patient", "lchen", "--as-of", AS_OF, "--json"
    )
    from_file = run(
        capsys, "assess", "--bundle", str(DATA / "patient-lchen.json"), "--as-of", AS_OF, "--json"
    )
    assert from_server[0] == 0 == from_file[0]
    server_json, file_json = json.loads(from_server[1]), json.loads(from_file[1])
    for key in ("classification", "next_step", "red_flags", "procedure_suggestion", "findings"):
        assert server_json[key] == file_json[key]


def test_write_refused_by_the_server_exits_3(capsys: pytest.CaptureFixture[str], sandbox) -> None:
    from launch.sandbox.faults import Faults

    sandbox.app.extensions["sandbox"].faults = Faults({"transaction": {"status": 500}})
    status, out, _ = run(
        capsys,
        "write",
        "--bundle",
        str(DATA / "patient-evance.json"),
        "--fhir-base",
        sandbox.fhir_base,
        "--as-of",
        AS_OF,
    )
    assert status == 3
    assert json.loads(out)["ok"] is False
