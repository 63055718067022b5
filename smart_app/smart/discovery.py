"""SMART discovery (SMART App Launch 2.x, "Conformance": ``/.well-known/smart-configuration``).

Older servers without the well-known document advertise their OAuth endpoints in the
CapabilityStatement (``rest.security.extension`` with URL
``http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris``, FHIR R4 "CapabilityStatement"),
which is used as a fallback. Relative endpoint URLs are resolved against the FHIR base (``iss``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from smart_app.smart import wire
from smart_app.smart.errors import DiscoveryError, IdTokenError, UntrustedEndpoint
from smart_app.smart.registrations import Registration, normalise_iss

log = logging.getLogger("smart_app.smart")

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
Timeout = float | tuple[float, float]


@dataclass(frozen=True)
class SmartConfiguration:
    """The parts of an EHR's SMART configuration the app uses; endpoint URLs are absolute."""

    iss: str
    authorization_endpoint: str
    token_endpoint: str
    issuer: str | None = None
    jwks_uri: str | None = None
    capabilities: tuple[str, ...] = ()
    scopes_supported: tuple[str, ...] = ()
    code_challenge_methods_supported: tuple[str, ...] = ()
    token_endpoint_auth_methods_supported: tuple[str, ...] = ()
    token_endpoint_auth_signing_alg_values_supported: tuple[str, ...] = ()
    grant_types_supported: tuple[str, ...] = ()
    revocation_endpoint: str | None = None
    source: str = "smart-configuration"
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


def resolve(iss: str, url: str) -> str:
    """Resolve ``url`` against the FHIR base ``iss`` (a base without a trailing slash is a directory)."""
    return urljoin(iss.rstrip("/") + "/", url.strip())


class Discovery:
    """Discovers and caches (per iss, for ``ttl`` seconds) SMART configurations and JWK sets."""

    def __init__(
        self,
        http: requests.Session,
        ttl: float = 3600.0,
        *,
        timeout: Timeout = (3.05, 15.0),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.http = http
        self.ttl = ttl
        self.timeout = timeout
        self.clock = clock
        self._lock = threading.Lock()
        self._configs: dict[str, tuple[float, SmartConfiguration]] = {}
        self._jwks: dict[str, tuple[float, dict[str, Any]]] = {}

    def get(self, iss: str) -> SmartConfiguration:
        """The SMART configuration of ``iss``, from the cache when younger than the TTL."""
        key = normalise_iss(iss)
        now = self.clock()
        with self._lock:
            cached = self._configs.get(key)
        if cached and now - cached[0] < self.ttl:
            return cached[1]
        config = self._discover(key)
        with self._lock:
            self._configs[key] = (self.clock(), config)
        return config

    def forget(self, iss: str) -> None:
        """Drop a cached configuration (e.g. after the EHR moved its endpoints)."""
        with self._lock:
            self._configs.pop(normalise_iss(iss), None)

    def jwks(self, config: SmartConfiguration, *, refresh: bool = False) -> dict[str, Any]:
        """The JWK set at ``config.jwks_uri`` (for id_token signatures), cached for the TTL."""
        if not config.jwks_uri:
            raise IdTokenError(
                "The EHR does not publish a jwks_uri, so its identity token cannot be checked."
            )
        uri = config.jwks_uri
        now = self.clock()
        with self._lock:
            cached = self._jwks.get(uri)
        if cached and not refresh and now - cached[0] < self.ttl:
            return cached[1]
        data, problem = self._get_json(uri, wire.JWKS_MAX_BYTES)
        if data is None or not isinstance(data.get("keys"), list):
            raise IdTokenError(f"The EHR's signing keys at {uri} could not be read: {problem or 'no keys'}.")
        with self._lock:
            self._jwks[uri] = (self.clock(), data)
        return data

    def _discover(self, iss: str) -> SmartConfiguration:
        well_known = f"{iss}/.well-known/smart-configuration"
        data, problem = self._get_json(well_known, wire.SMART_CONFIGURATION_MAX_BYTES)
        if data is not None:
            config, problem = from_smart_configuration(iss, data)
            if config is not None:
                log.info("SMART configuration discovered for %s", iss)
                return config
        first_problem = f"{well_known} {problem}"
        metadata = f"{iss}/metadata"
        data, problem = self._get_json(metadata, wire.CAPABILITY_STATEMENT_MAX_BYTES)
        if data is not None:
            config, problem = from_capability_statement(iss, data)
            if config is not None:
                log.info("SMART endpoints for %s taken from the CapabilityStatement", iss)
                return config
        log.warning("SMART discovery failed for %s: %s; %s %s", iss, first_problem, metadata, problem)
        raise DiscoveryError(
            f"The EHR's SMART configuration could not be read: {first_problem}; {metadata} {problem}."
        )

    def _get_json(self, url: str, max_bytes: int) -> tuple[dict[str, Any] | None, str | None]:
        """GET ``url`` as a JSON object, bounded in size and time: ``(object, None)`` or
        ``(None, reason)``."""
        return wire.get_json(self.http, url, max_bytes=max_bytes, timeout=self.timeout)


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, str))


