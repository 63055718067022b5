"""EHR registrations (smart_app.smart.registrations) and the shipped launch/registrations files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from smart_support import ISS, SECRET, SECRET_ENV, registration_json, write_registration

from smart_app.smart.errors import RegistrationError
from smart_app.smart.registrations import load_registration_file, load_registrations
from smart_app.smart.scopes import ScopeSet, check_scope

SHIPPED = Path(__file__).resolve().parents[1] / "launch" / "registrations"


def test_shipped_sandbox_registration():
    registry = load_registrations([SHIPPED])
    reg = registry.by_iss("http://127.0.0.1:8001/fhir/")
    assert reg is not None and reg.id == "sandbox"
    assert reg.client_id == "back-mice-sandbox" and reg.client_type == "public"
    assert reg.scope_syntax == "v2" and reg.use_openid
    granted = ScopeSet.parse(reg.scope)
    for resource_type in ("Patient", "Observation", "Condition", "Procedure", "MedicationStatement"):
        assert granted.can_read(resource_type)
    written = ("Observation", "ClinicalImpression", "ServiceRequest", "DetectedIssue", "Provenance")
    for resource_type in written:
        assert granted.can_write(resource_type) and granted.can_read(resource_type)
    assert all(check_scope(s, "v2") is None for s in reg.scopes)
    assert reg.frame_ancestors == ("http://127.0.0.1:8001",)
    assert (reg.writeback.mode, reg.writeback.assessment_as) == ("transaction", "ClinicalImpression")
    assert registry.frame_ancestors() == ["http://127.0.0.1:8001"]


def test_readme_documents_every_field():
    readme = (SHIPPED / "README.md").read_text(encoding="utf-8")
    for name in (
        "id",
        "name",
        "iss",
        "client_id",
        "client_type",
        "client_secret_env",
        "signing_alg",
        "scopes",
        "scope_syntax",
        "frame_ancestors",
        "writeback.mode",
        "writeback.assessment_as",
    ):
        assert f"`{name}`" in readme


def test_loads_extra_directories_and_looks_up(tmp_path):
    write_registration(tmp_path / "a", "one", id=None)
    write_registration(
        tmp_path / "b",
        "two",
        id=None,
        iss="https://other.test/r4/",
        name="Other",
        frame_ancestors=["https://other.test", "https://ehr.test"],
    )
    registry = load_registrations([tmp_path / "a", tmp_path / "b"])
    assert [r.id for r in registry.all()] == ["two", "one"]  # sorted by name: "Other" < "Test EHR"
    assert registry.by_iss(ISS + "/").id == "one"  # type: ignore[union-attr]
    assert registry.by_iss("https://other.test/r4").id == "two"  # type: ignore[union-attr]
    assert registry.by_iss("https://ehr.test/fhir/extra") is None
    assert registry.by_iss("https://EHR.test/fhir") is None
    assert registry.by_id("two").iss == "https://other.test/r4"  # type: ignore[union-attr]
    assert registry.frame_ancestors() == ["https://ehr.test", "https://other.test"]


def test_id_defaults_to_file_name(tmp_path):
    path = write_registration(tmp_path, "hospital-x", id=None)
    assert load_registration_file(path).id == "hospital-x"


def test_secret_read_from_environment_at_use_time(tmp_path, monkeypatch):
    path = write_registration(tmp_path, client_type="confidential-symmetric", client_secret_env=SECRET_ENV)
    reg = load_registration_file(path)
    monkeypatch.delenv(SECRET_ENV, raising=False)
    with pytest.raises(RegistrationError, match=SECRET_ENV):
        reg.client_secret()
    monkeypatch.setenv(SECRET_ENV, SECRET)
    assert reg.client_secret() == SECRET
    assert SECRET not in repr(reg)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": None}, "missing required field 'name'"),
        ({"iss": "ehr.test/fhir"}, "'iss' must be an absolute http(s) URL"),
        ({"client_type": "secret"}, "'client_type' must be one of"),
        ({"client_secret": "x"}, "must not contain client_secret"),
        ({"client_type": "confidential-symmetric"}, "needs 'client_secret_env'"),
        ({"client_secret_env": "X"}, "only applies to confidential-symmetric"),
        ({"scopes": "launch patient/Observation.sr"}, "not a valid SMART v2 scope"),
        ({"scopes": "patient/Observation.read"}, "uses SMART v1 syntax"),
        ({"scopes": ["fhirUser"]}, "fhirUser needs openid"),
        ({"scopes": []}, "'scopes' is empty"),
        ({"scope_syntax": "v3"}, "'scope_syntax' must be"),
        ({"frame_ancestors": ["https://ehr.test/path"]}, "is not an origin"),
        ({"writeback": {"mode": "batch"}}, "'writeback.mode' must be one of"),
        ({"writeback": {"assessment_as": "Observation"}}, "'writeback.assessment_as' must be one of"),
        ({"signing_alg": "HS256", "client_type": "confidential-asymmetric"}, "'signing_alg' must be one of"),
        ({"clientid": "typo"}, "unknown field(s) clientid"),
    ],
)
def test_invalid_registration_names_file_and_field(tmp_path, overrides, message):
    path = write_registration(tmp_path, "broken", **overrides)
    with pytest.raises(RegistrationError) as info:
        load_registrations([tmp_path])
    assert str(path) in info.value.description
    assert message in info.value.description


def test_v1_registration_and_comment_keys(tmp_path):
    path = write_registration(
        tmp_path, scope_syntax="v1", scopes="launch patient/Observation.read", _comment="ignored"
    )
    reg = load_registration_file(path)
    assert reg.scope_syntax == "v1" and not reg.use_openid


def test_not_json_and_duplicates(tmp_path):
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(RegistrationError, match="bad.json: not valid JSON"):
        load_registrations([tmp_path])
    (tmp_path / "bad.json").write_text(json.dumps([1]), encoding="utf-8")
    with pytest.raises(RegistrationError, match="must contain a JSON object"):
        load_registrations([tmp_path])
    (tmp_path / "bad.json").unlink()
    write_registration(tmp_path, "one")
    write_registration(tmp_path, "two", id="two")
    with pytest.raises(RegistrationError, match="Duplicate iss"):
        load_registrations([tmp_path])
    with pytest.raises(RegistrationError, match="does not exist"):
        load_registrations([tmp_path / "missing"])


def test_registration_json_helper_roundtrip(tmp_path):
    data = registration_json(client_type="confidential-asymmetric", signing_alg="ES384")
    (tmp_path / "x.json").write_text(json.dumps(data), encoding="utf-8")
    assert load_registration_file(tmp_path / "x.json").signing_alg == "ES384"
