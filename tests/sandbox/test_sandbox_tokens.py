"""Sandbox token behaviours of real EHRs: 20-second access tokens, the same access token for refreshes
close together, refresh-token rotation (none, rotate, strict), and a client_credentials grant for a
registered command-line client (SMART App Launch 2.x "Backend Services")."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from flask import Flask

from launch.sandbox import create_app
from tests.sandbox_fixtures import AUDITOR_ID, PUBLIC_ID, SYMMETRIC_ID, SandboxActions, make_sandbox

OFFLINE = "launch patient/*.rs offline_access"


class Clock:
    """The authorization server's time, moved by the test instead of waiting."""

    def __init__(self, app: Flask) -> None:
        self.now = 1_900_000_000.0
        app.extensions["sandbox"].auth.clock = lambda: self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _sandbox(data_dir, signing_key_path, client_key, **config: Any) -> tuple[SandboxActions, Clock]:
    app = make_sandbox(data_dir, signing_key_path, client_key, **config)
    return SandboxActions(app.test_client(), client_key), Clock(app)


def _first_tokens(acts: SandboxActions) -> dict[str, Any]:
    code, verifier = acts.authorize(scope=OFFLINE)
    body = acts.exchange(code, verifier).json
    assert body["refresh_token"], body
    return dict(body)


def _refresh(acts: SandboxActions, refresh_token: str, **extra: str) -> Any:
    return acts.token({"grant_type": "refresh_token", "refresh_token": refresh_token, **extra})


def test_twenty_second_access_tokens_expire_and_refresh(data_dir, signing_key_path, client_key):
    acts, clock = _sandbox(data_dir, signing_key_path, client_key, ACCESS_TOKEN_TTL=20)
    first = _first_tokens(acts)
    assert first["expires_in"] == 20
    clock.advance(19)
    assert acts.fhir("GET", "/Patient/p1", first["access_token"]).status_code == 200
    clock.advance(2)
    expired = acts.fhir("GET", "/Patient/p1", first["access_token"])
    assert expired.status_code == 401 and 'error="invalid_token"' in expired.headers["WWW-Authenticate"]
    renewed = _refresh(acts, first["refresh_token"]).json
    assert renewed["expires_in"] == 20 and renewed["access_token"] != first["access_token"]
    assert acts.fhir("GET", "/Patient/p1", renewed["access_token"]).status_code == 200


def test_refreshes_close_together_get_the_same_access_token(data_dir, signing_key_path, client_key):
    acts, clock = _sandbox(
        data_dir,
        signing_key_path,
        client_key,
        ACCESS_TOKEN_TTL=20,
        ACCESS_TOKEN_REUSE_WINDOW=60,
        REFRESH_TOKEN_ROTATION="none",
    )
    first = _first_tokens(acts)
    clock.advance(1)
    one = _refresh(acts, first["refresh_token"]).json
    clock.advance(2)
    two = _refresh(acts, first["refresh_token"]).json
    assert one["access_token"] == two["access_token"] != first["access_token"]
    assert (one["expires_in"], two["expires_in"]) == (20, 18)  # the same token's own remaining life
    assert "refresh_token" not in one and "refresh_token" not in two  # rotation "none": keep the old one
    clock.advance(18)  # the shared token has expired: a refresh never hands it out again
    three = _refresh(acts, first["refresh_token"]).json
    assert three["access_token"] != one["access_token"] and three["expires_in"] == 20
    assert acts.fhir("GET", "/Patient/p1", one["access_token"]).status_code == 401
    assert acts.fhir("GET", "/Patient/p1", three["access_token"]).status_code == 200
    narrowed = _refresh(acts, first["refresh_token"], scope="patient/*.rs").json
    assert narrowed["access_token"] != three["access_token"]  # other scopes: another token


def test_without_a_reuse_window_every_refresh_gets_a_new_token(data_dir, signing_key_path, client_key):
    acts, _ = _sandbox(data_dir, signing_key_path, client_key, REFRESH_TOKEN_ROTATION="none")
    first = _first_tokens(acts)
    tokens = {_refresh(acts, first["refresh_token"]).json["access_token"] for _ in range(3)}
    assert len(tokens) == 3


