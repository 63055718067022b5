"""Sandbox EHR authorization server: discovery, authorize, token, client authentication, id_token."""

from __future__ import annotations

import base64
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from tests.sandbox_fixtures import (
    ASYMMETRIC_ID,
    CLIENT_JWKS_URI,
    FHIR_BASE,
    PUBLIC_ID,
    PUBLIC_URL,
    REDIRECT_URI,
    STATIC_JWKS_ID,
    SYMMETRIC_ID,
    SandboxActions,
    make_sandbox,
    pkce_pair,
)


def _query(response) -> dict[str, list[str]]:
    return parse_qs(urlsplit(response.headers["Location"]).query)


# -- discovery ---------------------------------------------------------------------------------------------
def test_smart_configuration_fields(client):
    response = client.get("/fhir/.well-known/smart-configuration")
    assert response.status_code == 200
    conf = response.json
    assert conf["issuer"] == FHIR_BASE
    assert conf["authorization_endpoint"] == f"{PUBLIC_URL}/auth/authorize"
    assert conf["token_endpoint"] == f"{PUBLIC_URL}/auth/token"
    assert conf["jwks_uri"] == f"{PUBLIC_URL}/auth/jwks.json"
    assert conf["code_challenge_methods_supported"] == ["S256"]
    assert set(conf["grant_types_supported"]) == {"authorization_code", "refresh_token", "client_credentials"}
    assert set(conf["token_endpoint_auth_methods_supported"]) == {"client_secret_basic", "private_key_jwt"}
    assert {"RS384", "ES384"} <= set(conf["token_endpoint_auth_signing_alg_values_supported"])
    assert conf["response_types_supported"] == ["code"]
    for capability in (
        "launch-ehr",
        "launch-standalone",
        "client-public",
        "client-confidential-symmetric",
        "client-confidential-asymmetric",
        "context-ehr-patient",
        "context-standalone-patient",
        "context-banner",
        "context-style",
        "permission-v1",
        "permission-v2",
        "permission-patient",
        "permission-user",
        "sso-openid-connect",
        "permission-offline",
        "authorize-post",
    ):
        assert capability in conf["capabilities"]
    assert "launch/patient" in conf["scopes_supported"]


def test_capability_statement_has_oauth_uris(client):
    response = client.get("/fhir/metadata")
    assert response.status_code == 200
    assert response.mimetype == "application/fhir+json"
    cap = response.json
    assert cap["resourceType"] == "CapabilityStatement" and cap["fhirVersion"] == "4.0.1"
    security = cap["rest"][0]["security"]
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris == {"authorize": f"{PUBLIC_URL}/auth/authorize", "token": f"{PUBLIC_URL}/auth/token"}
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    assert {"code": "transaction"} in cap["rest"][0]["interaction"]


def test_style_and_jwks(client):
    style = client.get("/smart-style.json")
    assert style.status_code == 200 and "color_background" in style.json
    jwks = client.get("/auth/jwks.json").json
    assert jwks["keys"][0]["kty"] == "RSA" and "d" not in jwks["keys"][0]


# -- authorize -------------------------------------------------------------------------------------------
def test_unknown_client_gets_a_page_not_a_redirect(client, actions: SandboxActions):
    response = client.get("/auth/authorize", query_string=actions.authorize_params(client_id="nobody"))
    assert response.status_code == 400 and "Location" not in response.headers


def test_unregistered_redirect_uri_is_not_followed(client, actions: SandboxActions):
    params = actions.authorize_params(redirect_uri="http://evil.test/cb?x=<script>")
    response = client.get("/auth/authorize", query_string=params)
    assert response.status_code == 400 and "Location" not in response.headers
    assert b"<script>" not in response.data


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"aud": "http://other.test/fhir"}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": ""}, "invalid_request"),
        ({"code_challenge_method": ""}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"response_type": ""}, "invalid_request"),
        ({"scope": ""}, "invalid_scope"),
        ({"launch": "no-such-launch"}, "invalid_request"),
    ],
)
def test_authorize_errors_redirect_with_state(client, actions: SandboxActions, change, error):
    params = actions.authorize_params(launch=actions.launch())
    params.update(change)
    response = client.get("/auth/authorize", query_string=params)
    assert response.status_code == 302
    query = _query(response)
    assert response.headers["Location"].startswith(REDIRECT_URI + "?")
    assert query["error"] == [error] and query["state"] == ["st-123"]
    assert "code" not in query


