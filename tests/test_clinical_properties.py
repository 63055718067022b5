"""Property tests of the assessment (docs/clinical-criteria.md#classification, #reading-the-record).

- any BLOCK red flag means no procedure suggestion;
- entered-in-error or refuted resources, and resources about another patient, never change the decision;
- the order of Bundle entries never changes the JSON;
- the JSON is byte-stable across runs;
- the decision stages alone (``conclude``, what the review page re-evaluates) give the assessment's
  classification and next step, and so does ``concluder`` for a record with resources added.
Inputs are the case-suite records, alone, merged, and with generated noise; hypothesis is derandomized.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smart_app.clinical import assess, load_bundle
from smart_app.clinical.engine import conclude, concluder

CASES_DIR = Path(__file__).resolve().parent / "cases"
CASES: list[dict[str, Any]] = [
    json.loads(p.read_text(encoding="utf-8")) for p in sorted(CASES_DIR.glob("*.json"))
]
# Cases whose patient is the shared test patient "p1" can be merged into one record.
MERGEABLE = [c for c in CASES if c["patient"]["id"] == "p1"]
POOL: list[dict[str, Any]] = [r for c in CASES for r in c["resources"]]
AS_OF = datetime.fromisoformat("2026-11-24T12:00:00+00:00")
VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
STEPS = {
    "red-flags": {"urgent-work-up"},
    "not-consistent": {"work-up"},
    "unlikely": {"none", "work-up"},
    "confirmed": {"focused-exam", "surgical-referral", "therapeutic-injection", "conservative-care"},
    "probable": {"diagnostic-injection"},
    "possible": {"focused-exam"},
    "insufficient-data": {"focused-exam"},
}
PROCEDURE_KINDS = {"diagnostic-injection", "therapeutic-injection", "surgical-referral"}

FAST = settings(
    database=None,
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def bundle_bytes(patient: dict[str, Any], resources: list[dict[str, Any]]) -> bytes:
    entries = [{"resource": patient}, *({"resource": r} for r in resources)]
    return orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries})


def run(patient: dict[str, Any], resources: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = assess(load_bundle(bundle_bytes(patient, resources)), AS_OF).to_json()
    return out


def decision(a: dict[str, Any]) -> dict[str, Any]:
    """The parts of an assessment that noise must never change."""
    return {
        "classification": a["classification"],
        "next_step": a["next_step"],
        "red_flags": sorted(
            (f["id"], f["level"], tuple(sorted(f.get("evidence", [])))) for f in a["red_flags"]
        ),
        "procedure_suggestion": a["procedure_suggestion"],
        "findings": {
            k: (v["status"], tuple(sorted(v.get("evidence", [])))) for k, v in a["findings"].items()
        },
    }


def check_invariants(a: dict[str, Any]) -> None:
    """Spec-level invariants of every assessment."""
    assert a["classification"] in STEPS
    assert a["next_step"] in STEPS[a["classification"]]
    blocks = [f for f in a["red_flags"] if f["level"] == "block"]
    if blocks:
        assert a["classification"] == "red-flags"
        assert a["procedure_suggestion"] is None
    if a["classification"] == "red-flags":
        assert blocks
    suggestion = a["procedure_suggestion"]
    if a["next_step"] in PROCEDURE_KINDS:
        assert suggestion is not None and suggestion["kind"] == a["next_step"]
    else:
        assert suggestion is None


def rename(resource: dict[str, Any], prefix: str, subject: str | None = None) -> dict[str, Any]:
    out = copy.deepcopy(resource)
    out["id"] = f"{prefix}-{out['id']}"[:64]
    if subject is not None:
        out["subject"] = {"reference": f"Patient/{subject}"}
    return out


INACTIVE_STATUS = {
    "Observation": ["registered", "cancelled", "entered-in-error", "unknown"],
    "Procedure": ["not-done", "entered-in-error"],
    "MedicationStatement": ["not-taken", "entered-in-error"],
    "MedicationRequest": ["cancelled", "entered-in-error"],
}
NOISE_KINDS = ["entered-in-error", "refuted", "other-patient", "inactive-status", "future"]


def noise(resource: dict[str, Any], kind: str, n: int) -> dict[str, Any]:
    """A copy that must be ignored (docs/clinical-criteria.md#duplicate-entries).

    Entered-in-error, refuted, a status that never counts, dated after the evaluation time, or about
    another patient.
    """
    prefix = f"noise{n}"
    if kind == "other-patient":
        return rename(resource, prefix, subject="another-patient")
    out = rename(resource, prefix)
    rtype = out["resourceType"]
    if rtype == "Condition":
        if kind == "refuted":
            out["verificationStatus"] = {"coding": [{"system": VER, "code": "refuted"}]}
        else:
            out.pop("clinicalStatus", None)
            out["verificationStatus"] = {"coding": [{"system": VER, "code": "entered-in-error"}]}
    elif kind == "future" and rtype == "Observation":
        for key in ("effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued"):
            out.pop(key, None)
        out["effectiveDateTime"] = "2027-06-01T10:00:00Z"
    elif kind == "inactive-status":
        statuses = INACTIVE_STATUS[rtype]
        out["status"] = statuses[n % len(statuses)]
    else:
        out["status"] = "entered-in-error"
    return out


case_st = st.sampled_from(CASES)
noise_st = st.lists(
    st.tuples(st.sampled_from(POOL), st.sampled_from(NOISE_KINDS)),
    min_size=1,
    max_size=6,
)


def test_invariants_hold_for_every_case() -> None:
    for case in CASES:
        check_invariants(run(case["patient"], case["resources"]))


@FAST
@given(st.lists(st.sampled_from(MERGEABLE), min_size=2, max_size=4, unique_by=lambda c: c["description"]))
def test_block_flag_means_no_suggestion_in_merged_records(cases: list[dict[str, Any]]) -> None:
    resources = [rename(r, f"m{i}") for i, c in enumerate(cases) for r in c["resources"]]
    check_invariants(run(cases[0]["patient"], resources))


@FAST
@given(case_st, noise_st)
def test_ignored_resources_never_change_the_decision(case: dict[str, Any], extra: list[Any]) -> None:
    base = run(case["patient"], case["resources"])
    noisy = [noise(r, kind, n) for n, (r, kind) in enumerate(extra)]
    # Noise resources keep their original subject unless moved to another patient; point the rest at this one.
    pid = case["patient"]["id"]
    for r in noisy:
        if r["subject"]["reference"] != "Patient/another-patient":
            r["subject"] = {"reference": f"Patient/{pid}"}
    with_noise = run(case["patient"], case["resources"] + noisy)
    assert decision(with_noise) == decision(base), case["description"]


@FAST
@given(case_st, st.randoms(use_true_random=False))
def test_entry_order_never_changes_the_json(case: dict[str, Any], rnd: Any) -> None:
    entries = [{"resource": case["patient"]}, *({"resource": r} for r in case["resources"])]
    shuffled = list(entries)
    rnd.shuffle(shuffled)
    first = assess(
        load_bundle(orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries})), AS_OF
    ).to_json()
    second = assess(
        load_bundle(orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": shuffled})), AS_OF
    ).to_json()
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def test_json_stable_across_runs() -> None:
    for case in CASES:
        data = bundle_bytes(case["patient"], case["resources"])
        one = json.dumps(assess(load_bundle(data), AS_OF).to_json(), sort_keys=True)
        two = json.dumps(assess(load_bundle(data), AS_OF).to_json(), sort_keys=True)
        assert one == two, case["description"]


def test_the_decision_stages_alone_conclude_as_the_assessment_does() -> None:
    seen = set()
    for case in CASES:
        record = load_bundle(bundle_bytes(case["patient"], case["resources"]))
        for version in ("1.0.0", "1.1.0"):
            assessment = assess(record, AS_OF, version)
            concluded = conclude(record, AS_OF, version)
            assert concluded == (assessment.classification, assessment.next_step), case["description"]
            seen.add(concluded)
    assert len({classification for classification, _ in seen}) == len(STEPS)  # every classification


@FAST
@given(case_st, st.lists(st.sampled_from(POOL), min_size=1, max_size=4), noise_st, st.booleans())
def test_concluding_with_resources_added_is_concluding_on_the_whole(
    case: dict[str, Any], findings: list[Any], extra: list[Any], unread: bool
) -> None:
    record = load_bundle(bundle_bytes(case["patient"], case["resources"]))
    pid = case["patient"]["id"]
    added = [rename(r, f"added{n}", pid) for n, r in enumerate(findings)]
    added += [noise(r, kind, n) for n, (r, kind) in enumerate(extra)]
    unavailable = {"Condition": "read failed (HTTP 500)"} if unread else {}
    whole = dataclasses.replace(record, resources=[*record.resources, *added], unavailable=unavailable)
    conclude_with = concluder(record, AS_OF)
    assert conclude_with(added, unavailable) == conclude(whole, AS_OF), case["description"]
    # each call starts from the record's own facts: the resources added before are not among them
    alone = dataclasses.replace(record, unavailable=unavailable)
    assert conclude_with([], unavailable) == conclude(alone, AS_OF), case["description"]
