"""Is one batch Bundle faster than separate reads for a patient's record (issue "Speed and scale", item
1: a batch where the CapabilityStatement offers it and it measures faster)? The app reads by batch where
the EHR offers it (``smart_app/fhir/record.py``); this measures the EHR's side of that choice, on the
same stack as ``make bench`` (``benchmarks/bench.py``).

For each EHR that says ``batch`` in its CapabilityStatement (the sandbox and the independent FHIR server)
and for a normal patient and the patients of ``--observations`` Observations, the reads the criteria need
(Patient, Observation and Condition, 1000 a page) are timed two ways, in turns:

- one by one: three GETs in parallel, each search then following its ``next`` links;
- as one ``POST [base]`` of a batch Bundle holding the three reads (FHIR R4 http.html#transaction), each
  search then following its ``next`` links in parallel (a batch answer cannot page).

No app is involved: both are one plain client, so the figures are the EHR's and the wire's.

Usage: ``python benchmarks/batch_read.py [--runs 10] [--observations 10000]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import bench  # noqa: E402
from launch.stack import Services, StackError  # noqa: E402

NORMAL_PATIENT = "jkowalski"


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}


def offers_batch(fhir_base: str, token: str) -> bool:
    """Whether the server's CapabilityStatement lists the system interaction ``batch``."""
    answer = requests.get(
        f"{fhir_base}/metadata",
        headers=_headers(token),
        timeout=bench.TIMEOUT,
    )
    answer.raise_for_status()
    rests = answer.json().get("rest") or []
    return any(i.get("code") == "batch" for rest in rests for i in rest.get("interaction") or [])


def _pages(http: requests.Session, headers: dict[str, str], url: str | None) -> int:
    """Follow ``next`` links from ``url``; the number of pages read."""
    pages = 0
    while url:
        answer = http.get(url, headers=headers, timeout=bench.TIMEOUT)
        answer.raise_for_status()
        pages += 1
        url = bench.next_link(answer.content)
    return pages


#: The reads of the record's first step, in the batch's order: the Patient, then the two searches.
SEARCHED = ("Observation", "Condition")


def post_batch(http: requests.Session, fhir_base: str, token: str, patient: str) -> list[dict[str, Any]]:
    """``POST [base]`` of one batch Bundle holding the Patient read and the two searches; the answer's
    searchset pages (Observation, Condition), each entry checked to be ``200``."""
    query = f"patient={patient}&_count={bench.PAGE_SIZE}"
    urls = [f"Patient/{patient}", *(f"{t}?{query}" for t in SEARCHED)]
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": u}} for u in urls],
    }
    answer = http.post(
        fhir_base,
        data=orjson.dumps(bundle),
        headers={**_headers(token), "Content-Type": "application/fhir+json"},
        timeout=bench.TIMEOUT,
    )
    answer.raise_for_status()
    entries = answer.json().get("entry") or []
    statuses = [str((e.get("response") or {}).get("status", "")) for e in entries]
    if len(entries) != len(urls) or not all(s.startswith("200") for s in statuses):
        raise RuntimeError(f"batch answered {statuses}")
    return [e["resource"] for e in entries[1:]]


def batch_read(fhir_base: str, token: str, patient: str) -> int:
    """The three reads as one batch Bundle, then the searches' further pages in parallel; round trips."""
    with requests.Session() as http:
        nexts = [_next_url(page) for page in post_batch(http, fhir_base, token, patient)]
    with ThreadPoolExecutor(max_workers=len(SEARCHED)) as pool:
        more = list(pool.map(lambda url: _follow(_headers(token), url), nexts))
    return 1 + sum(more)


def batch_shortfall(fhir_base: str, token: str, patient: str) -> str:
    """What the batch answer's searchsets lack against their ``total`` once their ``next`` links are
    followed (untimed, decoding every page): ``""`` when nothing, else e.g. ``Observation 1000 of 3000``."""
    short = []
    with requests.Session() as http:
        for resource_type, page in zip(SEARCHED, post_batch(http, fhir_base, token, patient), strict=True):
            total, found = page.get("total"), len(page.get("entry") or [])
            url = _next_url(page)
            while url:
                page = http.get(url, headers=_headers(token), timeout=bench.TIMEOUT).json()
                found += len(page.get("entry") or [])
                url = _next_url(page)
            if isinstance(total, int) and found < total:
                short.append(f"{resource_type} {found} of {total}")
    return ", ".join(short)


def _next_url(page: dict[str, Any]) -> str | None:
    return next((link["url"] for link in page.get("link") or [] if link.get("relation") == "next"), None)


def _follow(headers: dict[str, str], url: str | None) -> int:
    with requests.Session() as http:
        return _pages(http, headers, url)


def compare(table: bench.Table, label: str, ehr: bench.Ehr, patient: str, runs: int) -> None:
    """Parallel GETs and one batch, in turns, ``runs`` times each."""
    parallel: list[float] = []
    batch: list[float] = []
    trips = 0
    for _ in range(runs):
        parallel += [bench.ehr_alone(ehr.fhir_base, ehr.reader, patient, 1, float("inf"))[0]]
        started = time.perf_counter()
        trips = batch_read(ehr.fhir_base, ehr.reader, patient)
        batch.append(time.perf_counter() - started)
    short = batch_shortfall(ehr.fhir_base, ehr.reader, patient)
    answered = f"INCOMPLETE: {short}" if short else "complete"
    for name, pick in (("p50", statistics.median), ("p95", lambda v: bench.percentile(v, 0.95))):
        table.add(
            f"{name} read, {label}, one batch ({trips} round trips; {answered})",
            bench.ms(pick(batch)),
            f"{bench.ms(pick(parallel))} three GETs in parallel (the app's read)",
            bench.ratio(pick(batch), pick(parallel)),
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--observations", type=int, default=10_000)
    args = parser.parse_args()
    stack_args = argparse.Namespace(observations=args.observations, workers=1)
    table = bench.Table()
    with tempfile.TemporaryDirectory(prefix="batch-") as tmp, Services() as services:
        try:
            run = bench.start(services, Path(tmp), stack_args)
        except StackError as exc:
            print(f"batch_read: {exc}", file=sys.stderr)
            return 1
        big = f"{args.observations} Observations"
        cases: list[tuple[str, bench.Ehr, str]] = [("normal patient", run.sandbox, NORMAL_PATIENT)]
        cases += [(f"{big} ({kind})", run.sandbox, patient) for kind, patient in run.big.items()]
        for group, server in run.fhir_servers.items():
            if group == "normal":
                cases.append(("normal patient", server, NORMAL_PATIENT))
            else:
                cases.append((f"{big} ({group})", server, run.big[group]))
        for label, ehr, patient in cases:
            where = f"{label}, {ehr.name}"
            if not offers_batch(ehr.fhir_base, ehr.reader):
                table.add(f"read, {where}", "batch not offered")
                continue
            compare(table, where, ehr, patient, args.runs)
    print(table.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
