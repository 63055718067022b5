"""Time ``fetch_patient_record`` against a loopback FHIR stub serving one large synthetic patient.

Usage: ``python benchmarks/fetch_record.py [--observations 10000] [--page-size 1000] [--runs 5]``

The stub answers the Patient read and the five patient searches with gzip'd searchset pages (next
links under the base), so the figures cover HTTP, gzip, decoding and paging but no server-side work.
Prints the median and p95 wall time per fetch, round trips, and bytes on the wire.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.records import compact  # noqa: E402
from smart_app.fhir import FhirClient, fetch_patient_record  # noqa: E402

PATIENT = "bench"


def observation(index: int) -> dict[str, Any]:
    """A compact record of ``benchmarks/records.py`` as a server keeps it (short id, ``meta``)."""
    return {
        **compact(index, PATIENT),
        "id": f"o{index}",
        "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00Z"},
    }


class Stub:
    def __init__(self, observations: int) -> None:
        self.observations = [observation(i) for i in range(observations)]
        self.bytes_sent = 0
        self.lock = threading.Lock()

    def page(self, base: str, resource_type: str, params: dict[str, list[str]]) -> dict[str, Any]:
        items = self.observations if resource_type == "Observation" else []
        count = int(params.get("_count", ["100"])[0])
        offset = int(params.get("_offset", ["0"])[0])
        chunk = items[offset : offset + count]
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(items),
            "entry": [
                {
                    "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in chunk
            ],
        }
        if offset + count < len(items):
            bundle["link"] = [
                {
                    "relation": "next",
                    "url": f"{base}/{resource_type}?patient={PATIENT}"
                    f"&_count={count}&_offset={offset + count}",
                }
            ]
        return bundle


def serve(stub: Stub) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            parts = urlsplit(self.path)
            base = f"http://{self.headers['Host']}/fhir"
            segments = parts.path.removeprefix("/fhir/").split("/")
            if segments == ["Patient", PATIENT]:
                body: Any = {"resourceType": "Patient", "id": PATIENT}
            else:
                body = stub.page(base, segments[0], parse_qs(parts.query))
            raw = gzip.compress(orjson.dumps(body), compresslevel=5)
            with stub.lock:
                stub.bytes_sent += len(raw)
            self.send_response(200)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/fhir"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observations", type=int, default=10_000)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    stub = Stub(args.observations)
    server, base = serve(stub)
    timings: list[float] = []
    trips: list[int] = []
    try:
        for _ in range(args.runs):
            stub.bytes_sent = 0
            with FhirClient(base, token="benchmark-token") as client:
                started = time.perf_counter()
                result = fetch_patient_record(client, PATIENT, lambda _type: True, page_size=args.page_size)
                timings.append(time.perf_counter() - started)
                trips.append(result.round_trips)
            assert result.counts.get("Observation") == args.observations, result.failures
    finally:
        server.shutdown()
    timings.sort()
    p95 = timings[min(len(timings) - 1, round(0.95 * (len(timings) - 1)))]
    print(f"observations={args.observations} page_size={args.page_size} runs={args.runs}")
    print(f"fetch median={statistics.median(timings) * 1000:.0f} ms p95={p95 * 1000:.0f} ms")
    print(f"round_trips per fetch={statistics.median(trips):.0f} gzip bytes per fetch={stub.bytes_sent}")


if __name__ == "__main__":
    main()
