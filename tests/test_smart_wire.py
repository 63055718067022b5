"""Hostile JSON from the EHR's authorization side (smart_app.smart.wire and its callers): size caps
counted after decompression, an overall deadline, deep nesting, redirects off the origin, and the EHR's
free text cleaned before it is shown or logged. Each ends in a clear error page, never a 500."""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
from smart_support import (
    ISS,
    JWKS_URI,
    METADATA,
    TOKEN,
    WELL_KNOWN,
    ehr_jwks,
    id_token,
    make_app,
    mock_discovery,
    smart_configuration,
    token_response,
)

from smart_app.smart import wire
from smart_app.smart.discovery import Discovery
from smart_app.smart.errors import DiscoveryError, IdTokenError
from smart_app.smart.idtoken import validate_id_token

#: 100,000 levels: 200 kB, within every cap, so the depth limit is what refuses it.
DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
#: Nested deeper than the decoder allows, yet short enough for an id_token.
DEEP_SHORT = b"[" * 10_000 + b"]" * 10_000


class SlowRaw:
    """A response body arriving in small pieces with a pause before each."""

    def __init__(self, pieces: int, pause: float) -> None:
        self.left = pieces
        self.pause = pause

    def read(self, amt: int | None = None, decode_content: bool = True) -> bytes:
        if self.left == 0:
            return b""
        self.left -= 1
        time.sleep(self.pause)
        return b" "

    def stream(self, amt: int, decode_content: bool = True) -> Iterator[bytes]:
        while chunk := self.read(amt):
            yield chunk

    def close(self) -> None:
        pass


def slow_response(pieces: int, pause: float) -> requests.Response:
    response = requests.Response()
    response.status_code = 200
    response.raw = SlowRaw(pieces, pause)
    return response


def test_gzip_bomb_stops_at_the_cap_on_decompressed_bytes(rsps):
    bomb = gzip.compress(b" " * (8 * 1024 * 1024))
    assert len(bomb) < 64 * 1024
    rsps.add(responses.GET, WELL_KNOWN, body=bomb, headers={"Content-Encoding": "gzip"})
    data, problem = wire.get_json(requests.Session(), WELL_KNOWN, max_bytes=1024 * 1024, timeout=2)
    assert data is None and problem == "answered with a body larger than the 1,048,576-byte limit"


def test_a_declared_length_over_the_cap_is_not_read(rsps):
    rsps.add(responses.GET, WELL_KNOWN, body=b"{}" + b" " * 2000, headers={"Content-Length": "2002"})
    _, problem = wire.get_json(requests.Session(), WELL_KNOWN, max_bytes=1000, timeout=2)
    assert problem == "answered with a body larger than the 1,000-byte limit"


def test_a_body_dripping_past_the_deadline_is_cut_off():
    started = time.monotonic()
    with pytest.raises(wire.BodyTooSlow):
        wire.read_body(slow_response(100, 0.02), max_bytes=1000, deadline=time.monotonic() + 0.2)
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("body", [DEEP, DEEP_OBJECT])
def test_deeply_nested_json_is_a_reason_not_a_recursion_error(rsps, body):
    rsps.add(responses.GET, WELL_KNOWN, body=body)
    data, problem = wire.get_json(requests.Session(), WELL_KNOWN, max_bytes=1024 * 1024, timeout=2)
    assert data is None
    assert problem == "did not answer with usable JSON (nested deeper than 1024 levels)"


def test_redirect_within_the_origin_is_followed_and_to_another_is_not(rsps):
    rsps.add(responses.GET, WELL_KNOWN, status=301, headers={"Location": "/fhir/smart.json"})
    rsps.add(responses.GET, "https://ehr.test/fhir/smart.json", json=smart_configuration())
    data, problem = wire.get_json(requests.Session(), WELL_KNOWN, max_bytes=10_000, timeout=2)
    assert problem is None and data is not None and data["token_endpoint"] == TOKEN
    rsps.replace(responses.GET, WELL_KNOWN, status=302, headers={"Location": "https://ehr.test:8443/x"})
    data, problem = wire.get_json(requests.Session(), WELL_KNOWN, max_bytes=10_000, timeout=2)
    assert data is None and problem == "redirected to another origin (https://ehr.test:8443); not followed"


def test_discovery_error_names_the_nesting_of_both_documents(rsps):
    rsps.add(responses.GET, WELL_KNOWN, body=DEEP)
    rsps.add(responses.GET, METADATA, body=DEEP_OBJECT)
    with pytest.raises(DiscoveryError) as info:
        Discovery(requests.Session()).get(ISS)
    assert info.value.description.count("nested deeper than 1024 levels") == 2


