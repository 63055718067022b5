"""Authorization-server state and client authentication for the sandbox.

SMART App Launch 2.x "App Launch" (authorize, token, refresh) and "Client Authentication: Asymmetric"
(private_key_jwt) / "Symmetric" (client_secret_basic), "Backend Services" (client_credentials);
RFC 6749 §4.1, §4.4, §5.2, §6; RFC 7636 (PKCE S256); RFC 7523 §3 (JWT client assertions); refresh-token
rotation per RFC 9700 (OAuth 2.0 Security BCP) §4.14.2. Codes, tokens and launches live in memory behind
one lock; ``AuthState.clock`` tells the time (tests move it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson
import requests
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from .outcome import JsonDict
from .scopes import NON_CLINICAL

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGS = ("RS384", "ES384", "RS256", "ES256")
CLIENT_TYPES = ("public", "confidential-symmetric", "confidential-asymmetric")
GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials")
#: A client registered without ``grant_types`` is an app launched by users.
DEFAULT_GRANT_TYPES = ("authorization_code", "refresh_token")
#: How refresh tokens behave: "none" (the same refresh token stays valid, none is returned on refresh),
#: "rotate" (a new one each refresh, the old one refused from then on), "strict" (as rotate, and
#: presenting a used one revokes the whole grant: RFC 9700 §4.14.2 reuse detection).
REFRESH_ROTATIONS = ("none", "rotate", "strict")
VERIFIER_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


class OAuthError(Exception):
    """An RFC 6749 error: ``error`` code, safe ``description``, HTTP ``status`` for the token endpoint."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def to_json(self) -> JsonDict:
        return {"error": self.error, "error_description": self.description}


@dataclass(frozen=True)
class Client:
    """A registered client (SMART "Registering a SMART App with an EHR")."""

    client_id: str
    client_type: str
    redirect_uris: tuple[str, ...]
    scopes: tuple[str, ...]
    client_secret: str | None = None
    jwks_uri: str | None = None
    jwks: JsonDict | None = None
    name: str = ""
    grant_types: tuple[str, ...] = DEFAULT_GRANT_TYPES
    user: str | None = None  # "Practitioner/<id>" a client_credentials token acts for (fhirUser)


def load_clients(raw: Sequence[Mapping[str, Any]]) -> dict[str, Client]:
    """Validate the ``CLIENTS`` config; a symmetric client's secret comes from ``client_secret_env`` when
    that environment variable is set, else ``client_secret``."""
    clients: dict[str, Client] = {}
    for item in raw:
        client_id = str(item["client_id"])
        client_type = str(item.get("client_type", "public"))
        if client_type not in CLIENT_TYPES:
            raise ValueError(f"client {client_id}: unknown client_type {client_type!r}")
        secret = item.get("client_secret")
        env_name = item.get("client_secret_env")
        if env_name and os.environ.get(str(env_name)):
            secret = os.environ[str(env_name)]
        if client_type == "confidential-symmetric" and not secret:
            raise ValueError(f"client {client_id}: confidential-symmetric needs client_secret(_env)")
        if client_type == "confidential-asymmetric" and not (item.get("jwks_uri") or item.get("jwks")):
            raise ValueError(f"client {client_id}: confidential-asymmetric needs jwks_uri or jwks")
        grant_types = tuple(str(g) for g in item.get("grant_types", DEFAULT_GRANT_TYPES))
        if not grant_types or not set(grant_types) <= set(GRANT_TYPES):
            raise ValueError(f"client {client_id}: grant_types must be among {list(GRANT_TYPES)}")
        if "client_credentials" in grant_types and client_type == "public":
            raise ValueError(f"client {client_id}: client_credentials needs a confidential client")
        redirect_uris = tuple(str(u) for u in item.get("redirect_uris", ()))
        if not redirect_uris and "authorization_code" in grant_types:
            raise ValueError(f"client {client_id}: no redirect_uris")
        clients[client_id] = Client(
            client_id=client_id,
            client_type=client_type,
            redirect_uris=redirect_uris,
            scopes=tuple(str(s) for s in item.get("scopes", DEFAULT_ALLOWED_SCOPES)),
            client_secret=str(secret) if secret else None,
            jwks_uri=str(item["jwks_uri"]) if item.get("jwks_uri") else None,
            jwks=item.get("jwks"),
            name=str(item.get("name", client_id)),
            grant_types=grant_types,
            user=str(item["user"]) if item.get("user") else None,
        )
    return clients


#: What a client may be granted unless its registration lists scopes: everything the sandbox knows.
DEFAULT_ALLOWED_SCOPES = (*sorted(NON_CLINICAL), "patient/*.cruds", "user/*.cruds")


def load_clients_file(path: Path) -> list[JsonDict]:
    data = orjson.loads(path.read_bytes())
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of clients")
    return data


