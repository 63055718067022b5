"""Sandbox scope handling (SMART App Launch 2.x "Scopes and Launch Context") and store helpers."""

from __future__ import annotations

import pytest

from launch.sandbox.scopes import Permissions, grant, parse_clinical
from launch.sandbox.store import Store, local_reference, token_matches


@pytest.mark.parametrize(
    ("scope", "letters"),
    [
        ("patient/Observation.rs", "rs"),
        ("user/*.cruds", "cruds"),
        ("patient/Observation.read", "rs"),
        ("patient/*.write", "cud"),
        ("user/Patient.*", "cruds"),
        ("system/Condition.c", "c"),
    ],
)
def test_parse_clinical(scope, letters):
    parsed = parse_clinical(scope)
    assert parsed is not None and parsed.permissions == frozenset(letters)


@pytest.mark.parametrize(
    "scope",
    [
        "patient/Observation.sr",
        "patient/Observation.rr",
        "launch",
        "openid",
        "patient/Observation.rs?category=laboratory",
        "patient/Observation.x",
    ],
)
def test_not_clinical_or_invalid(scope):
    assert parse_clinical(scope) is None


def test_grant_is_requested_intersect_allowed():
    allowed = ["launch", "openid", "patient/*.rs", "user/Observation.cruds"]
    requested = [
        "launch",
        "fhirUser",
        "patient/Observation.rs",
        "patient/Observation.c",
        "user/Observation.r",
        "patient/Condition.read",
        "user/Condition.rs",
        "made-up",
        "launch",
    ]
    assert grant(requested, allowed) == [
        "launch",
        "patient/Observation.rs",
        "user/Observation.r",
        "patient/Condition.read",
    ]


def test_permissions_contexts():
    perms = Permissions(["patient/Observation.rs", "user/*.r", "patient/Condition.write"])
    assert perms.contexts_for("Observation", "search") == {"patient"}
    assert perms.contexts_for("Observation", "read") == {"patient", "user"}
    assert perms.contexts_for("Condition", "create") == {"patient"}
    assert perms.contexts_for("Condition", "search") == set()


@pytest.mark.parametrize(
    ("system", "code", "token", "expected"),
    [
        ("http://loinc.org", "1", "1", True),
        ("http://loinc.org", "1", "http://loinc.org|1", True),
        ("http://loinc.org", "1", "http://loinc.org|", True),
        ("http://loinc.org", "1", "|1", False),
        (None, "1", "|1", True),
        ("http://loinc.org", "1", "http://snomed.info/sct|1", False),
    ],
)
def test_token_matches(system, code, token, expected):
    assert token_matches(system, code, token) is expected


def test_local_reference():
    assert local_reference("http://x/fhir/Patient/1/_history/2") == "Patient/1"
    assert local_reference("Patient/1") == "Patient/1"


def test_load_bundle_rejects_duplicates_and_non_bundles():
    store = Store()
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": {"resourceType": "Patient", "id": "a"}}],
    }
    assert store.load_bundle(bundle, "one") == 1
    with pytest.raises(ValueError, match="duplicate"):
        store.load_bundle(bundle, "two")
    with pytest.raises(ValueError, match="not a FHIR Bundle"):
        store.load_bundle({"resourceType": "Patient"}, "three")
