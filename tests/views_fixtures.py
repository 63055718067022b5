"""Fixtures for the view tests: an app with a fake SMART launch in the session and FHIR mocked by
``responses`` (no sockets). Import with ``from tests.views_fixtures import *  # noqa: F403``."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import responses

FHIR_BASE = "https://ehr.test/fhir"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
FINDING = "https://smart-app.example/fhir/CodeSystem/back-mice-finding"
READ_SCOPES = (
    "launch openid fhirUser patient/Patient.rs patient/Observation.rs patient/Condition.rs "
    "patient/Procedure.rs patient/MedicationStatement.rs patient/MedicationRequest.rs"
)
WRITE_SCOPES = (
    "patient/ClinicalImpression.c patient/ServiceRequest.c patient/DetectedIssue.c patient/Provenance.c "
    "patient/Device.c"
)
ALL_SCOPES = f"{READ_SCOPES} {WRITE_SCOPES} patient/Observation.c"


def days_ago(n: int) -> str:
    return (datetime.now(UTC) - timedelta(days=n)).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def patient(name: str = "Ada Example") -> dict[str, Any]:
    given, _, family = name.partition(" ")
    return {
        "resourceType": "Patient",
        "id": "p1",
        "meta": {"versionId": "1"},
        "name": [{"use": "official", "given": [given], "family": family}],
        "gender": "female",
        "birthDate": "1980-04-02",
        "identifier": [{"system": "urn:mrn", "value": "MRN-0001"}],
    }


def condition(cid: str, code: str, display: str, system: str = ICD10) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": cid,
        "meta": {"versionId": "1"},
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": system, "code": code, "display": display}], "text": display},
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                       "code": "active"}]},
        "verificationStatus": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
        "recordedDate": days_ago(200),
        "onsetDateTime": days_ago(200),
    }


def observation(oid: str, system: str, code: str, display: str, present: bool = True,
                site: str | None = None, **extra: Any) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "meta": {"versionId": "1"},
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": system, "code": code, "display": display}], "text": display},
        "effectiveDateTime": days_ago(3),
        "valueCodeableConcept": {"coding": [
            {"system": SNOMED, "code": "52101004", "display": "Present"} if present
            else {"system": SNOMED, "code": "2667000", "display": "Absent"}]},
    }
    if site:
        obs["bodySite"] = {"text": site}
    obs.update(extra)
    return obs


def lbp() -> dict[str, Any]:
    return condition("c-lbp", "M54.50", "Low back pain, unspecified")


def nodule(site: str = "left posterior iliac crest") -> dict[str, Any]:
    return observation("o-nodule", SNOMED, "95325000", "Subcutaneous nodule", site=site)


def reproduced(site: str = "left posterior iliac crest") -> dict[str, Any]:
    return observation("o-repro", FINDING, "nodule-pain-reproduced", "Pain reproduced on pressure", site=site)


PROBABLE = [lbp(), nodule(), reproduced()]
INSUFFICIENT = [lbp()]
RED_FLAG = [*PROBABLE, condition("c-cancer", "Z85.3", "Personal history of malignant neoplasm of breast")]


def bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources]}


class FakeEhr:
    """Registers ``responses`` for the FHIR reads of one patient and records the writes."""

    def __init__(self, rsps: responses.RequestsMock, base: str = FHIR_BASE) -> None:
        self.rsps = rsps
        self.base = base
        self.writes: list[dict[str, Any]] = []
        #: resources its accepted transactions stored, searchable by identifier and _tag as on an EHR
        self.stored: list[dict[str, Any]] = []
        written = "|".join(("ClinicalImpression", "DocumentReference", "ServiceRequest", "DetectedIssue",
                            "Provenance", "Device"))
        rsps.add_callback(responses.GET, re.compile(re.escape(base) + rf"/({written})\?.*$"),
                          callback=self._search_stored)

    def _search_stored(self, request: Any) -> tuple[int, dict[str, str], str]:
        from urllib.parse import parse_qsl, urlsplit

        parts = urlsplit(request.url)
        rtype = parts.path.rsplit("/", 1)[-1]
        params = dict(parse_qsl(parts.query))

        def matches(resource: dict[str, Any]) -> bool:
            tokens = {(i.get("system"), i.get("value")) for i in resource.get("identifier") or []}
            tags = {(t.get("system"), t.get("code")) for t in resource.get("meta", {}).get("tag") or []}
            for name, held in (("identifier", tokens), ("_tag", tags)):
                if name in params and tuple(params[name].split("|", 1)) not in held:
                    return False
            return resource["resourceType"] == rtype

        found = [r for r in self.stored if matches(r)]
        return 200, {"Content-Type": "application/fhir+json"}, json.dumps(bundle(found))

    def serve(self, resources: list[dict[str, Any]], pat: dict[str, Any] | None = None,
              fail: dict[str, int] | None = None) -> None:
        fail = fail or {}
        pat = pat or patient()
        if "Patient" in fail:
            self.rsps.add(responses.GET, f"{self.base}/Patient/p1", status=fail["Patient"],
                          json={"resourceType": "OperationOutcome", "issue": [
                              {"severity": "error", "code": "not-found", "diagnostics": "No such patient"}]})
        else:
            self.rsps.add(responses.GET, f"{self.base}/Patient/p1", json=pat)
        for rtype in ("Observation", "Condition", "Procedure", "MedicationStatement", "MedicationRequest"):
            url = re.compile(re.escape(f"{self.base}/{rtype}") + r"(\?.*)?$")
            if rtype in fail:
                issue = {"severity": "error", "code": "exception", "diagnostics": f"{rtype} store offline"}
                self.rsps.add(responses.GET, url, status=fail[rtype],
                              json={"resourceType": "OperationOutcome", "issue": [issue]})
            else:
                found = [r for r in resources if r["resourceType"] == rtype]
                self.rsps.add(responses.GET, url, json=bundle(found))

    def accept_transactions(self) -> None:
        def answer(request: Any) -> tuple[int, dict[str, str], str]:
            body = json.loads(request.body)
            self.writes.append(body)
            entries = []
            for i, entry in enumerate(body.get("entry") or []):
                rtype = entry["resource"]["resourceType"]
                self.stored.append({**entry["resource"], "id": f"w{i}", "meta": {
                    **entry["resource"].get("meta", {}), "versionId": "1"}})
                entries.append({"response": {"status": "201 Created", "location": f"{rtype}/w{i}/_history/1",
                                             "etag": 'W/"1"'}})
            return 200, {"Content-Type": "application/fhir+json"}, json.dumps(
                {"resourceType": "Bundle", "type": "transaction-response", "entry": entries})

        self.rsps.add_callback(responses.POST, re.compile(re.escape(self.base) + r"/?$"), callback=answer)

    def reject_transactions(self, status: int = 422, text: str = "binding violated") -> None:
        self.rsps.add(responses.POST, re.compile(re.escape(self.base) + r"/?$"), status=status, json={
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "processing", "diagnostics": text}]})


def fake_launch(scope: str = ALL_SCOPES, **extra: Any) -> dict[str, Any]:
    return {
        "iss": FHIR_BASE,
        "fhir_base": FHIR_BASE,
        "patient": "p1",
        "encounter": None,
        "fhir_user": "Practitioner/dr1",
        "need_patient_banner": True,
        "smart_style_url": None,
        "scope": scope,
        "registration_id": "view-test",
        "access_token": "test-access-token",
        "refresh_token": None,
        "expires_at": 4102444800,
        "token_endpoint": "https://ehr.test/auth/token",
        "ehr_name": "Test EHR",
        **extra,
    }
