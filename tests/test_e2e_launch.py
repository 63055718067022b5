"""End to end over real HTTP: the sandbox EHR and the app on loopback, an HTTP client following redirects.

Covers EHR launch and standalone launch for each client type (issue "Foundation", Tests and evidence),
and that no token, refresh token, client secret or authorization code reaches any log.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.servers import CLIENT_IDS, SANDBOX_SECRET, SECRET_ENV, Stack, start_stack

pytestmark = pytest.mark.e2e

PATIENT = "apatel"


@pytest.fixture(params=list(CLIENT_IDS))
def stack(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    monkeypatch.setenv(SECRET_ENV, SANDBOX_SECRET)
    running = start_stack(tmp_path, client_type=request.param)
    yield running
    running.stop()


def ehr_launch(stack: Stack, browser: requests.Session, patient: str = PATIENT) -> requests.Response:
    """What a clinician's click in the EHR does: the EHR makes a launch and opens the app's launch URL."""
    made = requests.get(f"{stack.sandbox.url}/ehr/launch-url", params={"patient": patient}, timeout=10)
    made.raise_for_status()
    return browser.get(made.json()["url"], timeout=30)


def standalone_launch(stack: Stack, browser: requests.Session, patient: str = PATIENT) -> requests.Response:
    """Standalone launch: the app starts from its own URL; the EHR signs the user in and picks a patient."""
    sign_in = browser.get(f"{stack.app_url}/launch", params={"iss": stack.fhir_base}, timeout=30)
    assert sign_in.url.startswith(f"{stack.sandbox.url}/auth/authorize"), sign_in.url
    pending = re.search(r'name="pending"\s+value="([^"]+)"', sign_in.text)
    assert pending, "the sandbox's sign-in page carries the pending authorization"
    return browser.post(
        f"{stack.sandbox.url}/auth/authorize/decide",
        data={
            "pending": pending.group(1),
            "decision": "approve",
            "user": "Practitioner/dr-ada",
            "patient": patient,
        },
        timeout=30,
    )


def assert_review_page(response: requests.Response, stack: Stack) -> None:
    assert response.status_code == 200, response.text[:2000]
    assert urlsplit(response.url).path == "/review"
    assert response.url.startswith(stack.app_url)
    assert "badge-class" in response.text  # the assessment headline was rendered
    assert response.headers["Cache-Control"] == "no-store"
    assert f"frame-ancestors {stack.sandbox.url}" in response.headers["Content-Security-Policy"]


def test_ehr_launch_reaches_the_review_page(stack: Stack) -> None:
    with requests.Session() as browser:
        response = ehr_launch(stack, browser)
        assert_review_page(response, stack)
        hops = [urlsplit(r.url) for r in response.history]
        authorize = next(h for h in hops if h.path == "/auth/authorize")
        query = parse_qs(authorize.query)
        assert query["code_challenge_method"] == ["S256"]
        assert query["aud"] == [stack.fhir_base]
        assert "launch" in query and len(query["state"][0]) >= 22
    assert stack.counter.counts["fhir"] >= 3  # Patient read plus the searches


def test_standalone_launch_reaches_the_review_page(stack: Stack) -> None:
    with requests.Session() as browser:
        assert_review_page(standalone_launch(stack, browser), stack)


def test_reused_callback_is_refused_and_keeps_nothing(stack: Stack) -> None:
    with requests.Session() as browser:
        response = ehr_launch(stack, browser)
        callback = next(r for r in response.history if urlsplit(r.url).path == "/callback")
        replay = browser.get(callback.url, allow_redirects=False, timeout=10)
        assert replay.status_code == 400
        state = parse_qs(urlsplit(callback.url).query)["state"][0]
        assert state not in replay.text


def test_unknown_iss_is_refused_without_any_outbound_request(tmp_path: Path) -> None:
    running = start_stack(tmp_path)
    try:
        before = sum(running.counter.counts.values())
        params = {"iss": "https://evil.example/fhir", "launch": "x"}
        response = requests.get(f"{running.app_url}/launch", params=params, timeout=10)
        assert response.status_code == 400
        assert "evil.example" not in response.text or "&lt;" not in response.text
        assert sum(running.counter.counts.values()) == before
    finally:
        running.stop()


def test_no_secret_reaches_the_logs(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with requests.Session() as browser:
        response = ehr_launch(stack, browser)
        assert_review_page(response, stack)
        callback = next(r for r in response.history if urlsplit(r.url).path == "/callback")
        code = parse_qs(urlsplit(callback.url).query)["code"][0]
    auth = stack.sandbox_app.extensions["sandbox"].auth
    with auth.lock:
        issued = [*auth.access, *auth.refresh]
    assert issued, "the sandbox issued tokens for this launch"
    secrets_seen = [code, SANDBOX_SECRET, *issued]
    text = caplog.text
    for secret in secrets_seen:
        assert secret not in text
    assert "access_token" not in text


def test_audit_log_records_the_launch_and_reads_without_secrets(stack: Stack) -> None:
    with requests.Session() as browser:
        assert_review_page(ehr_launch(stack, browser), stack)
    auth = stack.sandbox_app.extensions["sandbox"].auth
    with auth.lock:
        issued = [*auth.access, *auth.refresh]
    lines = (Path(stack.app.instance_path) / "audit.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    kinds = [event["kind"] for event in events]
    assert kinds[:2] == ["launch", "read"]
    launch, read = events[0], events[1]
    assert launch["patient"] == PATIENT and launch["iss"] == stack.fhir_base
    assert read["counts"]["Observation"] >= 1
    text = "\n".join(lines)
    for secret in [*issued, SANDBOX_SECRET]:
        assert secret not in text

