"""Reading only what decides loses nothing (``smart_app.pipeline.read_and_assess``;
docs/clinical-criteria.md#data-that-could-not-be-read).

A launch reads the Patient, Observation and Condition first, sets aside as pages are decoded every
resource that can only be counted (``clinical.facts.Sieve``), and reads Procedure, MedicationStatement and
MedicationRequest only when the classification leads to the treatment ladder. Against a FHIR server
holding a generated record, these properties are checked for both criteria releases:

- the sieve: the fetch with the sieve gives the same Assessment JSON as the fetch without it, byte for
  byte, and every resource the assessment names is among those kept (the page can show it);
- the two steps: the launch's read gives the Assessment of a read of every type; when the
  classification does not lead to the ladder, it is the Assessment of the record without the types left
  unread (their own ``ignored`` lines and counts are all that differ), its decision is the full read's,
  and it cost the Patient read and the Observation and Condition pages only;
- a batch: reading by batch Bundle gives what reading one by one gives (resources, counts, failures and
  Assessment), whether the server's batch searchsets keep their paging links, drop them and give their
  ``total`` (as some servers do), or give neither; only a search that failed or holds a page or more
  is then sent on its own.

Records: a case of the clinical case suite (red flags, neurological deficits, the ladder's inputs) with
generated resources added: codes drawn from every ValueSet of the release and from outside them, in
``code``, components, values and medication concepts; statuses, verification, dates (future and
malformed ones too); foreign, absolute and missing subjects; uncoded and malformed resources; a resource
repeated with other content; types not granted; a failed Observation or Condition search. Hypothesis is
derandomized.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smart_app import pipeline
from smart_app.clinical import assess
from smart_app.clinical.engine import ReadPlan, criteria_for, leads_to_ladder, read_plan
from smart_app.clinical.facts import READ_TYPES, Sieve
from smart_app.fhir import FetchResult, FhirClient, capability, fetch_patient_record

BASE = "http://ehr.test/fhir"
PID = "p1"
PAGE = 3
AS_OF = datetime.fromisoformat("2026-11-24T12:00:00+00:00")
CASES_DIR = Path(__file__).resolve().parent / "cases"
CASES = [
    case
    for case in (json.loads(p.read_text(encoding="utf-8")) for p in sorted(CASES_DIR.glob("*.json")))
    if case["patient"]["id"] == PID
]
RELEASES = ("1.0.0", "1.1.0")
SETTINGS = settings(
    database=None,
    max_examples=120,
    derandomize=True,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


# -- codes ---------------------------------------------------------------------------------------------
def release_codes(version: str) -> list[tuple[str, str]]:
    """Every code a ValueSet of the release lists, and one code under each of its ``is-a`` prefixes."""
    codes: set[tuple[str, str]] = set()
    for valueset in criteria_for(version).terminology.valuesets.values():
        for include in valueset.get("compose", {}).get("include", []):
            system = include.get("system")
            if not isinstance(system, str):
                continue
            codes.update((system, concept["code"]) for concept in include.get("concept", []))
            codes.update((system, f"{f['value']}.9") for f in include.get("filter", []))
    return sorted(codes)


CODES = sorted({code for version in RELEASES for code in release_codes(version)})
OTHER_CODES = [
    ("http://loinc.org", "8867-4"),  # heart rate
    ("http://loinc.org", "8480-6"),  # systolic blood pressure
    ("http://snomed.info/sct", "38341003"),  # hypertension
    ("http://hl7.org/fhir/sid/icd-10-cm", "I10"),
    ("http://www.nlm.nih.gov/research/umls/rxnorm", "197361"),  # amlodipine
    ("urn:local:codes", "anything"),
]
PRESENT_ABSENT = [("http://snomed.info/sct", "52101004"), ("http://snomed.info/sct", "2667000")]
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"


def concept(codes: list[tuple[str, str]]) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code} for system, code in codes]}


code_st = st.one_of(st.sampled_from(CODES), st.sampled_from(OTHER_CODES))
concept_st = st.lists(code_st, min_size=1, max_size=2).map(concept)
date_st = st.sampled_from(
    ["2026-11-20T10:00:00Z", "2026-10-01", "2025-06", "2026-11-24", "2027-03-01T00:00:00Z", "2026-13-45"]
)
subject_st = st.sampled_from(
    [f"Patient/{PID}"] * 6 + [f"{BASE}/Patient/{PID}", f"Patient/{PID}/_history/2", "Patient/other", None]
)


@st.composite
def generated(draw: st.DrawFn, number: int) -> dict[str, Any]:
    """One generated resource of a read type (or of a type the criteria do not read)."""
    rtype = draw(st.sampled_from([*READ_TYPES, "Observation", "Observation", "AllergyIntolerance"]))
    resource: dict[str, Any] = {"resourceType": rtype, "id": f"g{number}"}
    subject = draw(subject_st)
    if subject is not None:
        resource["subject"] = {"reference": subject}
    if rtype == "Observation":
        resource["status"] = draw(st.sampled_from(["final", "final", "amended", "preliminary", "registered"]))
        shape = draw(st.sampled_from(["code", "component", "value-is-code", "uncoded"]))
        if shape == "uncoded":
            resource["code"] = {"text": "a lump"}
        else:
            resource["code"] = draw(concept_st)
        if shape == "component":
            resource["component"] = [{"code": draw(concept_st), "valueBoolean": draw(st.booleans())}]
        value = draw(st.sampled_from(["none", "present-absent", "coded", "boolean", "quantity"]))
        if value == "present-absent" or shape == "value-is-code":
            resource["valueCodeableConcept"] = concept([draw(st.sampled_from(PRESENT_ABSENT + CODES))])
        elif value == "coded":
            resource["valueCodeableConcept"] = draw(concept_st)
        elif value == "boolean":
            resource["valueBoolean"] = draw(st.booleans())
        elif value == "quantity":
            resource["valueQuantity"] = {"value": draw(st.integers(0, 12)), "unit": "{score}"}
        resource["effectiveDateTime"] = draw(date_st)
    elif rtype in ("Condition", "AllergyIntolerance"):
        resource["code"] = draw(concept_st)
        resource["clinicalStatus"] = concept([(CLINICAL, draw(st.sampled_from(["active", "resolved"])))])
        verification = draw(st.sampled_from(["confirmed", "provisional", "refuted", "entered-in-error"]))
        resource["verificationStatus"] = concept([(VERIFICATION, verification)])
        resource["onsetDateTime"] = draw(date_st)
    elif rtype == "Procedure":
        resource["status"] = draw(st.sampled_from(["completed", "in-progress", "not-done"]))
        resource["code"] = draw(concept_st)
        resource["performedDateTime"] = draw(date_st)
    else:
        resource["status"] = draw(st.sampled_from(["active", "completed", "stopped", "not-taken"]))
        resource["medicationCodeableConcept"] = draw(concept_st)
        if rtype == "MedicationRequest":
            resource["intent"] = draw(st.sampled_from(["order", "plan"]))
            resource["authoredOn"] = draw(date_st)
        else:
            resource["effectiveDateTime"] = draw(date_st)
    if draw(st.integers(0, 19)) == 0:
        resource.pop("id")  # malformed: no id
    return resource


@st.composite
def records(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A case of the suite and generated resources, one of them maybe repeated with other content."""
    case = draw(st.sampled_from(CASES))
    resources = copy.deepcopy(case["resources"])
    resources += [draw(generated(number)) for number in range(draw(st.integers(0, 12)))]
    if resources and draw(st.booleans()):
        repeated = copy.deepcopy(draw(st.sampled_from(resources)))
        repeated["meta"] = {"versionId": "9", "lastUpdated": "2026-11-23T00:00:00Z"}
        repeated.pop("code", None)
        resources.insert(draw(st.integers(0, len(resources))), repeated)
    order = draw(st.permutations(range(len(resources))))
    return case["patient"], [resources[i] for i in order]


