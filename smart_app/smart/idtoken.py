"""id_token validation (OpenID Connect Core 1.0 section 3.1.3.7; SMART App Launch 2.x,
"Scopes for requesting identity data").

The signature is checked against the EHR's JWK set from the discovered ``jwks_uri``; then ``iss``
(the discovered ``issuer``, else the FHIR base), ``aud`` (our client_id; ``azp`` when there are
several audiences), ``exp``/``iat`` and ``nonce``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from smart_app import fhirjson as fj
from smart_app.smart.discovery import Discovery, SmartConfiguration
from smart_app.smart.errors import IdTokenError

log = logging.getLogger("smart_app.smart")

ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384")
LEEWAY_SECONDS = 60
#: Longest id_token accepted (a compact JWS; real ones are a few kilobytes).
MAX_ID_TOKEN_CHARS = 64 * 1024


def validate_id_token(
    id_token: str,
    *,
    jwks: Mapping[str, Any],
    issuer: str,
    client_id: str,
    nonce: str | None,
    now: float | None = None,
    leeway: int = LEEWAY_SECONDS,
    ehr_name: str | None = None,
) -> dict[str, Any]:
    """Verify ``id_token`` and return its claims; raise ``IdTokenError`` naming the failed check."""
    name = ehr_name or "The EHR"

    def fail(check: str) -> IdTokenError:
        log.warning("id_token from %s rejected: %s", name, check)
        return IdTokenError(f"{name}'s identity token was rejected: {check}.", ehr_name=ehr_name)

    problem = _unusable_parts(id_token)
    if problem is not None:
        raise fail(problem)
    try:
        key_set = _key_set(orjson.dumps(jwks, option=orjson.OPT_SORT_KEYS))
    except (JoseError, ValueError, TypeError, KeyError, orjson.JSONEncodeError):
        raise fail("its signing keys could not be read") from None
    try:
        token = jwt.decode(id_token, key_set, algorithms=list(ALGORITHMS))
    except JoseError:
        raise fail("the signature does not verify") from None
    except (ValueError, TypeError):
        raise fail("it is not a valid signed JWT") from None
    claims = dict(token.claims)
    current = time.time() if now is None else now

    if claims.get("iss") != issuer:
        raise fail("it was issued by another issuer")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if client_id not in audiences:
        raise fail("it is meant for another client (aud)")
    if len(audiences) > 1 and claims.get("azp") != client_id:
        raise fail("it has several audiences and azp is not this client")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise fail("it has no expiry (exp)")
    if current > exp + leeway:
        raise fail("it has expired")
    iat = claims.get("iat")
    if isinstance(iat, int | float) and not isinstance(iat, bool) and iat > current + leeway:
        raise fail("it was issued in the future (iat)")
    if nonce is not None:
        got = claims.get("nonce")
        if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
            raise fail("the nonce does not match this launch")
    return claims


@functools.lru_cache(maxsize=32)
def _key_set(jwks: bytes) -> KeySet:
    """The keys of a JWK set (its canonical JSON), imported once: an EHR's set changes rarely."""
    return KeySet.import_key_set(orjson.loads(jwks))


def _unusable_parts(id_token: str) -> str | None:
    """Why the compact JWS cannot be an id_token, checked before any JOSE library parses it: its size,
    its three parts, and the header and claims decoded by the guarded JSON decoder (so a deeply nested
    document is refused with a reason, never a recursion error); ``None`` when it may be checked."""
    if len(id_token) > MAX_ID_TOKEN_CHARS:
        return f"it is longer than {MAX_ID_TOKEN_CHARS:,} characters"
    parts = id_token.split(".")
    if len(parts) != 3:
        return "it is not a valid signed JWT"
    for label, part in (("header", parts[0]), ("claims", parts[1])):
        try:
            raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
            decoded = fj.decode_json(raw, max_bytes=MAX_ID_TOKEN_CHARS)
        except (ValueError, binascii.Error) as exc:
            reason = exc.reason if isinstance(exc, fj.JsonInputError) else "not base64url"
            return f"its {label} is not usable JSON ({reason})"
        if not isinstance(decoded, dict):
            return f"its {label} is not a JSON object"
    return None


def verify_id_token(
    id_token: str,
    *,
    discovery: Discovery,
    config: SmartConfiguration,
    client_id: str,
    nonce: str | None,
    ehr_name: str | None = None,
    now: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """Validate with keys from ``config.jwks_uri``, fetching the key set again once on an unknown key."""
    issuer = config.issuer or config.iss
    jwks = discovery.jwks(config)
    check = functools.partial(
        validate_id_token, id_token, issuer=issuer, client_id=client_id, nonce=nonce, ehr_name=ehr_name
    )
    try:
        return check(jwks=jwks, now=now())
    except IdTokenError as first:
        if "signature" not in first.description:
            raise
        fresh = discovery.jwks(config, refresh=True)
        if fresh == jwks:
            raise
        return check(jwks=fresh, now=now())
