"""Fault catalogue, launching: the bad-input catalogue's launch items, and issue 11's launch items,
against the misbehaving EHR of ``tests/hostile_ehr.py`` over real HTTP.

Unknown ``iss``; missing, invalid and reused ``state``; ``error=access_denied``; discovery answering
404, 500 or HTML; the token endpoint answering 400, 401 or HTML; an id_token with a bad signature or
another audience; an access token that expired, with and without a refresh token. Issue 11: a patient
id that is a path (``../Practitioner/x``); JSON nested 100,000 deep in the SMART configuration and the
token response; a token endpoint on another origin than the ``iss`` (logged, or refused by setting).
Each gets a clear page with the right status, a log line naming the fault (and no secret), and leaves
nothing behind: no launch is kept and no FHIR request is sent.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.hostile_ehr import TIMEOUT, HostileStack

pytestmark = pytest.mark.e2e


def heading(page: requests.Response) -> str:
    found = re.search(r"<h1[^>]*>(.*?)</h1>", page.text, re.S)
    return found.group(1).strip() if found else ""


def app_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("smart_app") and r.levelno >= logging.WARNING
    ]


def fhir_requests(stack: HostileStack) -> list[str]:
    """FHIR requests other than discovery's (``.well-known`` and the CapabilityStatement)."""
    discovery = ("/fhir/.well-known/smart-configuration", "/fhir/metadata")
    return [s.path for s in stack.hostile.seen if s.path.startswith("/fhir/") and s.path not in discovery]


def launches_kept(stack: HostileStack) -> int:
    return len(list((Path(stack.app.instance_path) / "launches").glob("*.json")))


def assert_nothing_kept(stack: HostileStack, before: int) -> None:
    assert launches_kept(stack) == before
    assert fhir_requests(stack) == []
    assert not [e for e in stack.audit_events() if e["kind"] in ("launch", "read")]


def assert_no_secret_logged(stack: HostileStack, caplog: pytest.LogCaptureFixture) -> None:
    auth = stack.sandbox_app.extensions["sandbox"].auth
    with auth.lock:
        issued = [*auth.access, *auth.refresh]
    for secret in issued:
        assert secret not in caplog.text


def authorize_redirect(stack: HostileStack, browser: requests.Session) -> dict[str, list[str]]:
    """Start a launch and stop at the EHR's authorize URL: its query (with the app's ``state``)."""
    made = requests.get(f"{stack.ehr_url}/ehr/launch-url", params={"patient": "jkowalski"}, timeout=TIMEOUT)
    to_ehr = browser.get(made.json()["url"], allow_redirects=False, timeout=TIMEOUT)
    assert to_ehr.status_code in (302, 303), to_ehr.text[:1000]
    return parse_qs(urlsplit(to_ehr.headers["Location"]).query)


