"""The CDS client's JWT (CDS Hooks 2.0 "Trusting CDS Clients"): 401 for a bad, expired, replayed or unknown
JWT, and nothing evaluated; the registered JWK Set or an allowed ``jku``; the replay memory; the
``fhirAuthorization`` token kept out of logs and files."""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from flask import Flask
from flask.testing import FlaskClient
from joserfc import jwt
from joserfc.jwk import OctKey

from launch.stack import Redis
from smart_app.cds import auth
from smart_app.cds.clients import CdsClientRegistry, load_cds_clients, parse_cds_client
from smart_app.cds.discovery import PATIENT_VIEW
from smart_app.cds.errors import CdsError
from smart_app.cds.request import parse_hook_request
from smart_app.smart.errors import RegistrationError
from smart_app.smart.registrations import load_registrations
from tests import cds_support as cs
from tests.views_fixtures import PROBABLE, patient

#: The example of CDS Hooks 2.0 "Trusting CDS Clients": header, payload and public JWK Set, and the JWT.
SPEC_JWKS = {
    "keys": [
        {
            "kty": "EC",
            "use": "sig",
            "crv": "P-384",
            "kid": "example-kid",
            "x": "46SDH7Znh821wblCBglA61sNE9ZrHYKKt3qRtRTmSXyOI_FIGBLWrWa0GPUkDCEk",
            "y": "XMcRuuoGW7CXjQdy-F5i3FeBE0x9hPLdeFdSoDd3ELmx404tLX0VRRcqzAsPhXcI",
            "alg": "ES384",
        }
    ]
}
SPEC_JWT = (
    "eyJhbGciOiJFUzM4NCIsInR5cCI6IkpXVCIsImtpZCI6ImV4YW1wbGUta2lkIiwiamt1IjoiaHR0cHM6Ly9maGlyLWVoci5leGFtcGxl"
    "LmNvbS9qd2tfdXJpIn0.eyJpc3MiOiJodHRwczovL2ZoaXItZWhyLmV4YW1wbGUuY29tLyIsImF1ZCI6Imh0dHBzOi8vY2RzLmV4YW1w"
    "bGUub3JnL2Nkcy1zZXJ2aWNlcy9zb21lLXNlcnZpY2UiLCJleHAiOjE0MjI1Njg4NjAsImlhdCI6MTMxMTI4MDk3MCwianRpIjoiZWUy"
    "MmIwMjEtZTFiNy00NjExLWJhNWItOGVlYzZhMzNhYzFlIiwidGVuYW50IjoiMmRkZDZjM2EtOGU5YS00NGM2LWEzMDUtNTIxMTFhZDMw"
    "MmEyIn0.d1WfLjGRKlcWB94l9do4cM8REXeYJLL6SGUBO8VHZhfM8mwKYP70EMxJ67War4TQblEpaQrp11wx5p7oPFm2ETYgCicS84vX"
    "WEIYTdjooZdooCSDf2L8-i4awdoUwiEb"
)
SPEC_JKU = "https://fhir-ehr.example.com/jwk_uri"
SPEC_AUD = "https://cds.example.org/cds-services/some-service"
SPEC_EXP = 1422568860


@pytest.fixture
def keys() -> cs.ClientKeys:
    return cs.ClientKeys()


@pytest.fixture
def cds_app(tmp_path: Path, keys: cs.ClientKeys) -> Flask:
    return cs.make_app(tmp_path, cs.registration(keys))


@pytest.fixture
def client(cds_app: Flask) -> FlaskClient:
    return cds_app.test_client()


def spec_registry() -> CdsClientRegistry:
    return CdsClientRegistry(
        [
            parse_cds_client(
                {
                    "kind": "cds-client",
                    "id": "spec-ehr",
                    "name": "Spec EHR",
                    "iss": "https://fhir-ehr.example.com/",
                    "jwks_url": SPEC_JKU,
                }
            )
        ]
    )


