"""Property tests over generated records that are valid but unusual (docs/clinical-criteria.md
#reading-decisions).

Each record plants one piece of danger that counts by the clinical contract: a BLOCK red flag (a Condition
or an Observation of a state- or history-type flag) or an objective neurological deficit. Around it the
generator varies what real EHRs send: abatement with and without clinicalStatus, malformed and partial
dates, offsets on both sides of the evaluation time (whose own offset varies too), versioned, absolute
and fullUrl subjects, the code in a component or behind a second coding with a Coding.version, ICD-10-CM
spelt in lower case or without its dot, amended, corrected and (1.1.0, danger only) preliminary statuses,
and unusual neighbours. Invariants, under both releases:

- no procedure suggestion while a BLOCK flag or NEURO_DEFICIT is present;
- the planted flag or deficit is always found, whatever else in its resource is malformed;
- every red flag names evidence of the launched patient that carries one of the flag's codes;
- the JSON is deterministic (the same bytes again, and in any entry order).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smart_app.clinical import assess, default_registry, load_bundle

SCT = "http://snomed.info/sct"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
APP = "https://smart-app.example/fhir/CodeSystem/back-mice-finding"
CLIN = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
V2_0136 = "http://terminology.hl7.org/CodeSystem/v2-0136"
PRESENT = {"system": SCT, "code": "52101004", "display": "Present"}
AS_OF = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
PID = "p1"
FULL_URL = "urn:uuid:0c9a7d2e-51f4-4e8b-9a36-7f1e2b4c8d90"
VERSIONS = ("1.0.0", "1.1.0")
PROCEDURES = {"diagnostic-injection", "therapeutic-injection", "surgical-referral"}

#: Planted danger: (kind, flag id or "NEURO_DEFICIT", type, system, code) — codes of the released ValueSets.
FLAG_CODES = [
    ("cauda-equina", "state", ICD, "G83.4"),
    ("cauda-equina", "state", SCT, "267064002"),
    ("spinal-infection", "state", ICD, "R50.9"),
    ("spinal-infection", "state", ICD, "M46.26"),
    ("spinal-infection", "state", SCT, "386661006"),
    ("malignancy", "history", ICD, "Z85.3"),
    ("malignancy", "history", ICD, "C79.51"),
    ("malignancy", "history", SCT, "94222008"),
    ("fracture", "history", ICD, "S32.009A"),
    ("fracture", "history", SCT, "125608002"),
]
DEFICIT_CODES = [(SCT, "26544005"), (SCT, "397974008"), (ICD, "M62.81"), (ICD, "M21.372"), (ICD, "R29.2")]
MALFORMED = ["2019-02-30", "unknown", "2025-13-01", "2026-11-31T10:00:00Z", "", "20261120"]
SUBJECTS = [
    f"Patient/{PID}",
    f"Patient/{PID}/_history/3",
    f"https://ehr.example/fhir/Patient/{PID}",
    f"https://ehr.example/fhir/Patient/{PID}/_history/12",
    FULL_URL,
]
OFFSETS = [timedelta(hours=h, minutes=m) for h, m in ((14, 0), (5, 30), (1, 0), (0, 0), (-3, 0), (-12, 0))]

FAST = settings(
    database=None,
    max_examples=250,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- generated elements -------------------------------------------------------------------------------
def spelt(system: str, code: str, variant: int) -> str:
    """ICD-10-CM as EHRs write it: as listed, without the dot, or in lower case."""
    if system != ICD:
        return code
    return [code, code.replace(".", ""), code.lower(), code.lower().replace(".", "")][variant % 4]


@st.composite
def concept(draw: st.DrawFn, system: str, code: str) -> dict[str, Any]:
    """The planted code, maybe after a coding of another system, maybe with a Coding.version."""
    coding: dict[str, Any] = {"system": system, "code": spelt(system, code, draw(st.integers(0, 3)))}
    if draw(st.booleans()):
        coding["version"] = draw(
            st.sampled_from(["2026", "http://snomed.info/sct/900000000000207008/version/2025"])
        )
    codings = [coding]
    if draw(st.booleans()):
        codings.insert(0, {"system": "https://ehr.example/fhir/sid/local-problem", "code": "LP-771"})
    out: dict[str, Any] = {"coding": codings}
    if draw(st.booleans()):
        out["text"] = "as entered by the clinician"
    return out


def instant(moment: datetime, offset: timedelta) -> str:
    return moment.astimezone(timezone(offset)).isoformat()


@st.composite
def recent(draw: st.DrawFn, days: int) -> str:
    """A valid date within ``days`` before the evaluation time, never after it: an instant with an
    offset on either side of UTC, or a date only (possibly the evaluation day in the evaluation time's
    own zone, which is never future)."""
    back = timedelta(minutes=draw(st.integers(0, (days - 1) * 24 * 60)))
    moment = AS_OF - back
    if draw(st.booleans()):
        return instant(moment, draw(st.sampled_from(OFFSETS)))
    return moment.astimezone(timezone(draw(st.sampled_from(OFFSETS)))).date().isoformat()


@st.composite
def past(draw: st.DrawFn) -> str:
    """Any valid date before the evaluation time, of any precision."""
    moment = AS_OF - timedelta(days=draw(st.integers(1, 20 * 365)))
    precision = draw(st.sampled_from(["year", "month", "day", "instant"]))
    if precision == "year":
        return str(moment.year - 1)
    if precision == "month":
        return f"{moment.year - 1}-{moment.month:02d}"
    if precision == "day":
        return moment.date().isoformat()
    return instant(moment, draw(st.sampled_from(OFFSETS)))


def status_concept(system: str, code: str | None) -> dict[str, Any] | None:
    return None if code is None else {"coding": [{"system": system, "code": code}]}


@st.composite
def abatement(draw: st.DrawFn) -> dict[str, Any]:
    """Any abatement[x], or none: it must never remove a flag or a deficit."""
    kind = draw(st.sampled_from(["none", "dateTime", "period", "string", "future", "malformed", "age"]))
    if kind == "dateTime":
        return {"abatementDateTime": draw(past())}
    if kind == "period":
        return {"abatementPeriod": {"start": draw(past()), "end": draw(st.sampled_from(MALFORMED))}}
    if kind == "string":
        return {"abatementString": "resolved"}
    if kind == "future":
        return {"abatementDateTime": "2027-03-01"}
    if kind == "malformed":
        return {"abatementDateTime": draw(st.sampled_from(MALFORMED))}
    if kind == "age":
        return {
            "abatementAge": {"value": 40, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"}
        }
    return {}


def condition(rid: str, code: dict[str, Any], subject: str, **elements: Any) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Condition",
        "id": rid,
        "code": code,
        "subject": {"reference": subject},
    }
    res.update({k: v for k, v in elements.items() if v is not None})
    return res


@st.composite
def planted_condition(draw: st.DrawFn, system: str, code: str, *, kind: str, subject: str) -> dict[str, Any]:
    """A Condition that counts: a history-type flag whatever its status and dates; a deficit when current
    (any dates); a state-type flag when current, or without clinicalStatus with a recent, missing or
    malformed onset/recordedDate. Any abatement, any verification that is not dropped."""
    clinical = draw(
        st.sampled_from(
            [None, "active", "recurrence", "relapse", "inactive", "remission", "resolved"]
            if kind == "history"
            else [None, "active", "recurrence", "relapse"]
        )
    )
    verification = draw(st.sampled_from([None, "confirmed", "unconfirmed", "provisional", "differential"]))
    if kind != "state" or clinical is not None:
        onset = draw(st.sampled_from([None, *MALFORMED]) | past())
        recorded = draw(st.sampled_from([None, *MALFORMED]) | past())
    else:  # its currency is decided by recent dates, or cannot be decided at all
        onset = draw(st.sampled_from([None, *MALFORMED]) | recent(30))
        recorded = (
            draw(st.sampled_from([None, *MALFORMED]) | recent(30)) if onset in (None, *MALFORMED) else None
        )
    return condition(
        "c-planted",
        draw(concept(system, code)),
        subject,
        clinicalStatus=status_concept(CLIN, clinical),
        verificationStatus=status_concept(VER, verification),
        onsetDateTime=onset,
        recordedDate=recorded,
        **draw(abatement()),
    )


@st.composite
def planted_observation(
    draw: st.DrawFn, system: str, code: str, *, days: int | None, preliminary: bool, subject: str
) -> dict[str, Any]:
    """An Observation saying present that counts: inside ``days`` (None: any age), or with no usable
    time at all; in the Observation itself or in a component."""
    statuses = ["final", "amended", "corrected", *(["preliminary"] if preliminary else [])]
    value = draw(
        st.sampled_from(
            [
                {"valueCodeableConcept": {"coding": [PRESENT]}},
                {"valueCodeableConcept": {"coding": [{"system": V2_0136, "code": "Y"}]}},
                {"valueBoolean": True},
                {},
            ]
        )
    )
    res: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "o-planted",
        "status": draw(st.sampled_from(statuses)),
    }
    coded = draw(concept(system, code))
    if draw(st.booleans()):
        res["code"] = coded
        res.update(value)
    else:
        res["code"] = {
            "coding": [{"system": "http://loinc.org", "code": "29545-1"}],
            "text": "Physical findings",
        }
        res["component"] = [{"code": {"text": "unreadable"}, "valueString": "n/a"}, {"code": coded, **value}]
    res["subject"] = {"reference": subject}
    when = draw(st.sampled_from(["valid", "missing", "malformed"]))
    if when == "valid":
        res["effectiveDateTime"] = draw(recent(days) if days else past())
        if draw(st.booleans()):
            res["issued"] = draw(st.sampled_from(MALFORMED))
    elif when == "malformed":
        res["effectiveDateTime"] = draw(st.sampled_from(MALFORMED))
        if draw(st.booleans()):
            res["effectivePeriod"] = {"start": draw(st.sampled_from(MALFORMED))}
    return res


def neighbours(version: str) -> list[dict[str, Any]]:
    """Unusual but harmless records around the planted one: a probable back mouse whose LBP carries an
    abatement with an active status, a nodule dated by month, a repro finding amended."""
    return [
        condition(
            "c-lbp",
            {"coding": [{"system": ICD, "code": "m5450"}]},
            f"Patient/{PID}/_history/1",
            clinicalStatus=status_concept(CLIN, "active"),
            abatementString="improving",
        ),
        {
            "resourceType": "Observation",
            "id": "o-nodule",
            "status": "corrected",
            "code": {"coding": [{"system": SCT, "code": "95325000"}]},
            "subject": {"reference": f"Patient/{PID}"},
            "effectiveDateTime": "2026-11",
            "issued": "2026-11-40",
            "valueBoolean": True,
            "bodySite": {"text": "right PSIS"},
        },
        {
            "resourceType": "Observation",
            "id": "o-repro",
            "status": "amended",
            "code": {"coding": [{"system": APP, "code": "nodule-pain-reproduced"}]},
            "subject": {"reference": f"https://ehr.example/fhir/Patient/{PID}"},
            "effectivePeriod": {"start": "2026-11-20T08:00:00+09:00", "end": "garbage"},
        },
    ]


@st.composite
def planted_record(draw: st.DrawFn) -> dict[str, Any]:
    version = draw(st.sampled_from(VERSIONS))
    subject = draw(st.sampled_from(SUBJECTS))
    if draw(st.booleans()):
        flag, kind, system, code = draw(st.sampled_from(FLAG_CODES))
        history = kind == "history"
        if draw(st.booleans()):
            planted = draw(planted_condition(system, code, kind=kind, subject=subject))
        else:
            planted = draw(
                planted_observation(
                    system,
                    code,
                    days=None if history else 30,
                    preliminary=version == "1.1.0",
                    subject=subject,
                )
            )
        danger = flag
    else:
        system, code = draw(st.sampled_from(DEFICIT_CODES))
        if draw(st.booleans()):
            planted = draw(planted_condition(system, code, kind="deficit", subject=subject))
        else:
            planted = draw(
                planted_observation(system, code, days=90, preliminary=version == "1.1.0", subject=subject)
            )
        danger = "NEURO_DEFICIT"
    as_of_offset = draw(st.sampled_from(OFFSETS))
    return {
        "version": version,
        "danger": danger,
        "planted": planted,
        "resources": [*(neighbours(version) if draw(st.booleans()) else []), planted],
        "as_of": AS_OF.astimezone(timezone(as_of_offset)),
    }


# -- running and checking -----------------------------------------------------------------------------
def bundle(resources: list[dict[str, Any]], order: list[int] | None = None) -> bytes:
    patient = {
        "fullUrl": FULL_URL,
        "resource": {"resourceType": "Patient", "id": PID, "birthDate": "1980-05-01"},
    }
    entries = [patient, *({"resource": r} for r in resources)]
    if order is not None:
        entries = [entries[i] for i in order]
    return orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries})


def run(case: dict[str, Any], order: list[int] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = assess(
        load_bundle(bundle(case["resources"], order)), case["as_of"], case["version"]
    ).to_json()
    return out


def names_patient(reference: object) -> bool:
    """The launched patient, written any of the ways docs/clinical-criteria.md#subjects allows."""
    return isinstance(reference, str) and (
        reference == FULL_URL
        or re.fullmatch(rf"(https?://\S+/)?Patient/{PID}(/_history/[A-Za-z0-9.-]+)?", reference) is not None
    )