# -- the launch request and the callback --------------------------------------------------------------------
def test_unknown_iss_is_refused_without_any_request(
    hostile: HostileStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    before = launches_kept(hostile)
    page = requests.get(
        f"{hostile.app_url}/launch",
        params={"iss": "https://evil.example/fhir", "launch": "x"},
        timeout=TIMEOUT,
    )
    assert page.status_code == 400 and heading(page) == "The launch could not be completed"
    assert "This EHR is not registered with the app" in page.text
    assert hostile.hostile.seen == [] and hostile.other.requests == []
    assert "Launch refused (unknown_iss): iss not registered" in app_warnings(caplog)
    assert_nothing_kept(hostile, before)


@pytest.mark.parametrize(
    ("query", "shown", "logged"),
    [
        ({"code": "x"}, "has no state", "Callback without state"),
        ({"code": "x", "state": "made-up"}, "does not match a launch", "unknown, expired or reused state"),
    ],
    ids=["missing-state", "invalid-state"],
)
def test_callback_without_a_known_state_is_refused(
    hostile: HostileStack, caplog: pytest.LogCaptureFixture, query: dict[str, str], shown: str, logged: str
) -> None:
    caplog.set_level(logging.WARNING)
    before = launches_kept(hostile)
    page = requests.get(f"{hostile.app_url}/callback", params=query, timeout=TIMEOUT)
    assert page.status_code == 400 and shown in page.text
    assert any(logged in m for m in app_warnings(caplog))
    assert [s.path for s in hostile.hostile.seen] == []  # no code exchanged
    assert_nothing_kept(hostile, before)


def test_reused_callback_is_refused(hostile: HostileStack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    with requests.Session() as browser:
        review = hostile.launch(browser)
        assert review.status_code == 200
        callback = next(r for r in review.history if urlsplit(r.url).path == "/callback")
        kept = launches_kept(hostile)
        replay = browser.get(callback.url, allow_redirects=False, timeout=TIMEOUT)
    assert replay.status_code == 400 and "was already used" in replay.text
    assert launches_kept(hostile) == kept
    assert sum(1 for s in hostile.hostile.seen if s.path == "/auth/token") == 1  # the code was not sent again
    assert any("reused state" in m for m in app_warnings(caplog))


def test_access_denied_is_explained(hostile: HostileStack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    before = launches_kept(hostile)
    with requests.Session() as browser:
        query = authorize_redirect(hostile, browser)
        page = browser.get(
            f"{hostile.app_url}/callback",
            params={
                "error": "access_denied",
                "error_description": "<b>User said no</b>",
                "state": query["state"][0],
            },
            timeout=TIMEOUT,
        )
    assert page.status_code == 403 and "access was denied" in page.text
    assert "&lt;b&gt;User said no&lt;/b&gt;" in page.text
    assert any("access_denied" in m for m in app_warnings(caplog))
    assert_nothing_kept(hostile, before)


# -- discovery and token endpoint ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (404, b"{}", "application/json"),
        (500, b"{}", "application/json"),
        (200, b"<html>login</html>", "text/html"),
    ],
    ids=["404", "500", "not-json"],
)
def test_discovery_failure_is_a_clear_page(
    hostile: HostileStack, caplog: pytest.LogCaptureFixture, status: int, body: bytes, content_type: str
) -> None:
    caplog.set_level(logging.WARNING)
    before = launches_kept(hostile)
    for target in ("discovery", "metadata"):  # .well-known and its CapabilityStatement fallback alike
        hostile.hostile.set(target, kind="status", status=status, body=body, content_type=content_type)
    with requests.Session() as browser:
        page = hostile.launch(browser)
    assert page.status_code == 502 and heading(page) == "The launch could not be completed"
    assert urlsplit(page.url).path == "/launch" and "Hostile EHR (test)" in page.text
    assert not any(s.path.startswith("/auth/") for s in hostile.hostile.seen)  # never sent to authorize
    assert any(m.startswith("SMART discovery failed for ") for m in app_warnings(caplog))
    assert "Launch with Hostile EHR (test) failed: discovery_failed" in app_warnings(caplog)
    assert_nothing_kept(hostile, before)


def test_discovery_404_falls_back_to_the_capability_statement(
    hostile: HostileStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    before = launches_kept(hostile)
    hostile.hostile.set("discovery", kind="status", status=404)
    with requests.Session() as browser:
        page = hostile.launch(browser)
    # the CapabilityStatement's oauth-uris name the endpoints, but no JWKS: the id_token cannot be checked
    assert [s.path for s in hostile.hostile.seen if s.path == "/fhir/metadata"]
    assert page.status_code == 502 and "does not publish a jwks_uri" in page.text
    assert_nothing_kept(hostile, before)
    assert_no_secret_logged(hostile, caplog)


@pytest.mark.parametrize(
    ("status", "body", "content_type", "shown"),
    [
        (
            400,
            b'{"error": "invalid_grant"}',
            "application/json",
            "refused the request (HTTP 400, invalid_grant)",
        ),
        (
            401,
            b'{"error": "invalid_client"}',
            "application/json",
            "refused the request (HTTP 401, invalid_client)",
        ),
        (200, b"<html>oops</html>", "text/html", "did not answer with usable JSON (not valid JSON)"),
    ],
    ids=["400", "401", "not-json"],
)
def test_token_endpoint_failure_is_a_clear_page(
    hostile: HostileStack,
    caplog: pytest.LogCaptureFixture,
    status: int,
    body: bytes,
    content_type: str,
    shown: str,
) -> None:
    caplog.set_level(logging.WARNING)
    before = launches_kept(hostile)
    hostile.hostile.set("token", kind="status", status=status, body=body, content_type=content_type)
    with requests.Session() as browser:
        page = hostile.launch(browser)
    assert page.status_code == 502 and shown in page.text
    assert any("Token request" in m for m in app_warnings(caplog))
    assert_nothing_kept(hostile, before)
    assert_no_secret_logged(hostile, caplog)


def _resign(stack: HostileStack, claims: dict[str, Any]) -> str:
    from joserfc import jwt
    from joserfc.jwk import RSAKey

    key = RSAKey.import_key((stack.tmp_path / "sandbox-key.pem").read_bytes())
    return jwt.encode({"alg": "RS256", "kid": key.thumbprint()}, claims, key)


def _claims(id_token: str) -> dict[str, Any]:
    payload = id_token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


@pytest.mark.parametrize("tamper", ["bad-signature", "wrong-audience"])
def test_bad_id_token_is_refused(
    hostile: HostileStack, caplog: pytest.LogCaptureFixture, tamper: str
) -> None:
    caplog.set_level(logging.WARNING)
    before = launches_kept(hostile)

    def spoil(token: dict[str, Any]) -> dict[str, Any]:
        head, payload, signature = token["id_token"].split(".")
        if tamper == "bad-signature":
            flipped = "A" if signature[10] != "A" else "B"
            token["id_token"] = f"{head}.{payload}.{signature[:10]}{flipped}{signature[11:]}"
        else:
            token["id_token"] = _resign(hostile, {**_claims(token["id_token"]), "aud": "someone-else"})
        return token

    hostile.hostile.set("token", kind="rewrite", fn=spoil)
    with requests.Session() as browser:
        page = hostile.launch(browser)
    assert page.status_code == 502 and heading(page) == "The launch could not be completed"
    reason = (
        "the signature does not verify"
        if tamper == "bad-signature"
        else "it is meant for another client (aud)"
    )
    assert f"identity token was rejected: {reason}" in page.text
    check = "signature" if tamper == "bad-signature" else "aud"
    assert any(
        m.startswith("id_token from Hostile EHR (test) rejected: ") and check in m
        for m in app_warnings(caplog)
    )
    assert_nothing_kept(hostile, before)
    assert_no_secret_logged(hostile, caplog)


# -- an expired access token ---------------------------------------------------------------------------------
def _expire(stack: HostileStack, *, drop_refresh: bool) -> None:
    from smart_app.web.session import launch_store

    newest = max((Path(stack.app.instance_path) / "launches").glob("*.json"), key=lambda p: p.stat().st_mtime)
    with stack.app.app_context():
        store = launch_store(stack.app)
        launch = store.load(newest.stem)
        assert launch is not None
        changes: dict[str, Any] = {"expires_at": time.time() - 5}
        if drop_refresh:
            changes["refresh_token"] = None
        store.save(dataclasses.replace(launch, **changes))


def test_expired_token_with_a_refresh_token_is_refreshed(hostile: HostileStack) -> None:
    with requests.Session() as browser:
        assert hostile.launch(browser).status_code == 200
        _expire(hostile, drop_refresh=False)
        hostile.hostile.seen.clear()
        again = browser.get(f"{hostile.app_url}/review", timeout=TIMEOUT)
    assert again.status_code == 200 and "badge-class" in again.text
    paths = [s.path for s in hostile.hostile.seen]
    assert paths.count("/auth/token") == 1 and paths.index("/auth/token") < paths.index(
        "/fhir/Patient/jkowalski"
    )


def test_expired_token_without_a_refresh_token_asks_for_a_relaunch(
    hostile: HostileStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with requests.Session() as browser:
        assert hostile.launch(browser).status_code == 200
        _expire(hostile, drop_refresh=True)
        hostile.hostile.seen.clear()
        again = browser.get(f"{hostile.app_url}/review", timeout=TIMEOUT)
    assert again.status_code == 401 and "Relaunch" in again.text
    assert fhir_requests(hostile) == []  # no FHIR request with a token known to be expired
    assert any("no refresh token" in m for m in app_warnings(caplog))


# -- issue 11: the launch context, guarded JSON, endpoints on another origin --------------------------------
NESTED = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("patient", "../Practitioner/x"),
        ("patient", "https://elsewhere.example/fhir/Patient/p1"),
        ("encounter", "Encounter/../../x"),
    ],
)
def test_launch_context_that_is_not_a_fhir_id_is_refused_before_any_read(
    hostile: HostileStack, caplog: pytest.LogCaptureFixture, field: str, value: str
) -> None:
    caplog.set_level(logging.WARNING)
    before = launches_kept(hostile)
    hostile.hostile.set("token", kind="rewrite", fn=lambda token: {**token, field: value})
    with requests.Session() as browser:
        page = hostile.launch(browser)
    assert page.status_code == 502 and heading(page) == "The launch could not be completed"
    article = "an" if field == "encounter" else "a"
    assert f"with {article} {field} &#39;{value}&#39; that is neither a FHIR id nor" in page.text
    assert "this is a mistake in the EHR&#39;s launch" in page.text
    # The refusal has no log line of its own yet (smart_app/web/launch.py); the exchange that preceded it is
    # logged without the token.
    assert_no_secret_logged(hostile, caplog)
    assert_nothing_kept(hostile, before)  # no FHIR request with the EHR's path


def test_json_nested_100000_deep_in_the_token_response_is_a_clear_page(
    hostile: HostileStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    before = launches_kept(hostile)
    hostile.hostile.set("token", kind="body", body=NESTED)
    with requests.Session() as browser:
        page = hostile.launch(browser)
    assert page.status_code == 502
    assert "token endpoint did not answer with usable JSON (nested deeper than 1024 levels)" in page.text
    assert any(
        "nested deeper than 1024 levels" in m and m.startswith("Token request") for m in app_warnings(caplog)
    )
    assert_nothing_kept(hostile, before)


def test_json_nested_100000_deep_in_the_smart_configuration_is_a_clear_page(
    hostile: HostileStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    before = launches_kept(hostile)
    for target in ("discovery", "metadata"):
        hostile.hostile.set(target, kind="body", body=NESTED)
    with requests.Session() as browser:
        page = hostile.launch(browser)
    assert page.status_code == 502 and "SMART configuration could not be read" in page.text
    assert "nested deeper than 1024 levels" in page.text
    assert not any(s.path.startswith("/auth/") for s in hostile.hostile.seen)
    assert any(m.startswith("SMART discovery failed") and "nested deeper" in m for m in app_warnings(caplog))
    assert_nothing_kept(hostile, before)


def _foreign_token_endpoint(stack: HostileStack) -> None:
    other = f"{stack.other_url}/token"
    stack.hostile.set("discovery", kind="rewrite", fn=lambda config: {**config, "token_endpoint": other})


FOREIGN_LOG = (
    "SMART configuration of Hostile EHR (test) names endpoints on another origin than its FHIR base and the "
    "registration's auth_origins: token endpoint at "
)


def test_token_endpoint_on_another_origin_is_logged(
    hostile: HostileStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    _foreign_token_endpoint(hostile)
    with requests.Session() as browser:
        page = hostile.launch(browser)
    assert f"{FOREIGN_LOG}{hostile.other_url}" in app_warnings(caplog)
    # by default the launch goes on: the other site gets the code exchange, and its non-answer ends the launch
    assert [path for path, _ in hostile.other.requests] == ["/token"]
    assert page.status_code == 502 and "token response has no access_token" in page.text


def test_token_endpoint_on_another_origin_is_refused_by_setting(
    hostile: HostileStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    before = launches_kept(hostile)
    hostile.app.config["FOREIGN_AUTH_ENDPOINTS"] = "refuse"
    _foreign_token_endpoint(hostile)
    with requests.Session() as browser:
        page = hostile.launch(browser)
    assert page.status_code == 502 and "so nothing was sent there" in page.text
    assert hostile.other.requests == []  # no code, no PKCE verifier, no credentials
    assert not any(s.path.startswith("/auth/") for s in hostile.hostile.seen)
    assert "Launch with Hostile EHR (test) failed: untrusted_endpoint" in app_warnings(caplog)
    assert_nothing_kept(hostile, before)