def test_authorize_by_post(client, actions: SandboxActions):
    params = actions.authorize_params(launch=actions.launch())
    response = client.post("/auth/authorize", data=params)
    assert response.status_code == 302 and "code" in _query(response)


def test_ehr_launch_token_response(actions: SandboxActions):
    code, verifier = actions.authorize(scope="launch openid fhirUser patient/Observation.rs offline_access")
    response = actions.exchange(code, verifier)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json
    assert body["token_type"] == "Bearer" and body["expires_in"] > 0
    assert body["patient"] == "p1" and body["encounter"] == "e1"
    assert body["fhirUser"] == "Practitioner/dr-ada"
    assert body["need_patient_banner"] is True
    assert body["smart_style_url"] == f"{PUBLIC_URL}/smart-style.json"
    assert body["scope"].split() == [
        "launch",
        "openid",
        "fhirUser",
        "patient/Observation.rs",
        "offline_access",
    ]
    assert body["refresh_token"] and body["id_token"]


def test_granted_scope_is_requested_intersect_allowed(actions: SandboxActions):
    code, verifier = actions.authorize(
        client_id="test-narrow", scope="launch patient/Observation.r patient/Condition.rs offline_access"
    )
    body = actions.exchange(code, verifier, client_id="test-narrow").json
    assert body["scope"] == "launch patient/Observation.r"
    assert "refresh_token" not in body and "id_token" not in body


def test_id_token_verifies_with_published_jwks(client, actions: SandboxActions):
    code, verifier = actions.authorize(scope="launch openid fhirUser patient/*.rs")
    id_token = actions.exchange(code, verifier).json["id_token"]
    keys = KeySet.import_key_set(client.get("/auth/jwks.json").json)
    token = jwt.decode(id_token, keys, algorithms=["RS256"])
    claims = token.claims
    assert token.header["alg"] == "RS256"
    assert claims["iss"] == FHIR_BASE and claims["aud"] == PUBLIC_ID
    assert claims["nonce"] == "n-456" and claims["exp"] > time.time()
    assert claims["fhirUser"] == f"{FHIR_BASE}/Practitioner/dr-ada"
    assert claims["sub"]


def test_code_is_single_use_and_replay_revokes(actions: SandboxActions):
    code, verifier = actions.authorize()
    first = actions.exchange(code, verifier)
    assert first.status_code == 200
    second = actions.exchange(code, verifier)
    assert second.status_code == 400 and second.json["error"] == "invalid_grant"
    # RFC 6749 §4.1.2: tokens issued from a replayed code are revoked.
    read = actions.fhir("GET", "/Patient/p1", first.json["access_token"])
    assert read.status_code == 401


def test_pkce_mismatch(actions: SandboxActions):
    code, _ = actions.authorize()
    response = actions.exchange(code, pkce_pair()[0])
    assert response.status_code == 400 and response.json["error"] == "invalid_grant"


def test_code_bound_to_redirect_uri_and_client(actions: SandboxActions):
    code, verifier = actions.authorize()
    response = actions.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": "http://app.test/other",
        }
    )
    assert response.json["error"] == "invalid_grant"
    code, verifier = actions.authorize()
    response = actions.exchange(code, verifier, client_id=SYMMETRIC_ID)
    assert response.json["error"] == "invalid_grant"


def test_code_expires(data_dir, signing_key_path, client_key):
    app = make_sandbox(data_dir, signing_key_path, client_key, CODE_TTL=-1)
    acts = SandboxActions(app.test_client(), client_key)
    code, verifier = acts.authorize()
    assert acts.exchange(code, verifier).json["error"] == "invalid_grant"


def test_token_errors(actions: SandboxActions, client):
    assert actions.token({"grant_type": "password"}).json["error"] == "unsupported_grant_type"
    missing = actions.token({"grant_type": "authorization_code"})
    assert missing.status_code == 400 and missing.json["error"] == "invalid_request"
    as_json = client.post("/auth/token", json={"grant_type": "authorization_code"})
    assert as_json.status_code == 400


# -- client authentication -------------------------------------------------------------------------------
def test_public_client_unknown_is_invalid_client(actions: SandboxActions):
    response = actions.token(
        {
            "grant_type": "authorization_code",
            "code": "x",
            "code_verifier": "y" * 43,
            "redirect_uri": REDIRECT_URI,
        },
        client_id="nobody",
    )
    assert response.status_code == 401 and response.json["error"] == "invalid_client"
    assert response.headers["Cache-Control"] == "no-store"


