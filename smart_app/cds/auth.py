"""The CDS client's JWT, checked before anything is evaluated (CDS Hooks 2.0 "Trusting CDS Clients";
RFC 7519 JWT, RFC 7515 JWS, RFC 7517 JWK; docs/cds-hooks.md#security).

Every call carries ``Authorization: Bearer <JWT>``. The JWT is accepted when:

- its header has an asymmetric ``alg`` (``none`` and HMAC are refused: "JWT Signing Algorithm"), ``typ``
  ``JWT`` and a ``kid``;
- its ``iss`` is a registered CDS client (:mod:`smart_app.cds.clients`); an unknown ``iss`` is refused
  before any key is fetched;
- the signature verifies with the key named by ``kid`` in the client's registered JWK Set (inline or
  ``jwks_url``), or in the JWK Set at the header's ``jku`` when that URL is on the client's allow-list;
- ``aud`` (a string or an array) names the URL of the endpoint called; ``exp`` has not passed, is at most
  :data:`MAX_LIFETIME_SECONDS` ahead, and ``iat`` (and ``nbf``, if any) is not in the future (each with
  :data:`LEEWAY_SECONDS` of clock skew);
- its ``jti`` was not seen before from that client (:class:`ReplayCache`, kept until the JWT expires).

Refusals are :class:`~smart_app.cds.errors.CdsError` 401 with a short code; the token itself is never
logged.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import requests
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from smart_app import fhirjson as fj
from smart_app.cds.clients import CdsClient, CdsClientRegistry, jwks_problem
from smart_app.cds.errors import CdsError, unauthorized

log = logging.getLogger("smart_app.cds")

#: Asymmetric JWS algorithms (RFC 7518 §3.1); CDS Hooks 2.0 recommends ES384 and RS384.
ALGORITHMS: tuple[str, ...] = (
    "ES384",
    "RS384",
    "ES256",
    "RS256",
    "ES512",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
)
LEEWAY_SECONDS = 60
#: ``exp`` may lie at most this far ahead: the replay memory of a JWT lasts until it expires, and a
#: JWT authenticates one call (the bound SMART Backend Services sets for client assertions).
MAX_LIFETIME_SECONDS = 300
MAX_JWT_BYTES = 8 * 1024
MAX_JWKS_BYTES = 64 * 1024
#: A fetched JWK Set is reused this long; an unknown ``kid`` refetches it at most every
#: :data:`JWKS_MIN_REFETCH_SECONDS` (key rotation without a fetch per forged ``kid``).
JWKS_TTL_SECONDS = 300.0
JWKS_MIN_REFETCH_SECONDS = 10.0


@dataclass(frozen=True)
class Verified:
    """A JWT that passed every check: the client it authenticates and its claims."""

    client: CdsClient
    claims: Mapping[str, Any]


# -- replay memory ----------------------------------------------------------------------------------------
class ReplayCache(Protocol):
    def first_use(self, key: str, until: float) -> bool:
        """Remember ``key`` until ``until`` (epoch seconds); False when it is remembered already."""
        ...


class MemoryReplayCache:
    """Replay memory of one process (tests, single-process servers)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def first_use(self, key: str, until: float) -> bool:
        now = self._clock()
        with self._lock:
            if len(self._seen) > 1000:
                self._seen = {k: u for k, u in self._seen.items() if u >= now}
            if self._seen.get(key, -1.0) >= now:
                return False
            self._seen[key] = until
            return True


