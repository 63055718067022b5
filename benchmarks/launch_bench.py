"""Launch benchmark: N EHR launches against the sandbox EHR over real loopback HTTP.

Prints the median and p95 time from the EHR's launch URL to the rendered review page, and the number of
FHIR round trips per launch (counted at the sandbox). Usage:

    python benchmarks/launch_bench.py [--launches 30] [--client-type public]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import SANDBOX_SECRET, SECRET_ENV, start_stack  # noqa: E402

PATIENTS = ["apatel", "evance", "jkowalski", "lchen", "rsantos", "tokafor"]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--launches", type=int, default=30)
    parser.add_argument("--client-type", default="public")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    os.environ.setdefault(SECRET_ENV, SANDBOX_SECRET)
    with tempfile.TemporaryDirectory() as tmp:
        stack = start_stack(Path(tmp), client_type=args.client_type)
        try:
            timings: list[float] = []
            round_trips: list[int] = []
            for number in range(args.launches + 1):
                patient = PATIENTS[number % len(PATIENTS)]
                made = requests.get(
                    f"{stack.sandbox.url}/ehr/launch-url", params={"patient": patient}, timeout=10
                )
                url = made.json()["url"]
                before = stack.counter.counts["fhir"]
                with requests.Session() as browser:
                    started = time.perf_counter()
                    page = browser.get(url, timeout=30)
                    elapsed = time.perf_counter() - started
                if page.status_code != 200 or not page.url.endswith("/review"):
                    print(f"launch {number} failed: {page.status_code} {page.url}", file=sys.stderr)
                    return 1
                if number == 0:
                    continue  # warm-up: discovery cache, key generation
                timings.append(elapsed * 1000)
                round_trips.append(stack.counter.counts["fhir"] - before)
        finally:
            stack.stop()
    print(f"launches: {len(timings)} ({args.client_type} client, sandbox EHR on loopback)")
    median, p95 = statistics.median(timings), percentile(timings, 0.95)
    print(f"launch-to-review-page: median {median:.1f} ms, p95 {p95:.1f} ms")
    print(f"FHIR round trips per launch: median {statistics.median(round_trips):.0f}, max {max(round_trips)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
