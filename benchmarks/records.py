"""Synthetic patient records for the benchmarks: one patient with many Observations, in two sizes.

``compact`` Observations (~0.6 KB) carry what a vital sign needs; ``realistic`` ones (~1.3 KB) add what
EHRs send besides (identifier, displays, encounter, performer, interpretation, reference range, note,
device), as FHIR R4 Observation (observation.html) allows. ``big_patient`` buries them around a low back
pain Condition, so the assessment has something to reason about.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: How each benchmark names its records' kinds: name → one Observation of that kind.
RecordMaker = Callable[[int, str], dict[str, Any]]


def compact(index: int, patient: str) -> dict[str, Any]:
    """A heart rate Observation (~0.6 KB)."""
    return {
        "resourceType": "Observation",
        "id": f"{patient}-o{index}",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": f"2025-{1 + index % 12:02d}-{1 + index % 28:02d}T08:00:00Z",
        "valueQuantity": {
            "value": 60 + index % 40,
            "unit": "/min",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    }


def realistic(index: int, patient: str) -> dict[str, Any]:
    """The same heart rate as EHRs send it (~1.3 KB)."""
    resource = compact(index, patient)
    day = f"2025-{1 + index % 12:02d}-{1 + index % 28:02d}"
    per_minute = {"unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}
    resource.update(
        {
            "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/heartrate"]},
            "identifier": [{"system": "https://ehr.example/fhir/sid/obs", "value": f"OBS-{index:08d}"}],
            "subject": {"reference": f"Patient/{patient}", "display": "Bench Patient"},
            "encounter": {"reference": f"Encounter/{patient}-enc-{index % 50}"},
            "issued": f"{day}T08:05:00.000Z",
            "performer": [{"reference": "Practitioner/dr-ada", "display": "Ada Lovelace, MD"}],
            "interpretation": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                            "code": "N",
                            "display": "Normal",
                        }
                    ]
                }
            ],
            "referenceRange": [
                {
                    "low": {"value": 50, **per_minute},
                    "high": {"value": 100, **per_minute},
                    "text": "50-100 beats per minute",
                }
            ],
            "note": [{"text": "Resting, seated, measured at the radial artery after five minutes of rest."}],
            "device": {"display": "Automated vital signs monitor, bay 4"},
        }
    )
    resource["code"]["text"] = "Heart rate"
    return resource


KINDS: dict[str, RecordMaker] = {"compact": compact, "realistic": realistic}


def big_patient(patient: str, observations: int, make: RecordMaker) -> dict[str, Any]:
    """A collection Bundle: the Patient, an active low back pain Condition and ``observations``
    Observations made by ``make``."""
    entries: list[dict[str, Any]] = [
        {
            "resource": {
                "resourceType": "Patient",
                "id": patient,
                "name": [{"family": "Bench", "given": ["Big"]}],
                "gender": "male",
                "birthDate": "1970-01-01",
            }
        },
        {
            "resource": {
                "resourceType": "Condition",
                "id": f"{patient}-lbp",
                "subject": {"reference": f"Patient/{patient}"},
                "clinicalStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                            "code": "active",
                        }
                    ]
                },
                "code": {
                    "coding": [
                        {"system": "http://snomed.info/sct", "code": "279039007", "display": "Low back pain"}
                    ]
                },
                "recordedDate": "2025-06-01",
            }
        },
    ]
    entries += [{"resource": make(index, patient)} for index in range(observations)]
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}
