"""The authorization request and PKCE (smart_app.smart.authorize, smart_app.smart.pkce)."""

from __future__ import annotations

import base64
import hashlib
import json
from urllib.parse import parse_qs, urlsplit

from smart_support import AUTHORIZE, ISS, TOKEN, registration

from smart_app.smart import pkce
from smart_app.smart.authorize import PendingAuthorization, scopes_for_launch, start_authorization
from smart_app.smart.discovery import SmartConfiguration

CONFIG = SmartConfiguration(iss=ISS, authorization_endpoint=AUTHORIZE, token_endpoint=TOKEN)
REDIRECT = "https://app.test/callback"


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def test_ehr_launch_request():
    pending = start_authorization(registration(), CONFIG, REDIRECT, "launch-123", now=50.0)
    q = query(pending.url)
    assert pending.url.startswith(AUTHORIZE + "?")
    assert q["response_type"] == "code" and q["client_id"] == "test-client"
    assert q["redirect_uri"] == REDIRECT and q["aud"] == ISS and q["launch"] == "launch-123"
    assert q["state"] == pending.state and len(base64.urlsafe_b64decode(pending.state + "=")) == 32
    assert q["code_challenge_method"] == "S256"
    digest = hashlib.sha256(pending.code_verifier.encode()).digest()
    assert q["code_challenge"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert q["nonce"] == pending.nonce
    scopes = q["scope"].split()
    assert "launch" in scopes and "launch/patient" not in scopes and "openid" in scopes
    assert pending.ehr_launch and pending.created_at == 50.0 and pending.token_endpoint == TOKEN
    assert pending.scope == q["scope"]


def test_standalone_request_without_openid():
    reg = registration(scopes=("launch", "launch/patient", "patient/Observation.rs"))
    pending = start_authorization(reg, CONFIG, REDIRECT, None)
    q = query(pending.url)
    assert "launch" not in q and "nonce" not in q and pending.nonce is None
    assert q["scope"] == "launch/patient patient/Observation.rs"


def test_each_start_is_fresh_and_keeps_endpoint_query():
    config = SmartConfiguration(
        iss=ISS, authorization_endpoint=AUTHORIZE + "?tenant=t1&state=x", token_endpoint=TOKEN
    )
    a = start_authorization(registration(), config, REDIRECT, None)
    b = start_authorization(registration(), config, REDIRECT, None)
    assert a.state != b.state and a.code_verifier != b.code_verifier and a.nonce != b.nonce
    pairs = parse_qs(urlsplit(a.url).query)
    assert pairs["tenant"] == ["t1"] and pairs["state"] == [a.state]


def test_pending_roundtrips_through_json_and_hides_secrets_in_repr():
    pending = start_authorization(registration(), CONFIG, REDIRECT, "L")
    data = json.loads(json.dumps(pending.to_dict()))
    assert PendingAuthorization.from_dict({**data, "unknown": 1}) == pending
    assert pending.state not in repr(pending) and pending.code_verifier not in repr(pending)
    assert not pending.expired(600, now=pending.created_at + 600)
    assert pending.expired(600, now=pending.created_at + 601)


def test_pkce_verifier_shape():
    verifier = pkce.create_code_verifier()
    assert 43 <= len(verifier) <= 128
    assert pkce.code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == (
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"  # RFC 7636 appendix B
    )


def test_scopes_for_launch():
    scopes = ("launch", "launch/patient", "launch/encounter", "openid")
    assert scopes_for_launch(scopes, ehr_launch=True) == ("launch", "openid")
    assert scopes_for_launch(scopes, ehr_launch=False) == ("launch/patient", "launch/encounter", "openid")