# -- the specification's example JWT --
def verify_spec_jwt(audience: str = SPEC_AUD, now: float | None = None) -> auth.Verified:
    """The example JWT checked as a call to ``audience`` at ``now``; its key is served at its ``jku``."""
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, SPEC_JKU, json=SPEC_JWKS)
        return auth.verify_client_jwt(
            f"Bearer {SPEC_JWT}",
            audience=audience,
            clients=spec_registry(),
            jwks=auth.JwksCache(requests.Session()),
            replay=auth.MemoryReplayCache(),
            now=now,
        )


def test_specification_example_jwt_verifies_through_its_jku_before_it_expires() -> None:
    verified = verify_spec_jwt(now=SPEC_EXP - 100)
    assert verified.client.name == "Spec EHR"
    assert verified.claims["tenant"] == "2ddd6c3a-8e9a-44c6-a305-52111ad302a2"


def test_specification_example_jwt_is_refused_now_it_has_expired() -> None:
    with pytest.raises(CdsError) as refused:
        verify_spec_jwt()
    assert refused.value.status == 401 and refused.value.error == "expired"


def test_specification_example_jwt_for_another_service_is_refused() -> None:
    with pytest.raises(CdsError) as refused:
        verify_spec_jwt("https://cds.example.org/cds-services/another-service", now=SPEC_EXP - 100)
    assert refused.value.error == "wrong_audience"


