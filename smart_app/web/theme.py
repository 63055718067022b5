"""The EHR's look: ``smart_style_url`` (SMART App Launch 2.x "Styling") fetched, checked and served as
``/theme.css`` (blueprint ``main``).

The style is the EHR's input like any other (docs/architecture.md#web): it is fetched only from the
issuer's own origin (scheme, host and port; RFC 6454), redirects are followed only within that origin,
the answer is streamed within ``STYLE_MAX_BYTES`` (decompressed) and ``STYLE_BUDGET_SECONDS``, decoded
by :func:`smart_app.fhirjson.decode_json`, and every value is checked: colours by shape and WCAG contrast,
dimensions by shape and clamped to ranges a page stays usable in. Styles are cached per URL as HTTP
caching allows (RFC 9111: ``Cache-Control`` ``max-age``/``no-store``/``no-cache``, ``Expires``,
revalidation with ``ETag``/``Last-Modified``); one without freshness information is reused for
``STYLE_CACHE_SECONDS`` (RFC 9111 section 4.2.2, heuristic freshness), a failed fetch for a minute.
"""

from __future__ import annotations

import email.utils
import logging
import re
import threading
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3.exceptions
from flask import Flask, Response, current_app

from smart_app.fhir.budget import CutShort, cut_off_at, read_body, watched_session
from smart_app.fhirjson import decode_json
from smart_app.smart.launch import Launch
from smart_app.web.common import STYLE_KEY, _get, _set, bp
from smart_app.web.session import current_launch

log = logging.getLogger("smart_app.web")

# --- smart_style_url (SMART App Launch 2.x "Styling") -------------------------------------------------
_HEX = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
_DIM = re.compile(r"^(\d{1,4}(?:\.\d{1,3})?)(px|em|rem)$")
_FONT = re.compile(r"^[A-Za-z0-9 ,'\"-]{1,120}$")
#: Sane ranges, in CSS px (an em or rem counts as 16 px): the page stays readable and laid out.
DIM_RANGES_PX: dict[str, tuple[float, float]] = {
    "dim_font_size": (10.0, 24.0),
    "dim_spacing_size": (2.0, 32.0),
    "dim_border_radius": (0.0, 16.0),
}
_PX_PER_EM = 16.0
_MAX_REDIRECTS = 3
#: How long a failed fetch is remembered, so a broken style costs one launch its budget, not every one.
_FAILURE_SECONDS = 60.0
#: Longest freshness honoured, whatever the EHR says.
_MAX_FRESH_SECONDS = 24 * 3600.0
_CACHE_ENTRIES = 256


def _rgb(hex_colour: str) -> tuple[float, float, float]:
    h = hex_colour[1:]
    if len(h) == 3:
        h = "".join(c * 2 for c in h)
    return (int(h[0:2], 16) / 255, int(h[2:4], 16) / 255, int(h[4:6], 16) / 255)


def _luminance(hex_colour: str) -> float:
    def channel(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else float(((c + 0.055) / 1.055) ** 2.4)

    r, g, b = (channel(c) for c in _rgb(hex_colour))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(fg: str, bg: str) -> float:
    """WCAG 2.x contrast ratio of two hex colours."""
    a, b = sorted((_luminance(fg), _luminance(bg)), reverse=True)
    return (a + 0.05) / (b + 0.05)


def clamp_dimension(key: str, value: Any) -> str | None:
    """A ``dim_*`` value (``px``, ``em`` or ``rem``) in px, clamped to :data:`DIM_RANGES_PX`; ``None``
    when it is not a plain length."""
    match = _DIM.match(value) if isinstance(value, str) else None
    if match is None:
        return None
    number = float(match.group(1)) * (1.0 if match.group(2) == "px" else _PX_PER_EM)
    low, high = DIM_RANGES_PX[key]
    return f"{min(max(number, low), high):g}px"


def sanitise_style(raw: Any) -> dict[str, str]:
    """Keep only well-formed values, dimensions clamped to sane ranges; drop colour pairs that would
    fall below WCAG AA (4.5:1)."""
    if not isinstance(raw, dict):
        return {}
    out: dict[str, str] = {}
    for key in ("color_background", "color_text", "color_highlight", "color_error", "color_success"):
        value = raw.get(key)
        if isinstance(value, str) and _HEX.match(value):
            out[key] = value
    for key in DIM_RANGES_PX:
        dim = clamp_dimension(key, raw.get(key))
        if dim is not None:
            out[key] = dim
    for key in ("font_family_body", "font_family_heading"):
        value = raw.get(key)
        if isinstance(value, str) and _FONT.match(value):
            out[key] = value
    bg = out.get("color_background", "#ffffff")
    for key in ("color_text", "color_highlight", "color_error", "color_success"):
        if key in out and contrast(out[key], bg) < 4.5:
            del out[key]
    text = out.get("color_text", "#1a1a1a")
    if "color_background" in out and contrast(text, out["color_background"]) < 4.5:
        del out["color_background"]
    return out


def same_origin(url: str, other: str) -> bool:
    """Whether two http(s) URLs share scheme, host and port (RFC 6454 section 4; default ports
    implied), without user info."""
    return _origin(url) is not None and _origin(url) == _origin(other)


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return None
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80)


