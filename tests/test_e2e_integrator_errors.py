"""Errors an integrator can act on, end to end against the sandbox EHR: a wrong client secret, a key the
EHR does not know, a registration the EHR no longer has, and a denied sign-in each show the EHR's own
reason on the error page and in the log, without the secret."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from joserfc.jwk import RSAKey

from tests.servers import CLIENT_IDS, SANDBOX_SECRET, SECRET_ENV, Stack, start_stack

pytestmark = pytest.mark.e2e
TIMEOUT = 30


@pytest.fixture
def stacks(tmp_path: Path) -> Iterator[list[Stack]]:
    running: list[Stack] = []
    yield running
    for stack in running:
        stack.stop()


def start(stacks: list[Stack], tmp_path: Path, client_type: str) -> Stack:
    stack = start_stack(tmp_path / client_type, client_type=client_type)
    stacks.append(stack)
    return stack


def ehr_launch(stack: Stack) -> requests.Response:
    made = requests.get(f"{stack.sandbox.url}/ehr/launch-url", params={"patient": "apatel"}, timeout=TIMEOUT)
    with requests.Session() as browser:
        return browser.get(made.json()["url"], timeout=TIMEOUT)


def sandbox_clients(stack: Stack) -> dict[str, Any]:
    clients: dict[str, Any] = stack.sandbox_app.extensions["sandbox"].clients
    return clients


def test_a_wrong_client_secret_shows_the_ehrs_reason(stacks, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(SECRET_ENV, "not-the-secret-the-ehr-has")
    stack = start(stacks, tmp_path, "confidential-symmetric")
    caplog.set_level(logging.INFO)
    page = ehr_launch(stack)
    assert page.status_code == 502 and page.url.startswith(f"{stack.app_url}/callback")
    assert "refused the request (HTTP 401, invalid_client)" in page.text
    assert "The EHR said: client authentication failed" in page.text
    assert "invalid_client: client authentication failed" in caplog.text
    assert "not-the-secret-the-ehr-has" not in page.text + caplog.text


def test_a_key_the_ehr_does_not_know_shows_the_ehrs_reason(stacks, tmp_path):
    stack = start(stacks, tmp_path, "confidential-asymmetric")
    clients = sandbox_clients(stack)
    client_id = CLIENT_IDS["confidential-asymmetric"]
    other = dict(RSAKey.generate_key(2048).as_dict(private=False))
    clients[client_id] = dataclasses.replace(clients[client_id], jwks_uri=None, jwks={"keys": [other]})
    page = ehr_launch(stack)
    said = re.search(r"The EHR said: ([^<]+)", page.text)
    assert page.status_code == 502 and said, page.text[-1500:]
    assert said.group(1).strip() in ("client assertion signature not valid", "client assertion rejected")


def test_a_registration_the_ehr_dropped_shows_the_ehrs_reason(stacks, tmp_path, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, SANDBOX_SECRET)
    stack = start(stacks, tmp_path, "confidential-symmetric")
    made = requests.get(f"{stack.sandbox.url}/ehr/launch-url", params={"patient": "apatel"}, timeout=TIMEOUT)
    with requests.Session() as browser:
        authorize = browser.get(made.json()["url"], timeout=TIMEOUT, allow_redirects=False)
        to_ehr = browser.get(authorize.headers["Location"], timeout=TIMEOUT, allow_redirects=False)
        del sandbox_clients(stack)[CLIENT_IDS["confidential-symmetric"]]  # expired between the two steps
        page = browser.get(to_ehr.headers["Location"], timeout=TIMEOUT)
    assert page.status_code == 502 and "HTTP 401, invalid_client" in page.text
    said = re.search(r"The EHR said: ([^<]+)", page.text)
    assert said and said.group(1).strip() in ("unknown client", "client authentication failed"), page.text[
        -1500:
    ]


def test_a_denied_sign_in_shows_the_ehrs_reason(stacks, tmp_path):
    stack = start(stacks, tmp_path, "public")
    with requests.Session() as browser:
        sign_in = browser.get(f"{stack.app_url}/launch", params={"iss": stack.fhir_base}, timeout=TIMEOUT)
        pending = re.search(r'name="pending"\s+value="([^"]+)"', sign_in.text)
        assert pending
        page = browser.post(
            f"{stack.sandbox.url}/auth/authorize/decide",
            data={"pending": pending.group(1), "decision": "deny"},
            timeout=TIMEOUT,
        )
    assert page.status_code == 403
    assert "access was denied" in page.text and "The EHR said: the user denied the request" in page.text