# -- 401 over HTTP, and nothing evaluated --
def _call(client: FlaskClient, token: str | None, body: Any = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return client.post(
        f"/cds-services/{cs.PATIENT_VIEW}",
        json=body if body is not None else cs.hook_body(prefetch=cs.prefetch_of(patient(), PROBABLE)),
        headers=headers,
    )


def _refused(cds_app: Flask, answer: Any, error: str) -> None:
    assert answer.status_code == 401
    assert answer.get_json()["error"] == error
    assert answer.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    assert "cards" not in answer.get_json()
    lines = [line for line in cs.audit_lines(cds_app) if line["kind"] == "cds"]
    assert lines[-1]["outcome"] == "refused" and lines[-1]["error"] == error


def test_a_valid_jwt_is_answered(cds_app: Flask, client: FlaskClient, keys: cs.ClientKeys) -> None:
    answer = _call(client, keys.token(cs.service_url(cs.PATIENT_VIEW)))
    assert answer.status_code == 200 and answer.get_json()["cards"]


def test_unknown_client_gets_401_and_nothing_is_read_or_evaluated(
    cds_app: Flask, client: FlaskClient, keys: cs.ClientKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    def evaluated(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the criteria were evaluated for an unknown client")

    monkeypatch.setattr("smart_app.cds.service.pipeline.assess_prefetched", evaluated)
    stranger = keys.token(cs.service_url(cs.PATIENT_VIEW), iss="https://stranger.example")
    body = cs.hook_body(prefetch={}, authorization=cs.authorization())
    with responses.RequestsMock() as rsps:  # no JWK Set fetched, no FHIR read
        answer = _call(client, stranger, body)
        assert len(rsps.calls) == 0
    _refused(cds_app, answer, "unknown_client")


def test_bad_signature_is_401(cds_app: Flask, client: FlaskClient, keys: cs.ClientKeys) -> None:
    impostor = cs.ClientKeys()
    impostor.kid = keys.kid  # the registered kid, another key
    _refused(cds_app, _call(client, impostor.token(cs.service_url(cs.PATIENT_VIEW))), "bad_signature")


def test_tampered_payload_is_401(cds_app: Flask, client: FlaskClient, keys: cs.ClientKeys) -> None:
    header, payload, signature = keys.token(cs.service_url(cs.PATIENT_VIEW)).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["exp"] += 3600
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    _refused(cds_app, _call(client, f"{header}.{forged}.{signature}"), "bad_signature")


def test_expired_jwt_is_401(cds_app: Flask, client: FlaskClient, keys: cs.ClientKeys) -> None:
    old = int(time.time()) - 600
    token = keys.token(cs.service_url(cs.PATIENT_VIEW), iat=old - 60, exp=old)
    _refused(cds_app, _call(client, token), "expired")


def test_replayed_jwt_is_401(cds_app: Flask, client: FlaskClient, keys: cs.ClientKeys) -> None:
    token = keys.token(cs.service_url(cs.PATIENT_VIEW))
    assert _call(client, token).status_code == 200
    _refused(cds_app, _call(client, token), "replayed")
    same_jti = keys.token(
        cs.service_url(cs.PATIENT_VIEW),
        jti=json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))["jti"],
    )
    _refused(cds_app, _call(client, same_jti), "replayed")  # a new JWT reusing the jti


def test_jwt_for_another_endpoint_is_401(cds_app: Flask, client: FlaskClient, keys: cs.ClientKeys) -> None:
    _refused(cds_app, _call(client, keys.token(cs.service_url(cs.ORDER_SIGN))), "wrong_audience")
    _refused(
        cds_app,
        _call(client, keys.token("https://attacker.example/cds-services/back-mice-patient-view")),
        "wrong_audience",
    )


def test_aud_may_be_an_array(client: FlaskClient, keys: cs.ClientKeys) -> None:
    assert _call(client, keys.token([cs.service_url(cs.PATIENT_VIEW)])).status_code == 200


@pytest.mark.parametrize(
    ("claims", "error"),
    [
        ({"exp": int(time.time()) + 3600}, "lifetime_too_long"),
        ({"iat": int(time.time()) + 600}, "not_yet_valid"),
        ({"nbf": int(time.time()) + 600}, "not_yet_valid"),
        ({"jti": None}, "missing_claim"),
        ({"iat": None}, "missing_claim"),
    ],
)
def test_claims_out_of_bounds_are_401(
    cds_app: Flask, client: FlaskClient, keys: cs.ClientKeys, claims: dict[str, Any], error: str
) -> None:
    _refused(cds_app, _call(client, keys.token(cs.service_url(cs.PATIENT_VIEW), **claims)), error)


def test_missing_or_malformed_authorization_is_401(cds_app: Flask, client: FlaskClient) -> None:
    _refused(cds_app, _call(client, None), "missing_token")
    _refused(cds_app, _call(client, "not.a.jwt"), "malformed_token")


def test_unsigned_and_symmetric_jwts_are_401(
    cds_app: Flask, client: FlaskClient, keys: cs.ClientKeys
) -> None:
    now = int(time.time())
    claims = {
        "iss": cs.EHR_ISS,
        "aud": cs.service_url(cs.PATIENT_VIEW),
        "exp": now + 60,
        "iat": now,
        "jti": str(uuid.uuid4()),
    }

    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': keys.kid})}.{b64(claims)}."
    _refused(cds_app, _call(client, unsigned), "unsupported_alg")
    secret = OctKey.import_key(b"shared-secret-shared-secret-shared-secret")
    hmac = jwt.encode({"alg": "HS256", "typ": "JWT", "kid": keys.kid}, claims, secret)
    _refused(cds_app, _call(client, hmac), "unsupported_alg")


def test_jwt_without_kid_or_typ_is_401(cds_app: Flask, client: FlaskClient, keys: cs.ClientKeys) -> None:
    _refused(
        cds_app,
        _call(client, keys.token(cs.service_url(cs.PATIENT_VIEW), header={"kid": None})),
        "malformed_token",
    )
    _refused(
        cds_app,
        _call(client, keys.token(cs.service_url(cs.PATIENT_VIEW), header={"typ": "at+jwt"})),
        "malformed_token",
    )


# -- jwks_url and jku --
JWKS_URL = "https://ehr.test/cds/jwks.json"
OTHER_JKU = "https://keys.ehr.test/cds-jwks.json"


def test_jwks_url_is_fetched_once_and_reused(tmp_path: Path) -> None:
    old = cs.ClientKeys()
    app = cs.make_app(tmp_path, cs.registration(jwks_url=JWKS_URL))
    client = app.test_client()
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, JWKS_URL, json=old.jwks())
        assert _call(client, old.token(cs.service_url(cs.PATIENT_VIEW))).status_code == 200
        assert _call(client, old.token(cs.service_url(cs.PATIENT_VIEW))).status_code == 200
        assert len(rsps.calls) == 1  # reused


