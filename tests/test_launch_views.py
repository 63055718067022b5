"""The launch blueprint and session helpers (smart_app.web.launch, smart_app.web.session), against a
fake EHR mocked with ``responses``: no sockets."""

from __future__ import annotations

import base64
import logging
import threading
import time
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient
from joserfc import jwt
from joserfc.jwk import KeySet
from launch_support import launch_of, start_launch
from smart_support import (
    AUTHORIZE,
    ISS,
    JWKS_URI,
    METADATA,
    OTHER_KEY,
    SECRET,
    SECRET_ENV,
    TOKEN,
    WELL_KNOWN,
    id_token,
    make_app,
    mock_discovery,
    token_response,
    write_registration,
)

from smart_app.smart.launch import Launch
from smart_app.web import session as smart_session


@pytest.fixture()
def app(tmp_path) -> Flask:
    return make_app(tmp_path)


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def form(call: Any) -> dict[str, str]:
    body = call.request.body
    text = body.decode() if isinstance(body, bytes) else str(body)
    return {k: v[0] for k, v in parse_qs(text).items()}


def start(client: FlaskClient, launch: str | None = "L-1") -> dict[str, str]:
    args = {"iss": ISS} if launch is None else {"iss": ISS, "launch": launch}
    response = client.get("/launch", query_string=args)
    assert response.status_code == 302, response.data
    assert response.location.startswith(AUTHORIZE + "?")
    return query(response.location)


def mock_token(rsps: responses.RequestsMock, nonce: str | None, **overrides: Any) -> None:
    body = token_response(**overrides)
    if nonce is not None and "id_token" not in overrides:
        body["id_token"] = id_token(nonce)
    rsps.add(responses.POST, TOKEN, json=body)


def posted(rsps: responses.RequestsMock) -> Any:
    """The last request sent to the token endpoint."""
    return [c for c in rsps.calls if c.request.method == "POST"][-1]


def smart_of(client: FlaskClient) -> dict[str, Any] | None:
    """The client's launch as the launch store holds it now (plus its FHIR base)."""
    launch = launch_of(client.application, client)
    return None if launch is None else {**launch.to_dict(), "fhir_base": launch.fhir_base}


def pendings_of(client: FlaskClient) -> dict[str, Any]:
    with client.session_transaction() as sess:
        return dict(sess.get("pending") or {})


# --- /launch ---------------------------------------------------------------------------------------


def test_chooser_lists_registered_ehrs(client, rsps):
    page = client.get("/launch")
    assert page.status_code == 200
    assert b"Test EHR" in page.data and b"Local sandbox EHR" not in page.data
    assert len(rsps.calls) == 0


@pytest.mark.parametrize("iss", ["https://evil.test/fhir", ISS + "/other", "x" * 5000, "javascript:alert(1)"])
def test_unknown_iss_is_refused_without_any_request(client, rsps, iss):
    page = client.get("/launch", query_string={"iss": iss, "launch": "L"})
    assert page.status_code == 400
    assert b"not registered" in page.data
    assert len(rsps.calls) == 0
    assert pendings_of(client) == {}


def test_ehr_launch_redirects_to_authorize_and_keeps_pending(client, rsps):
    mock_discovery(rsps)
    q = start(client, "L-1")
    assert q["launch"] == "L-1" and q["aud"] == ISS and q["client_id"] == "test-client"
    assert q["redirect_uri"] == "https://app.test/callback" and q["code_challenge_method"] == "S256"
    assert "launch" in q["scope"].split() and "launch/patient" not in q["scope"].split()
    pendings = pendings_of(client)
    assert list(pendings) == [q["state"]]
    assert pendings[q["state"]]["nonce"] == q["nonce"]
    assert [c.request.url for c in rsps.calls] == [WELL_KNOWN]


def test_standalone_launch(client, rsps):
    mock_discovery(rsps)
    q = start(client, None)
    assert "launch" not in q and "launch/patient" in q["scope"].split()


def test_discovery_failure_page_names_ehr(client, rsps):
    rsps.add(responses.GET, WELL_KNOWN, status=500)
    rsps.add(responses.GET, METADATA, body="<html>")
    page = client.get("/launch", query_string={"iss": ISS, "launch": "L"})
    assert page.status_code == 502
    assert b"Test EHR" in page.data and b"discovery_failed" in page.data
    assert pendings_of(client) == {}


