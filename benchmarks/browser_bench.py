"""Launch-to-review time in a real browser (issue 5 "Speed"): median and p95.

Usage: ``python benchmarks/browser_bench.py [--runs 10] [--observations 10000]``

Starts the sandbox EHR (127.0.0.1) and the app (localhost) in this process, as the browser tests do,
with the sandbox patients plus one synthetic patient holding ``--observations`` Observations. Each run
opens the EHR's launch page in a fresh Chromium context and stops the clock when the review page's
headline is visible in the iframe: EHR launch, authorize, token, FHIR reads, assessment, drafting and
rendering are all inside the figure. Prints one line per patient.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.browser import CHROMIUM, CHROMIUM_ARGS, start_servers, stop_servers  # noqa: E402

BIG = "bench-big"


def big_patient(observations: int) -> dict[str, Any]:
    """A probable back mouse buried in ``observations`` unrelated vital-sign Observations."""
    subject = {"reference": f"Patient/{BIG}"}
    entries: list[dict[str, Any]] = [
        {
            "resource": {
                "resourceType": "Patient",
                "id": BIG,
                "name": [{"family": "Bench", "given": ["Big"]}],
                "gender": "male",
                "birthDate": "1970-01-01",
            }
        },
        {
            "resource": {
                "resourceType": "Condition",
                "id": f"{BIG}-lbp",
                "subject": subject,
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
                "recordedDate": "2026-06-01",
            }
        },
    ]
    for i in range(observations):
        entries.append(
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": f"{BIG}-o{i}",
                    "status": "final",
                    "subject": subject,
                    "code": {
                        "coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]
                    },
                    "effectiveDateTime": f"2026-{1 + i % 10:02d}-{1 + i % 28:02d}T08:00:00Z",
                    "valueQuantity": {
                        "value": 60 + i % 40,
                        "unit": "/min",
                        "system": "http://unitsofmeasure.org",
                        "code": "/min",
                    },
                }
            }
        )
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--observations", type=int, default=10000)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        shutil.copytree(ROOT / "launch" / "data", data)
        (data / f"patient-{BIG}.json").write_text(json.dumps(big_patient(args.observations)))
        pair = start_servers(tmp, sandbox_config={"DATA_DIR": str(data)})
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                for patient, label in (
                    ("jkowalski", "normal (jkowalski)"),
                    (BIG, f"{args.observations} Observations"),
                ):
                    times: list[float] = []
                    for run in range(args.runs + 1):
                        context = browser.new_context(viewport={"width": 1024, "height": 800})
                        page = context.new_page()
                        start = time.perf_counter()
                        page.goto(f"{pair.ehr_url}/ehr/launch?patient={patient}")
                        page.frame_locator("iframe").locator("h1#headline").wait_for(timeout=60000)
                        elapsed = time.perf_counter() - start
                        context.close()
                        if run:  # the first run warms caches (discovery, templates)
                            times.append(elapsed)
                    print(
                        f"{label:28s} runs={len(times)} median={statistics.median(times) * 1000:7.0f} ms "
                        f"p95={percentile(times, 0.95) * 1000:7.0f} ms max={max(times) * 1000:7.0f} ms"
                    )
                browser.close()
        finally:
            stop_servers(pair)
    return 0


if __name__ == "__main__":
    sys.exit(main())