def test_nested_jwks_is_an_id_token_error(rsps):
    rsps.add(responses.GET, WELL_KNOWN, json=smart_configuration())
    rsps.add(responses.GET, JWKS_URI, body=DEEP)
    discovery = Discovery(requests.Session())
    with pytest.raises(IdTokenError, match="nested deeper than 1024 levels"):
        discovery.jwks(discovery.get(ISS))


def _segment(raw: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (f"{_segment(DEEP_SHORT)}.{_segment(b'{}')}.sig", "its header is not usable JSON (nested deeper"),
        (f"{_segment(b'{}')}.{_segment(DEEP_SHORT)}.sig", "its claims is not usable JSON (nested deeper"),
        (f"{_segment(b'[1]')}.{_segment(b'{}')}.sig", "its header is not a JSON object"),
        ("a" * 70_000, "longer than 65,536 characters"),
    ],
)
def test_id_token_parts_are_decoded_by_the_guarded_decoder(token, reason):
    with pytest.raises(IdTokenError, match=reason.replace("(", r"\(")):
        validate_id_token(token, jwks=ehr_jwks(), issuer=ISS, client_id="test-client", nonce=None)


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"body": DEEP}, b"nested deeper than 1024 levels"),
        (
            {"body": gzip.compress(b" " * (2 * 1024 * 1024)), "headers": {"Content-Encoding": "gzip"}},
            b"larger than the 1,048,576-byte limit",
        ),
    ],
)
def test_hostile_discovery_gives_a_launch_error_page(tmp_path, rsps, document, expected):
    rsps.add(responses.GET, WELL_KNOWN, **document)
    rsps.add(responses.GET, METADATA, status=404)
    page = make_app(tmp_path).test_client().get("/launch", query_string={"iss": ISS, "launch": "L"})
    assert page.status_code == 502
    assert expected in page.data and b"could not be completed" in page.data


def _started(tmp_path: Any, rsps: responses.RequestsMock) -> tuple[Any, dict[str, str]]:
    client = make_app(tmp_path).test_client()
    mock_discovery(rsps)
    started = client.get("/launch", query_string={"iss": ISS, "launch": "L"})
    return client, {k: v[0] for k, v in parse_qs(urlsplit(started.location).query).items()}


def _callback(tmp_path: Any, rsps: responses.RequestsMock, **token: Any) -> tuple[Any, dict[str, str]]:
    client, params = _started(tmp_path, rsps)
    rsps.add(responses.POST, TOKEN, **token)
    return client.get("/callback", query_string={"code": "CODE-1", "state": params["state"]}), params


def test_nested_token_response_gives_a_launch_error_page(tmp_path, rsps):
    page, _ = _callback(tmp_path, rsps, body=DEEP)
    assert page.status_code == 502
    assert b"did not answer with usable JSON (nested deeper than 1024 levels)" in page.data


def test_oversized_token_response_gives_a_launch_error_page(tmp_path, rsps):
    page, _ = _callback(tmp_path, rsps, body=DEEP_OBJECT)
    assert page.status_code == 502
    assert b"answered with a body larger than the 262,144-byte limit" in page.data


def test_nested_id_token_claims_give_a_launch_error_page(tmp_path, rsps):
    body = token_response(id_token=f"{_segment(b'{}')}.{_segment(DEEP_SHORT)}.c2ln")
    page, _ = _callback(tmp_path, rsps, json=body)
    assert page.status_code == 502 and b"its claims is not usable JSON" in page.data


def test_a_valid_id_token_still_passes(tmp_path, rsps):
    client, params = _started(tmp_path, rsps)
    rsps.add(responses.POST, TOKEN, json=token_response(id_token=id_token(params["nonce"])))
    page = client.get("/callback", query_string={"code": "CODE-1", "state": params["state"]})
    assert page.status_code == 302 and page.location.endswith("/review")


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("bad\u202egnp.exe\x00 secret", "bad gnp.exe secret"),
        ("x" * 1000, "x" * 299 + "…"),
        ("uses CODE-abc123 here", "uses [redacted] here"),
        ("<script>alert(1)</script>", "<script>alert(1)</script>"),  # escaped where shown
        (42, ""),
    ],
)
def test_ehr_text_is_cleaned_capped_and_redacted(raw, shown):
    assert wire.ehr_text(raw, secrets=["CODE-abc123", None]) == shown