def test_confidential_client_must_authenticate(actions: SandboxActions):
    code, verifier = actions.authorize(client_id=SYMMETRIC_ID)
    response = actions.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": REDIRECT_URI,
            "client_id": SYMMETRIC_ID,
        }
    )
    assert response.status_code == 401 and response.json["error"] == "invalid_client"


def test_client_secret_basic(actions: SandboxActions):
    code, verifier = actions.authorize(client_id=SYMMETRIC_ID)
    assert actions.exchange(code, verifier, client_id=SYMMETRIC_ID).status_code == 200
    code, verifier = actions.authorize(client_id=SYMMETRIC_ID)
    wrong = base64.b64encode(f"{SYMMETRIC_ID}:wrong".encode()).decode()
    response = actions.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": REDIRECT_URI,
        },
        headers={"Authorization": f"Basic {wrong}"},
    )
    assert response.status_code == 401 and response.json["error"] == "invalid_client"
    assert response.headers["WWW-Authenticate"].startswith("Basic")


@responses.activate
def test_private_key_jwt_with_jwks_uri_cached(actions: SandboxActions, client_key: RSAKey):
    responses.get(CLIENT_JWKS_URI, json={"keys": [client_key.as_dict(private=False)]})
    for _ in range(2):
        code, verifier = actions.authorize(client_id=ASYMMETRIC_ID)
        response = actions.exchange(code, verifier, client_id=ASYMMETRIC_ID)
        assert response.status_code == 200, response.json
    assert len(responses.calls) == 1  # cached


def test_private_key_jwt_with_static_jwks(actions: SandboxActions):
    code, verifier = actions.authorize(client_id=STATIC_JWKS_ID)
    assert actions.exchange(code, verifier, client_id=STATIC_JWKS_ID).status_code == 200


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": "http://sandbox.test/other"},
        {"sub": "someone-else"},
        {"exp": int(time.time()) - 60},
        {"exp": int(time.time()) + 3600},
    ],
)
def test_private_key_jwt_claim_checks(actions: SandboxActions, claims):
    code, verifier = actions.authorize(client_id=STATIC_JWKS_ID)
    response = actions.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": REDIRECT_URI,
            "client_assertion": actions.assertion(STATIC_JWKS_ID, **claims),
        },
        client_id=STATIC_JWKS_ID,
    )
    assert response.status_code == 401 and response.json["error"] == "invalid_client"


def test_private_key_jwt_replayed_jti_and_wrong_key(actions: SandboxActions):
    assertion = actions.assertion(STATIC_JWKS_ID)
    code, verifier = actions.authorize(client_id=STATIC_JWKS_ID)
    base = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": REDIRECT_URI,
        "client_assertion": assertion,
    }
    assert actions.token(base, client_id=STATIC_JWKS_ID).status_code == 200
    code, verifier = actions.authorize(client_id=STATIC_JWKS_ID)
    replay = actions.token({**base, "code": code, "code_verifier": verifier}, client_id=STATIC_JWKS_ID)
    assert replay.status_code == 401
    other = SandboxActions(actions.client, RSAKey.generate_key(2048, private=True, auto_kid=True))
    code, verifier = actions.authorize(client_id=STATIC_JWKS_ID)
    forged = {
        **base,
        "code": code,
        "code_verifier": verifier,
        "client_assertion": other.assertion(STATIC_JWKS_ID),
    }
    assert actions.token(forged, client_id=STATIC_JWKS_ID).status_code == 401


@responses.activate
def test_private_key_jwt_unreachable_jwks(actions: SandboxActions):
    responses.get(CLIENT_JWKS_URI, status=500)
    code, verifier = actions.authorize(client_id=ASYMMETRIC_ID)
    response = actions.exchange(code, verifier, client_id=ASYMMETRIC_ID)
    assert response.status_code == 401 and response.json["error"] == "invalid_client"