@dataclass
class _Cached:
    style: dict[str, str]
    fresh_until: float
    etag: str | None = None
    last_modified: str | None = None


class StyleCache:
    """Styles by URL for one app, as fresh as their HTTP caching headers allow (module docstring)."""

    def __init__(self, *, max_bytes: int, seconds: float, default_ttl: float) -> None:
        self.max_bytes = max_bytes
        self.seconds = seconds
        self.default_ttl = default_ttl
        self.session = watched_session()
        self._entries: dict[str, _Cached] = {}
        self._lock = threading.Lock()

    def style(self, url: str, issuer: str) -> dict[str, str]:
        """The sanitised style at ``url`` for a launch by ``issuer``; ``{}`` when there is none."""
        if not same_origin(url, issuer):
            log.warning("smart_style_url not fetched: not on the issuer's origin (scheme, host and port)")
            return {}
        with self._lock:
            cached = self._entries.get(url)
        if cached is not None and cached.fresh_until > time.monotonic():
            return cached.style
        entry = self._fetch(url, cached)
        with self._lock:
            if len(self._entries) >= _CACHE_ENTRIES and url not in self._entries:
                self._entries.pop(next(iter(self._entries)))
            self._entries[url] = entry
        return entry.style

    def _fetch(self, url: str, cached: _Cached | None) -> _Cached:
        headers = {"Accept": "application/json", "Accept-Encoding": "gzip, deflate"}
        if cached is not None and cached.etag:
            headers["If-None-Match"] = cached.etag
        if cached is not None and cached.last_modified:
            headers["If-Modified-Since"] = cached.last_modified
        started = time.monotonic()
        try:
            with cut_off_at(started + self.seconds) as cutoff:
                target = url
                for _ in range(_MAX_REDIRECTS + 1):
                    response = self.session.get(
                        target,
                        headers=headers,
                        timeout=(min(2.0, self.seconds), self.seconds),
                        allow_redirects=False,
                        stream=True,
                    )
                    if response.status_code not in (301, 302, 303, 307, 308):
                        break
                    response.close()
                    target = urljoin(target, response.headers.get("Location") or "")
                    if not same_origin(target, url):
                        log.warning("smart_style_url redirected off the issuer's origin; not followed")
                        return self._failed()
                else:
                    log.warning("smart_style_url: more than %d redirects; not followed", _MAX_REDIRECTS)
                    return self._failed()
                if response.status_code == 304 and cached is not None:
                    response.close()
                    return self._entry(cached.style, response)
                if response.status_code != 200:
                    response.close()
                    log.warning(
                        "smart_style_url answered HTTP %d; the page keeps its own look", response.status_code
                    )
                    return self._failed()
                body = read_body(response, self.max_bytes)
        except CutShort as exc:
            log.warning("smart_style_url cut short: %s; the page keeps its own look", exc.reason)
            return self._failed()
        except (
            requests.RequestException,
            urllib3.exceptions.HTTPError,
            OSError,
            ValueError,
            zlib.error,
        ) as exc:
            if cutoff.passed:
                log.warning(
                    "smart_style_url not read within %.0f s; the page keeps its own look", self.seconds
                )
            else:
                log.warning("smart_style_url not read (%s); the page keeps its own look", type(exc).__name__)
            return self._failed()
        try:
            style = sanitise_style(decode_json(body, max_bytes=self.max_bytes))
        except ValueError as exc:
            log.warning("smart_style_url is not usable JSON (%s)", getattr(exc, "reason", "not valid JSON"))
            return self._failed()
        return self._entry(style, response)

    def _failed(self) -> _Cached:
        return _Cached(style={}, fresh_until=time.monotonic() + _FAILURE_SECONDS)

    def _entry(self, style: dict[str, str], response: requests.Response) -> _Cached:
        """Cache ``style`` as the answer's headers allow (RFC 9111 sections 4.2.1 and 5.2.2)."""
        headers = response.headers
        directives = {
            part.strip().split("=", 1)[0].lower(): part.strip().partition("=")[2].strip('"')
            for part in (headers.get("Cache-Control") or "").split(",")
            if part.strip()
        }
        lifetime = self.default_ttl
        if "no-store" in directives or "no-cache" in directives:
            lifetime = 0.0
        elif directives.get("max-age", "").isdigit():
            lifetime = float(directives["max-age"])
        elif headers.get("Expires"):
            lifetime = _seconds_until(headers["Expires"])
        if "no-store" in directives:
            return _Cached(style=style, fresh_until=0.0)
        return _Cached(
            style=style,
            fresh_until=time.monotonic() + min(lifetime, _MAX_FRESH_SECONDS),
            etag=headers.get("ETag"),
            last_modified=headers.get("Last-Modified"),
        )