class FileReplayCache:
    """Replay memory shared by the processes of one host: one file per key, created exclusively
    (``O_CREAT | O_EXCL``), so two workers cannot both accept the same ``jti``."""

    def __init__(self, directory: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._clock = clock
        self._writes = 0

    def first_use(self, key: str, until: float) -> bool:
        path = self.directory / key
        now = self._clock()
        self._writes += 1
        if self._writes % 200 == 0:
            self._purge(now)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if _expiry(path) >= now:
                return False
            path.unlink(missing_ok=True)  # a memory that outlived its JWT: take the key afresh
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return False
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(f"{until:.0f}")
        return True

    def _purge(self, now: float) -> None:
        for path in self.directory.iterdir():
            if _expiry(path) < now:
                path.unlink(missing_ok=True)


def _expiry(path: Path) -> float:
    try:
        return float(path.read_text(encoding="ascii") or "inf")
    except (OSError, ValueError):
        return float("inf")


class RedisReplayCache:
    """Replay memory shared by every process and host: ``SET key 1 NX EXAT until``."""

    def __init__(self, client: Any, prefix: str = "back-mice:cds-jti:") -> None:
        self.client = client
        self.prefix = prefix

    def first_use(self, key: str, until: float) -> bool:
        return bool(self.client.set(self.prefix + key, b"1", nx=True, exat=int(until) + 1))


# -- the clients' keys ------------------------------------------------------------------------------------
class JwksCache:
    """JWK Sets fetched from URLs (``jwks_url``, an allowed ``jku``): a GET with the given timeouts, no
    redirects, at most :data:`MAX_JWKS_BYTES`, only public asymmetric keys; reused for ``ttl``."""

    def __init__(
        self,
        http: requests.Session,
        timeout: tuple[float, float] = (3.05, 5.0),
        *,
        ttl: float = JWKS_TTL_SECONDS,
        min_refetch: float = JWKS_MIN_REFETCH_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.http = http
        self.timeout = timeout
        self.ttl = ttl
        self.min_refetch = min_refetch
        self._clock = clock
        self._cache: dict[str, tuple[KeySet, float]] = {}
        self._lock = threading.Lock()

    def key_set(self, url: str, *, refetch: bool = False) -> KeySet:
        """The JWK Set at ``url``; ``refetch`` asks for a fresh copy (an unknown ``kid``) unless the
        cached one is younger than ``min_refetch``. Raises ``CdsError`` 401 when it cannot be had."""
        now = self._clock()
        with self._lock:
            cached = self._cache.get(url)
        if cached is not None:
            age = now - cached[1]
            if age < self.ttl and not (refetch and age >= self.min_refetch):
                return cached[0]
        key_set = self._fetch(url)
        with self._lock:
            self._cache[url] = (key_set, now)
        return key_set

    def _fetch(self, url: str) -> KeySet:
        try:
            with self.http.get(
                url,
                timeout=self.timeout,
                allow_redirects=False,
                stream=True,
                headers={"Accept": "application/json"},
            ) as response:
                if response.status_code != 200:
                    log.warning("CDS client JWK Set: HTTP %s", response.status_code)
                    raise unauthorized("keys_unavailable", "The CDS client's JWK Set could not be fetched.")
                body = response.raw.read(MAX_JWKS_BYTES + 1, decode_content=True)
        except requests.RequestException as exc:
            log.warning("CDS client JWK Set: %s", type(exc).__name__)
            raise unauthorized("keys_unavailable", "The CDS client's JWK Set could not be fetched.") from None
        try:
            data = fj.decode_json(body, max_bytes=MAX_JWKS_BYTES)
        except fj.JsonInputError:
            raise unauthorized("keys_unavailable", "The CDS client's JWK Set is not usable JSON.") from None
        problem = jwks_problem(data)
        if problem:
            log.warning("CDS client JWK Set refused: %s", problem)
            raise unauthorized("keys_unavailable", "The CDS client's JWK Set is not a set of public keys.")
        return KeySet.import_key_set(data)


# -- the JWT ----------------------------------------------------------------------------------------------
def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer`` header (RFC 6750 §2.1)."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise unauthorized("missing_token", "The call needs an Authorization: Bearer JWT of a CDS client.")
    if len(token) > MAX_JWT_BYTES:
        raise unauthorized("malformed_token", "The bearer JWT is too long.")
    return token


def verify_client_jwt(
    authorization: str | None,
    *,
    audience: str,
    clients: CdsClientRegistry,
    jwks: JwksCache,
    replay: ReplayCache,
    now: float | None = None,
    leeway: float = LEEWAY_SECONDS,
    max_lifetime: float = MAX_LIFETIME_SECONDS,
) -> Verified:
    """Check the JWT of ``authorization`` for a call to the endpoint URL ``audience``; see the module
    docstring for the checks. Raises ``CdsError`` 401 naming the failed check."""
    try:
        return _verify(authorization, audience, clients, jwks, replay, now, leeway, max_lifetime)
    except CdsError as exc:
        log.warning("CDS call refused: %s", exc.error)
        raise


def _verify(
    authorization: str | None,
    audience: str,
    clients: CdsClientRegistry,
    jwks: JwksCache,
    replay: ReplayCache,
    now: float | None,
    leeway: float,
    max_lifetime: float,
) -> Verified:
    token = bearer_token(authorization)
    try:
        compact = jws.extract_compact(token.encode("ascii"))
        header = dict(compact.headers())
        unverified = fj.decode_json(compact.payload, max_bytes=MAX_JWT_BYTES)
    except (JoseError, ValueError, TypeError, UnicodeEncodeError):
        raise unauthorized("malformed_token", "The bearer token is not a signed JWT.") from None
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise unauthorized("unsupported_alg", f"JWT alg must be one of {', '.join(ALGORITHMS)}.")
    if header.get("typ") != "JWT":
        raise unauthorized("malformed_token", "The JWT header must have typ JWT.")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise unauthorized("malformed_token", "The JWT header must name its key (kid).")
    iss = unverified.get("iss") if isinstance(unverified, dict) else None
    client = clients.by_iss(iss) if isinstance(iss, str) and iss else None
    if client is None:
        raise unauthorized("unknown_client", "The JWT's iss is not a registered CDS client.")

    claims = _verified_claims(token, client, header, str(alg), kid, jwks)
    current = time.time() if now is None else now
    _check_claims(claims, client, audience, current, leeway, max_lifetime)
    jti_key = hashlib.sha256(f"{client.id}\x00{claims['jti']}".encode()).hexdigest()
    if not replay.first_use(jti_key, float(claims["exp"]) + leeway):
        raise unauthorized("replayed", "This JWT (its jti) was used before.")
    return Verified(client=client, claims=claims)


def _verified_claims(
    token: str, client: CdsClient, header: Mapping[str, Any], alg: str, kid: str, jwks: JwksCache
) -> dict[str, Any]:
    jku = header.get("jku")
    url: str | None
    if jku is not None:
        if not isinstance(jku, str) or not client.jku_allowed(jku):
            raise unauthorized("untrusted_jku", "The JWT's jku is not on the CDS client's allow-list.")
        url = jku
    else:
        url = client.jwks_url
    if url is None:
        assert client.jwks is not None
        key_set = KeySet.import_key_set(dict(client.jwks))  # type: ignore[arg-type]
    else:
        key_set = jwks.key_set(url)
        if not _has_kid(key_set, kid):
            key_set = jwks.key_set(url, refetch=True)
    if not _has_kid(key_set, kid):
        raise unauthorized("unknown_key", "No key of the CDS client has the JWT's kid.")
    try:
        decoded = jwt.decode(token, key_set, algorithms=[alg])
    except (JoseError, ValueError, TypeError):
        raise unauthorized("bad_signature", "The JWT's signature does not verify.") from None
    claims = dict(decoded.claims)
    return claims


def _has_kid(key_set: KeySet, kid: str) -> bool:
    try:
        key_set.get_by_kid(kid)
    except (JoseError, ValueError):
        return False
    return True


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _check_claims(
    claims: Mapping[str, Any],
    client: CdsClient,
    audience: str,
    now: float,
    leeway: float,
    max_lifetime: float,
) -> None:
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    wanted = audience.rstrip("/")
    if not any(isinstance(a, str) and a.rstrip("/") == wanted for a in audiences):
        raise unauthorized("wrong_audience", "The JWT's aud is not the URL of the endpoint called.")
    exp, iat = _number(claims.get("exp")), _number(claims.get("iat"))
    if exp is None or iat is None:
        raise unauthorized("missing_claim", "The JWT needs exp and iat.")
    if now > exp + leeway:
        raise unauthorized("expired", "The JWT has expired.")
    if exp > now + max_lifetime + leeway:
        raise unauthorized("lifetime_too_long", f"The JWT's exp is more than {max_lifetime:.0f} s ahead.")
    nbf = _number(claims.get("nbf"))
    if iat > now + leeway or (nbf is not None and nbf > now + leeway):
        raise unauthorized("not_yet_valid", "The JWT's iat or nbf is in the future.")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > 256:
        raise unauthorized("missing_claim", "The JWT needs a jti (at most 256 characters).")
