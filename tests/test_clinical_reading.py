"""Reading rules over plain FHIR JSON (docs/clinical-criteria.md#reading-the-record)."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from clinical_builders import AS_OF, bundle_bytes, lbp, nodule, probable, repro

from smart_app import fhirjson as fj
from smart_app.clinical import PatientRecord, UnusableInput, load_bundle
from smart_app.clinical.criteria import default_registry
from smart_app.clinical.facts import Extractor
from smart_app.clinical.record import NotStreamable, iter_bundle_entries


# -- time ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,start,end",
    [
        ("2026-11-20", datetime(2026, 11, 20, tzinfo=UTC), datetime(2026, 11, 21, tzinfo=UTC)),
        ("2026-11", datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)),
        ("2026-12", datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
        ("2026", datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
        ("2026-11-20T10:00:00+02:00", datetime(2026, 11, 20, 8, tzinfo=UTC), None),
        ("2026-11-20T10:00:00Z", datetime(2026, 11, 20, 10, tzinfo=UTC), None),
        ("2026-11-20T10:00:00.123Z", datetime(2026, 11, 20, 10, 0, 0, 123000, tzinfo=UTC), None),
        ("2026-11-20T10:00:00", datetime(2026, 11, 20, 10, tzinfo=UTC), None),
        ("9999-12-31", datetime(9999, 12, 31, tzinfo=UTC), None),
    ],
)
def test_parse_time(text: str, start: datetime, end: datetime | None) -> None:
    when = fj.parse_time(text)
    assert when is not None and when.start == start and when.text == text
    if end is not None:
        assert when.end == end


@pytest.mark.parametrize(
    "bad", ["", "yesterday", "2026-02-30", "2026-13", 20261120, "2026-11-20T25:00:00Z", []]
)
def test_parse_time_rejects(bad: object) -> None:
    with pytest.raises(fj.BadTime):
        fj.parse_time(bad)
    assert fj.parse_time(None) is None


def test_observation_time_precedence() -> None:
    base = {"issued": "2026-11-01T00:00:00Z"}
    assert fj.observation_time(base).text == "2026-11-01T00:00:00Z"  # type: ignore[union-attr]
    period = {**base, "effectivePeriod": {"start": "2026-10-01", "end": "2026-10-03"}}
    assert fj.observation_time(period).text == "2026-10-03"  # type: ignore[union-attr]
    start_only = {**base, "effectivePeriod": {"start": "2026-10-01"}}
    assert fj.observation_time(start_only).text == "2026-10-01"  # type: ignore[union-attr]
    instant = {**period, "effectiveInstant": "2026-09-01T00:00:00Z"}
    assert fj.observation_time(instant).text == "2026-09-01T00:00:00Z"  # type: ignore[union-attr]
    dt = {**instant, "effectiveDateTime": "2026-08-01"}
    assert fj.observation_time(dt).text == "2026-08-01"  # type: ignore[union-attr]
    assert fj.observation_time({}) is None


def test_condition_onset_and_abatement() -> None:
    assert (
        fj.condition_onset({"onsetDateTime": "2026-01-01", "recordedDate": "2026-02-01"}).text == "2026-01-01"
    )  # type: ignore[union-attr]
    assert fj.condition_onset({"onsetPeriod": {"start": "2025-05"}}).text == "2025-05"  # type: ignore[union-attr]
    assert fj.condition_onset({"onsetString": "childhood", "recordedDate": "2026-02-01"}).text == "2026-02-01"  # type: ignore[union-attr]
    assert fj.condition_abatement({"abatementPeriod": {"start": "2026-03-01"}}).text == "2026-03-01"  # type: ignore[union-attr]


# -- codings, sites, subject -----------------------------------------------------------------------
def test_codings_tolerate_junk() -> None:
    cc = {
        "coding": [
            {"system": "s", "code": "1"},
            {"system": "s"},
            "x",
            None,
            {"system": 1, "code": "2"},
            {"system": "s", "code": ""},
        ],
        "text": "t",
    }
    assert list(fj.codings(cc)) == [("s", "1")]
    assert list(fj.codings("95325000")) == [] and list(fj.codings({"coding": {"code": "1"}})) == []
    assert fj.concept_label(cc) == "t" and fj.concept_label({"coding": [{"code": "9"}]}) == "9"


def test_body_sites_shapes() -> None:
    assert fj.body_sites({"bodySite": {"text": "x"}}) == [{"text": "x"}]
    assert fj.body_sites({"bodySite": [{"text": "x"}, "junk"]}) == [{"text": "x"}]
    assert fj.body_sites({"bodySite": "lumbar"}) == []


@pytest.mark.parametrize(
    "text,typical",
    [
        ("left posterior iliac crest", True),
        ("Lumbar region", True),
        ("LOW BACK", True),
        ("lower  back", True),
        ("right PSIS", True),
        ("SI joint, left", True),
        ("sacrum", True),
        ("lumbosacral junction", True),
        ("thoracolumbar junction", False),
        ("forearm", False),
        ("buttock", False),
        ("sacralgia", False),
        ("psis-like", True),
        ("posterior superior iliac spine", True),
    ],
)
def test_typical_site_text(text: str, typical: bool) -> None:
    from smart_app.clinical.rules import OPERATORS, Context, site_is_typical

    criteria = default_registry().get("1.0.0")
    ctx = Context(
        criteria=criteria,
        facts=Extractor(AS_OF, criteria).facts,
        record=PatientRecord({"id": "p1"}, []),
        as_of=AS_OF,
        operators=OPERATORS,
    )
    assert site_is_typical(ctx, [{"text": text}])[0] is typical


def test_subject_matching() -> None:
    record = PatientRecord({"resourceType": "Patient", "id": "p1"}, [], ("urn:uuid:9",))
    assert record.subject_matches("Patient/p1")
    assert record.subject_matches("https://ehr.example/fhir/Patient/p1")
    assert record.subject_matches("https://ehr.example/fhir/Patient/p1/_history/2")
    assert record.subject_matches("urn:uuid:9")
    assert not record.subject_matches("Patient/p10") and not record.subject_matches("Group/p1")
    assert not record.subject_matches("xPatient/p1")


# -- load_bundle -----------------------------------------------------------------------------------
def test_load_bundle_types_and_entries() -> None:
    doc = orjson.loads(bundle_bytes(*probable(), btype="batch-response"))
    doc["entry"].append({"response": {"status": "404"}})
    doc["entry"].append("junk")
    record = load_bundle(orjson.dumps(doc))
    assert record.patient["id"] == "p1" and len(record.resources) == 3
    assert record.patient_reference == "Patient/p1"


@pytest.mark.parametrize(
    "data,words",
    [
        (b'{"resourceType": "Bundle", "entry": [', "not usable JSON"),
        (b"[]", "not a FHIR Bundle"),
        (b'{"resourceType": "Patient", "id": "p1"}', "not a FHIR Bundle"),
        (b'{"resourceType": "Bundle", "entry": []}', "no Patient"),
    ],
)
def test_unusable_input(data: bytes, words: str) -> None:
    with pytest.raises(UnusableInput) as info:
        load_bundle(data)
    assert words in info.value.reason and "\n" not in info.value.reason


def test_same_patient_twice_is_one_patient() -> None:
    data = bundle_bytes(*probable(), {"resourceType": "Patient", "id": "p1"})
    assert load_bundle(data).patient["id"] == "p1"


def test_entry_splitter_handles_tricky_bytes() -> None:
    tricky = nodule(note=[{"text": 'a "}, {"resource": {"x": 1}} ] text'}])
    data = bundle_bytes(lbp(), tricky, repro())
    entries = list(iter_bundle_entries(data))
    assert [e["resource"]["id"] for e in entries] == ["p1", "c-lbp", "o-nod", "o-rep"]
    with pytest.raises(NotStreamable):
        list(iter_bundle_entries(b'{"resourceType": "Bundle"}'))
    with pytest.raises(NotStreamable):
        list(iter_bundle_entries(data[:-5]))
    empty = b'{"resourceType": "Bundle", "entry": [ ], "type": "collection"}'
    assert list(iter_bundle_entries(empty)) == []


def test_duplicate_entries_keep_the_newest_version() -> None:
    old = nodule(value="absent", meta={"versionId": "1"})
    new = nodule(meta={"versionId": "2"})
    for order in ((old, new), (new, old)):
        record = load_bundle(bundle_bytes(lbp(), *order, repro()))
        from smart_app.clinical import assess

        out = assess(record, AS_OF).to_json()
        assert out["findings"]["NODULE"]["status"] == "present"
        assert {"reference": "Observation/o-nod", "version_id": "2"} in out["sources"]


def test_uncoded_and_unread_resources_are_reported() -> None:
    from smart_app.clinical import assess

    uncoded = {
        "resourceType": "Observation",
        "id": "o-u",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "code": {"text": "lump"},
    }
    no_subject = {**lbp("c-x"), "subject": None}
    out = assess(load_bundle(bundle_bytes(*probable(), uncoded, no_subject)), AS_OF).to_json()
    reasons = {i["reference"]: i["reason"] for i in out["ignored"]}
    assert reasons["Observation/o-u"].startswith("malformed: no coded code")
    assert reasons["Condition/c-x"] == "no subject"


def test_many_false_entry_gaps_fall_back_to_a_whole_decode() -> None:
    from smart_app.clinical import assess, assess_bundle

    comps = [{"id": f"c{i}", "code": {"text": "x"}, "valueString": "y"} for i in range(100)]
    data = bundle_bytes(*probable(), nodule("o-many", component=comps))
    with pytest.raises(NotStreamable):
        list(iter_bundle_entries(data))
    streamed = assess_bundle(data, AS_OF).to_json()
    assert streamed == assess(load_bundle(data), AS_OF).to_json()
    assert streamed["classification"] == "probable"
