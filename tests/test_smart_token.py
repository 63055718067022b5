"""Token requests for the three client types, and the token response (smart_app.smart.token)."""

from __future__ import annotations

import base64
import time
from urllib.parse import parse_qs, unquote

import pytest
import requests
import responses
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey
from smart_support import SECRET, SECRET_ENV, TOKEN, registration, token_response

from smart_app.smart.errors import LaunchContextError, TokenError
from smart_app.smart.keys import AppKeys
from smart_app.smart.token import CLIENT_ASSERTION_TYPE, exchange_code, parse_token_response, refresh

KEYS = AppKeys({"RS384": RSAKey.generate_key(2048), "ES384": ECKey.generate_key("P-384")})


def form(call: responses.Call) -> dict[str, str]:
    body = call.request.body
    text = body.decode() if isinstance(body, bytes) else str(body)
    return {k: v[0] for k, v in parse_qs(text).items()}


def exchange(reg=None, **kwargs):
    return exchange_code(
        reg or registration(),
        TOKEN,
        code="CODE-abc",
        code_verifier="VERIFIER-xyz",
        redirect_uri="https://app.test/callback",
        http=requests.Session(),
        keys=KEYS,
        **kwargs,
    )


def test_public_client_sends_client_id_and_pkce_verifier(rsps):
    rsps.add(responses.POST, TOKEN, json=token_response())
    tokens = exchange()
    sent = form(rsps.calls[0])
    assert sent == {
        "grant_type": "authorization_code",
        "code": "CODE-abc",
        "redirect_uri": "https://app.test/callback",
        "code_verifier": "VERIFIER-xyz",
        "client_id": "test-client",
    }
    assert "Authorization" not in rsps.calls[0].request.headers
    assert tokens.access_token == "AT-first-0123456789" and tokens.refresh_token == "RT-first-0123456789"
    assert tokens.expires_at is not None and abs(tokens.expires_at - (time.time() + 3600)) < 5
    ctx = tokens.context
    assert (ctx.patient, ctx.encounter, ctx.need_patient_banner) == ("p1", "e1", False)
    assert ctx.smart_style_url == "https://ehr.test/style.json"
    assert ctx.fhir_context == ({"reference": "Encounter/e1"},)
    assert tokens.scope.can_search("Observation") and ctx.scopes == tokens.scope
    assert "AT-first" not in repr(tokens) and "RT-first" not in repr(tokens)


def test_symmetric_client_uses_http_basic_with_secret_from_env(rsps, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, SECRET)
    reg = registration(client_type="confidential-symmetric", client_secret_env=SECRET_ENV)
    rsps.add(responses.POST, TOKEN, json=token_response())
    exchange(reg)
    header = rsps.calls[0].request.headers["Authorization"]
    assert header.startswith("Basic ")
    client_id, _, secret = base64.b64decode(header[6:]).decode().partition(":")
    assert (unquote(client_id), unquote(secret)) == ("test-client", SECRET)
    assert "client_id" not in form(rsps.calls[0]) and SECRET not in str(rsps.calls[0].request.body)


def test_symmetric_client_without_secret_fails_before_any_request(rsps, monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    reg = registration(client_type="confidential-symmetric", client_secret_env=SECRET_ENV)
    with pytest.raises(TokenError, match=SECRET_ENV):
        exchange(reg)
    assert len(rsps.calls) == 0


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_asymmetric_client_sends_signed_assertion(rsps, alg):
    reg = registration(client_type="confidential-asymmetric", signing_alg=alg)
    rsps.add(responses.POST, TOKEN, json=token_response())
    exchange(reg)
    exchange(reg)
    assertions = []
    for call in rsps.calls:
        sent = form(call)
        assert sent["client_assertion_type"] == CLIENT_ASSERTION_TYPE and "client_id" not in sent
        token = jwt.decode(
            sent["client_assertion"], KeySet.import_key_set(KEYS.public_jwks()), algorithms=[alg]
        )
        assert (
            token.header["alg"] == alg
            and token.header["kid"] == KEYS.kid(alg)
            and token.header["typ"] == "JWT"
        )
        claims = token.claims
        assert claims["iss"] == claims["sub"] == "test-client" and claims["aud"] == TOKEN
        assert 0 < claims["exp"] - claims["iat"] <= 300 and claims["exp"] <= time.time() + 300
        assertions.append(claims["jti"])
    assert len(set(assertions)) == 2


def test_refresh_request_shape(rsps):
    rsps.add(
        responses.POST, TOKEN, json=token_response(access_token="AT-2", refresh_token="RT-2", patient=None)
    )
    tokens = refresh(
        registration(), TOKEN, refresh_token="RT-1", http=requests.Session(), scope="patient/Patient.r"
    )
    assert form(rsps.calls[0]) == {
        "grant_type": "refresh_token",
        "refresh_token": "RT-1",
        "scope": "patient/Patient.r",
        "client_id": "test-client",
    }
    assert (tokens.access_token, tokens.refresh_token) == ("AT-2", "RT-2")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"status": 400, "json": {"error": "invalid_grant", "error_description": "code CODE-abc used"}},
            "HTTP 400, invalid_grant",
        ),
        ({"status": 401, "json": {"error": "invalid_client"}}, "HTTP 401, invalid_client"),
        ({"status": 500, "body": "boom"}, "HTTP 500"),
    ],
)
def test_token_endpoint_refusals(rsps, kwargs, expected):
    rsps.add(responses.POST, TOKEN, **kwargs)
    with pytest.raises(TokenError) as info:
        exchange()
    assert expected in info.value.description
    assert "CODE-abc" not in info.value.description and "VERIFIER" not in info.value.description
    assert info.value.http_status == kwargs["status"]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"body": "<html>hi</html>"}, "did not answer with usable JSON"),
        ({"json": ["x"]}, "did not answer with a JSON object"),
        ({"json": token_response(access_token=None)}, "has no access_token"),
        ({"json": token_response(token_type="MAC")}, "token_type other than Bearer"),
        ({"body": requests.ConnectionError("down")}, "could not be reached"),
        ({"body": requests.ReadTimeout("slow")}, "did not answer in time"),
    ],
)
def test_unusable_token_responses(rsps, kwargs, expected):
    rsps.add(responses.POST, TOKEN, **kwargs)
    with pytest.raises(TokenError, match=expected):
        exchange()


def test_missing_patient_is_a_launch_context_error(rsps):
    rsps.add(responses.POST, TOKEN, json=token_response(patient=None))
    with pytest.raises(LaunchContextError, match="which patient"):
        exchange()
    assert exchange(require_patient=False).context.patient is None


def test_parse_defaults():
    tokens = parse_token_response(
        {
            "access_token": "a",
            "token_type": "bearer",
            "fhirUser": "Practitioner/1",
            "expires_in": "60",
            "fhirContext": ["bad", {"reference": "X/1"}],
        },
        requested_scope="openid patient/Patient.r",
    )
    assert tokens.scope.can_read("Patient") and tokens.context.need_patient_banner is True
    assert tokens.context.fhir_user == "Practitioner/1" and tokens.context.fhir_context == (
        {"reference": "X/1"},
    )
    assert tokens.expires_at is not None and tokens.refresh_token is None
    assert parse_token_response({"access_token": "a", "token_type": "Bearer"}).expires_at is None
