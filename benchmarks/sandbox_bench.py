"""Sandbox EHR search paging: time per 1,000-entry page for a patient with 10,000 Observations.

Usage: ``python benchmarks/sandbox_bench.py [--observations 10000] [--page-size 1000] [--runs 5]``

For compact (~0.6 KB) and realistic (~1.3 KB) Observations, one run pages through the patient's
Observations with a patient-level token through the whole WSGI app (routing, token check, search,
Bundle, JSON), in process, so the figures are the sandbox's own work without a socket (the client
only looks for the next link). Printed per
record size: the first page (search + snapshot), later pages (slices of the snapshot), the same with
gzip, 4 threads paging at once (wall time per page), and the baseline measured in the same run:
``orjson.dumps`` of a page Bundle with the same entries.
"""

from __future__ import annotations

import argparse
import gc
import gzip as gzip_module
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.records import RecordMaker, compact, realistic  # noqa: E402
from launch.sandbox import create_app  # noqa: E402
from launch.sandbox.oauth import Grant  # noqa: E402

NEXT_LINK = re.compile(rb'"relation":"next","url":"([^"]+)"')
PATIENT = "bench"
BASE = "http://sandbox.bench/fhir"


def build_sandbox(make: RecordMaker, count: int, tmp: Path) -> tuple[Any, str]:
    data = tmp / make.__name__
    data.mkdir()
    entries = [{"resource": {"resourceType": "Patient", "id": PATIENT, "name": [{"text": "Bench Patient"}]}}]
    entries += [{"resource": make(i, PATIENT)} for i in range(count)]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    (data / "bench.json").write_bytes(orjson.dumps(bundle))
    app = create_app(
        {
            "TESTING": True,
            "PUBLIC_URL": BASE.removesuffix("/fhir"),
            "DATA_DIR": str(data),
            "DATES": "stored",
            "SIGNING_KEY_PATH": str(tmp / "key.pem"),
        }
    )
    token = app.extensions["sandbox"].auth.add_access(
        Grant(
            client_id="bench",
            scopes=("patient/Observation.rs",),
            user="Practitioner/dr-ada",
            patient=PATIENT,
            encounter=None,
            expires_at=time.time() + 3600,
        )
    )
    return app, token


def page_through(client: Any, token: str, page_size: int, gzip: bool) -> list[float]:
    """Seconds per page while following next links."""
    headers = {"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip" if gzip else "identity"}
    url: str | None = f"/fhir/Observation?patient={PATIENT}&_count={page_size}"
    timings: list[float] = []
    while url:
        started = time.perf_counter()
        response = client.get(url, headers=headers)
        body = response.get_data()
        timings.append(time.perf_counter() - started)
        assert response.status_code == 200, body[:300]
        if gzip:
            assert response.headers.get("Content-Encoding") == "gzip"
            body = gzip_module.decompress(body)
        url = _next_url(body)
    return timings


def _next_url(body: bytes) -> str | None:
    """The next link's path and query, found without decoding the page (the client's share is not
    what is measured)."""
    found = NEXT_LINK.search(body)
    if found is None:
        return None
    parts = urlsplit(found.group(1).decode())
    return f"{parts.path}?{parts.query}"


def baseline(app: Any, page_size: int, runs: int) -> float:
    """``orjson.dumps`` of a searchset Bundle holding the first page's stored resources."""
    resources = app.extensions["sandbox"].store.all_of_type("Observation")[:page_size]
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [
            {"fullUrl": f"{BASE}/Observation/{r['id']}", "resource": r, "search": {"mode": "match"}}
            for r in resources
        ],
    }
    timings = []
    for _ in range(runs * 10):
        started = time.perf_counter()
        orjson.dumps(bundle)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def concurrent_pages(app: Any, token: str, page_size: int, threads: int) -> tuple[float, int]:
    """Wall time for ``threads`` clients paging through at once, and the pages fetched."""
    pages: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        fetched = len(page_through(app.test_client(), token, page_size, gzip=False))
        with lock:
            pages.append(fetched)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    started = time.perf_counter()
    for worker_thread in workers:
        worker_thread.start()
    for worker_thread in workers:
        worker_thread.join()
    return time.perf_counter() - started, sum(pages)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observations", type=int, default=10_000)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"observations={args.observations} page_size={args.page_size} runs={args.runs} (in-process WSGI)")
    with tempfile.TemporaryDirectory() as tmp:
        for make in (compact, realistic):
            app, token = build_sandbox(make, args.observations, Path(tmp))
            gc.collect()
            gc.freeze()  # as `back-mice-sandbox serve` does after loading: the store is permanent
            client = app.test_client()
            size = len(orjson.dumps(make(1, PATIENT)))
            page_through(client, token, args.page_size, gzip=False)  # warm-up
            first: list[float] = []
            later: list[float] = []
            zipped: list[float] = []
            for _ in range(args.runs):
                timings = page_through(client, token, args.page_size, gzip=False)
                first.append(timings[0])
                later += timings[1:]
                zipped += page_through(client, token, args.page_size, gzip=True)[1:]
            floor = baseline(app, args.page_size, args.runs)
            wall, pages = concurrent_pages(app, token, args.page_size, threads=4)
            median_later = statistics.median(later)
            print(f"\n{make.__name__} records (~{size} bytes each)")
            print(f"  first page (search + snapshot) median {ms(statistics.median(first))}")
            print(f"  later pages                    median {ms(median_later)}")
            print(f"  later pages, gzip              median {ms(statistics.median(zipped))}")
            print(f"  4 clients at once, wall/page          {ms(wall / pages)}")
            print(f"  baseline: orjson.dumps of a page      {ms(floor)}")
            print(f"  later page / baseline                 {median_later / floor:7.2f}x")


if __name__ == "__main__":
    main()