def _seconds_until(http_date: str) -> float:
    """Seconds from now to an HTTP-date (RFC 9110 section 5.6.7); 0 when it is past or invalid."""
    try:
        when = email.utils.parsedate_to_datetime(http_date)
    except (TypeError, ValueError, IndexError):
        return 0.0
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def style_cache(app: Flask | None = None) -> StyleCache:
    """The app's style cache, made from its settings on first use."""
    target: Flask = app or current_app._get_current_object()  # type: ignore[attr-defined]
    cache = target.extensions.get("smart_app.style_cache")
    if cache is None:
        config = target.config
        cache = target.extensions.setdefault(
            "smart_app.style_cache",
            StyleCache(
                max_bytes=int(config.get("STYLE_MAX_BYTES", 64 * 1024)),
                seconds=float(config.get("STYLE_BUDGET_SECONDS", 3.0)),
                default_ttl=float(config.get("STYLE_CACHE_SECONDS", 300.0)),
            ),
        )
    assert isinstance(cache, StyleCache)
    return cache


def load_style(launch: Launch) -> dict[str, str]:
    """The launch's ``smart_style_url`` style, sanitised; looked up once per launch."""
    cached = _get(STYLE_KEY)
    if isinstance(cached, dict):
        return cached
    url = launch.smart_style_url
    style = style_cache().style(url, str(launch.iss)) if isinstance(url, str) and url else {}
    _set(STYLE_KEY, style)
    return style


@bp.get("/theme.css")
def theme_css() -> Response:
    """The EHR's styling as CSS custom properties (no inline style: CSP)."""
    style = _get(STYLE_KEY) if current_launch() is not None else None
    style = style if isinstance(style, dict) else {}
    mapping = {
        "color_background": "--bg",
        "color_text": "--fg",
        "color_highlight": "--accent",
        "color_error": "--danger",
        "color_success": "--ok",
        "dim_border_radius": "--radius",
        "dim_font_size": "--font-size",
        "dim_spacing_size": "--space",
        "font_family_body": "--font-body",
        "font_family_heading": "--font-heading",
    }
    lines = [f"  {mapping[k]}: {v};" for k, v in sorted(style.items()) if k in mapping]
    css = ":root {\n" + "\n".join(lines) + "\n}\n" if lines else "/* EHR style not provided */\n"
    resp = Response(css, mimetype="text/css")
    resp.headers["Cache-Control"] = "private, no-cache"
    return resp
