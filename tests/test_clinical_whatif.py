"""Which missing data could change the conclusion (``smart_app.clinical.whatif``), checked independently
on every clinical case and every sandbox patient, one per classification and more.

Each missing item of an assessment is recorded as the review page suggests: an exam finding through the
exam form's own builder (``smart_app.drafts.exam``, the Observations the app would write), low back pain
and a pain score as the criteria's "how" text says, an unread resource type by reading it (an item that
could not be read is recorded and read). The
conclusion is then recomputed on the whole record. An item the page lists must change the
classification or the next step for some value it can be recorded with; an exam finding or a pain score
the page leaves out must change neither, whatever is recorded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from launch.data import ANCHOR_DATE, DATA_DIR
from smart_app.clinical import PatientRecord, assess, load_bundle
from smart_app.clinical.engine import criteria_for
from smart_app.clinical.recording import exam_terms
from smart_app.clinical.whatif import decisive_missing
from smart_app.drafts.exam import ExamAnswers, ExamSite, observations

CASES = sorted((Path(__file__).parent / "cases").glob("*.json"))
PATIENTS = sorted(DATA_DIR.glob("patient-*.json"))
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"

Recording = Callable[[PatientRecord], PatientRecord]


def with_resources(record: PatientRecord, resources: list[dict[str, Any]]) -> PatientRecord:
    added = [{**r, "id": f"recorded-{n}"} for n, r in enumerate(resources)]
    return dataclasses.replace(record, resources=[*record.resources, *added])


def exam(version: str, answers: ExamAnswers, when: str) -> Recording:
    terms = exam_terms(criteria_for(version))

    def record_it(record: PatientRecord) -> PatientRecord:
        made = observations(terms, answers, patient=record.patient_reference, when=when)
        return with_resources(record, [obs for _, obs in made])

    return record_it


def recordings(item: str, version: str, when: str) -> list[Recording]:
    """Every way the page suggests of recording the missing ``item``."""
    typical = ExamSite(text="posterior iliac crest", side="left")
    elsewhere = ExamSite(text="forearm", side="left")
    if item == "NODULE":
        return [
            exam(version, ExamAnswers({"NODULE": "present"}, typical), when),
            exam(version, ExamAnswers({"NODULE": "present"}, elsewhere), when),
            exam(version, ExamAnswers({"NODULE": "absent"}), when),
        ]
    if item == "TYPICAL_SITE":
        return [
            exam(version, ExamAnswers({"NODULE": "present"}, typical), when),
            exam(version, ExamAnswers({"NODULE": "present"}, elsewhere), when),
        ]
    if item == "PAIN_REPRODUCED":
        return [exam(version, ExamAnswers({item: value}), when) for value in ("present", "absent")]
    if item == "NEURO_DEFICIT":
        signs = [(s,) for s in ("weakness", "hypoesthesia", "reflex")]
        return [exam(version, ExamAnswers({item: value}), when) for value in [*signs, "none"]]
    if item == "INJECTION_RELIEF":
        return [exam(version, ExamAnswers({item: value}), when) for value in (100, 80, 79, 0)]
    if item == "LBP":  # "Record a Condition coded SNOMED 279039007 Low back pain ... active, confirmed"
        condition = {
            "resourceType": "Condition",
            "subject": {},
            "code": {"coding": [{"system": SNOMED, "code": "279039007"}]},
            "clinicalStatus": {"coding": [{"code": "active"}]},
            "verificationStatus": {"coding": [{"code": "confirmed"}]},
            "recordedDate": when,
        }
        return [lambda r: with_resources(r, [{**condition, "subject": {"reference": r.patient_reference}}])]
    if item == "PAIN_SCORE":  # "Record an Observation LOINC 72514-3 with valueInteger 0-10, dated today"
        return [
            lambda r, score=score: with_resources(
                r,
                [
                    {
                        "resourceType": "Observation",
                        "status": "final",
                        "subject": {"reference": r.patient_reference},
                        "code": {"coding": [{"system": LOINC, "code": "72514-3"}]},
                        "effectiveDateTime": when,
                        "valueInteger": score,
                    }
                ],
            )
            for score in range(11)
        ]
    # an unread input: read the record with every type readable
    return [lambda r: dataclasses.replace(r, unavailable={})]


def conclusion(record: PatientRecord, as_of: datetime, version: str) -> tuple[str, str]:
    result = assess(record, as_of, version)
    return result.classification, result.next_step


def records() -> Iterator[Any]:
    for path in CASES:
        case = orjson.loads(path.read_bytes())
        bundle = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": case["patient"]}, *({"resource": r} for r in case["resources"])],
        }
        record = load_bundle(orjson.dumps(bundle))
        if "unavailable" in case:
            record = dataclasses.replace(record, unavailable=dict(case["unavailable"]))
        as_of = datetime.fromisoformat(case["as_of"].replace("Z", "+00:00"))
        yield pytest.param(record, as_of, case["criteria_version"], id=path.stem)
    for path in PATIENTS:
        as_of = datetime.fromisoformat(f"{ANCHOR_DATE.isoformat()}T12:00:00+00:00")
        yield pytest.param(load_bundle(path.read_bytes()), as_of, None, id=path.stem)


@pytest.mark.parametrize("record, as_of, version", list(records()))
def test_missing_data_listed_is_exactly_what_could_change_the_conclusion(
    record: PatientRecord, as_of: datetime, version: str | None
) -> None:
    assessment = assess(record, as_of, version).to_json()
    version = str(assessment["criteria"]["version"])
    base = (assessment["classification"], assessment["next_step"])
    listed = {str(d.item["finding"]) for d in decisive_missing(record, assessment)}
    statuses = {k: v["status"] for k, v in assessment["findings"].items()}
    when = str(assessment["as_of"])
    for missing in assessment["missing"]:
        item = str(missing["finding"])
        # an item the record could not read ("...: Condition could not be read") is recorded and read
        unread = "could not be read" in missing["what"]
        readable = dataclasses.replace(record, unavailable={}) if unread else record
        outcomes = {
            conclusion(record_it(readable), as_of, version) for record_it in recordings(item, version, when)
        }
        changes = outcomes - {base}
        if item in listed:
            assert changes, f"{item} is listed, but recording it changes nothing ({base})"
        elif item in (
            "NODULE",
            "PAIN_REPRODUCED",
            "NEURO_DEFICIT",
            "INJECTION_RELIEF",
            "PAIN_SCORE",
            "LBP",
        ) or (item == "TYPICAL_SITE" and statuses.get("NODULE") == "present"):
            assert not changes, f"{item} is left out, but recording it could give {sorted(changes)}"


def test_each_classification_lists_what_decides_it() -> None:
    """The sandbox patients, one per classification: what is listed, by name."""
    as_of = datetime.fromisoformat(f"{ANCHOR_DATE.isoformat()}T12:00:00+00:00")
    listed: dict[str, list[str]] = {}
    for path in PATIENTS:
        record = load_bundle(path.read_bytes())
        assessment = assess(record, as_of).to_json()
        items = [str(d.item["finding"]) for d in decisive_missing(record, assessment)]
        listed[path.stem.removeprefix("patient-")] = items
    assert listed["evance"] == []  # a red flag's urgent work-up: nothing else changes it
    assert listed["tokafor"] == []  # a neurological deficit: nothing recordable changes it
    assert listed["jkowalski"] == ["INJECTION_RELIEF"]
    assert "TYPICAL_SITE" not in listed["dnguyen"] and "NODULE" in listed["dnguyen"]
    assert listed["rsantos"] == ["NEURO_DEFICIT"]


def test_a_large_record_whose_cited_resources_conclude_otherwise_keeps_every_item_untested() -> None:
    """The re-evaluation uses the resources the assessment cites; when those alone conclude otherwise
    and the record is large, every item is kept (unknown whether it matters) instead of re-assessing
    the whole record many times."""
    as_of = datetime.fromisoformat(f"{ANCHOR_DATE.isoformat()}T12:00:00+00:00")
    record = load_bundle((DATA_DIR / "patient-dnguyen.json").read_bytes())
    assessment = assess(record, as_of).to_json()
    assessment["sources"] = []  # as if nothing were cited: the cited record has no low back pain
    big = dataclasses.replace(record, resources=[*record.resources, *([{"resourceType": "Basic"}] * 600)])
    kept = decisive_missing(big, assessment)
    assert [d.item["finding"] for d in kept] == [m["finding"] for m in assessment["missing"]]
    assert all(d.change is None for d in kept)
