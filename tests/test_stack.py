"""``launch/stack.py``'s own parts that the benchmarks rely on: the fast EHR's replay, the request counts,
the HAProxy configurations (checked by ``haproxy -c``) and the seeding of the FHIR server."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from launch.stack import (
    COUNTS_PATH,
    Counting,
    Replay,
    balancer_config,
    batch_of_puts,
    ehr_front_config,
    program,
    request_kind,
)


class Ehr:
    """A WSGI app that numbers its answers, so a replayed one is told from a fresh one."""

    def __init__(self, status: str = "200 OK") -> None:
        self.status = status
        self.calls = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        self.calls += 1
        start_response(self.status, [("Content-Type", "application/fhir+json")])
        return [f'{{"answer": {self.calls}}}'.encode()]


def test_replay_answers_a_repeated_fhir_read_with_the_recorded_bytes() -> None:
    ehr = Ehr()
    client = Client(Replay(ehr))
    first = client.get("/fhir/Observation?patient=p&_count=1000")
    again = client.get("/fhir/Observation?patient=p&_count=1000")
    assert first.get_data() == again.get_data() == b'{"answer": 1}'
    assert again.headers["Content-Type"] == "application/fhir+json"
    assert ehr.calls == 1
    other_query = client.get("/fhir/Observation?patient=q&_count=1000")
    assert other_query.get_data() == b'{"answer": 2}'


def test_replay_answers_a_repeated_batch_read_and_passes_other_bundles_through() -> None:
    ehr = Ehr()
    client = Client(Replay(ehr))
    batch = b'{"resourceType": "Bundle", "type": "batch", "entry": []}'
    first, again = client.post("/fhir", data=batch), client.post("/fhir", data=batch)
    assert first.get_data() == again.get_data() == b'{"answer": 1}'
    other = client.post("/fhir", data=batch.replace(b"[]", b'[{"request": {"method": "GET", "url": "x"}}]'))
    assert other.get_data() == b'{"answer": 2}'
    transaction = b'{"resourceType": "Bundle", "type": "transaction", "entry": []}'
    client.post("/fhir", data=transaction)
    client.post("/fhir", data=transaction)
    assert ehr.calls == 4


def test_replay_passes_writes_token_requests_and_failures_through() -> None:
    ehr = Ehr()
    client = Client(Replay(ehr))
    client.post("/fhir", data=b"{}")
    client.post("/fhir", data=b"{}")
    client.post("/auth/token")
    client.post("/auth/token")
    client.get("/fhir/.well-known/smart-configuration")
    client.get("/fhir/.well-known/smart-configuration")
    assert ehr.calls == 6
    failing = Ehr("404 Not Found")
    client = Client(Replay(failing))
    client.get("/fhir/Patient/missing")
    client.get("/fhir/Patient/missing")
    assert failing.calls == 2  # only 200 answers are kept


def test_counting_counts_by_kind_and_keeps_the_token_answers_size() -> None:
    client = Client(Counting(Ehr()))
    for path in ("/fhir/Patient/p", "/fhir/Observation", "/fhir/.well-known/smart-configuration", "/ehr"):
        client.get(path)
    token = client.post("/auth/token")
    counts = client.get(COUNTS_PATH).get_json()
    assert counts == {
        "fhir": 2,
        "discovery": 1,
        "other": 1,
        "token": 1,
        "token_bytes": len(token.get_data()),
    }


@pytest.mark.parametrize(
    ("method", "path", "kind"),
    [
        ("GET", "/fhir", "fhir"),
        ("POST", "/fhir", "fhir-write"),
        ("PUT", "/fhir/Observation/1", "fhir-write"),
        ("GET", "/fhirish", "other"),
        ("GET", "/.well-known/smart-configuration", "discovery"),
        ("GET", "/auth/authorize", "authorize"),
        ("GET", "/smart-style.json", "style"),
    ],
)
def test_request_kinds(method: str, path: str, kind: str) -> None:
    assert request_kind(method, path) == kind


def test_a_batch_posted_to_the_base_is_a_read() -> None:
    assert request_kind("POST", "/fhir", "batch") == "fhir"
    assert request_kind("POST", "/fhir", "transaction") == "fhir-write"
    client = Client(Counting(Ehr()))
    client.post("/fhir", data=b'{"resourceType": "Bundle", "type": "batch", "entry": []}')
    client.post("/fhir", data=b'{"resourceType": "Bundle", "type": "transaction", "entry": []}')
    assert client.get(COUNTS_PATH).get_json() == {"fhir": 1, "fhir-write": 1}


@pytest.mark.parametrize(
    "config",
    [balancer_config(18080, [("app1", 18081), ("app2", 18082)]), ehr_front_config(18090, 18091, 18092)],
    ids=["balancer", "ehr-front"],
)
def test_haproxy_accepts_the_generated_configurations(config: str, tmp_path: Path) -> None:
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    checked = subprocess.run([program("haproxy"), "-c", "-f", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert "balance roundrobin" in config or "replace-path" in config
    assert "%HPO" in config  # the log names paths only: OAuth codes travel in queries


def test_batch_of_puts_keeps_each_resource_under_its_id() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "p"}},
            {"resource": {"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p"}}},
            {"resource": {"resourceType": "Observation"}},  # no id: nothing to keep it under
        ],
    }
    batch = batch_of_puts(bundle)
    assert batch["type"] == "batch"
    assert [e["request"] for e in batch["entry"]] == [
        {"method": "PUT", "url": "Patient/p"},
        {"method": "PUT", "url": "Observation/o1"},
    ]