def test_key_rotation_refetches_at_most_every_few_seconds() -> None:
    old, new = cs.ClientKeys(), cs.ClientKeys("RS384")
    clients = CdsClientRegistry([parse_cds_client(cs.registration(jwks_url=JWKS_URL))])
    now = [1000.0]
    cache = auth.JwksCache(requests.Session(), clock=lambda: now[0])

    def verify(keys: cs.ClientKeys) -> Any:
        return auth.verify_client_jwt(
            f"Bearer {keys.token('https://cds.test/x')}",
            audience="https://cds.test/x",
            clients=clients,
            jwks=cache,
            replay=auth.MemoryReplayCache(),
        )

    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, JWKS_URL, json=old.jwks())
        verify(old)
        rsps.replace(responses.GET, JWKS_URL, json=new.jwks())  # the client rotates its key
        with pytest.raises(CdsError, match="No key"):
            verify(new)  # the set fetched a moment ago is not fetched again for an unknown kid
        assert len(rsps.calls) == 1
        now[0] += auth.JWKS_MIN_REFETCH_SECONDS
        assert verify(new).client.id == "ehr-cds"
        assert len(rsps.calls) == 2


def test_jku_on_the_allow_list_is_used_and_one_off_it_is_never_fetched(tmp_path: Path) -> None:
    keys = cs.ClientKeys()
    app = cs.make_app(tmp_path, cs.registration(jwks_url=JWKS_URL, allowed_jku=[OTHER_JKU]))
    client = app.test_client()
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, OTHER_JKU, json=keys.jwks())
        token = keys.token(cs.service_url(cs.PATIENT_VIEW), header={"jku": OTHER_JKU})
        assert _call(client, token).status_code == 200
        evil = keys.token(cs.service_url(cs.PATIENT_VIEW), header={"jku": "https://attacker.example/jwks"})
        _refused(app, _call(client, evil), "untrusted_jku")
        assert [c.request.url for c in rsps.calls] == [OTHER_JKU]


def test_unreachable_or_unusable_key_sets_are_401(tmp_path: Path) -> None:
    keys = cs.ClientKeys()
    app = cs.make_app(tmp_path, cs.registration(jwks_url=JWKS_URL))
    client = app.test_client()
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, JWKS_URL, status=503)
        _refused(app, _call(client, keys.token(cs.service_url(cs.PATIENT_VIEW))), "keys_unavailable")
    private = keys.jwks()
    private["keys"][0]["d"] = "AAAA"
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, JWKS_URL, json=private)
        _refused(app, _call(client, keys.token(cs.service_url(cs.PATIENT_VIEW))), "keys_unavailable")
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, JWKS_URL, body=b"{" * 70_000)
        _refused(app, _call(client, keys.token(cs.service_url(cs.PATIENT_VIEW))), "keys_unavailable")