def test_capability_statement_fallback_launch(client, rsps):
    rsps.add(responses.GET, WELL_KNOWN, status=404)
    rsps.add(
        responses.GET,
        METADATA,
        json={
            "resourceType": "CapabilityStatement",
            "rest": [
                {
                    "security": {
                        "extension": [
                            {
                                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                                "extension": [
                                    {"url": "authorize", "valueUri": "/auth/authorize"},
                                    {"url": "token", "valueUri": "/auth/token"},
                                ],
                            }
                        ]
                    }
                }
            ],
        },
    )
    assert start(client)["client_id"] == "test-client"


def test_pendings_are_bounded(tmp_path, rsps):
    app = make_app(tmp_path, config={"LAUNCH_MAX_PENDING": 3})
    client = app.test_client()
    mock_discovery(rsps)
    states = [start(client)["state"] for _ in range(5)]
    assert set(pendings_of(client)) == set(states[-3:])


# --- /callback -------------------------------------------------------------------------------------


def test_callback_completes_launch(client, rsps):
    mock_discovery(rsps)
    q = start(client)
    mock_token(rsps, q["nonce"])
    response = client.get("/callback", query_string={"code": "CODE-1", "state": q["state"]})
    assert response.status_code == 302 and response.location.endswith("/review")
    smart = smart_of(client)
    assert smart is not None
    assert {
        k: smart[k]
        for k in (
            "iss",
            "registration_id",
            "fhir_base",
            "patient",
            "encounter",
            "fhir_user",
            "need_patient_banner",
            "smart_style_url",
            "fhir_context",
            "access_token",
            "refresh_token",
            "token_endpoint",
        )
    } == {
        "iss": ISS,
        "registration_id": "test-ehr",
        "fhir_base": ISS,
        "patient": "p1",
        "encounter": "Encounter/e1",
        "fhir_user": "Practitioner/dr1",
        "need_patient_banner": False,
        "smart_style_url": "https://ehr.test/style.json",
        "fhir_context": [{"reference": "Encounter/e1"}],
        "access_token": "AT-first-0123456789",
        "refresh_token": "RT-first-0123456789",
        "token_endpoint": TOKEN,
    }
    assert "patient/Observation.rs" in smart["scope"].split()
    assert smart["expires_at"] > time.time() + 3500
    assert pendings_of(client) == {}
    sent = form(posted(rsps))
    assert sent["code"] == "CODE-1" and sent["redirect_uri"] == "https://app.test/callback"
    assert sent["code_verifier"] and sent["client_id"] == "test-client"
    assert client.get("/protected").json == {"token": "AT-first-0123456789"}


@pytest.mark.parametrize(
    "args", [{"code": "C"}, {"code": "C", "state": ""}, {"code": "C", "state": "forged"}]
)
def test_missing_or_invalid_state(client, rsps, args):
    mock_discovery(rsps)
    q = start(client)
    page = client.get("/callback", query_string=args)
    assert page.status_code == 400 and b"invalid_state" in page.data
    if args.get("state"):
        assert args["state"].encode() not in page.data
    assert q["state"] in pendings_of(client)  # a forged callback does not consume a real launch
    assert smart_of(client) is None
    assert [c.request.method for c in rsps.calls] == ["GET"]


def test_reused_state_is_refused(client, rsps):
    mock_discovery(rsps)
    q = start(client)
    mock_token(rsps, q["nonce"])
    assert client.get("/callback", query_string={"code": "C", "state": q["state"]}).status_code == 302
    again = client.get("/callback", query_string={"code": "C", "state": q["state"]})
    assert again.status_code == 400 and q["state"].encode() not in again.data
    assert len([c for c in rsps.calls if c.request.method == "POST"]) == 1


def test_state_from_another_browser_is_refused(app, rsps):
    mock_discovery(rsps)
    q = start(app.test_client())
    page = app.test_client().get("/callback", query_string={"code": "C", "state": q["state"]})
    assert page.status_code == 400


def test_expired_pending_is_refused(client, rsps, monkeypatch):
    mock_discovery(rsps)
    q = start(client)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 601)
    page = client.get("/callback", query_string={"code": "C", "state": q["state"]})
    assert page.status_code == 400
    assert pendings_of(client) == {}


