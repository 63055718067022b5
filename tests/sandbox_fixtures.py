"""Helpers for the sandbox EHR tests (Flask test client, no network): clients, fixture records and
``SandboxActions``. The fixtures that use them are in ``tests/sandbox/conftest.py``."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from flask import Flask
from flask.testing import FlaskClient
from joserfc import jwt
from joserfc.jwk import RSAKey

from launch.sandbox import create_app

PUBLIC_URL = "http://sandbox.test"
FHIR_BASE = f"{PUBLIC_URL}/fhir"
TOKEN_URL = f"{PUBLIC_URL}/auth/token"
REDIRECT_URI = "http://app.test/callback"
PUBLIC_ID = "test-public"
SYMMETRIC_ID = "test-symmetric"
ASYMMETRIC_ID = "test-asymmetric"
STATIC_JWKS_ID = "test-static-jwks"
AUDITOR_ID = "test-auditor"
SECRET = "test-only-secret"
CLIENT_JWKS_URI = "http://app.test/.well-known/jwks.json"
PAIN_CODE = "72514-3"
LOINC = "http://loinc.org"

__all__ = [
    "ASYMMETRIC_ID",
    "AUDITOR_ID",
    "CLIENT_JWKS_URI",
    "FHIR_BASE",
    "LOINC",
    "PAIN_CODE",
    "PUBLIC_ID",
    "PUBLIC_URL",
    "REDIRECT_URI",
    "SECRET",
    "STATIC_JWKS_ID",
    "SYMMETRIC_ID",
    "TOKEN_URL",
    "SandboxActions",
    "fixture_bundles",
    "make_sandbox",
    "pkce_pair",
]


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def _obs(oid: str, patient: str, code: str, category: str, value: int, updated: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "meta": {"lastUpdated": updated},
        "status": "final",
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "valueInteger": value,
    }


def fixture_bundles() -> dict[str, dict[str, Any]]:
    """Three small patients: p1 (12 Observations, a Condition, an Encounter), p2, and p3 as a
    transaction Bundle with urn:uuid fullUrls."""
    p1 = [
        {
            "resourceType": "Patient",
            "id": "p1",
            "name": [{"family": "Lovelace", "given": ["Byron"]}],
            "birthDate": "1980-01-02",
            "gender": "female",
        },
        {
            "resourceType": "Encounter",
            "id": "e1",
            "identifier": [{"system": "https://ehr.test/visit", "value": "V-1"}],
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": {"reference": "Patient/p1"},
            "period": {"start": "2026-11-20T09:00:00Z"},
        },
        {
            "resourceType": "Condition",
            "id": "c1",
            "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "M54.50"}]},
        },
    ]
    p1 += [
        _obs(
            f"o{i}",
            "p1",
            PAIN_CODE if i % 2 else "8310-5",
            "survey" if i % 2 else "vital-signs",
            i,
            f"2026-11-{10 + i:02d}T08:00:00Z",
        )
        for i in range(1, 13)
    ]
    p2 = [
        {"resourceType": "Patient", "id": "p2", "name": [{"text": "<b>Grace</b> Other"}], "gender": "male"},
        _obs("o-p2", "p2", PAIN_CODE, "survey", 3, "2026-11-01T08:00:00Z"),
    ]
    patient_urn = f"urn:uuid:{uuid.uuid4()}"
    p3 = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": patient_urn,
                "resource": {"resourceType": "Patient", "id": "p3"},
                "request": {"method": "PUT", "url": "Patient/p3"},
            },
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": {
                    **_obs("o-p3", "p3", PAIN_CODE, "survey", 5, "2026-11-02T08:00:00Z"),
                    "subject": {"reference": patient_urn},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }

    def collection(resources: list[dict[str, Any]]) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}

    return {"p1.json": collection(p1), "p2.json": collection(p2), "p3.json": p3}


def make_sandbox(data: Path, key_path: Path, client_key: RSAKey, **overrides: Any) -> Flask:
    public_jwks = {"keys": [client_key.as_dict(private=False)]}
    clients = [
        {"client_id": PUBLIC_ID, "client_type": "public", "redirect_uris": [REDIRECT_URI]},
        {
            "client_id": SYMMETRIC_ID,
            "client_type": "confidential-symmetric",
            "client_secret": SECRET,
            "redirect_uris": [REDIRECT_URI],
        },
        {
            "client_id": ASYMMETRIC_ID,
            "client_type": "confidential-asymmetric",
            "jwks_uri": CLIENT_JWKS_URI,
            "redirect_uris": [REDIRECT_URI],
        },
        {
            "client_id": STATIC_JWKS_ID,
            "client_type": "confidential-asymmetric",
            "jwks": public_jwks,
            "redirect_uris": [REDIRECT_URI],
        },
        {
            "client_id": AUDITOR_ID,
            "client_type": "confidential-symmetric",
            "client_secret": SECRET,
            "grant_types": ["client_credentials"],
            "scopes": ["user/*.rs", "system/*.rs"],
        },
        {
            "client_id": "test-narrow",
            "client_type": "public",
            "redirect_uris": [REDIRECT_URI],
            "scopes": ["launch", "openid", "fhirUser", "patient/Observation.rs", "patient/Patient.r"],
        },
    ]
    config: dict[str, Any] = {
        "TESTING": True,
        "PUBLIC_URL": PUBLIC_URL,
        "APP_LAUNCH_URL": "http://app.test/launch",
        "DATA_DIR": str(data),
        "CLIENTS": clients,
        "SIGNING_KEY_PATH": str(key_path),
        "DEFAULT_COUNT": 5,
        # As an EHR opened within a visit: launches carry the patient's latest Encounter.
        "EHR_LAUNCH_ENCOUNTER": "latest",
    }
    config.update(overrides)
    return create_app(config)


class SandboxActions:
    """Drives the SMART flow against the sandbox with the Flask test client."""

    def __init__(self, client: FlaskClient, client_key: RSAKey) -> None:
        self.client = client
        self.client_key = client_key

    def launch(self, patient: str = "p1", **extra: str) -> str:
        response = self.client.post("/ehr/launches", json={"patient": patient, **extra})
        assert response.status_code == 201, response.json
        return str(response.json["launch"])

    def authorize_params(
        self,
        *,
        client_id: str = PUBLIC_ID,
        scope: str = "launch openid fhirUser patient/*.cruds offline_access",
        launch: str | None = None,
        challenge: str | None = None,
        **extra: str,
    ) -> dict[str, str]:
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": REDIRECT_URI,
            "scope": scope,
            "state": "st-123",
            "aud": FHIR_BASE,
            "code_challenge": challenge or pkce_pair()[1],
            "code_challenge_method": "S256",
            "nonce": "n-456",
        }
        if launch:
            params["launch"] = launch
        params.update(extra)
        return params

    def authorize(self, **kwargs: Any) -> tuple[str, str]:
        """EHR launch → (code, verifier)."""
        verifier, challenge = pkce_pair()
        patient = kwargs.pop("patient", "p1")
        launch = kwargs.pop("launch", None) or self.launch(patient)
        response = self.client.get(
            "/auth/authorize",
            query_string=self.authorize_params(launch=launch, challenge=challenge, **kwargs),
        )
        assert response.status_code == 302, response.data
        query = parse_qs(urlsplit(response.headers["Location"]).query)
        assert query["state"] == ["st-123"]
        return query["code"][0], verifier

    def assertion(self, client_id: str = ASYMMETRIC_ID, **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": client_id,
            "sub": client_id,
            "aud": TOKEN_URL,
            "exp": now + 240,
            "jti": secrets.token_hex(8),
            **claims,
        }
        return jwt.encode(
            {"alg": "RS384", "kid": self.client_key.kid, "typ": "JWT"},
            body,
            self.client_key,
            algorithms=["RS384"],
        )

    def token(
        self, data: dict[str, str], *, client_id: str = PUBLIC_ID, headers: dict[str, str] | None = None
    ) -> Any:
        form = dict(data)
        if client_id in (SYMMETRIC_ID, AUDITOR_ID) and not headers:
            basic = base64.b64encode(f"{client_id}:{SECRET}".encode()).decode()
            headers = {"Authorization": f"Basic {basic}"}
        elif client_id in (ASYMMETRIC_ID, STATIC_JWKS_ID):
            form.setdefault("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            form.setdefault("client_assertion", self.assertion(client_id))
        elif not headers:
            form.setdefault("client_id", client_id)
        return self.client.post("/auth/token", data=form, headers=headers or {})

    def exchange(self, code: str, verifier: str, *, client_id: str = PUBLIC_ID) -> Any:
        return self.token(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT_URI,
                "code_verifier": verifier,
            },
            client_id=client_id,
        )

    def access_token(
        self, scope: str = "launch patient/*.cruds", patient: str = "p1", client_id: str = PUBLIC_ID
    ) -> str:
        code, verifier = self.authorize(scope=scope, patient=patient, client_id=client_id)
        response = self.exchange(code, verifier, client_id=client_id)
        assert response.status_code == 200, response.json
        return str(response.json["access_token"])

    def fhir(self, method: str, path: str, token: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        if "json" in kwargs:
            kwargs["data"] = json.dumps(kwargs.pop("json"))
            headers.setdefault("Content-Type", "application/fhir+json")
        return self.client.open(f"/fhir{path}", method=method, headers=headers, **kwargs)