# -- refresh -----------------------------------------------------------------------------------------------
def test_refresh_rotates(actions: SandboxActions):
    code, verifier = actions.authorize(scope="launch patient/*.rs offline_access")
    first = actions.exchange(code, verifier).json
    second = actions.token({"grant_type": "refresh_token", "refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    body = second.json
    assert body["refresh_token"] != first["refresh_token"] and body["patient"] == "p1"
    assert actions.fhir("GET", "/Patient/p1", body["access_token"]).status_code == 200
    reused = actions.token({"grant_type": "refresh_token", "refresh_token": first["refresh_token"]})
    assert reused.status_code == 400 and reused.json["error"] == "invalid_grant"
    narrowed = actions.token(
        {
            "grant_type": "refresh_token",
            "refresh_token": body["refresh_token"],
            "scope": "patient/*.rs offline_access",
        }
    )
    assert narrowed.json["scope"] == "patient/*.rs offline_access"
    wider = actions.token(
        {
            "grant_type": "refresh_token",
            "refresh_token": narrowed.json["refresh_token"],
            "scope": "patient/*.cruds",
        }
    )
    assert wider.json["error"] == "invalid_scope"


def test_refresh_token_bound_to_client(actions: SandboxActions):
    code, verifier = actions.authorize(scope="launch patient/*.rs online_access")
    refresh = actions.exchange(code, verifier).json["refresh_token"]
    response = actions.token(
        {"grant_type": "refresh_token", "refresh_token": refresh}, client_id=SYMMETRIC_ID
    )
    assert response.json["error"] == "invalid_grant"


# -- standalone launch -------------------------------------------------------------------------------------
def test_standalone_sign_in_and_patient_picker(client, actions: SandboxActions):
    verifier, challenge = pkce_pair()
    params = actions.authorize_params(
        scope="launch/patient openid fhirUser patient/*.rs", challenge=challenge
    )
    page = client.get("/auth/authorize", query_string=params)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Ada Lovelace, MD" in html and "&lt;b&gt;Grace&lt;/b&gt;" in html and "<b>Grace" not in html
    pending = html.split('name="pending" value="')[1].split('"')[0]
    answer = client.post(
        "/auth/authorize/decide",
        data={"pending": pending, "decision": "approve", "user": "Practitioner/dr-grace", "patient": "p2"},
    )
    assert answer.status_code == 302
    code = _query(answer)["code"][0]
    body = actions.exchange(code, verifier).json
    assert body["patient"] == "p2" and body["fhirUser"] == "Practitioner/dr-grace" and "encounter" not in body
    again = client.post("/auth/authorize/decide", data={"pending": pending, "decision": "approve"})
    assert again.status_code == 400


def test_standalone_deny_and_bad_patient(client, actions: SandboxActions):
    for form in (
        {"decision": "deny"},
        {"decision": "approve", "user": "Practitioner/dr-ada", "patient": "nope"},
    ):
        page = client.get("/auth/authorize", query_string=actions.authorize_params(scope="launch/patient"))
        pending = page.get_data(as_text=True).split('name="pending" value="')[1].split('"')[0]
        answer = client.post("/auth/authorize/decide", data={"pending": pending, **form})
        assert _query(answer)["error"] == ["access_denied"] and _query(answer)["state"] == ["st-123"]


# -- EHR page --------------------------------------------------------------------------------------------
def test_ehr_page_launches_app_in_iframe(client):
    index = client.get("/ehr")
    assert index.status_code == 200 and b"Byron Lovelace" in index.data
    page = client.get("/ehr/launch", query_string={"patient": "p1", "user": "Practitioner/dr-grace"})
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert (
        '<iframe class="app" src="http://app.test/launch?iss=http%3A%2F%2Fsandbox.test%2Ffhir&amp;launch='
        in html
    )
    assert client.get("/ehr/launch", query_string={"patient": "nobody"}).status_code == 400


def test_launch_url_json(client):
    body = client.get("/ehr/launch-url", query_string={"patient": "p2"}).json
    assert body["iss"] == FHIR_BASE and body["patient"] == "p2" and body["encounter"] is None
    assert body["url"].startswith("http://app.test/launch?iss=")
    assert client.post("/ehr/launches", json={"patient": "zzz"}).status_code == 400
    assert (
        client.post("/ehr/launches", json={"patient": "p1", "user": "Practitioner/none"}).status_code == 400
    )


def test_launch_expires(data_dir, signing_key_path, client_key):
    app = make_sandbox(data_dir, signing_key_path, client_key, LAUNCH_TTL=-1)
    acts = SandboxActions(app.test_client(), client_key)
    params = acts.authorize_params(launch=acts.launch())
    response = acts.client.get("/auth/authorize", query_string=params)
    assert _query(response)["error"] == ["invalid_request"]


def test_token_fault(data_dir, signing_key_path, client_key):
    app = make_sandbox(data_dir, signing_key_path, client_key, FAULTS={"token": {"status": 503, "times": 1}})
    acts = SandboxActions(app.test_client(), client_key)
    code, verifier = acts.authorize()
    assert acts.exchange(code, verifier).status_code == 503
    assert acts.exchange(code, verifier).status_code == 200
