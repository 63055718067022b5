"""CDS Hooks ``patient-view`` with prefetch: response time for a normal patient and for 10,000 Observations.

Usage: ``.venv/bin/python benchmarks/cds_bench.py [--runs 40] [--large 10000]``

One app with a registered CDS client (an ES384 key, inline JWK Set). Each call is a full request: JWT
check (signature, claims, replay memory on disk), body read and decoded, prefetch turned into the
record, criteria evaluated, cards and the suggestion's drafts built and profile-checked, the audit line
written, JSON answered. It runs in process through the WSGI app (the service's own time) and over a
loopback socket (werkzeug, ``requests``). The record: a probable back mouse with a WARN flag (so the
card carries the full suggestion), plus routine Observations (vitals, pain scores, exam findings; about
1.4 KB each) and Conditions. Baseline measured in the same run on the same record: ``assess`` alone
(engine only), and decoding the request body. Targets (docs/cds-hooks.md#speed): p95 under 100 ms for
the normal patient, under 500 ms with 10,000 Observations.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import requests
from joserfc import jwt
from joserfc.jwk import ECKey
from werkzeug.serving import make_server

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from assess_bench import condition, observation  # noqa: E402

from smart_app import create_app  # noqa: E402
from smart_app import fhirjson as fj  # noqa: E402
from smart_app.cds.prefetch import SEARCH_KEYS  # noqa: E402
from smart_app.clinical import PatientRecord, assess  # noqa: E402

ISS = "https://ehr.bench"
SERVICE = "back-mice-patient-view"
SCT = "http://snomed.info/sct"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
FINDING = "https://smart-app.example/fhir/CodeSystem/back-mice-finding"
PRESENT = {"coding": [{"system": SCT, "code": "52101004", "display": "Present"}]}


def _day(days_ago: float) -> str:
    return (
        (datetime.now(UTC) - timedelta(days=days_ago))
        .replace(microsecond=0)
        .isoformat()
        .replace("+00:00", "Z")
    )


def clinical_core() -> list[dict[str, Any]]:
    """Low back pain, a nodule at the posterior iliac crest whose pressure reproduces the pain, a pain
    score, and long-term steroids (a WARN flag): probable, with a draft suggestion and a DetectedIssue."""
    subject = {"reference": "Patient/bench"}

    def cond(cid: str, code: str, display: str) -> dict[str, Any]:
        return {
            "resourceType": "Condition",
            "id": cid,
            "meta": {"versionId": "1"},
            "clinicalStatus": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
                ]
            },
            "verificationStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                        "code": "confirmed",
                    }
                ]
            },
            "code": {"coding": [{"system": ICD, "code": code, "display": display}]},
            "subject": subject,
            "recordedDate": _day(40)[:10],
        }

    def exam(oid: str, system: str, code: str) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "id": oid,
            "meta": {"versionId": "1"},
            "status": "final",
            "code": {"coding": [{"system": system, "code": code}]},
            "subject": subject,
            "effectiveDateTime": _day(2),
            "valueCodeableConcept": PRESENT,
            "bodySite": {"text": "left posterior iliac crest"},
        }

    return [
        cond("core-lbp", "M54.50", "Low back pain, unspecified"),
        cond("core-steroids", "Z79.52", "Long term (current) use of systemic steroids"),
        exam("core-nodule", SCT, "95325000"),
        exam("core-repro", FINDING, "nodule-pain-reproduced"),
    ]


def record(n_obs: int, n_cond: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rng = random.Random(11)
    patient = {"resourceType": "Patient", "id": "bench", "birthDate": "1971-05-04", "gender": "female"}
    routine = [observation(i, rng) for i in range(n_obs)] + [condition(i, rng) for i in range(n_cond)]
    return patient, [*clinical_core(), *routine]


def hook_body(patient: dict[str, Any], resources: list[dict[str, Any]]) -> bytes:
    prefetch: dict[str, Any] = {"patient": patient}
    for key, rtype in SEARCH_KEYS.items():
        found = [r for r in resources if r["resourceType"] == rtype]
        prefetch[key] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "entry": [{"fullUrl": f"{ISS}/fhir/{rtype}/{r['id']}", "resource": r} for r in found],
        }
    return orjson.dumps(
        {
            "hook": "patient-view",
            "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/bench", "patientId": "bench"},
            "prefetch": prefetch,
        }
    )


class Client:
    def __init__(self) -> None:
        self.key = ECKey.generate_key("P-384", private=True)
        self.kid = self.key.thumbprint()

    def registration(self) -> dict[str, Any]:
        jwk = self.key.as_dict(private=False) | {"kid": self.kid, "alg": "ES384"}
        return {"kind": "cds-client", "id": "bench", "name": "Bench EHR", "iss": ISS, "jwks": {"keys": [jwk]}}

    def token(self, aud: str) -> str:
        now = int(time.time())
        claims = {"iss": ISS, "aud": aud, "exp": now + 120, "iat": now, "jti": str(uuid.uuid4())}
        return jwt.encode(
            {"alg": "ES384", "typ": "JWT", "kid": self.kid}, claims, self.key, algorithms=["ES384"]
        )


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]
    return statistics.median(ordered) * 1000, p95 * 1000


def timed(fn: Callable[[], Any], runs: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def measure(
    label: str, n_obs: int, n_cond: int, target: float, runs: int, client: Client, wsgi: Any, url: str
) -> None:
    patient, resources = record(n_obs, n_cond)
    body = hook_body(patient, resources)
    headers = {"Content-Type": "application/json"}
    http = requests.Session()

    def call_wsgi() -> None:
        answer = wsgi.post(
            f"/cds-services/{SERVICE}",
            data=body,
            headers={**headers, "Authorization": f"Bearer {client.token(url)}"},
        )
        assert answer.status_code == 200 and answer.get_json()["cards"], answer.data[:300]

    def call_http() -> None:
        answer = http.post(
            url, data=body, headers={**headers, "Authorization": f"Bearer {client.token(url)}"}, timeout=60
        )
        assert answer.status_code == 200 and answer.json()["cards"], answer.text[:300]

    patient_record = PatientRecord(patient=patient, resources=resources)
    now = datetime.now(UTC)

    def decode_and_assess() -> None:
        fj.decode_json(body)
        assess(patient_record, now)

    decode = percentiles(timed(lambda: fj.decode_json(body), runs))
    floor = percentiles(timed(decode_and_assess, runs))
    service = percentiles(timed(call_wsgi, runs))
    over_http = percentiles(timed(call_http, runs))
    verdict = "meets" if over_http[1] < target else "MISSES"
    print(
        f"{label:<30}{len(body) / 1e6:>6.1f}"
        f"{decode[0]:>8.0f} /{decode[1]:>5.0f}{floor[0]:>9.0f} /{floor[1]:>5.0f}"
        f"{service[0]:>9.0f} /{service[1]:>5.0f}{over_http[0]:>9.0f} /{over_http[1]:>5.0f}"
        f"   {verdict} p95 < {target:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--large", type=int, default=10_000, help="Observations of the large patient")
    args = parser.parse_args()

    client = Client()
    with tempfile.TemporaryDirectory() as tmp:
        regs = Path(tmp) / "registrations"
        regs.mkdir()
        (regs / "bench.json").write_text(json.dumps(client.registration()))
        server = make_server("127.0.0.1", 0, None, threaded=True)  # the port first: it is the app's URL
        public = f"http://127.0.0.1:{server.server_port}"
        app = create_app(
            {
                "TESTING": True,
                "PUBLIC_URL": public,
                "REGISTRATIONS_DIRS": [str(regs)],
                "INSTANCE_PATH": str(Path(tmp) / "instance"),
            }
        )
        server.app = app
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        url = f"{public}/cds-services/{SERVICE}"
        try:
            print(
                f"CDS Hooks patient-view with prefetch; ms, median / p95 of {args.runs} calls (large: half)"
            )
            print(
                f"{'patient':<30}{'MB':>6}{'decode':>15}{'decode+assess':>16}{'service WSGI':>16}"
                f"{'over HTTP':>16}"
            )
            print(f"{'':<36}{'(baseline)':>15}{'(baseline)':>16}")
            measure("normal (200 Observations)", 200, 20, 100.0, args.runs, client, app.test_client(), url)
            measure(
                f"large ({args.large:,} Observations)",
                args.large,
                200,
                500.0,
                max(10, args.runs // 2),
                client,
                app.test_client(),
                url,
            )
        finally:
            server.shutdown()
            thread.join(timeout=5)
            server.server_close()


if __name__ == "__main__":
    main()