def test_concurrent_launches_each_complete(client, rsps):
    mock_discovery(rsps)
    first, second = start(client, "A"), start(client, "B")
    mock_token(rsps, first["nonce"])
    assert client.get("/callback", query_string={"code": "C", "state": first["state"]}).status_code == 302
    assert list(pendings_of(client)) == [second["state"]]


def test_access_denied_is_shown_escaped_with_ehr_name(client, rsps):
    mock_discovery(rsps)
    q = start(client)
    page = client.get(
        "/callback",
        query_string={
            "error": "access_denied",
            "error_description": "<script>alert('x')</script> user said no",
            "state": q["state"],
        },
    )
    assert page.status_code == 403
    assert b"Test EHR" in page.data and b"access was denied" in page.data
    assert b"<script>" not in page.data and b"&lt;script&gt;" in page.data
    assert pendings_of(client) == {} and smart_of(client) is None
    assert not [c for c in rsps.calls if c.request.method == "POST"]


def test_oauth_error_with_unknown_state(client):
    page = client.get("/callback", query_string={"error": "invalid_scope", "state": "nope"})
    assert page.status_code == 400 and b"invalid_scope" in page.data and b"nope" not in page.data


@pytest.mark.parametrize(
    ("kwargs", "status", "needle"),
    [
        ({"status": 400, "json": {"error": "invalid_grant"}}, 502, b"invalid_grant"),
        ({"status": 401, "json": {"error": "invalid_client"}}, 502, b"invalid_client"),
        ({"status": 200, "body": "not json"}, 502, b"did not answer with usable JSON"),
        ({"status": 200, "json": token_response(patient=None)}, 502, b"which patient"),
    ],
)
def test_token_failures_keep_nothing(client, rsps, kwargs, status, needle):
    mock_discovery(rsps)
    q = start(client)
    rsps.add(responses.POST, TOKEN, **kwargs)
    page = client.get("/callback", query_string={"code": "CODE-9", "state": q["state"]})
    assert page.status_code == status and needle in page.data and b"Test EHR" in page.data
    assert b"CODE-9" not in page.data
    assert smart_of(client) is None and pendings_of(client) == {}


@pytest.mark.parametrize(
    ("token", "needle"),
    [
        (lambda nonce: id_token(nonce, key=OTHER_KEY), b"signature"),
        (lambda nonce: id_token(nonce, aud="someone-else"), b"another client"),
        (lambda nonce: id_token("wrong"), b"nonce"),
        (lambda nonce: id_token(nonce, exp=int(time.time()) - 3600), b"expired"),
    ],
)
def test_bad_id_token_keeps_nothing(client, rsps, token, needle):
    mock_discovery(rsps)
    q = start(client)
    mock_token(rsps, None, id_token=token(q["nonce"]))
    page = client.get("/callback", query_string={"code": "C", "state": q["state"]})
    assert page.status_code == 502 and needle in page.data and b"invalid_id_token" in page.data
    assert smart_of(client) is None
    assert JWKS_URI in [c.request.url for c in rsps.calls]


def test_openid_granted_without_id_token(client, rsps):
    mock_discovery(rsps)
    q = start(client)
    mock_token(rsps, None)
    page = client.get("/callback", query_string={"code": "C", "state": q["state"]})
    assert page.status_code == 502 and smart_of(client) is None


def test_symmetric_client_launch(tmp_path, rsps, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, SECRET)
    write_registration(
        tmp_path / "registrations", client_type="confidential-symmetric", client_secret_env=SECRET_ENV
    )
    client = make_app(tmp_path).test_client()
    mock_discovery(rsps)
    q = start(client)
    mock_token(rsps, q["nonce"])
    assert client.get("/callback", query_string={"code": "C", "state": q["state"]}).status_code == 302
    header = posted(rsps).request.headers["Authorization"]
    user, _, password = base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")
    assert (unquote(user), unquote(password)) == ("test-client", SECRET)