def codes_of(resource: dict[str, Any]) -> list[tuple[str, str]]:
    concepts = [resource.get("code"), resource.get("valueCodeableConcept")]
    concepts += [c.get("code") for c in resource.get("component") or [] if isinstance(c, dict)]
    return [
        (c["system"], c["code"])
        for cc in concepts
        if isinstance(cc, dict)
        for c in cc.get("coding") or []
        if isinstance(c, dict) and isinstance(c.get("system"), str) and isinstance(c.get("code"), str)
    ]


def check_invariants(case: dict[str, Any], out: dict[str, Any]) -> None:
    blocked = any(f["level"] == "block" for f in out["red_flags"])
    deficit = out["findings"]["NEURO_DEFICIT"]["status"] == "present"
    if blocked or deficit:
        assert out["procedure_suggestion"] is None
        assert out["next_step"] not in PROCEDURES
    # the planted danger is found
    if case["danger"] == "NEURO_DEFICIT":
        assert deficit, out["findings"]["NEURO_DEFICIT"]
        assert "Observation/o-planted" in out["findings"]["NEURO_DEFICIT"]["evidence"] or any(
            r == "Condition/c-planted" for r in out["findings"]["NEURO_DEFICIT"]["evidence"]
        )
    else:
        flags = {f["id"]: f for f in out["red_flags"]}
        assert case["danger"] in flags, (out["red_flags"], out["ignored"])
    # every red flag names evidence of the launched patient carrying one of its codes
    criteria = default_registry().get(case["version"])
    by_ref = {f"{r['resourceType']}/{r['id']}": r for r in case["resources"]}
    specs = {s["id"]: s for s in criteria.data["red_flags"]}
    for flag in out["red_flags"]:
        assert flag["evidence"], flag
        spec = specs[flag["id"]]
        for ref in flag["evidence"]:
            if ref == f"Patient/{PID}":
                assert spec.get("rule") == "age_new_onset"
                continue
            resource = by_ref[ref]
            assert names_patient(resource["subject"]["reference"]), (ref, resource["subject"])
            url = spec.get("valueset") or next(
                f["conditions"]["valueset"] for f in criteria.findings if f["id"] == spec.get("finding")
            )
            assert any(criteria.terminology.contains(url, s, c) for s, c in codes_of(resource)), (flag, ref)
    # a malformed element costs nothing but is reported with its path
    for item in out["ignored"]:
        assert item["reason"]
        if "path" in item:
            assert item["reference"] in by_ref or item["reference"] == f"Patient/{PID}"


