"""EHR registrations (smart_app.smart.registrations) and the shipped launch/registrations files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from smart_support import ISS, SECRET, SECRET_ENV, registration_json, write_registration

from smart_app.smart.errors import RegistrationError, UnknownIssuer
from smart_app.smart.registrations import AmbiguousRegistration, load_registration_file, load_registrations
from smart_app.smart.scopes import ScopeSet, check_scope

SHIPPED = Path(__file__).resolve().parents[1] / "launch" / "registrations"


def test_shipped_sandbox_registrations_cover_its_three_clients_on_one_iss():
    registry = load_registrations([SHIPPED])
    regs = registry.for_iss("http://127.0.0.1:8001/fhir/")
    assert [(r.id, r.client_type) for r in regs] == [
        ("sandbox", "public"),
        ("sandbox-asymmetric", "confidential-asymmetric"),
        ("sandbox-symmetric", "confidential-symmetric"),
    ]
    clients = {
        c["client_id"]: c for c in json.loads((SHIPPED.parent / "sandbox" / "clients.json").read_text())
    }
    for reg in regs:
        client = clients[reg.client_id]
        assert client["client_type"] == reg.client_type
        assert "http://localhost:8000/callback" in client["redirect_uris"]
        if reg.client_type == "confidential-symmetric":
            assert reg.client_secret_env == client["client_secret_env"]
        assert reg.scopes == regs[0].scopes and reg.frame_ancestors == regs[0].frame_ancestors
    assert registry.by_iss("http://127.0.0.1:8001/fhir") is None  # several: the launch must say which
    reg = registry.choose("http://127.0.0.1:8001/fhir", registration_id="sandbox")
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
        "authorization_endpoint",
        "token_endpoint",
        "auth_origins",
        "patient_facing",
    ):
        assert f"`{name}`" in readme
    for platform in ("SMART launcher", "Epic", "Oracle Health", "HAPI"):
        assert f"### {platform}" in readme


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
        ({"id": "has/slash"}, "field 'id' must be letters"),
        ({"token_endpoint": "/relative"}, "field 'token_endpoint' must be an absolute"),
        ({"authorization_endpoint": "http://ehr.test/authorize"}, "must use https, as the iss does"),
        ({"auth_origins": ["https://auth.test/path"]}, "is not an origin"),
        ({"auth_origins": "https://auth.test"}, "'auth_origins' must be a list"),
        ({"patient_facing": "yes"}, "'patient_facing' must be true or false"),
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
    with pytest.raises(RegistrationError, match="Duplicate client_id 'test-client' for iss"):
        load_registrations([tmp_path])
    write_registration(tmp_path, "two", client_id="another-client")  # the same default id, test-ehr
    with pytest.raises(RegistrationError, match="Duplicate registration id 'test-ehr'"):
        load_registrations([tmp_path])
    with pytest.raises(RegistrationError, match="does not exist"):
        load_registrations([tmp_path / "missing"])


def test_registration_json_helper_roundtrip(tmp_path):
    data = registration_json(client_type="confidential-asymmetric", signing_alg="ES384")
    (tmp_path / "x.json").write_text(json.dumps(data), encoding="utf-8")
    assert load_registration_file(tmp_path / "x.json").signing_alg == "ES384"


def test_several_registrations_for_one_iss_are_chosen_by_id_or_client_id(tmp_path):
    write_registration(tmp_path, "ehr-public", id=None)
    write_registration(
        tmp_path,
        "ehr-symmetric",
        id="ehr-symmetric",
        client_id="sym",
        client_type="confidential-symmetric",
        client_secret_env=SECRET_ENV,
    )
    write_registration(
        tmp_path,
        "ehr-asymmetric",
        id="ehr-asymmetric",
        client_id="asym",
        client_type="confidential-asymmetric",
    )
    write_registration(tmp_path, "other", id="other", iss="https://other.test/r4", client_id="sym")
    registry = load_registrations([tmp_path])
    assert [r.id for r in registry.for_iss(ISS + "/")] == ["ehr-asymmetric", "ehr-public", "ehr-symmetric"]
    assert registry.choose(ISS, registration_id="ehr-symmetric").client_id == "sym"
    assert registry.choose(None, registration_id="ehr-symmetric").client_id == "sym"  # standalone
    assert registry.choose(ISS, client_id="asym").id == "ehr-asymmetric"
    assert registry.choose("https://other.test/r4", client_id="sym").id == "other"
    assert registry.choose("https://other.test/r4").id == "other"
    with pytest.raises(AmbiguousRegistration) as info:
        registry.choose(ISS)
    assert [r.id for r in info.value.candidates] == ["ehr-asymmetric", "ehr-public", "ehr-symmetric"]
    assert "/launch/<registration>" in info.value.description and info.value.status == 400
    for kwargs, message in [
        ({"registration_id": "ehr-public", "iss": "https://other.test/r4"}, "another FHIR server"),
        ({"registration_id": "nope", "iss": ISS}, "names no registration"),
        ({"registration_id": "ehr-public", "iss": ISS, "client_id": "sym"}, "another client_id"),
        ({"iss": ISS, "client_id": "unknown"}, "not registered"),
        ({"iss": "https://evil.test/fhir"}, "not registered"),
    ]:
        iss = kwargs.pop("iss")
        with pytest.raises(UnknownIssuer, match=message):
            registry.choose(iss, **kwargs)


def test_pins_and_patient_facing_are_read(tmp_path):
    path = write_registration(
        tmp_path,
        token_endpoint="https://auth.test/token",
        authorization_endpoint="https://auth.test/authorize",
        auth_origins=["https://auth.test/", "https://keys.test:8443"],
        patient_facing=True,
    )
    reg = load_registration_file(path)
    assert (reg.token_endpoint, reg.authorization_endpoint) == (
        "https://auth.test/token",
        "https://auth.test/authorize",
    )
    assert reg.auth_origins == ("https://auth.test", "https://keys.test:8443") and reg.patient_facing


def test_every_example_in_the_readme_is_a_valid_registration():
    import re

    from smart_app.smart.registrations import parse_registration

    readme = (SHIPPED / "README.md").read_text(encoding="utf-8")
    examples = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", readme, re.S)]
    assert len(examples) >= 5
    ids = [parse_registration(example).id for example in examples]
    assert {"smart-launcher-ehr", "epic-sandbox", "oracle-health-sandbox", "hapi-local"} <= set(ids)
