"""Bounded reads of what the EHR's authorization side answers: the SMART configuration, the
CapabilityStatement fallback, JWK sets and token responses.

Every body is streamed with a size cap counted on the decompressed bytes (a gzip bomb stops at the cap)
and an overall deadline (a server that sends one byte at a time stops at the deadline), then decoded by
:func:`smart_app.fhirjson.decode_json`, the one guarded JSON decoder (depth and size limits). Reasons are
one line, safe to show and to log: they never quote the body. Free text the EHR sends back
(``error_description``) goes through :func:`ehr_text` before it is shown or logged.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Iterable
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from smart_app import fhirjson as fj

#: Size caps per document, in bytes of decoded JSON.
SMART_CONFIGURATION_MAX_BYTES = 1024 * 1024
#: CapabilityStatements of large servers (every search parameter of every type) run to a few MB.
CAPABILITY_STATEMENT_MAX_BYTES = 16 * 1024 * 1024
JWKS_MAX_BYTES = 256 * 1024
TOKEN_RESPONSE_MAX_BYTES = 256 * 1024
#: Longest overall time for reading one document, whatever the per-read timeout.
DEADLINE_SECONDS = 20.0
#: Longest EHR free text kept (``error_description``), in characters.
EHR_TEXT_MAX = 300

#: Redirects followed (same origin only) when reading a discovery document.
MAX_REDIRECTS = 3

_CHUNK = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> str | None:
    """``scheme://host:port`` of an absolute http(s) URL (default port spelled out), else ``None``."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return f"{scheme}://{parts.hostname.lower()}:{port or _DEFAULT_PORTS[scheme]}"


class BodyTooLarge(ValueError):
    """The answer is larger than its cap (counted after decompression)."""


class BodyTooSlow(ValueError):
    """The answer did not arrive whole before the deadline."""


def read_body(response: requests.Response, *, max_bytes: int, deadline: float) -> bytes:
    """The decompressed body of a streamed ``response``, at most ``max_bytes``, read before ``deadline``
    (a ``time.monotonic()`` value). The response is closed in every case."""
    parts: list[bytes] = []
    size = 0
    try:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and "Content-Encoding" not in response.headers and int(declared) > max_bytes:
            raise BodyTooLarge(f"larger than the {max_bytes:,}-byte limit")
        for chunk in response.iter_content(chunk_size=_CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise BodyTooLarge(f"larger than the {max_bytes:,}-byte limit")
            if time.monotonic() > deadline:
                raise BodyTooSlow("not received in time")
            parts.append(chunk)
    finally:
        response.close()
    return b"".join(parts)


def json_body(response: requests.Response, *, max_bytes: int, deadline: float) -> tuple[Any, str | None]:
    """``(decoded JSON, None)`` or ``(None, reason)`` for a streamed ``response``."""
    try:
        body = read_body(response, max_bytes=max_bytes, deadline=deadline)
    except (BodyTooLarge, BodyTooSlow) as exc:
        return None, f"answered with a body {exc}"
    except requests.RequestException as exc:
        return None, f"broke off its answer ({exc.__class__.__name__})"
    try:
        return fj.decode_json(body, max_bytes=max_bytes), None
    except fj.JsonInputError as exc:
        return None, f"did not answer with usable JSON ({exc.reason})"


def get_json(
    http: requests.Session,
    url: str,
    *,
    max_bytes: int,
    timeout: float | tuple[float, float],
    deadline_seconds: float = DEADLINE_SECONDS,
) -> tuple[dict[str, Any] | None, str | None]:
    """GET ``url`` as a JSON object: ``(object, None)`` or ``(None, reason)``. Redirects are followed only
    on the origin of ``url`` (scheme, host and port), at most :data:`MAX_REDIRECTS`."""
    deadline = time.monotonic() + deadline_seconds
    target = url
    for _ in range(MAX_REDIRECTS + 1):
        try:
            response = http.get(
                target,
                headers={"Accept": "application/json"},
                timeout=timeout,
                allow_redirects=False,
                stream=True,
            )
        except requests.Timeout:
            return None, "timed out"
        except requests.RequestException as exc:
            return None, f"could not be reached ({exc.__class__.__name__})"
        if response.status_code not in _REDIRECTS:
            break
        response.close()
        location = urljoin(target, response.headers.get("Location", ""))
        if origin(location) != origin(url):
            return None, f"redirected to another origin ({origin(location) or 'unusable URL'}); not followed"
        target = location
    else:
        return None, "redirected too many times"
    if response.status_code != 200:
        response.close()
        return None, f"answered HTTP {response.status_code}"
    data, problem = json_body(response, max_bytes=max_bytes, deadline=deadline)
    if problem is not None:
        return None, problem
    if not isinstance(data, dict):
        return None, "did not answer with a JSON object"
    return data, None


def ehr_text(value: object, *, secrets: Iterable[str | None] = (), limit: int = EHR_TEXT_MAX) -> str:
    """Free text from the EHR, fit to show and to log: control and format characters (bidi overrides
    included) become spaces, any of ``secrets`` it quotes is replaced by ``[redacted]``, whitespace is
    collapsed and the text is cut to ``limit`` characters. Markup is escaped where it is shown."""
    if not isinstance(value, str):
        return ""
    text = value[: limit * 4]
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    cleaned = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in text)
    cleaned = " ".join(cleaned.split())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1].rstrip() + "…"