def test_rotation_refuses_a_used_refresh_token_and_keeps_the_new_one(data_dir, signing_key_path, client_key):
    acts, _ = _sandbox(data_dir, signing_key_path, client_key)  # REFRESH_TOKEN_ROTATION "rotate"
    first = _first_tokens(acts)
    second = _refresh(acts, first["refresh_token"]).json
    reused = _refresh(acts, first["refresh_token"])
    assert reused.status_code == 400 and reused.json["error"] == "invalid_grant"
    assert acts.fhir("GET", "/Patient/p1", second["access_token"]).status_code == 200
    assert _refresh(acts, second["refresh_token"]).status_code == 200


def test_strict_rotation_revokes_the_grant_when_a_used_token_returns(data_dir, signing_key_path, client_key):
    acts, _ = _sandbox(data_dir, signing_key_path, client_key, REFRESH_TOKEN_ROTATION="strict")
    first = _first_tokens(acts)
    second = _refresh(acts, first["refresh_token"]).json
    assert second["refresh_token"] != first["refresh_token"]
    reused = _refresh(acts, first["refresh_token"])
    assert reused.status_code == 400 and reused.json["error"] == "invalid_grant"
    assert "revoked" in reused.json["error_description"]
    assert _refresh(acts, second["refresh_token"]).json["error"] == "invalid_grant"
    assert acts.fhir("GET", "/Patient/p1", second["access_token"]).status_code == 401


def _basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def test_client_credentials_gives_a_user_level_read_token(actions: SandboxActions):
    response = actions.token({"grant_type": "client_credentials", "scope": "user/*.rs"}, client_id=AUDITOR_ID)
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    body = response.json
    assert body["scope"] == "user/*.rs" and body["token_type"] == "Bearer" and body["expires_in"] > 0
    assert not {"refresh_token", "id_token", "patient", "encounter", "need_patient_banner"} & set(body)
    token = body["access_token"]
    assert actions.fhir("GET", "/Patient/p2", token).status_code == 200
    assert actions.fhir("GET", "/Observation?patient=p1&_count=50", token).json["total"] == 12
    created = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    assert actions.fhir("POST", "/Observation", token, json=created).status_code == 403


@pytest.mark.parametrize(
    ("client_id", "form", "status", "error"),
    [
        (AUDITOR_ID, {"scope": "user/*.cruds"}, 400, "invalid_scope"),  # more than it may have
        (AUDITOR_ID, {"scope": "patient/*.rs launch offline_access"}, 400, "invalid_scope"),
        (AUDITOR_ID, {}, 400, "invalid_scope"),
        (SYMMETRIC_ID, {"scope": "user/*.rs"}, 400, "unauthorized_client"),  # an app, not a service
        (PUBLIC_ID, {"scope": "user/*.rs"}, 400, "unauthorized_client"),
    ],
)
def test_client_credentials_refusals(actions: SandboxActions, client_id, form, status, error):
    response = actions.token({"grant_type": "client_credentials", **form}, client_id=client_id)
    assert (response.status_code, response.json["error"]) == (status, error)


def test_the_service_client_cannot_sign_users_in_or_use_a_wrong_secret(actions: SandboxActions, client):
    page = client.get("/auth/authorize", query_string=actions.authorize_params(client_id=AUDITOR_ID))
    assert page.status_code == 400 and b"unauthorized_client" in page.data
    wrong = actions.token(
        {"grant_type": "client_credentials", "scope": "user/*.rs"},
        client_id=AUDITOR_ID,
        headers=_basic(AUDITOR_ID, "wrong"),
    )
    assert wrong.status_code == 401 and wrong.json["error"] == "invalid_client"


def test_the_registered_auditor_client_works_with_its_sandbox_secret(signing_key_path, monkeypatch):
    monkeypatch.delenv("SANDBOX_AUDITOR_CLIENT_SECRET", raising=False)
    app = create_app({"TESTING": True, "SIGNING_KEY_PATH": str(signing_key_path)})
    response = app.test_client().post(
        "/auth/token",
        data={"grant_type": "client_credentials", "scope": "user/*.rs"},
        headers=_basic("back-mice-sandbox-auditor", "sandbox-auditor-not-a-real-secret"),
    )
    assert response.status_code == 200 and response.json["scope"] == "user/*.rs"
