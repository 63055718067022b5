"""SMART scopes, v1 and v2 (smart_app.smart.scopes)."""

from __future__ import annotations

import pytest

from smart_app.smart.scopes import ScopeSet, check_scope, parse_resource_scope


def test_v2_permissions():
    s = ScopeSet.parse("launch openid fhirUser patient/Observation.rs patient/Patient.r patient/Provenance.c")
    assert s.can_read("Observation") and s.can_search("Observation")
    assert s.can_read("Patient") and not s.can_search("Patient")
    assert s.can_write("Provenance") and not s.can_read("Provenance")
    assert not s.can_write("Observation")
    assert not s.can_read("Condition")
    assert s.has("openid") and "fhirUser" in s


def test_v1_permissions_map_to_v2_letters():
    s = ScopeSet.parse("patient/Observation.read patient/ClinicalImpression.write user/Condition.*")
    assert s.can_read("Observation") and s.can_search("Observation") and not s.can_write("Observation")
    assert s.can_write("ClinicalImpression") and not s.can_read("ClinicalImpression")
    assert s.can_read("Condition") and s.can_write("Condition")
    assert parse_resource_scope("patient/Observation.read").syntax == "v1"  # type: ignore[union-attr]


def test_wildcards_and_contexts():
    s = ScopeSet.parse("patient/*.rs user/*.c")
    assert s.can_read("Procedure") and s.can_search("MedicationRequest") and s.can_write("ServiceRequest")
    assert not ScopeSet.parse("patient/*.rs").permits("Observation", "r", context="user")


def test_granular_v2_scope_with_query():
    parsed = parse_resource_scope("patient/Observation.rs?category=vital-signs")
    assert parsed is not None and parsed.query == "category=vital-signs"
    s = ScopeSet([parsed.text])
    assert s.can_search("Observation")
    assert s.missing_for(["patient/Observation.rs"]) == ["patient/Observation.rs"]


@pytest.mark.parametrize(
    "text",
    [
        "patient/Observation.sr",
        "patient/Observation.rr",
        "patient/Observation.x",
        "patient/observation.r",
        "patient/Observation.",
        "openid",
        "launch/patient",
        "clinic/Observation.r",
    ],
)
def test_not_resource_scopes(text):
    assert parse_resource_scope(text) is None


def test_check_scope_for_registrations():
    assert check_scope("patient/Observation.rs", "v2") is None
    assert check_scope("launch/patient", "v2") is None
    assert "cruds" in (check_scope("patient/Observation.sr", "v2") or "")
    assert "v1 syntax" in (check_scope("patient/Observation.read", "v2") or "")
    assert "v2 syntax" in (check_scope("patient/Observation.rs", "v1") or "")
    assert check_scope('bad"scope', "v2") is not None


def test_missing_for_reports_partial_grants():
    granted = ScopeSet.parse("openid patient/Observation.rs patient/Patient.r")
    wanted = [
        "launch",
        "launch/patient",
        "openid",
        "fhirUser",
        "patient/Observation.crs",
        "patient/Patient.r",
        "patient/Condition.rs",
        "offline_access",
    ]
    assert granted.missing_for(wanted) == [
        "fhirUser",
        "patient/Observation.c",
        "patient/Condition.rs",
        "offline_access",
    ]
    sentences = granted.describe_missing(wanted)
    assert (
        "The EHR did not allow the app to read or search Condition records (patient/Condition.rs)."
        in sentences
    )
    assert any("create Observation records" in s for s in sentences)
    assert any("renew" in s for s in sentences)
    assert (
        ScopeSet.parse("user/*.cruds openid fhirUser").missing_for(["patient/Condition.rs", "fhirUser"]) == []
    )


def test_scopeset_str_dedup_and_equality():
    s = ScopeSet.parse("  a b  a ")
    assert str(s) == "a b"
    assert s == ScopeSet.parse("b a")
    assert ScopeSet.parse(None).scopes == ()