def test_asymmetric_client_launch_assertion_verifies_against_published_jwks(tmp_path, rsps):
    write_registration(tmp_path / "registrations", client_type="confidential-asymmetric", signing_alg="ES384")
    client = make_app(tmp_path).test_client()
    published = client.get("/.well-known/jwks.json")
    assert published.status_code == 200 and all("d" not in k for k in published.json["keys"])
    mock_discovery(rsps)
    q = start(client)
    mock_token(rsps, q["nonce"])
    assert client.get("/callback", query_string={"code": "C", "state": q["state"]}).status_code == 302
    sent = form(posted(rsps))
    token = jwt.decode(sent["client_assertion"], KeySet.import_key_set(published.json), algorithms=["ES384"])
    assert token.claims["aud"] == TOKEN and token.claims["iss"] == "test-client"
    assert token.header["kid"] in {k["kid"] for k in published.json["keys"]}


# --- session helpers: launch_required, get_access_token ---------------------------------------------


def launched(client: FlaskClient, **smart: Any) -> Launch:
    return start_launch(
        client.application,
        client,
        **{
            "iss": ISS,
            "registration_id": "test-ehr",
            "ehr_name": "Test EHR",
            "patient": "p1",
            "scope": "patient/Patient.r",
            "access_token": "AT-old",
            "refresh_token": "RT-old",
            "expires_at": time.time() + 30,
            "token_endpoint": TOKEN,
            **smart,
        },
    )


def test_launch_required_page(client):
    page = client.get("/protected")
    assert page.status_code == 401 and b"Launch this app from your EHR" in page.data


def test_token_not_refreshed_when_far_from_expiry(client, rsps):
    launched(client, expires_at=time.time() + 3600)
    assert client.get("/protected").json == {"token": "AT-old"}
    assert len(rsps.calls) == 0


def test_refresh_before_expiry_replaces_rotated_refresh_token(client, rsps):
    launched(client)
    rsps.add(
        responses.POST,
        TOKEN,
        json={
            "access_token": "AT-new",
            "token_type": "Bearer",
            "expires_in": 3600,
            "refresh_token": "RT-new",
            "scope": "patient/Patient.r",
        },
    )
    assert client.get("/protected").json == {"token": "AT-new"}
    assert form(rsps.calls[0]) == {
        "grant_type": "refresh_token",
        "refresh_token": "RT-old",
        "client_id": "test-client",
    }
    smart = smart_of(client)
    assert (
        smart is not None and smart["refresh_token"] == "RT-new" and smart["expires_at"] > time.time() + 3500
    )
    assert smart["patient"] == "p1"
    assert client.get("/protected").json == {"token": "AT-new"}
    assert len(rsps.calls) == 1


def test_refresh_without_rotation_keeps_refresh_token(client, rsps):
    launched(client, access_token="AT-keep")
    rsps.add(responses.POST, TOKEN, json={"access_token": "AT-2", "token_type": "Bearer", "expires_in": 600})
    assert client.get("/protected").json == {"token": "AT-2"}
    smart = smart_of(client)
    assert smart is not None and smart["refresh_token"] == "RT-old" and smart["scope"] == "patient/Patient.r"


def test_refresh_failure_after_expiry_asks_for_relaunch(client, rsps):
    launched(client, access_token="AT-dead", expires_at=time.time() - 5)
    rsps.add(responses.POST, TOKEN, status=400, json={"error": "invalid_grant"})
    page = client.get("/protected")
    assert (
        page.status_code == 401
        and b"Relaunch the app from your EHR" in page.data
        and b"Test EHR" in page.data
    )
    assert smart_of(client) is None


def test_expired_without_refresh_token_asks_for_relaunch(client, rsps):
    launched(client, access_token="AT-dead2", refresh_token=None, expires_at=time.time() - 5)
    page = client.get("/protected")
    assert page.status_code == 401 and b"Relaunch" in page.data
    assert len(rsps.calls) == 0 and smart_of(client) is None


def test_refresh_failure_before_expiry_keeps_current_token(client, rsps):
    launched(client, access_token="AT-still")
    rsps.add(responses.POST, TOKEN, status=500)
    assert client.get("/protected").json == {"token": "AT-still"}
    assert client.get("/protected").json == {"token": "AT-still"}
    assert len(rsps.calls) == 1  # the dead refresh token is not tried again


