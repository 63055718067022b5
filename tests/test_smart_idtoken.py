"""id_token validation (smart_app.smart.idtoken)."""

from __future__ import annotations

import time

import pytest
import requests
import responses
from joserfc.jwk import RSAKey
from smart_support import ISS, JWKS_URI, OTHER_KEY, WELL_KNOWN, ehr_jwks, id_token, smart_configuration

from smart_app.smart.discovery import Discovery
from smart_app.smart.errors import IdTokenError
from smart_app.smart.idtoken import validate_id_token, verify_id_token

NONCE = "nonce-123"


def check(token: str, nonce: str | None = NONCE, **kwargs):
    return validate_id_token(
        token, jwks=ehr_jwks(), issuer=ISS, client_id="test-client", nonce=nonce, **kwargs
    )


def test_valid_token_returns_claims():
    claims = check(id_token(NONCE))
    assert claims["fhirUser"] == "Practitioner/dr1"
    assert check(id_token(NONCE, aud=["test-client", "x"], azp="test-client"))["sub"] == "dr1"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (lambda: id_token(NONCE, key=OTHER_KEY), "signature does not verify"),
        (lambda: id_token(NONCE, aud="another-client"), "meant for another client"),
        (lambda: id_token(NONCE, aud=["test-client", "x"]), "azp"),
        (lambda: id_token("other-nonce"), "nonce does not match"),
        (lambda: id_token(None), "nonce does not match"),
        (lambda: id_token(NONCE, exp=int(time.time()) - 120), "expired"),
        (lambda: id_token(NONCE, exp=None), "no expiry"),
        (lambda: id_token(NONCE, iat=int(time.time()) + 600), "issued in the future"),
        (lambda: id_token(NONCE, iss="https://evil.test"), "another issuer"),
        (lambda: "not.a.jwt", "signature does not verify|not a valid signed JWT|not usable JSON"),
    ],
)
def test_rejections(token, reason):
    with pytest.raises(IdTokenError, match=reason) as info:
        check(token())
    assert info.value.status == 502
    assert NONCE not in info.value.description


def test_expiry_leeway_and_no_nonce_expected():
    assert check(id_token(NONCE, exp=int(time.time()) - 30))
    assert check(id_token(None), nonce=None)


def test_verify_uses_discovered_jwks_and_refetches_after_rotation(rsps):
    rotated = RSAKey.generate_key(2048, parameters={"kid": "ehr-key-2"})
    rsps.add(responses.GET, WELL_KNOWN, json=smart_configuration())
    rsps.add(responses.GET, JWKS_URI, json=ehr_jwks())
    discovery = Discovery(requests.Session())
    config = discovery.get(ISS)
    assert (
        verify_id_token(
            id_token(NONCE), discovery=discovery, config=config, client_id="test-client", nonce=NONCE
        )["sub"]
        == "dr1"
    )
    rsps.replace(responses.GET, JWKS_URI, json=ehr_jwks(rotated))
    token = id_token(NONCE, key=rotated)
    assert verify_id_token(token, discovery=discovery, config=config, client_id="test-client", nonce=NONCE)
    with pytest.raises(IdTokenError, match="signature"):
        verify_id_token(
            id_token(NONCE, key=OTHER_KEY),
            discovery=discovery,
            config=config,
            client_id="test-client",
            nonce=NONCE,
        )


def test_verify_without_jwks_uri(rsps):
    rsps.add(responses.GET, WELL_KNOWN, json=smart_configuration(jwks_uri=None))
    discovery = Discovery(requests.Session())
    with pytest.raises(IdTokenError, match="jwks_uri"):
        verify_id_token(
            id_token(NONCE),
            discovery=discovery,
            config=discovery.get(ISS),
            client_id="test-client",
            nonce=NONCE,
        )
