"""smart_style_url handling (SMART App Launch 2.x "Styling"), the stylesheet's contrast (WCAG 2.x AA)
and the static assets' rules (no external resources)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import responses
from launch_support import start_launch

from smart_app.web.theme import contrast, sanitise_style
from tests.views_fixtures import PROBABLE, FakeEhr, fake_launch

STATIC = Path(__file__).resolve().parent.parent / "smart_app" / "web" / "static"


def test_contrast_ratio_known_values() -> None:
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)
    assert contrast("#fff", "#ffffff") == pytest.approx(1.0)


def test_sanitise_style_keeps_only_safe_values() -> None:
    raw = {
        "color_background": "#edeae3",
        "color_text": "#1a1a1a",
        "color_highlight": "#69b5ce",  # too light on that background: dropped
        "color_error": "red; } body { display:none",
        "dim_border_radius": "6px",
        "dim_font_size": "13px",
        "dim_spacing_size": "url(javascript:x)",
        "font_family_body": "Georgia, Times, 'Times New Roman', serif",
        "font_family_heading": "x</style><script>",
        "unknown": "#000",
    }
    assert sanitise_style(raw) == {
        "color_background": "#edeae3",
        "color_text": "#1a1a1a",
        "dim_border_radius": "6px",
        "dim_font_size": "13px",
        "font_family_body": "Georgia, Times, 'Times New Roman', serif",
    }
    assert sanitise_style("not a dict") == {}


def test_low_contrast_background_is_dropped() -> None:
    assert sanitise_style({"color_background": "#222222"}) == {}


def test_style_from_issuer_host_is_applied(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(PROBABLE)
    ehr.rsps.add(responses.GET, "https://ehr.test/smart-style.json",
                 json={"color_background": "#f8f8f8", "color_text": "#111111", "dim_font_size": "15px"})
    start_launch(client.application, client, **fake_launch(smart_style_url="https://ehr.test/smart-style.json"))
    assert client.get("/review").status_code == 200
    css = client.get("/theme.css").get_data(as_text=True)
    assert "--bg: #f8f8f8;" in css and "--fg: #111111;" in css and "--font-size: 15px;" in css


def test_style_from_other_host_is_not_fetched(client: Any, ehr: FakeEhr) -> None:
    ehr.serve(PROBABLE)
    start_launch(client.application, client, **fake_launch(smart_style_url="https://elsewhere.test/style.json"))
    assert client.get("/review").status_code == 200
    assert not any("elsewhere.test" in str(call.request.url) for call in ehr.rsps.calls)
    assert "--bg" not in client.get("/theme.css").get_data(as_text=True)


def _colours(css: str) -> dict[str, str]:
    return dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-fA-F]{6});", css))


def test_stylesheet_colours_meet_wcag_aa() -> None:
    c = _colours((STATIC / "app.css").read_text())
    pairs = [
        ("fg", "bg"), ("muted", "bg"), ("accent", "bg"), ("danger", "bg"), ("ok", "bg"), ("warn", "bg"),
        ("fg", "panel"), ("muted", "panel"), ("accent", "panel"), ("fg", "danger-bg"),
        ("danger", "danger-bg"), ("fg", "warn-bg"), ("fg", "ok-bg"), ("ok", "ok-bg"),
    ]
    for fg, bg in pairs:
        assert contrast(c[fg], c[bg]) >= 4.5, (fg, bg)
    assert contrast("#ffffff", c["danger"]) >= 4.5  # the Stop badge
    assert contrast("#ffffff", c["accent"]) >= 4.5  # primary buttons
    assert contrast(c["focus"], c["bg"]) >= 3.0  # focus ring (WCAG 1.4.11 non-text contrast)


def test_static_assets_are_small_and_local() -> None:
    css = (STATIC / "app.css").read_text()
    js = (STATIC / "app.js").read_text()
    assert len(css) + len(js) < 20_000
    for text in (css, js):
        assert "http://" not in text and "https://" not in text and "@import" not in text
    assert ":focus-visible" in css and "outline: none" not in css.replace("main:focus { outline: none; }", "")
