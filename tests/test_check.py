"""``smart-app check ISS``: the readiness report against the sandbox EHR, the independent FHIR server (no
SMART endpoints) and EHRs mocked with ``responses`` that lack one thing each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import responses
from medplum_server import MedplumServer
from smart_support import ISS, METADATA, WELL_KNOWN, smart_configuration, write_registration

from smart_app.check import check_ehr
from smart_app.cli import main
from smart_app.smart.registrations import load_registration_file
from tests.audit_fixtures import Sandbox

SHIPPED = Path(__file__).resolve().parents[1] / "launch" / "registrations"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["check", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def by_id(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in report["checks"]}


def sandbox_registrations(box: Sandbox, directory: Path) -> Path:
    """The shipped sandbox registrations, pointed at this sandbox's port."""
    directory.mkdir()
    for path in SHIPPED.glob("sandbox*.json"):
        data = json.loads(path.read_text())
        data["iss"] = box.base
        (directory / path.name).write_text(json.dumps(data))
    return directory


@pytest.mark.e2e
def test_the_sandbox_is_ready_for_its_three_registrations(sandbox: Sandbox, tmp_path, capsys):
    regs = sandbox_registrations(sandbox, tmp_path / "regs")
    code, report = run(capsys, sandbox.base, "--registrations-dir", str(regs))
    assert (code, report["status"]) == (0, "ready"), [c for c in report["checks"] if c["status"] != "pass"]
    assert report["registrations"] == ["sandbox", "sandbox-asymmetric", "sandbox-symmetric"]
    checks = by_id(report)
    assert checks["pkce"]["summary"] == "PKCE S256 is supported"
    assert checks["client-auth:sandbox-symmetric"]["summary"] == "client_secret_basic is supported"
    assert checks["client-auth:sandbox-asymmetric"]["summary"] == "private_key_jwt is supported"
    assert checks["search:Observation"]["summary"] == "Observation?patient="
    for rtype in ("ClinicalImpression", "ServiceRequest", "DetectedIssue", "Provenance", "Device"):
        assert checks[f"write:{rtype}"]["status"] == "pass"
    assert checks["fhir-version"]["summary"] == "FHIR 4.0.1" and checks["transaction"]["status"] == "pass"
    assert checks["batch"]["summary"] == "batch Bundles: a review's reads go as one request"


@pytest.mark.e2e
def test_the_sandbox_against_a_registration_asking_for_more(sandbox: Sandbox, tmp_path, capsys):
    path = write_registration(
        tmp_path / "regs",
        iss=sandbox.base,
        client_type="confidential-asymmetric",
        signing_alg="ES384",
        scopes="launch openid fhirUser offline_access patient/Patient.r system/Device.c",
        token_endpoint="https://elsewhere.test/token",
    )
    code, report = run(capsys, sandbox.base, "--registration", str(path))
    checks = by_id(report)
    assert code == 4 and report["status"] == "not-ready"
    assert checks["endpoints:test-ehr"]["status"] == "fail"
    assert "other than the one registered" in checks["endpoints:test-ehr"]["summary"]
    assert checks["scopes:test-ehr"]["status"] == "warn"
    assert "system/Device.c" in checks["scopes:test-ehr"]["summary"]
    assert "create Device records" in checks["scopes:test-ehr"]["degrades"]


@pytest.mark.medplum
def test_the_independent_fhir_server_says_what_is_missing_and_what_degrades(medplum: MedplumServer, capsys):
    code, report = run(capsys, medplum.base_url)
    checks = by_id(report)
    assert code == 4 and report["status"] == "not-ready"
    smart = checks["smart-configuration"]
    assert smart["status"] == "fail"
    assert "/.well-known/smart-configuration answered HTTP 404" in smart["summary"]
    assert "metadata has no oauth-uris extension" in smart["summary"]
    assert "cannot be launched" in smart["degrades"] and "$SMART_APP_FHIR_TOKEN" in smart["degrades"]
    fails = [c["id"] for c in report["checks"] if c["status"] == "fail"]
    assert fails == ["smart-configuration"]  # the FHIR side is ready: reads, transactions, creates
    assert checks["fhir-version"]["summary"] == "FHIR 4.0.1"
    assert all(checks[f"search:{t}"]["status"] == "pass" for t in ("Observation", "Condition", "Procedure"))
    assert checks["transaction"]["status"] == "pass" and checks["write:Provenance"]["status"] == "pass"
    assert checks["batch"]["summary"].startswith("batch Bundles")
    text_code = main(["check", medplum.base_url])
    text = capsys.readouterr().out
    assert text_code == 4 and text.startswith(f"smart-app check {medplum.base_url}: NOT READY (1 failing")
    assert "FAIL  smart-configuration" in text and "degrades:" in text