# -- the server ----------------------------------------------------------------------------------------
class RecordServer:
    """A FHIR server holding one record: the Patient read and ``patient=`` searches, ``PAGE`` entries a
    page with ``next`` links, 500 with an OperationOutcome for the types in ``fail``; it counts requests."""

    def __init__(self, patient: dict[str, Any], resources: list[dict[str, Any]], fail: set[str]) -> None:
        self.patient = patient
        self.resources = resources
        self.fail = fail
        self.requests: list[str] = []
        self.batch_paging = "links"

    def answer(self, request: Any) -> tuple[int, dict[str, str], str]:
        parts = urlsplit(request.url)
        self.requests.append(parts.path)
        path = parts.path.removeprefix(urlsplit(BASE).path + "/").split("/")
        headers = {"Content-Type": "application/fhir+json"}
        if path[0] in self.fail:
            issue = {"severity": "error", "code": "exception", "diagnostics": "store offline"}
            return 500, headers, json.dumps({"resourceType": "OperationOutcome", "issue": [issue]})
        if path == ["Patient", PID]:
            return 200, headers, json.dumps(self.patient)
        if path == ["metadata"]:
            rest = {"mode": "server", "interaction": [{"code": "batch"}]}
            statement = {"resourceType": "CapabilityStatement", "status": "active", "rest": [rest]}
            return 200, headers, json.dumps(statement)
        query = parse_qs(parts.query)
        assert query["patient"] == [PID]
        count, offset = int(query["_count"][0]), int(query.get("_offset", ["0"])[0])
        found = [r for r in self.resources if r["resourceType"] == path[0]]
        page: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in found[offset : offset + count]],
        }
        if offset + count < len(found):
            url = f"{BASE}/{path[0]}?patient={PID}&_count={count}&_offset={offset + count}"
            page["link"] = [{"relation": "next", "url": url}]
        return 200, headers, json.dumps(page)

    def answer_batch(self, request: Any) -> tuple[int, dict[str, str], str]:
        """A batch Bundle of GETs (FHIR R4 http.html#transaction), each entry answered as a GET is, its
        searchsets' paging as ``batch_paging`` says: ``"links"`` kept, ``"dropped"`` (the first page, its
        ``total``, no ``next`` link, as some servers answer) or ``"bare"`` (no link, no total)."""
        self.requests.append("POST " + urlsplit(request.url).path)
        entries = []
        for entry in json.loads(request.body)["entry"]:
            status, _, body = self.answer(SimpleNamespace(url=f"{BASE}/{entry['request']['url']}"))
            self.requests.pop()
            resource = json.loads(body)
            if resource["resourceType"] == "Bundle" and self.batch_paging != "links":
                resource.pop("link", None)
                if self.batch_paging == "dropped":
                    kind = entry["request"]["url"].split("?")[0]
                    resource["total"] = sum(r["resourceType"] == kind for r in self.resources)
            entries.append({"resource": resource, "response": {"status": f"{status} OK"}})
        answer = {"resourceType": "Bundle", "type": "batch-response", "entry": entries}
        return 200, {"Content-Type": "application/fhir+json"}, json.dumps(answer)

    def pages(self, resource_type: str) -> int:
        return max(1, math.ceil(sum(r["resourceType"] == resource_type for r in self.resources) / PAGE))


