"""SMART discovery with a TTL cache and the CapabilityStatement fallback (smart_app.smart.discovery)."""

from __future__ import annotations

import pytest
import requests
import responses
from smart_support import (
    AUTHORIZE,
    ISS,
    JWKS_URI,
    METADATA,
    TOKEN,
    WELL_KNOWN,
    ehr_jwks,
    smart_configuration,
)

from smart_app.smart.discovery import OAUTH_URIS, Discovery, resolve
from smart_app.smart.errors import DiscoveryError, IdTokenError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def capability_statement(authorize: str = "auth/authorize", token: str = "/auth/token") -> dict:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "rest": [
            {
                "mode": "server",
                "security": {
                    "extension": [
                        {
                            "url": OAUTH_URIS,
                            "extension": [
                                {"url": "authorize", "valueUri": authorize},
                                {"url": "token", "valueUri": token},
                            ],
                        }
                    ]
                },
            }
        ],
    }


def test_well_known_with_accept_header_and_ttl_cache(rsps):
    rsps.add(responses.GET, WELL_KNOWN, json=smart_configuration())
    clock = Clock()
    discovery = Discovery(requests.Session(), ttl=60, clock=clock)
    config = discovery.get(ISS + "/")
    assert (config.authorization_endpoint, config.token_endpoint, config.jwks_uri) == (
        AUTHORIZE,
        TOKEN,
        JWKS_URI,
    )
    assert config.source == "smart-configuration" and config.issuer == ISS
    assert rsps.calls[0].request.headers["Accept"] == "application/json"
    clock.now += 59
    assert discovery.get(ISS) is config
    assert len(rsps.calls) == 1
    clock.now += 2
    discovery.get(ISS)
    assert len(rsps.calls) == 2


def test_relative_endpoints_resolved_against_iss(rsps):
    rsps.add(
        responses.GET,
        WELL_KNOWN,
        json=smart_configuration(
            authorization_endpoint="/auth/authorize", token_endpoint="oauth/token", jwks_uri="../keys"
        ),
    )
    config = Discovery(requests.Session()).get(ISS)
    assert config.authorization_endpoint == "https://ehr.test/auth/authorize"
    assert config.token_endpoint == "https://ehr.test/fhir/oauth/token"
    assert config.jwks_uri == "https://ehr.test/keys"
    assert resolve("https://a.test/fhir", "https://b.test/x") == "https://b.test/x"


def test_capability_statement_fallback_on_404(rsps):
    rsps.add(responses.GET, WELL_KNOWN, status=404)
    rsps.add(responses.GET, METADATA, json=capability_statement())
    config = Discovery(requests.Session()).get(ISS)
    assert config.source == "capability-statement"
    assert config.authorization_endpoint == "https://ehr.test/fhir/auth/authorize"
    assert config.token_endpoint == "https://ehr.test/auth/token"


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"status": 404}, "answered HTTP 404"),
        ({"status": 500, "json": {"oops": 1}}, "answered HTTP 500"),
        ({"status": 200, "body": "<html>not json</html>"}, "did not answer with usable JSON"),
        ({"status": 200, "json": ["a"]}, "did not answer with a JSON object"),
        ({"status": 200, "json": {"token_endpoint": TOKEN}}, "lacks a usable authorization_endpoint"),
    ],
)
def test_discovery_failures_name_both_documents(rsps, kwargs, reason):
    rsps.add(responses.GET, WELL_KNOWN, **kwargs)
    rsps.add(responses.GET, METADATA, status=500)
    with pytest.raises(DiscoveryError) as info:
        Discovery(requests.Session()).get(ISS)
    assert reason in info.value.description
    assert f"{METADATA} answered HTTP 500" in info.value.description
    assert info.value.status == 502


def test_metadata_without_oauth_uris(rsps):
    rsps.add(responses.GET, WELL_KNOWN, status=404)
    rsps.add(
        responses.GET, METADATA, json={"resourceType": "CapabilityStatement", "rest": [{"mode": "server"}]}
    )
    with pytest.raises(DiscoveryError, match="no oauth-uris extension"):
        Discovery(requests.Session()).get(ISS)


def test_connection_error_and_failures_are_not_cached(rsps):
    rsps.add(responses.GET, WELL_KNOWN, body=requests.ConnectionError("down"))
    rsps.add(responses.GET, METADATA, body=requests.ConnectionError("down"))
    discovery = Discovery(requests.Session())
    with pytest.raises(DiscoveryError, match="could not be reached"):
        discovery.get(ISS)
    rsps.replace(responses.GET, WELL_KNOWN, json=smart_configuration())
    assert discovery.get(ISS).token_endpoint == TOKEN


def test_pkce_s256_required_when_methods_listed(rsps):
    rsps.add(responses.GET, WELL_KNOWN, json=smart_configuration(code_challenge_methods_supported=["plain"]))
    with pytest.raises(DiscoveryError, match="S256"):
        Discovery(requests.Session()).get(ISS)


def test_https_issuer_refuses_http_endpoints(rsps):
    rsps.add(responses.GET, WELL_KNOWN, json=smart_configuration(token_endpoint="http://ehr.test/token"))
    rsps.add(responses.GET, METADATA, status=404)
    with pytest.raises(DiscoveryError, match="token_endpoint"):
        Discovery(requests.Session()).get(ISS)


def test_jwks_cached_and_refreshable(rsps):
    rsps.add(responses.GET, WELL_KNOWN, json=smart_configuration())
    rsps.add(responses.GET, JWKS_URI, json=ehr_jwks())
    discovery = Discovery(requests.Session())
    config = discovery.get(ISS)
    assert discovery.jwks(config) == ehr_jwks()
    discovery.jwks(config)
    assert len(rsps.calls) == 2
    discovery.jwks(config, refresh=True)
    assert len(rsps.calls) == 3
    rsps.replace(responses.GET, JWKS_URI, body="nope")
    with pytest.raises(IdTokenError, match="could not be read"):
        discovery.jwks(config, refresh=True)
