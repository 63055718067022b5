"""Bytes on disk → Assessment: time and peak memory for one patient with many Observations.

Usage: ``.venv/bin/python benchmarks/assess_bench.py [--sizes 1000,10000,50000] [--runs 5]``

Generates synthetic collection Bundles (realistic ~1.4 KB Observations: vital signs, pain scores, exam
findings with bodySite, components, meta, performer, notes; plus 1,000 Conditions) into a temporary
directory, then for each size prints the median wall time of ``load_bundle(read_bytes()) → assess`` and
the peak traced memory of one run (tracemalloc) against the file size. Target: 10,000
Observations (~14 MB) under 0.5 s, linear growth, peak memory under 3× the input size.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from smart_app.clinical import assess, assess_bundle, load_bundle

AS_OF = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
PATIENT = "Patient/bench"
SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
FINDING = "https://smart-app.example/fhir/CodeSystem/back-mice-finding"

VITALS = [
    ("8867-4", "Heart rate", "/min", 50, 110),
    ("8310-5", "Body temperature", "Cel", 36, 38),
    ("9279-1", "Respiratory rate", "/min", 10, 24),
    ("29463-7", "Body weight", "kg", 50, 110),
    ("59408-5", "Oxygen saturation", "%", 90, 100),
]
CONDITIONS = [
    ("I10", "Essential (primary) hypertension"),
    ("E11.9", "Type 2 diabetes mellitus without complications"),
    ("J45.909", "Unspecified asthma, uncomplicated"),
    ("M54.50", "Low back pain, unspecified"),
    ("K21.9", "Gastro-esophageal reflux disease without esophagitis"),
    ("M79.18", "Myalgia, other site"),
]


def _common(rid: str, when: datetime, rng: random.Random) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "meta": {
            "versionId": str(rng.randint(1, 4)),
            "lastUpdated": when.isoformat().replace("+00:00", "Z"),
            "source": "#bench-ehr-feed",
            "profile": [
                "http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation-clinical-result"
            ],
        },
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                        "display": "Vital Signs",
                    }
                ],
                "text": "Vital Signs",
            }
        ],
        "subject": {"reference": PATIENT, "display": "Bench Patient"},
        "encounter": {"reference": f"Encounter/e{rng.randint(1, 400)}"},
        "effectiveDateTime": when.isoformat().replace("+00:00", "Z"),
        "issued": (when + timedelta(minutes=5)).isoformat().replace("+00:00", "Z"),
        "performer": [
            {"reference": f"Practitioner/pr{rng.randint(1, 30)}", "display": "Dr Example Clinician"}
        ],
        "note": [
            {
                "text": "Recorded during routine review at the outpatient clinic; patient seated, rested "
                "five minutes before measurement; no acute distress noted by the attending nurse."
            }
        ],
    }


def observation(i: int, rng: random.Random) -> dict[str, Any]:
    when = AS_OF - timedelta(days=rng.uniform(0, 1500))
    obs = _common(f"o{i}", when, rng)
    kind = i % 20
    if kind == 0:  # pain score
        obs["code"] = {
            "coding": [
                {
                    "system": LOINC,
                    "code": "72514-3",
                    "display": "Pain severity - 0-10 verbal numeric rating [Score] - Reported",
                }
            ]
        }
        obs["valueInteger"] = rng.randint(0, 10)
    elif kind == 1:  # exam finding with a site
        obs["code"] = {
            "coding": [
                {
                    "system": SCT,
                    "code": rng.choice(["95325000", "247348008", "26544005"]),
                    "display": "Examination finding",
                }
            ]
        }
        obs["valueCodeableConcept"] = {
            "coding": [{"system": SCT, "code": rng.choice(["52101004", "2667000"])}]
        }
        obs["bodySite"] = {
            "text": rng.choice(["left posterior iliac crest", "right buttock", "lumbar region"])
        }
    elif kind == 2:  # blood pressure panel with components
        obs["code"] = {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}]}
        obs["component"] = [
            {
                "code": {
                    "coding": [{"system": LOINC, "code": "8480-6", "display": "Systolic blood pressure"}]
                },
                "valueQuantity": {
                    "value": rng.randint(100, 160),
                    "unit": "mmHg",
                    "system": "http://unitsofmeasure.org",
                    "code": "mm[Hg]",
                },
            },
            {
                "code": {
                    "coding": [{"system": LOINC, "code": "8462-4", "display": "Diastolic blood pressure"}]
                },
                "valueQuantity": {
                    "value": rng.randint(60, 100),
                    "unit": "mmHg",
                    "system": "http://unitsofmeasure.org",
                    "code": "mm[Hg]",
                },
            },
        ]
    else:
        code, display, unit, lo, hi = rng.choice(VITALS)
        obs["code"] = {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display}
        obs["valueQuantity"] = {
            "value": round(rng.uniform(lo, hi), 1),
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit,
        }
        obs["interpretation"] = [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        "code": "N",
                        "display": "Normal",
                    }
                ]
            }
        ]
        obs["referenceRange"] = [
            {
                "low": {"value": lo, "unit": unit},
                "high": {"value": hi, "unit": unit},
                "text": f"{lo}-{hi} {unit}",
            }
        ]
    return obs


def condition(i: int, rng: random.Random) -> dict[str, Any]:
    code, display = rng.choice(CONDITIONS)
    recorded = AS_OF - timedelta(days=rng.uniform(0, 3000))
    return {
        "resourceType": "Condition",
        "id": f"c{i}",
        "meta": {"versionId": "1"},
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": rng.choice(["active", "resolved"]),
                }
            ]
        },
        "verificationStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}
            ]
        },
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                        "code": "problem-list-item",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": ICD, "code": code, "display": display}], "text": display},
        "subject": {"reference": PATIENT},
        "recordedDate": recorded.date().isoformat(),
    }


def bundle(n_obs: int, n_cond: int, seed: int = 7) -> bytes:
    rng = random.Random(seed)
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": "urn:uuid:bench-patient",
            "resource": {
                "resourceType": "Patient",
                "id": "bench",
                "birthDate": "1971-05-04",
                "gender": "female",
            },
        }
    ]
    entries += [{"resource": observation(i, rng)} for i in range(n_obs)]
    entries += [{"resource": condition(i, rng)} for i in range(n_cond)]
    return orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries})


def streamed(path: Path) -> None:
    """bytes → Assessment, entries decoded one at a time (``assess_bundle``)."""
    assess_bundle(path.read_bytes(), AS_OF)


def whole(path: Path) -> None:
    """bytes → PatientRecord (every resource as a dict) → Assessment (``load_bundle`` + ``assess``)."""
    assess(load_bundle(path.read_bytes()), AS_OF)


def measure(fn: Any, path: Path, runs: int) -> tuple[float, int]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(path)
        times.append(time.perf_counter() - start)
    gc.collect()
    tracemalloc.start()
    fn(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return statistics.median(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--conditions", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    assess(load_bundle(bundle(10, 2)), AS_OF)  # warm: terminology and criteria load once per process
    print(
        f"{'path':>9} {'obs':>6} {'cond':>5} {'MB':>6} {'KB/res':>6} {'median s':>9} {'us/res':>7}"
        f" {'peak MB':>8} {'peak/in':>7}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            path = Path(tmp) / f"bundle-{n}.json"
            path.write_bytes(bundle(n, args.conditions))
            size = path.stat().st_size
            total = n + args.conditions
            for name, fn in (("streamed", streamed), ("whole", whole)):
                med, peak = measure(fn, path, args.runs)
                print(
                    f"{name:>9} {n:>6} {args.conditions:>5} {size / 1e6:>6.1f} {size / 1024 / total:>6.2f}"
                    f" {med:>9.3f} {med / total * 1e6:>7.1f} {peak / 1e6:>8.1f} {peak / size:>7.2f}"
                )


if __name__ == "__main__":
    main()