# --- EHRs mocked with one gap each -------------------------------------------------------------------------


def capability_statement(**overrides: Any) -> dict[str, Any]:
    def resource(rtype: str, *, search: bool = True, create: bool = True) -> dict[str, Any]:
        interactions = ["read", *(["search-type"] if search else []), *(["create"] if create else [])]
        return {
            "type": rtype,
            "interaction": [{"code": code} for code in interactions],
            "conditionalCreate": True,
            "searchParam": [{"name": "patient"}, {"name": "identifier"}],
        }

    types = [
        "Patient",
        "Observation",
        "Condition",
        "Procedure",
        "MedicationStatement",
        "MedicationRequest",
        "ClinicalImpression",
        "DocumentReference",
        "ServiceRequest",
        "DetectedIssue",
        "Provenance",
        "Device",
    ]
    statement: dict[str, Any] = {
        "resourceType": "CapabilityStatement",
        "fhirVersion": "4.0.1",
        "rest": [
            {
                "mode": "server",
                "interaction": [{"code": "transaction"}],
                "resource": [resource(t) for t in types],
            }
        ],
    }
    statement.update(overrides)
    return statement


def ehr(rsps: responses.RequestsMock, config: dict[str, Any] | None = None, **statement: Any) -> None:
    capabilities = [
        "launch-ehr",
        "launch-standalone",
        "context-ehr-patient",
        "context-ehr-encounter",
        "client-public",
        "sso-openid-connect",
        "permission-offline",
        "permission-v2",
    ]
    base = smart_configuration(
        capabilities=capabilities,
        scopes_supported=[
            "openid",
            "fhirUser",
            "launch",
            "launch/patient",
            "offline_access",
            "patient/*.crs",
        ],
    )
    if config is None:
        rsps.add(responses.GET, WELL_KNOWN, status=404)
    else:  # a key set to None is left out of the document
        rsps.add(
            responses.GET, WELL_KNOWN, json={k: v for k, v in {**base, **config}.items() if v is not None}
        )
    rsps.add(responses.GET, METADATA, json=capability_statement(**statement))


def registration_at(tmp_path: Path, **fields: Any) -> Any:
    return load_registration_file(write_registration(tmp_path / "regs", **fields))


def statuses(report: Any) -> dict[str, str]:
    return {c.id: c.status for c in report.checks}


def test_a_complete_ehr_is_ready(rsps, tmp_path):
    ehr(rsps, {})
    report = check_ehr(ISS, [registration_at(tmp_path)])
    assert report.status == "ready" and report.exit_code == 0, report.to_text()


