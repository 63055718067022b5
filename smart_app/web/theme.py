"""The EHR's look: ``smart_style_url`` (SMART App Launch 2.x "Styling") fetched, checked and served as
``/theme.css`` (blueprint ``main``)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import requests
from flask import Response

from smart_app.smart.launch import Launch
from smart_app.web.common import STYLE_KEY, _get, _set, bp
from smart_app.web.session import current_launch

# --- smart_style_url (SMART App Launch 2.x "Styling") -------------------------------------------------
_HEX = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
_DIM = re.compile(r"^\d{1,3}(?:\.\d{1,3})?(?:px|em|rem)$")
_FONT = re.compile(r"^[A-Za-z0-9 ,'\"-]{1,120}$")


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


def sanitise_style(raw: Any) -> dict[str, str]:
    """Keep only well-formed values; drop colour pairs that would fall below WCAG AA (4.5:1)."""
    if not isinstance(raw, dict):
        return {}
    out: dict[str, str] = {}
    for key in ("color_background", "color_text", "color_highlight", "color_error", "color_success"):
        value = raw.get(key)
        if isinstance(value, str) and _HEX.match(value):
            out[key] = value
    for key in ("dim_border_radius", "dim_font_size", "dim_spacing_size"):
        value = raw.get(key)
        if isinstance(value, str) and _DIM.match(value):
            out[key] = value
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


def load_style(launch: Launch) -> dict[str, str]:
    """Fetch ``smart_style_url`` once per launch, only from the issuer's own host; sanitised."""
    cached = _get(STYLE_KEY)
    if isinstance(cached, dict):
        return cached
    style: dict[str, str] = {}
    url = launch.smart_style_url
    iss = launch.iss
    if isinstance(url, str) and url:
        parts, iss_parts = urlsplit(url), urlsplit(str(iss))
        if parts.scheme in ("http", "https") and parts.hostname and parts.hostname == iss_parts.hostname:
            try:
                resp = requests.get(url, timeout=(2.0, 3.0), headers={"Accept": "application/json"})
                if resp.ok and len(resp.content) < 65536:
                    style = sanitise_style(resp.json())
            except (requests.RequestException, ValueError):
                style = {}
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