def _endpoint(iss: str, value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    url = resolve(iss, value)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    if urlsplit(iss).scheme == "https" and parts.scheme != "https":
        return None
    return url


def from_smart_configuration(
    iss: str, data: Mapping[str, Any]
) -> tuple[SmartConfiguration | None, str | None]:
    """A ``.well-known/smart-configuration`` document as a configuration, or why it is unusable; raises
    ``DiscoveryError`` when it lists PKCE methods without S256."""
    authorize = _endpoint(iss, data.get("authorization_endpoint"))
    token = _endpoint(iss, data.get("token_endpoint"))
    if authorize is None or token is None:
        return None, "lacks a usable authorization_endpoint or token_endpoint"
    methods = _strings(data.get("code_challenge_methods_supported"))
    if "code_challenge_methods_supported" in data and "S256" not in methods:
        raise DiscoveryError(
            "The EHR does not support PKCE with S256 (code_challenge_methods_supported), "
            "which SMART App Launch 2.x requires."
        )
    issuer = data.get("issuer")
    return (
        SmartConfiguration(
            iss=iss,
            authorization_endpoint=authorize,
            token_endpoint=token,
            issuer=issuer if isinstance(issuer, str) and issuer else None,
            jwks_uri=_endpoint(iss, data.get("jwks_uri")),
            capabilities=_strings(data.get("capabilities")),
            scopes_supported=_strings(data.get("scopes_supported")),
            code_challenge_methods_supported=methods,
            token_endpoint_auth_methods_supported=_strings(data.get("token_endpoint_auth_methods_supported")),
            token_endpoint_auth_signing_alg_values_supported=_strings(
                data.get("token_endpoint_auth_signing_alg_values_supported")
            ),
            grant_types_supported=_strings(data.get("grant_types_supported")),
            revocation_endpoint=_endpoint(iss, data.get("revocation_endpoint")),
            source="smart-configuration",
            raw=dict(data),
        ),
        None,
    )


def from_capability_statement(
    iss: str, data: Mapping[str, Any]
) -> tuple[SmartConfiguration | None, str | None]:
    """The ``oauth-uris`` extension of a CapabilityStatement as a configuration, or why it is unusable."""
    if data.get("resourceType") != "CapabilityStatement":
        return None, "is not a CapabilityStatement"
    uris: dict[str, str] = {}
    for rest in data.get("rest") or []:
        if not isinstance(rest, dict):
            continue
        security = rest.get("security") or {}
        for ext in security.get("extension") or [] if isinstance(security, dict) else []:
            if not isinstance(ext, dict) or ext.get("url") != OAUTH_URIS:
                continue
            for sub in ext.get("extension") or []:
                if isinstance(sub, dict) and isinstance(sub.get("url"), str) and "valueUri" in sub:
                    uris.setdefault(sub["url"], sub["valueUri"])
    authorize = _endpoint(iss, uris.get("authorize"))
    token = _endpoint(iss, uris.get("token"))
    if authorize is None or token is None:
        return None, "has no oauth-uris extension with authorize and token endpoints"
    return (
        SmartConfiguration(
            iss=iss,
            authorization_endpoint=authorize,
            token_endpoint=token,
            revocation_endpoint=_endpoint(iss, uris.get("revoke")),
            source="capability-statement",
            raw={"oauth-uris": uris},
        ),
        None,
    )


_CHECKED_ENDPOINTS = (
    ("authorization_endpoint", "authorization endpoint"),
    ("token_endpoint", "token endpoint"),
    ("jwks_uri", "signing keys (jwks_uri)"),
)


def check_endpoints(reg: Registration, config: SmartConfiguration, *, refuse_foreign: bool) -> list[str]:
    """Hold discovery to the registration before anything is sent to the endpoints it names (the token
    endpoint receives the authorization code, the PKCE verifier and the client's credentials).

    - An endpoint the registration pins must be named exactly; otherwise the launch is refused.
    - Endpoints on another origin than the ``iss`` and its ``auth_origins`` are logged and returned as
      sentences; with ``refuse_foreign`` the launch is refused instead.
    """
    for name, label in _CHECKED_ENDPOINTS[:2]:
        pinned = getattr(reg, name)
        named = getattr(config, name)
        if pinned is not None and named != pinned:
            log.warning(
                "Launch with %s refused: discovery names the %s at %s, the registration pins %s",
                reg.name,
                label,
                wire.origin(named) or "an unusable URL",
                wire.origin(pinned),
            )
            raise UntrustedEndpoint(
                f"{reg.name}'s SMART configuration names a {label} other than the one registered for the "
                "app, so nothing was sent to it. Ask the EHR's administrator whether the endpoint moved, "
                "then update the registration.",
                ehr_name=reg.name,
            )
    trusted = {wire.origin(reg.iss), *(wire.origin(o) for o in reg.auth_origins)}
    foreign = [
        f"{label} at {wire.origin(url) or 'an unusable URL'}"
        for name, label in _CHECKED_ENDPOINTS
        if (url := getattr(config, name))
        and getattr(reg, name, None) is None
        and wire.origin(url) not in trusted
    ]
    if not foreign:
        return []
    log.warning(
        "SMART configuration of %s names endpoints on another origin than its FHIR base and the "
        "registration's auth_origins: %s",
        reg.name,
        "; ".join(foreign),
    )
    if refuse_foreign:
        raise UntrustedEndpoint(
            f"{reg.name}'s SMART configuration names endpoints on another site than its FHIR server "
            f"({'; '.join(foreign)}), and the app's registration does not trust that site, so nothing was "
            "sent there. The EHR's administrator can confirm the site; the app's administrator then adds "
            "it to the registration (auth_origins or the pinned endpoints).",
            ehr_name=reg.name,
        )
    return foreign