@pytest.fixture
def serve() -> Iterator[Any]:
    """``serve(patient, resources, fail)`` starts a :class:`RecordServer` for one example."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        current: list[RecordServer] = []
        rsps.add_callback(
            responses.GET, re.compile(re.escape(BASE) + r"/.*"), callback=lambda r: current[-1].answer(r)
        )
        rsps.add_callback(responses.POST, BASE, callback=lambda r: current[-1].answer_batch(r))

        def start(patient: dict[str, Any], resources: list[dict[str, Any]], fail: set[str]) -> RecordServer:
            current.append(RecordServer(patient, resources, fail))
            return current[-1]

        yield start


def client() -> FhirClient:
    return FhirClient(BASE, token="token", max_retries=0)


def full_read(version: str, readable: Any) -> tuple[dict[str, Any], FetchResult]:
    """Every granted type read in one step without the sieve, and its Assessment JSON."""
    fetched = fetch_patient_record(client(), PID, readable, page_size=PAGE)
    assert fetched.patient is not None
    return assess(pipeline.record_of(fetched, fhir_base=BASE), AS_OF, version).to_json(), fetched


def bytes_of(assessment: dict[str, Any] | None) -> str:
    return json.dumps(assessment, sort_keys=True)


def references(assessment: dict[str, Any]) -> set[str]:
    """The ``Type/id`` of every resource the assessment names (not its names for resources without id)."""
    named = {ref for f in assessment["findings"].values() for ref in f["evidence"]}
    named |= {ref for f in [*assessment["red_flags"], *assessment["differentials"]] for ref in f["evidence"]}
    named |= {i["reference"] for i in assessment["ignored"]} | {s["reference"] for s in assessment["sources"]}
    return {ref for ref in named if "(" not in ref}


unreadable_st = st.sets(
    st.sampled_from(["Procedure", "MedicationStatement", "MedicationRequest", "Condition"])
)
fail_st = st.sampled_from([set(), set(), set(), {"Observation"}, {"Condition"}])


# -- the properties ------------------------------------------------------------------------------------
@SETTINGS
@given(st.sampled_from(RELEASES), records(), unreadable_st)
def test_the_sieve_loses_nothing(serve: Any, version: str, record: Any, unreadable: set[str]) -> None:
    patient, resources = record
    serve(patient, resources, set())
    readable = lambda resource_type: resource_type not in unreadable  # noqa: E731
    full, _ = full_read(version, readable)
    sieve = Sieve(criteria_for(version))
    sifted = fetch_patient_record(
        client(), PID, readable, page_size=PAGE, keep=lambda r: not sieve.inert(r, f"Patient/{PID}")
    )
    assert sifted.patient is not None
    assessment = assess(pipeline.record_of(sifted, fhir_base=BASE), AS_OF, version).to_json()
    assert bytes_of(assessment) == bytes_of(full)
    kept = {f"{r['resourceType']}/{r.get('id')}" for r in sifted.resources} | {f"Patient/{PID}"}
    assert references(assessment) <= kept


@SETTINGS
@given(st.sampled_from(RELEASES), records(), unreadable_st, fail_st)
def test_reading_in_two_steps_gives_the_full_reads_assessment(
    serve: Any, version: str, record: Any, unreadable: set[str], fail: set[str]
) -> None:
    patient, resources = record
    server = serve(patient, resources, fail)
    readable = lambda resource_type: resource_type not in unreadable  # noqa: E731
    full, fetched_all = full_read(version, readable)

    server.requests.clear()
    fetched, assessment = pipeline.read_and_assess(
        client(), PID, readable, as_of=AS_OF, criteria_version=version, page_size=PAGE
    )
    assert assessment is not None
    criteria = criteria_for(version)
    assert assessment["classification"] == full["classification"]
    if leads_to_ladder(criteria, full["classification"]):
        assert bytes_of(assessment) == bytes_of(full)
        assert fetched.not_needed == []
        return
    later = [t for t in READ_TYPES if t not in read_plan(criteria).first]
    assert fetched.not_needed == [t for t in later if t not in unreadable]
    first_only = [r for r in fetched_all.resources if r["resourceType"] not in fetched.not_needed]
    fetched_all.resources = first_only
    fetched_all.counts = {t: n for t, n in fetched_all.counts.items() if t not in fetched.not_needed}
    without_later = assess(pipeline.record_of(fetched_all, fhir_base=BASE), AS_OF, version).to_json()
    assert bytes_of(assessment) == bytes_of(without_later)
    for key in set(full) - {"ignored", "counts"}:
        assert assessment[key] == full[key], key
    asked = [f"/fhir/Patient/{PID}"] + [
        "/fhir/" + t
        for t in ("Observation", "Condition")
        if t not in unreadable
        for _ in range(server.pages(t))
    ]
    if not fail:
        assert sorted(server.requests) == sorted(asked)


@SETTINGS
@given(
    st.sampled_from(RELEASES),
    records(),
    unreadable_st,
    fail_st,
    st.sampled_from(["links", "dropped", "bare"]),
)
def test_a_batch_read_gives_what_reading_one_by_one_gives(
    serve: Any, version: str, record: Any, unreadable: set[str], fail: set[str], batch_paging: str
) -> None:
    patient, resources = record
    server = serve(patient, resources, fail)
    server.batch_paging = batch_paging
    readable = lambda resource_type: resource_type not in unreadable  # noqa: E731

    def read(batch: bool) -> tuple[FetchResult, dict[str, Any] | None]:
        return pipeline.read_and_assess(
            client(), PID, readable, as_of=AS_OF, criteria_version=version, page_size=PAGE, batch_reads=batch
        )

    one_by_one, expected = read(batch=False)
    capability.forget()
    server.requests.clear()
    batched, assessment = read(batch=True)
    assert bytes_of(assessment) == bytes_of(expected)
    assert batched.resources == one_by_one.resources
    assert batched.unmatched == one_by_one.unmatched
    assert (batched.counts, batched.failures, batched.skipped) == (
        one_by_one.counts,
        one_by_one.failures,
        one_by_one.skipped,
    )
    assert server.requests[:2] == ["/fhir/metadata", "POST /fhir"]
    # a search is sent on its own only when the batch could not answer it whole (it failed, or it holds
    # a page or more: the batch asked for a page) or it is the only read of its step (the ladder's)
    later = [t for t in READ_TYPES if t not in read_plan(criteria_for(version)).first and readable(t)]
    alone = fail | (set(later) if len(later) == 1 else set())
    searched_alone = {path.split("/")[2] for path in server.requests[2:] if not path.startswith("POST")}
    for resource_type in searched_alone - alone:
        assert sum(r["resourceType"] == resource_type for r in resources) >= PAGE, resource_type


def test_the_read_plan_comes_from_the_criteria_data() -> None:
    for version in RELEASES:
        criteria = criteria_for(version)
        plan = read_plan(criteria)
        assert plan.first == ("Observation", "Condition")
        assert plan.ladder == ("Procedure", "MedicationStatement", "MedicationRequest")
        ladder = {
            rule["id"] for rule in criteria.data["classification"] if leads_to_ladder(criteria, rule["id"])
        }
        assert ladder == {"confirmed"}
        without = dataclasses.replace(
            criteria, data={k: v for k, v in criteria.data.items() if k != "data_dependencies"}
        )
        assert read_plan(without) == ReadPlan(first=READ_TYPES, ladder=())


@pytest.mark.parametrize(
    "change, inert",
    [
        ({}, True),
        ({"subject": {"reference": "Patient/other"}}, False),
        (
            {"subject": {"reference": f"{BASE}/Patient/{PID}"}},
            False,
        ),  # another spelling: the Extractor decides
        ({"id": None}, False),
        ({"code": {"text": "heart rate"}}, False),  # uncoded: reported as malformed
        ({"component": [{"code": concept([("http://snomed.info/sct", "95325000")])}]}, False),
        ({"valueCodeableConcept": concept([("http://snomed.info/sct", "95325000")])}, False),
        ({"valueCodeableConcept": concept([("http://snomed.info/sct", "52101004")])}, True),  # Present alone
        ({"resourceType": "AllergyIntolerance"}, False),  # a type the criteria do not read is reported
    ],
)
def test_what_the_sieve_sets_aside(change: dict[str, Any], inert: bool) -> None:
    heart_rate = {
        "resourceType": "Observation",
        "id": "hr",
        "status": "final",
        "code": concept([("http://loinc.org", "8867-4")]),
        "subject": {"reference": f"Patient/{PID}"},
    }
    resource = {k: v for k, v in {**heart_rate, **change}.items() if v is not None}
    assert Sieve(criteria_for(None)).inert(resource, f"Patient/{PID}") is inert
