"""Shared helpers for the ``test_smart_*`` and ``test_launch_views`` tests: a fake EHR (discovery,
token endpoint and id_token signing key, mocked with ``responses``) and a small Flask app carrying
only the ``launch`` blueprint. Holds no tests itself."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import responses
from flask import Flask, jsonify
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from smart_app.smart.registrations import Registration, WritebackOptions

ISS = "https://ehr.test/fhir"
AUTHORIZE = "https://ehr.test/auth/authorize"
TOKEN = "https://ehr.test/auth/token"
JWKS_URI = "https://ehr.test/auth/jwks.json"
WELL_KNOWN = f"{ISS}/.well-known/smart-configuration"
METADATA = f"{ISS}/metadata"
SCOPES = (
    "launch",
    "launch/patient",
    "openid",
    "fhirUser",
    "offline_access",
    "patient/Patient.r",
    "patient/Observation.rs",
    "patient/Condition.rs",
    "patient/ClinicalImpression.c",
)
SECRET_ENV = "TEST_EHR_CLIENT_SECRET"
SECRET = "s3cr3t-value-for-tests/+="

#: The fake EHR's id_token signing key (RS256, as SMART requires servers to support).
EHR_KEY = RSAKey.generate_key(2048, parameters={"kid": "ehr-key-1"})
OTHER_KEY = RSAKey.generate_key(2048, parameters={"kid": "ehr-key-1"})
#: The app's signing keys used by ``make_app`` (generated once per test session).
APP_RSA_KEY = RSAKey.generate_key(2048)
APP_EC_KEY = ECKey.generate_key("P-384")


def registration(**overrides: Any) -> Registration:
    fields: dict[str, Any] = {
        "id": "test-ehr",
        "name": "Test EHR",
        "iss": ISS,
        "client_id": "test-client",
        "client_type": "public",
        "client_secret_env": None,
        "scopes": SCOPES,
        "scope_syntax": "v2",
        "frame_ancestors": ("https://ehr.test",),
        "writeback": WritebackOptions(),
    }
    fields.update(overrides)
    return Registration(**fields)


def registration_json(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "test-ehr",
        "name": "Test EHR",
        "iss": ISS,
        "client_id": "test-client",
        "client_type": "public",
        "scopes": list(SCOPES),
        "frame_ancestors": ["https://ehr.test"],
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def write_registration(directory: Path, filename: str = "test-ehr", **overrides: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{filename}.json"
    path.write_text(json.dumps(registration_json(**overrides)), encoding="utf-8")
    return path


def smart_configuration(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "issuer": ISS,
        "authorization_endpoint": AUTHORIZE,
        "token_endpoint": TOKEN,
        "jwks_uri": JWKS_URI,
        "capabilities": ["launch-ehr", "launch-standalone", "client-public", "sso-openid-connect"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def ehr_jwks(key: RSAKey = EHR_KEY) -> dict[str, Any]:
    public = dict(key.as_dict(private=False))
    public.update({"alg": "RS256", "use": "sig"})
    return {"keys": [public]}


def id_token(nonce: str | None, *, key: RSAKey | ECKey = EHR_KEY, alg: str = "RS256", **claims: Any) -> str:
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": ISS,
        "sub": "dr1",
        "aud": "test-client",
        "iat": now,
        "exp": now + 300,
        "fhirUser": "Practitioner/dr1",
    }
    if nonce is not None:
        body["nonce"] = nonce
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    header = {"alg": alg, "kid": key.kid or "k"}
    return jwt.encode(header, body, key, algorithms=[alg])


def token_response(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "access_token": "AT-first-0123456789",
        "token_type": "Bearer",
        "expires_in": 3600,
        "scope": " ".join(SCOPES),
        "refresh_token": "RT-first-0123456789",
        "patient": "p1",
        "encounter": "e1",
        "need_patient_banner": False,
        "smart_style_url": "https://ehr.test/style.json",
        "fhirContext": [{"reference": "Encounter/e1"}],
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def mock_discovery(rsps: responses.RequestsMock, **overrides: Any) -> None:
    rsps.add(responses.GET, WELL_KNOWN, json=smart_configuration(**overrides))
    rsps.add(responses.GET, JWKS_URI, json=ehr_jwks())


def write_pem(path: Path, key: RSAKey | ECKey) -> Path:
    path.write_bytes(key.as_pem(private=True))
    path.chmod(0o600)
    return path


def make_app(
    tmp_path: Path, *, config: dict[str, Any] | None = None, protected: Callable[[], str] | None = None
) -> Flask:
    """A Flask app with the launch blueprint, a stand-in ``main.review`` and a protected test view."""
    from flask_session import Session

    from smart_app.web import launch
    from smart_app.web import session as smart_session

    root = tmp_path / "app"
    (root / "templates").mkdir(parents=True, exist_ok=True)
    (root / "templates" / "base.html").write_text(
        "<!doctype html><title>{% block title %}{% endblock %}</title>{% block content %}{% endblock %}",
        encoding="utf-8",
    )
    regs = tmp_path / "registrations"
    if not regs.exists():
        write_registration(regs)
    keys = tmp_path / "keys"
    keys.mkdir(exist_ok=True)
    rsa_pem = write_pem(keys / "rsa.pem", APP_RSA_KEY)
    ec_pem = write_pem(keys / "ec.pem", APP_EC_KEY)
    app = Flask("launch_test_app", root_path=str(root), instance_path=str(tmp_path / "instance"))
    app.config.update(
        TESTING=True,
        SECRET_KEY="test-secret",
        PUBLIC_URL="https://app.test",
        REGISTRATIONS_DIRS=[str(regs)],
        SMART_SIGNING_KEY_FILES=[str(rsa_pem), str(ec_pem)],
        DISCOVERY_TTL_SECONDS=3600,
        TOKEN_REFRESH_LEEWAY_SECONDS=60,
        HTTP_TIMEOUT=[1.0, 2.0],
        SESSION_TYPE="cachelib",
        SESSION_PERMANENT=False,
        SESSION_CACHELIB=_cache(tmp_path / "sessions"),
    )
    app.config.update(config or {})
    Session(app)
    app.register_blueprint(launch.bp)

    @app.get("/review", endpoint="main.review")
    def review() -> str:
        return "review page"

    @app.get("/protected")
    @smart_session.launch_required
    def protected_view() -> Any:
        return jsonify(token=smart_session.get_access_token())

    return app


def _cache(path: Path) -> Any:
    from cachelib.file import FileSystemCache

    path.mkdir(parents=True, exist_ok=True)
    return FileSystemCache(str(path), threshold=1000, mode=0o600)
