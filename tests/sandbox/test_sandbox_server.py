"""The sandbox on a real loopback port (BackgroundServer), and concurrent conditional creates."""

from __future__ import annotations

import threading

import pytest
import requests

from launch.sandbox.server import BackgroundServer
from tests.sandbox_fixtures import SandboxActions


@pytest.mark.e2e
def test_background_server_serves_discovery_and_gzip(data_dir, signing_key_path):
    config = {"TESTING": True, "DATA_DIR": str(data_dir), "SIGNING_KEY_PATH": str(signing_key_path)}
    with BackgroundServer(config) as server:
        conf = requests.get(f"{server.fhir_base}/.well-known/smart-configuration", timeout=5)
        assert conf.status_code == 200
        assert conf.json()["issuer"] == server.fhir_base and server.fhir_base.startswith("http://127.0.0.1:")
        metadata = requests.get(f"{server.fhir_base}/metadata", timeout=5)  # requests asks for gzip
        assert metadata.headers["Content-Encoding"] == "gzip"
        assert metadata.json()["resourceType"] == "CapabilityStatement"


def test_concurrent_conditional_creates_make_one_resource(actions: SandboxActions, sandbox_app):
    token = actions.access_token()
    body = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "Patient/p1"},
        "identifier": [{"system": "urn:test", "value": "once"}],
    }
    statuses: list[int] = []

    def post() -> None:
        with sandbox_app.test_client() as own:
            response = SandboxActions(own, actions.client_key).fhir(
                "POST",
                "/Observation",
                token,
                json=body,
                headers={"If-None-Exist": "identifier=urn:test|once"},
            )
            statuses.append(response.status_code)

    threads = [threading.Thread(target=post) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] * 7 + [201]
    assert actions.fhir("GET", "/Observation?identifier=urn:test|once", token).json["total"] == 1