@pytest.mark.parametrize(
    ("config", "statement", "registration", "check_id", "status", "degrades"),
    [
        ({"code_challenge_methods_supported": ["plain"]}, {}, {}, "pkce", "fail", "Every launch is refused"),
        ({"code_challenge_methods_supported": None}, {}, {}, "pkce", "warn", "unbound"),
        (
            {"capabilities": ["launch-standalone", "client-public"]},
            {},
            {},
            "capability:launch-ehr",
            "warn",
            "standalone launches only",
        ),
        (
            {"capabilities": ["launch-ehr", "client-public"]},
            {},
            {},
            "capability:context-ehr-patient",
            "fail",
            "which patient",
        ),
        (
            {"scopes_supported": ["openid", "patient/Observation.rs"]},
            {},
            {},
            "scopes:test-ehr",
            "warn",
            "Condition records",
        ),
        (
            {
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                "token_endpoint_auth_signing_alg_values_supported": None,
            },
            {},
            {"client_type": "confidential-asymmetric"},
            "client-auth:test-ehr",
            "fail",
            "(private_key_jwt) may be refused",
        ),
        (
            {"token_endpoint_auth_signing_alg_values_supported": ["RS256"]},
            {},
            {"client_type": "confidential-asymmetric"},
            "client-auth:test-ehr",
            "fail",
            "set signing_alg",
        ),
        (
            {"token_endpoint": "https://login.other.test/token"},
            {},
            {},
            "endpoints:test-ehr",
            "warn",
            "auth_origins",
        ),
        ({}, {"fhirVersion": "3.0.2"}, {}, "fhir-version", "fail", "FHIR R4"),
        (
            {},
            {"rest": [{"mode": "server", "resource": []}]},
            {},
            "search:Observation",
            "fail",
            "cannot be made",
        ),
        (
            {},
            {"rest": [{"mode": "server", "resource": []}]},
            {},
            "search:Procedure",
            "warn",
            "unknown, never as absent",
        ),
        ({}, {"rest": [{"mode": "server", "resource": []}]}, {}, "transaction", "fail", "sequential"),
        (
            {},
            {
                "rest": [
                    {
                        "mode": "server",
                        "interaction": [{"code": "transaction"}],
                        "resource": [{"type": "ServiceRequest", "interaction": [{"code": "create"}]}],
                    }
                ]
            },
            {},
            "write:ServiceRequest",
            "warn",
            "duplicate",
        ),
    ],
)
def test_each_gap_is_named_with_what_degrades(
    rsps, tmp_path, config, statement, registration, check_id, status, degrades
):
    ehr(rsps, config, **statement)
    report = check_ehr(ISS, [registration_at(tmp_path, **registration)])
    found = {c.id: c for c in report.checks}
    assert found[check_id].status == status, report.to_text()
    assert degrades in (found[check_id].degrades or ""), found[check_id]
    assert report.status == (
        "not-ready" if status == "fail" or "fail" in statuses(report).values() else "degraded"
    )


def test_capability_statement_discovery_is_a_warning(rsps, tmp_path):
    oauth = {
        "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
        "extension": [
            {"url": "authorize", "valueUri": "https://ehr.test/auth/authorize"},
            {"url": "token", "valueUri": "https://ehr.test/auth/token"},
        ],
    }
    statement = capability_statement()
    statement["rest"][0]["security"] = {"extension": [oauth]}
    rsps.add(responses.GET, WELL_KNOWN, status=404)
    rsps.add(responses.GET, METADATA, json=statement)
    report = check_ehr(ISS, [registration_at(tmp_path)])
    found = {c.id: c for c in report.checks}
    assert (
        found["smart-configuration"].status == "warn" and "oauth-uris" in found["smart-configuration"].summary
    )
    assert found["client-auth:test-ehr"].status == "warn" and report.status == "degraded"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["not-a-url"], "absolute http(s) URL"),
        ([ISS, "--registration", "nope", "--registrations-dir", "."], "--registration nope: no such file"),
    ],
)
def test_unusable_input_exits_2(capsys, tmp_path, args, message):
    if "--registrations-dir" in args:
        args[-1] = str(tmp_path)
    assert main(["check", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_registration_for_another_iss_is_unusable_input(capsys, tmp_path):
    path = write_registration(tmp_path / "regs", iss="https://other.test/fhir")
    assert main(["check", ISS, "--registration", str(path)]) == 2
    assert "is for https://other.test/fhir" in capsys.readouterr().err


def test_whether_reads_go_by_batch_is_said(rsps, tmp_path):
    ehr(rsps, {}, rest=[{"mode": "server", "interaction": [{"code": "transaction"}], "resource": []}])
    report = check_ehr(ISS, [registration_at(tmp_path)])
    found = {c.id: c for c in report.checks}
    assert found["batch"].status == "pass"
    assert found["batch"].summary == "no batch interaction: a review's reads go one request per type"