# -- registrations --
def test_registration_files_are_split_between_ehrs_and_cds_clients(tmp_path: Path) -> None:
    keys = cs.ClientKeys()
    (tmp_path / "cds.json").write_text(json.dumps(cs.registration(keys)))
    (tmp_path / "ehr.json").write_text(
        json.dumps(
            {
                "name": "EHR",
                "iss": "https://ehr.test/fhir",
                "client_id": "x",
                "client_type": "public",
                "scopes": "launch patient/Patient.r",
            }
        )
    )
    assert [r.id for r in load_registrations([tmp_path]).all()] == ["ehr"]
    clients = load_cds_clients([tmp_path])
    assert len(clients) == 1 and clients.by_iss(cs.EHR_ISS + "/") is not None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"jwks": None}, "exactly one of 'jwks'"),
        ({"jwks_url": JWKS_URL}, "exactly one of 'jwks'"),
        ({"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "a"}]}}, "kty must be"),
        ({"fhir_servers": ["not a url"]}, "fhir_servers"),
        ({"clientSecret": "x"}, "unknown field"),
        ({"writeback": {"mode": "sequential"}}, "writeback"),
    ],
)
def test_bad_registrations_name_the_field(change: dict[str, Any], message: str) -> None:
    data = cs.registration(cs.ClientKeys())
    for key, value in change.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    with pytest.raises(RegistrationError, match=message):
        parse_cds_client(data)


def test_private_key_material_is_refused_in_a_registration() -> None:
    keys = cs.ClientKeys()
    data = cs.registration()
    data["jwks"] = {"keys": [keys.key.as_dict(private=True) | {"kid": keys.kid}]}
    with pytest.raises(RegistrationError, match="private key material"):
        parse_cds_client(data)


# -- replay memory --
def test_file_replay_memory_is_shared_by_processes_and_forgets_after_expiry(tmp_path: Path) -> None:
    now = [1000.0]
    first = auth.FileReplayCache(tmp_path / "jti", clock=lambda: now[0])
    second = auth.FileReplayCache(tmp_path / "jti", clock=lambda: now[0])  # another worker, same host
    assert first.first_use("k1", 1100.0)
    assert not second.first_use("k1", 1100.0)
    now[0] = 1200.0  # the JWT has expired: its memory may go
    assert second.first_use("k1", 1300.0)
    assert not first.first_use("k1", 1300.0)


def test_memory_replay_cache_forgets_after_expiry() -> None:
    now = [0.0]
    cache = auth.MemoryReplayCache(clock=lambda: now[0])
    assert cache.first_use("k", 10.0) and not cache.first_use("k", 10.0)
    now[0] = 11.0
    assert cache.first_use("k", 20.0)


@pytest.fixture
def redis_client(redis_server: Redis) -> Any:
    return redis_server.client()


@pytest.mark.redis
def test_redis_replay_memory_refuses_a_second_use_until_expiry(redis_client: Any) -> None:
    cache = auth.RedisReplayCache(redis_client)
    until = time.time() + 60
    assert cache.first_use("k", until) and not auth.RedisReplayCache(redis_client).first_use("k", until)
    assert 55 <= redis_client.ttl(cache.prefix + "k") <= 62


# -- the fhirAuthorization token --
def test_fhir_authorization_token_is_used_but_never_logged_or_stored(
    cds_app: Flask, client: FlaskClient, keys: cs.ClientKeys, ehr: Any, caplog: pytest.LogCaptureFixture
) -> None:
    secret = f"fhir-token-{uuid.uuid4()}"
    ehr.serve(PROBABLE)
    caplog.set_level(logging.DEBUG)
    body = cs.hook_body(prefetch={}, authorization=cs.authorization(token=secret))
    answer = cs.post(client, keys, cs.PATIENT_VIEW, body)
    assert answer.status_code == 200 and answer.get_json()["cards"]
    assert {c.request.headers["Authorization"] for c in ehr.rsps.calls} == {f"Bearer {secret}"}
    assert secret not in caplog.text
    assert secret not in json.dumps(answer.get_json())
    for path in Path(cds_app.instance_path).rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    parsed = parse_hook_request(json.dumps(body).encode(), PATIENT_VIEW)
    assert parsed.fhir_authorization is not None and secret not in repr(parsed)
