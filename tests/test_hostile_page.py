"""Fault catalogue, what reaches the page: the EHR's ``smart_style_url`` and the EHR's strings, from the
misbehaving EHR of ``tests/hostile_ehr.py`` over real HTTP.

Style (SMART App Launch 2.x "Styling"; issue 11): fetched only from the issuer's origin (scheme, host
and port), redirects followed only within it, streamed within 64 KB and its time budget, values clamped,
cached as its HTTP caching headers allow. Strings (patient banner, headline, evidence): bidi controls and
NUL removed and each string isolated in ``<bdi>``, long strings cut with the whole in the title, markup
escaped (the bad-input catalogue's "EHR-supplied string containing HTML").
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.hostile_ehr import HostileStack

pytestmark = pytest.mark.e2e

STYLE_LOG = "smart_app.web"


def launch_and_theme(stack: HostileStack) -> tuple[requests.Response, str, float]:
    with requests.Session() as browser:
        started = time.monotonic()
        page = stack.launch(browser)
        elapsed = time.monotonic() - started
        css = browser.get(f"{stack.app_url}/theme.css", timeout=30).text
    return page, css, elapsed


def style_requests(stack: HostileStack) -> int:
    return sum(1 for seen in stack.hostile.seen if seen.path == "/smart-style.json")


def web_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == STYLE_LOG and r.levelno >= logging.WARNING]


def style_body(values: dict[str, str], headers: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    import json

    return {"kind": "body", "body": json.dumps(values).encode(), "headers": headers or []}


# -- smart_style_url ----------------------------------------------------------------------------------------
def test_style_values_are_clamped_to_sane_ranges(hostile: HostileStack) -> None:
    hostile.hostile.set(
        "style",
        **style_body(
            {
                "color_background": "#ffffff",
                "color_text": "#111111",
                "dim_font_size": "999px",
                "dim_spacing_size": "0.5px",
                "dim_border_radius": "300rem",
            }
        ),
    )
    page, css, _ = launch_and_theme(hostile)
    assert page.status_code == 200
    assert "--font-size: 24px;" in css and "--space: 2px;" in css and "--radius: 16px;" in css
    assert "--bg: #ffffff;" in css and "999" not in css


def test_style_redirect_off_the_issuers_origin_is_not_followed(
    hostile: HostileStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    hostile.hostile.set("style", kind="redirect", location=f"{hostile.other_url}/smart-style.json")
    page, css, _ = launch_and_theme(hostile)
    assert page.status_code == 200 and css == "/* EHR style not provided */\n"
    assert hostile.other.requests == []
    assert "smart_style_url redirected off the issuer's origin; not followed" in web_warnings(caplog)


def test_style_redirect_within_the_issuers_origin_is_followed(hostile: HostileStack) -> None:
    hostile.hostile.set("style", kind="redirect", location="/smart-style.json?moved=1", times=1)
    _, css, _ = launch_and_theme(hostile)
    assert "--bg: #edeae3;" in css and style_requests(hostile) == 2


def test_style_on_another_port_of_the_issuers_host_is_not_fetched(
    hostile: HostileStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    other_port = f"{hostile.other_url}/smart-style.json"  # 127.0.0.1 as the EHR, another port
    assert other_port.split(":")[1] == hostile.ehr_url.split(":")[1]

    def other_style(token: dict[str, Any]) -> dict[str, Any]:
        return {**token, "smart_style_url": other_port}

    hostile.hostile.set("token", kind="rewrite", fn=other_style)
    page, css, _ = launch_and_theme(hostile)
    assert page.status_code == 200 and "--bg" not in css
    assert hostile.other.requests == []
    assert any("not on the issuer's origin (scheme, host and port)" in m for m in web_warnings(caplog))


def test_300_mb_style_is_cut_at_64_kb(hostile: HostileStack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    sent: list[int] = []

    def endless() -> Iterator[bytes]:
        block = b" " * (1024 * 1024)
        yield b'{"color_text": "#111111",'
        for _ in range(300):
            sent.append(len(block))
            yield block
        yield b'"dim_font_size": "15px"}'

    hostile.hostile.set("style", kind="body", body=endless)
    page, css, _ = launch_and_theme(hostile)
    assert page.status_code == 200 and "--fg" not in css
    assert any("smart_style_url cut short" in m and "64 KB limit" in m for m in web_warnings(caplog))
    assert sum(sent) < 300 * 1024 * 1024  # the app hung up: the rest was never produced


def test_style_dripped_is_cut_at_its_budget(hostile: HostileStack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    hostile.hostile.set("style", kind="drip", interval=0.2)
    page, css, elapsed = launch_and_theme(hostile)
    assert page.status_code == 200 and "--bg" not in css
    assert elapsed < 1.0 + 3.0  # the 1 s style budget, then the review
    assert any("smart_style_url not read within 1 s" in m for m in web_warnings(caplog))


def test_style_is_cached_as_its_headers_allow(hostile: HostileStack) -> None:
    values = {"color_background": "#ffffff", "color_text": "#111111"}
    hostile.hostile.set("style", **style_body(values, [("Cache-Control", "max-age=600")]))
    launch_and_theme(hostile)
    _, css, _ = launch_and_theme(hostile)
    assert "--bg: #ffffff;" in css and style_requests(hostile) == 1
    hostile.reset()
    hostile.hostile.set("style", **style_body(values, [("Cache-Control", "no-store")]))
    launch_and_theme(hostile)
    launch_and_theme(hostile)
    assert style_requests(hostile) == 2


# -- EHR strings ---------------------------------------------------------------------------------------------
BIDI = "\u202e"  # RIGHT-TO-LEFT OVERRIDE


def test_bidi_controls_and_nul_in_the_banner_are_removed_and_isolated(hostile: HostileStack) -> None:
    def spoof(patient: dict[str, Any]) -> dict[str, Any]:
        patient["name"] = [
            {"use": "official", "given": [f"Ja{BIDI}mes\u0000"], "family": "\u2067Kowal\u2069ski"}
        ]
        patient["identifier"] = [{"system": "urn:mrn", "value": f"MRN{BIDI}-101023\u0007"}]
        return patient

    hostile.hostile.set("Patient", kind="rewrite", fn=spoof)
    page, _, _ = launch_and_theme(hostile)
    assert page.status_code == 200
    banner = re.search(r'<header class="patient-banner".*?</header>', page.text, re.S)
    assert banner
    assert '<span class="pb-name"><bdi dir="auto">James Kowalski</bdi></span>' in banner.group(0)
    assert '<bdi dir="auto">MRN-101023</bdi>' in banner.group(0)
    for control in (BIDI, "\u2067", "\u2069", "\x00", "\x07"):
        assert control not in page.text


def test_bidi_in_evidence_and_headline_is_removed_and_the_raw_json_shows_it_escaped(
    hostile: HostileStack,
) -> None:
    def spoof_site(bundle: dict[str, Any]) -> dict[str, Any]:
        for entry in bundle.get("entry", []):
            site = entry["resource"].get("bodySite")
            if isinstance(site, dict) and site.get("text"):
                site["text"] = f"left poster{BIDI}ior iliac crest"
        return bundle

    hostile.hostile.set("Observation", kind="rewrite", fn=spoof_site)
    page, _, _ = launch_and_theme(hostile)
    headline = re.search(r'<h1 id="headline">(.*?)</h1>', page.text, re.S)
    assert (
        headline
        and '<bdi dir="auto">' in headline.group(1)
        and "left posterior iliac crest" in headline.group(1)
    )
    assert BIDI not in page.text
    assert "left poster\\u202eior iliac crest" in page.text  # the evidence's raw JSON: visible, exact


def test_long_strings_are_cut_with_the_whole_in_the_title(hostile: HostileStack) -> None:
    family = "K" * 5000

    def long_name(patient: dict[str, Any]) -> dict[str, Any]:
        patient["name"] = [{"use": "official", "given": ["James"], "family": family}]
        return patient

    hostile.hostile.set("Patient", kind="rewrite", fn=long_name)
    page, _, _ = launch_and_theme(hostile)
    name = re.search(r'<span class="pb-name">(.*?)</span>', page.text, re.S)
    assert name
    shown = re.search(r'title="([^"]*)">([^<]*)</bdi>', name.group(1))
    assert shown
    title, text = shown.groups()
    assert text == "James " + "K" * 114 + "…"  # 120 characters, then the ellipsis
    assert title.startswith("James KKK") and len(title) == 4001  # the whole, up to 4,000 characters


def test_markup_in_ehr_strings_is_escaped(hostile: HostileStack) -> None:
    def markup(patient: dict[str, Any]) -> dict[str, Any]:
        patient["name"] = [{"use": "official", "text": '<script>alert("x")</script><b>Bold</b>'}]
        return patient

    hostile.hostile.set("Patient", kind="rewrite", fn=markup)
    page, _, _ = launch_and_theme(hostile)
    assert page.status_code == 200
    assert "<script>alert" not in page.text and "<b>Bold" not in page.text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;b&gt;Bold&lt;/b&gt;" in page.text