@FAST
@given(planted_record())
def test_planted_danger_is_found_and_withholds_every_procedure(case: dict[str, Any]) -> None:
    check_invariants(case, run(case))


@FAST
@given(planted_record(), st.randoms(use_true_random=False))
def test_the_json_is_deterministic(case: dict[str, Any], rnd: Any) -> None:
    first = json.dumps(run(case), sort_keys=True)
    assert json.dumps(run(case), sort_keys=True) == first
    order = list(range(len(case["resources"]) + 1))
    rnd.shuffle(order)
    assert json.dumps(run(case, order), sort_keys=True) == first


@FAST
@given(planted_record())
def test_a_file_accepts_any_base_and_a_server_record_only_its_own(case: dict[str, Any]) -> None:
    """docs/clinical-criteria.md#subjects: read from a server, an absolute subject on another base is
    another patient's; on the server's own base (any spelling of scheme and host case) it is this one."""
    import dataclasses

    record = load_bundle(bundle(case["resources"]))
    subject = case["planted"]["subject"]["reference"]
    own = assess(
        dataclasses.replace(record, fhir_base="HTTPS://EHR.example/fhir/"), case["as_of"], case["version"]
    ).to_json()
    other = assess(
        dataclasses.replace(record, fhir_base="https://other.example/fhir"), case["as_of"], case["version"]
    ).to_json()
    check_invariants(case, own)
    ref = f"{case['planted']['resourceType']}/{case['planted']['id']}"
    if subject.startswith("https://"):
        assert {"reference": ref, "reason": "subject is not the launched patient"} in other["ignored"]
    else:
        check_invariants(case, other)