def test_one_refresh_at_a_time_across_threads(app, rsps):
    client = app.test_client()
    launched(client, access_token="AT-threads")
    gate = threading.Event()

    def slow_token(request: Any) -> tuple[int, dict[str, str], str]:
        gate.wait(2)
        return (
            200,
            {"Content-Type": "application/json"},
            (
                '{"access_token": "AT-fresh", "token_type": "Bearer", "expires_in": 3600, '
                '"refresh_token": "RT-x"}'
            ),
        )

    rsps.add_callback(responses.POST, TOKEN, callback=slow_token)
    results: list[str] = []
    launch = launch_of(app, client)
    assert launch is not None
    with app.test_request_context():
        provider = smart_session.access_token_provider(launch)
        threads = [threading.Thread(target=lambda: results.append(provider())) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.1)
        gate.set()
        for t in threads:
            t.join(5)
    assert results == ["AT-fresh"] * 4
    assert len(rsps.calls) == 1


def test_a_second_tab_of_the_launch_adopts_the_refresh_done_by_the_first(app, rsps):
    """Two browsers (or processes) that hold the same launch: one refresh, then both use its token."""
    a, b = app.test_client(), app.test_client()
    shared = launched(a, access_token="AT-shared")
    with b.session_transaction() as sess:
        sess["launch_id"] = shared.id
    rsps.add(
        responses.POST,
        TOKEN,
        json={
            "access_token": "AT-after",
            "token_type": "Bearer",
            "expires_in": 3600,
            "refresh_token": "RT-rotated",
        },
    )
    assert a.get("/protected").json == {"token": "AT-after"}
    assert b.get("/protected").json == {"token": "AT-after"}
    assert (smart_of(b) or {})["refresh_token"] == "RT-rotated"
    assert len(rsps.calls) == 1


def test_registry_and_discovery_are_per_app(app):
    with app.app_context():
        assert smart_session.launch_registry() is smart_session.launch_registry(app)
        assert smart_session.discovery() is smart_session.discovery(app)
        assert smart_session.launch_registry().by_iss(ISS) is not None
        # the product ships no registrations of its own: only the deployment's directories count
        assert smart_session.launch_registry().by_iss("http://127.0.0.1:8001/fhir") is None


# --- logs -------------------------------------------------------------------------------------------


def test_logs_of_full_launch_and_refresh_contain_no_secrets(tmp_path, rsps, monkeypatch, caplog):
    monkeypatch.setenv(SECRET_ENV, SECRET)
    write_registration(
        tmp_path / "registrations", client_type="confidential-symmetric", client_secret_env=SECRET_ENV
    )
    client = make_app(tmp_path).test_client()
    caplog.set_level(logging.DEBUG)
    mock_discovery(rsps)
    q = start(client)
    token = id_token(q["nonce"])
    mock_token(rsps, None, id_token=token, expires_in=0)  # expired at once: the next request refreshes
    client.get("/callback", query_string={"code": "CODE-secret-42", "state": q["state"]})
    rsps.add(
        responses.POST,
        TOKEN,
        json={
            "access_token": "AT-second-999",
            "token_type": "Bearer",
            "expires_in": 3600,
            "refresh_token": "RT-second-999",
        },
    )
    assert client.get("/protected").json == {"token": "AT-second-999"}
    client.get("/callback", query_string={"code": "CODE-secret-42", "state": q["state"]})
    client.get("/callback", query_string={"error": "access_denied", "state": q["state"]})
    text = caplog.text
    assert "launch started" in text and "completed" in text and "refreshed" in text
    for secret in (
        SECRET,
        "CODE-secret-42",
        q["state"],
        q["nonce"],
        token,
        "AT-first-0123456789",
        "RT-first-0123456789",
        "AT-second-999",
        "RT-second-999",
    ):
        assert secret not in text


def test_registering_the_blueprint_redacts_access_logs(app, caplog):
    from smart_app.smart.logredact import RedactSecrets

    assert any(isinstance(f, RedactSecrets) for f in logging.getLogger("werkzeug").filters)
    with caplog.at_level(logging.INFO, logger="werkzeug"):
        logging.getLogger("werkzeug").info('"GET /callback?code=C0DE&state=ST4TE HTTP/1.1" 302 -')
    assert "C0DE" not in caplog.text and "ST4TE" not in caplog.text