def s256(verifier: str) -> str:
    """RFC 7636 §4.2: BASE64URL(SHA256(ASCII(code_verifier))) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def valid_verifier(verifier: str) -> bool:
    """RFC 7636 §4.1: 43-128 characters from the unreserved set."""
    return 43 <= len(verifier) <= 128 and set(verifier) <= VERIFIER_CHARS


def new_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass
class Grant:
    """What a code, access token or refresh token stands for."""

    client_id: str
    scopes: tuple[str, ...]
    user: str | None  # "Practitioner/<id>"
    patient: str | None
    encounter: str | None
    expires_at: float
    nonce: str | None = None
    redirect_uri: str = ""
    code_challenge: str = ""
    family: str = field(default_factory=new_token)  # tokens descending from one code
    fhir_context: tuple[JsonDict, ...] = ()  # SMART "fhirContext" items of the launch


@dataclass(frozen=True)
class Launch:
    """An EHR launch record (SMART "EHR Launch": the opaque ``launch`` parameter)."""

    patient: str | None
    encounter: str | None  # the Encounter's id
    user: str | None
    expires_at: float
    fhir_context: tuple[JsonDict, ...] = ()


#: How often :meth:`AuthState._expire` sweeps the tables.
SWEEP_SECONDS = 1.0


class AuthState:
    """Launches, pending authorizations, codes, tokens and seen assertion ``jti``s, behind one lock."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.launches: dict[str, Launch] = {}
        self.pending: dict[str, tuple[JsonDict, float]] = {}
        self.codes: dict[str, Grant] = {}
        self.used_codes: dict[str, tuple[str, float]] = {}  # code -> (family, expiry of the memory)
        self.access: dict[str, Grant] = {}
        self.refresh: dict[str, Grant] = {}
        self.used_refresh: dict[str, tuple[str, float]] = {}  # rotated token -> (family, its expiry)
        self.latest_access: dict[str, tuple[str, float]] = {}  # family -> (access token, issued at)
        self.jtis: dict[str, float] = {}
        self._jwks_cache: dict[str, tuple[JsonDict, float]] = {}
        self._next_sweep = 0.0

    # -- launches and pending authorizations -----------------------------------------------------------
    def add_launch(self, launch: Launch) -> str:
        launch_id = secrets.token_urlsafe(16)
        with self.lock:
            self.launches[launch_id] = launch
        return launch_id

    def get_launch(self, launch_id: str) -> Launch | None:
        with self.lock:
            launch = self.launches.get(launch_id)
        if launch is None or launch.expires_at < self.clock():
            return None
        return launch

    def add_pending(self, params: JsonDict, ttl: float) -> str:
        pending_id = secrets.token_urlsafe(16)
        with self.lock:
            self.pending[pending_id] = (params, self.clock() + ttl)
        return pending_id

    def take_pending(self, pending_id: str) -> JsonDict | None:
        with self.lock:
            item = self.pending.pop(pending_id, None)
        if item is None or item[1] < self.clock():
            return None
        return item[0]

    # -- codes and tokens ------------------------------------------------------------------------------
    def add_code(self, grant: Grant) -> str:
        code = new_token()
        with self.lock:
            self._expire()
            self.codes[code] = grant
        return code

    def redeem_code(self, code: str) -> Grant:
        """Single use (RFC 6749 §4.1.2): a second redemption fails and revokes what the first issued."""
        now = self.clock()
        with self.lock:
            grant = self.codes.pop(code, None)
            if grant is None:
                used = self.used_codes.get(code)
                if used is not None:
                    self._revoke_family(used[0])
                    raise OAuthError("invalid_grant", "authorization code already used")
                raise OAuthError("invalid_grant", "authorization code is invalid or expired")
            self.used_codes[code] = (grant.family, now + 600)
        if grant.expires_at < now:
            raise OAuthError("invalid_grant", "authorization code expired")
        return grant

    def _revoke_family(self, family: str) -> None:
        for table in (self.access, self.refresh):
            for token in [t for t, g in table.items() if g.family == family]:
                del table[token]
        self.latest_access.pop(family, None)

    def add_access(self, grant: Grant) -> str:
        token = new_token()
        with self.lock:
            self.access[token] = grant
        return token

    def issue_access(self, grant: Grant, ttl: float, *, reuse_within: float = 0) -> tuple[str, Grant]:
        """A new access token for ``grant`` valid ``ttl`` seconds. With ``reuse_within`` (refreshes): if
        an earlier refresh of the same grant (family, scopes) got a token less than ``reuse_within``
        seconds ago that is still valid, that same token with its own expiry, as some EHRs answer
        refreshes that arrive close together."""
        now = self.clock()
        with self.lock:
            latest = self.latest_access.get(grant.family) if reuse_within > 0 else None
            if latest is not None and now - latest[1] < reuse_within:
                current = self.access.get(latest[0])
                if current is not None and current.expires_at > now and current.scopes == grant.scopes:
                    return latest[0], current
            token = new_token()
            access = replace(grant, expires_at=now + ttl)
            self.access[token] = access
            if reuse_within > 0:
                self.latest_access[grant.family] = (token, now)
        return token, access

    def get_access(self, token: str) -> Grant | None:
        with self.lock:
            grant = self.access.get(token)
        if grant is None or grant.expires_at <= self.clock():  # valid while now < expiry
            return None
        return grant

    def add_refresh(self, grant: Grant) -> str:
        token = new_token()
        with self.lock:
            self.refresh[token] = grant
        return token

    def use_refresh(
        self, token: str, client_id: str, requested: list[str] | None, *, rotation: str = "rotate"
    ) -> Grant:
        """Redeem a refresh token (RFC 6749 §6). With rotation ("rotate", "strict") it is used up at
        once; "strict" also revokes the grant when a used token comes back (RFC 9700 §4.14.2). A
        requested ``scope`` must be within the original grant and narrows it."""
        if rotation not in REFRESH_ROTATIONS:
            raise ValueError(f"refresh rotation must be one of {REFRESH_ROTATIONS}, not {rotation!r}")
        now = self.clock()
        with self.lock:
            grant = self.refresh.get(token)
            if grant is None:
                used = self.used_refresh.get(token)
                if used is not None and rotation == "strict":
                    self._revoke_family(used[0])
                    raise OAuthError("invalid_grant", "refresh token was already used; the grant is revoked")
                raise OAuthError("invalid_grant", "refresh token is invalid or expired")
            if grant.expires_at < now:
                raise OAuthError("invalid_grant", "refresh token is invalid or expired")
            if grant.client_id != client_id:
                raise OAuthError("invalid_grant", "refresh token was issued to another client")
            if requested is not None and not set(requested) <= set(grant.scopes):
                raise OAuthError("invalid_scope", "requested scope exceeds the original grant")
            if rotation != "none":
                del self.refresh[token]
                self.used_refresh[token] = (grant.family, grant.expires_at)
        if requested is not None:
            grant = replace(grant, scopes=tuple(s for s in grant.scopes if s in requested))
        return grant

    def _expire(self) -> None:
        """Drop what has expired, at most once a second: every lookup checks expiry itself, so this only
        keeps the tables small, and a sweep on every code or assertion would cost each one a pass over
        every live token."""
        now = self.clock()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_SECONDS
        for table in (self.codes, self.access, self.refresh):
            for token in [t for t, g in table.items() if g.expires_at < now]:
                del table[token]
        for memory in (self.used_codes, self.used_refresh):
            for key in [k for k, (_, until) in memory.items() if until < now]:
                del memory[key]
        for family in [f for f, (token, _) in self.latest_access.items() if token not in self.access]:
            del self.latest_access[family]
        for jti in [j for j, until in self.jtis.items() if until < now]:
            del self.jtis[jti]
        for launch_id in [k for k, v in self.launches.items() if v.expires_at < now]:
            del self.launches[launch_id]

    # -- client authentication -------------------------------------------------------------------------
    def authenticate(
        self,
        clients: Mapping[str, Client],
        form: Mapping[str, str],
        authorization: str | None,
        *,
        token_endpoint: str,
        http: requests.Session,
        jwks_ttl: float,
    ) -> Client:
        """Identify and authenticate the client of a token request (RFC 6749 §2.3, §3.2.1)."""
        body_client_id = form.get("client_id")
        if authorization and authorization.lower().startswith("basic "):
            client = self._basic(clients, authorization[6:].strip())
            if form.get("client_assertion") or form.get("client_secret"):
                raise OAuthError("invalid_request", "use exactly one client authentication method")
        elif form.get("client_assertion_type") or form.get("client_assertion"):
            if form.get("client_assertion_type") != ASSERTION_TYPE:
                raise OAuthError("invalid_client", "unsupported client_assertion_type", 401)
            client = self._assertion(
                clients, form.get("client_assertion", ""), token_endpoint, http, jwks_ttl
            )
        elif form.get("client_secret"):
            raise OAuthError(
                "invalid_client", "client_secret_post is not supported; use client_secret_basic", 401
            )
        else:
            public = clients.get(body_client_id or "")
            if public is None:
                raise OAuthError("invalid_client", "unknown client", 401)
            client = public
            if client.client_type != "public":
                raise OAuthError("invalid_client", "client authentication required for this client", 401)
        if body_client_id and body_client_id != client.client_id:
            raise OAuthError("invalid_client", "client_id does not match the authenticated client", 401)
        return client

    @staticmethod
    def _basic(clients: Mapping[str, Client], encoded: str) -> Client:
        """client_secret_basic: ``Basic base64(urlencode(id):urlencode(secret))`` (RFC 6749 §2.3.1)."""
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
            raw_id, raw_secret = decoded.split(":", 1)
        except (ValueError, UnicodeDecodeError) as exc:
            raise OAuthError("invalid_client", "malformed Basic credentials", 401) from exc
        client = clients.get(unquote(raw_id))
        if client is None or client.client_type != "confidential-symmetric" or client.client_secret is None:
            raise OAuthError("invalid_client", "client authentication failed", 401)
        if not hmac.compare_digest(unquote(raw_secret).encode(), client.client_secret.encode()):
            raise OAuthError("invalid_client", "client authentication failed", 401)
        return client

    def _assertion(
        self,
        clients: Mapping[str, Client],
        assertion: str,
        token_endpoint: str,
        http: requests.Session,
        jwks_ttl: float,
    ) -> Client:
        """private_key_jwt (SMART "Client Authentication: Asymmetric"; RFC 7523 §3)."""
        failed = OAuthError("invalid_client", "client assertion rejected", 401)
        try:
            unverified = jws.extract_compact(assertion.encode("ascii"))
            claims = orjson.loads(unverified.payload)
        except (JoseError, ValueError, UnicodeEncodeError) as exc:
            raise OAuthError("invalid_client", "client assertion is not a JWS", 401) from exc
        if not isinstance(claims, dict):
            raise failed
        client = clients.get(str(claims.get("iss", "")))
        if client is None or client.client_type != "confidential-asymmetric":
            raise failed
        alg = unverified.protected.get("alg")
        if alg not in ASSERTION_ALGS:
            raise OAuthError(
                "invalid_client", f"client assertion alg must be one of {list(ASSERTION_ALGS)}", 401
            )
        key_set = self._client_keys(client, http, jwks_ttl, refresh=False)
        try:
            token = self._verify(assertion, key_set, unverified.protected.get("kid"), str(alg))
        except JoseError:
            # The client may have rotated keys: fetch its JWKS once more before refusing.
            key_set = self._client_keys(client, http, jwks_ttl, refresh=True)
            try:
                token = self._verify(assertion, key_set, unverified.protected.get("kid"), str(alg))
            except JoseError as exc:
                raise OAuthError("invalid_client", "client assertion signature not valid", 401) from exc
        claims = token.claims
        now = self.clock()
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        exp = claims.get("exp")
        jti = claims.get("jti")
        if claims.get("sub") != client.client_id:
            raise OAuthError("invalid_client", "client assertion sub must equal iss (the client_id)", 401)
        if token_endpoint not in auds:
            raise OAuthError("invalid_client", "client assertion aud must be the token endpoint", 401)
        if not isinstance(exp, int | float) or exp < now - 5:
            raise OAuthError("invalid_client", "client assertion expired or without exp", 401)
        if exp > now + 300 + 5:
            raise OAuthError("invalid_client", "client assertion exp more than five minutes ahead", 401)
        if not isinstance(jti, str) or not jti:
            raise OAuthError("invalid_client", "client assertion without jti", 401)
        with self.lock:
            self._expire()
            if f"{client.client_id} {jti}" in self.jtis:
                raise OAuthError("invalid_client", "client assertion jti already used", 401)
            self.jtis[f"{client.client_id} {jti}"] = float(exp) + 5
        return client

    @staticmethod
    def _verify(assertion: str, key_set: KeySet, kid: Any, alg: str) -> jwt.Token:
        candidates = [k for k in key_set.keys if kid is None or k.kid == kid]
        last: JoseError | None = None
        for key in candidates:
            try:
                return jwt.decode(assertion, key, algorithms=[alg])
            except JoseError as exc:
                last = exc
        raise last or JoseError("no matching key")

    def _client_keys(self, client: Client, http: requests.Session, ttl: float, *, refresh: bool) -> KeySet:
        if client.jwks is not None:
            return KeySet.import_key_set(client.jwks)  # type: ignore[arg-type]
        url = client.jwks_uri or ""
        now = self.clock()
        with self.lock:
            cached = self._jwks_cache.get(url)
        if cached is None or cached[1] < now or refresh:
            try:
                response = http.get(url, timeout=5, headers={"Accept": "application/json"})
                response.raise_for_status()
                data = response.json()
            except (requests.RequestException, ValueError) as exc:
                raise OAuthError("invalid_client", "could not fetch the client's jwks_uri", 401) from exc
            if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
                raise OAuthError("invalid_client", "the client's jwks_uri did not return a JWK Set", 401)
            cached = (data, now + ttl)
            with self.lock:
                self._jwks_cache[url] = cached
        try:
            return KeySet.import_key_set(cached[0])  # type: ignore[arg-type]
        except (JoseError, ValueError, KeyError, TypeError) as exc:
            raise OAuthError("invalid_client", "the client's JWK Set could not be read", 401) from exc
