"""The pieces the fault catalogue relies on, one by one: the streamed body reader and its decompressed
cap (RFC 9110 content codings), EHR strings on the page (UAX #9 bidi controls), style values and
origins (SMART App Launch 2.x "Styling", RFC 6454), and the audit log's ``user`` and write fields."""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib
from collections.abc import Iterator

import pytest
import requests
import responses

from smart_app.auditlog import DROPPED, sanitise
from smart_app.fhir.budget import CutShort, UnsupportedCoding, describe_bytes, read_body
from smart_app.web.ehrtext import clean_text, ehr_json, ehr_text
from smart_app.web.theme import clamp_dimension, same_origin, sanitise_style
from tests.hostile_ehr import gzip_bomb

URL = "https://ehr.example/fhir/Observation"


@pytest.fixture
def served() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock() as mock:
        yield mock


def fetch(mock: responses.RequestsMock, body: bytes, encoding: str | None, cap: int) -> bytearray:
    headers = {"Content-Encoding": encoding} if encoding else {}
    mock.get(URL, body=body, headers=headers, auto_calculate_content_length=True)
    with requests.Session() as session:
        return read_body(session.get(URL, stream=True), cap)


# -- bodies ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("encoding", "pack"),
    [
        (None, lambda b: b),
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some servers send it
        ("gzip", lambda b: gzip.compress(b[:10]) + gzip.compress(b[10:])),  # two gzip members
    ],
    ids=["identity", "gzip", "deflate", "raw-deflate", "gzip-members"],
)
def test_bodies_are_decoded_whatever_their_coding(served: responses.RequestsMock, encoding, pack) -> None:
    body = json.dumps({"resourceType": "Bundle", "entry": [{"n": i} for i in range(500)]}).encode()
    assert bytes(fetch(served, pack(body), encoding, cap=len(body))) == body


def test_the_cap_counts_decompressed_bytes(served: responses.RequestsMock) -> None:
    body = b" " * 100_000
    with pytest.raises(CutShort) as info:
        fetch(served, gzip.compress(body), "gzip", cap=99_999)
    assert info.value.limit == "size" and "counted decompressed" in info.value.reason
    assert len(fetch(served, gzip.compress(body), "gzip", cap=100_000)) == 100_000


def test_a_gzip_bomb_costs_the_cap_in_memory_not_its_size(served: responses.RequestsMock) -> None:
    bomb = gzip_bomb(200 * 1024 * 1024)
    assert len(bomb) < 300 * 1024  # 200 MB unpacked, a few hundred KB on the wire
    tracemalloc.start()
    try:
        with pytest.raises(CutShort):
            fetch(served, bomb, "gzip", cap=8 * 1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 8 * 1024 * 1024  # bounded by the cap, whatever the bomb unpacks to


def test_a_declared_length_over_the_cap_is_refused_unread(served: responses.RequestsMock) -> None:
    with pytest.raises(CutShort, match="larger than the 1 KB limit"):
        fetch(served, b"x" * 2048, None, cap=1024)


def test_truncated_and_unknown_codings_are_errors(served: responses.RequestsMock) -> None:
    with pytest.raises(zlib.error):
        fetch(served, gzip.compress(b"x" * 10_000)[:-12], "gzip", cap=1_000_000)
    with pytest.raises(UnsupportedCoding):
        fetch(served, b"xyz", "br", cap=1_000)


# -- cut-offs ----------------------------------------------------------------------------------------------
def test_each_cut_off_fires_at_its_instant_and_an_ended_one_never() -> None:
    """One watchdog thread serves every request's cut-off: the earliest fires first even when it was
    set last, and a request that ended in time is never shut."""
    import socket
    import threading
    import time

    from smart_app.fhir.budget import cut_off_at

    fired: dict[str, float] = {}
    started = time.monotonic()

    def request(name: str, seconds: float, lasts: float) -> None:
        with cut_off_at(time.monotonic() + seconds) as cutoff:
            left, right = socket.socketpair()
            cutoff.attach(left)
            try:
                left.settimeout(lasts)
                try:
                    if left.recv(1) == b"":  # shut down by the cut-off
                        fired[name] = time.monotonic() - started
                except TimeoutError:
                    pass
            finally:
                left.close()
                right.close()

    threads = [
        threading.Thread(target=request, args=("late", 1.0, 2.0)),
        threading.Thread(target=request, args=("ended-in-time", 0.6, 0.1)),
        threading.Thread(target=request, args=("early", 0.3, 2.0)),
    ]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join(timeout=5)
    assert set(fired) == {"early", "late"}
    assert 0.3 <= fired["early"] < fired["late"] and fired["late"] >= 1.0  # each before its 2 s timeout


def test_sizes_are_named_plainly() -> None:
    assert describe_bytes(64 * 1024 * 1024) == "64 MB"
    assert describe_bytes(64 * 1024) == "64 KB"
    assert describe_bytes(1500) == "1,500 bytes"


# -- EHR strings -------------------------------------------------------------------------------------------
def test_bidi_and_control_characters_are_removed_but_scripts_are_kept() -> None:
    assert clean_text("Ja\u202emes\u0000 \u2066K\u2069owal\u200fski\u0007\x85") == "James Kowalski"
    assert clean_text("line\u2028two\tthree\nfour") == "line two\tthree\nfour"
    assert clean_text("مریم\u200cزاده") == "مریم\u200cزاده"  # a Persian name keeps its ZWNJ
    assert clean_text("דוד כהן") == "דוד כהן"
    assert clean_text(None) == "" and clean_text(42) == "42"


def test_ehr_text_is_escaped_isolated_and_cut() -> None:
    assert str(ehr_text("<b>Ada</b>")) == '<bdi dir="auto">&lt;b&gt;Ada&lt;/b&gt;</bdi>'
    long = ehr_text("A" * 250 + '"', limit=10)
    assert str(long) == f'<bdi dir="auto" class="ehr-cut" title="{"A" * 250}&#34;">{"A" * 10}…</bdi>'
    huge = str(ehr_text("B" * 10_000, limit=5))
    assert huge.count("B") == 4000 + 5  # the title holds up to 4,000 characters


def test_raw_json_shows_invisible_characters_as_escapes_and_stays_exact() -> None:
    value = {"name": "Ja\u202emes\u2066\u0085\u2028", "ok": "دوست"}
    shown = ehr_json(json.dumps(value, ensure_ascii=False, indent=2))
    assert "\u202e" not in shown and "\\u202e" in shown and "\\u2066" in shown and "دوست" in shown
    assert json.loads(shown) == value


# -- style -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "value", "clamped"),
    [
        ("dim_font_size", "999px", "24px"),
        ("dim_font_size", "4px", "10px"),
        ("dim_font_size", "1em", "16px"),
        ("dim_font_size", "0.5rem", "10px"),
        ("dim_spacing_size", "0px", "2px"),
        ("dim_spacing_size", "1000.5px", "32px"),
        ("dim_border_radius", "300rem", "16px"),
        ("dim_border_radius", "6px", "6px"),
        ("dim_font_size", "12pt", None),
        ("dim_font_size", "calc(100vw)", None),
        ("dim_font_size", 13, None),
    ],
)
def test_dimensions_are_clamped(key: str, value: object, clamped: str | None) -> None:
    assert clamp_dimension(key, value) == clamped


def test_sanitised_style_clamps_instead_of_keeping() -> None:
    assert sanitise_style({"dim_font_size": "999px", "dim_spacing_size": "-3px"}) == {"dim_font_size": "24px"}


@pytest.mark.parametrize(
    ("url", "same"),
    [
        ("https://ehr.example/smart-style.json", True),
        ("https://ehr.example:443/smart-style.json", True),
        ("https://EHR.example/style", True),
        ("http://ehr.example/smart-style.json", False),
        ("https://ehr.example:8443/smart-style.json", False),
        ("https://other.example/smart-style.json", False),
        ("https://user@ehr.example/smart-style.json", False),
        ("javascript:alert(1)", False),
        ("https://ehr.example:99999/x", False),
    ],
)
def test_style_only_from_the_issuers_origin(url: str, same: bool) -> None:
    assert same_origin(url, "https://ehr.example/fhir/r4") is same


# -- the audit log -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("user", "kept"),
    [
        ("Practitioner/dr-ada", True),
        ("https://ehr.example/fhir/Practitioner/dr-ada", True),
        ("http://127.0.0.1:8001/fhir/PractitionerRole/7", True),
        ("Dr Ada Lovelace", False),
        ("https://ehr.example/fhir/Practitioner/dr-ada?access_token=abc", False),
        ("https://ehr.example/fhir/Practitioner", False),
        ("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", False),
        ("https://user:pw@ehr.example/fhir/Practitioner/1", False),
    ],
)
def test_the_user_is_a_fhir_user_reference(user: str, kept: bool) -> None:
    assert sanitise("launch", {"user": user})["user"] == (user if kept else DROPPED)


def test_a_write_line_carries_its_outcome() -> None:
    line = sanitise(
        "write",
        {
            "outcome": "partly-written",
            "status": 500,
            "created": [],
            "matched": ["Device/d1"],
            "found": ["ClinicalImpression/c1", "ServiceRequest/s1"],
            "missing": ["DetectedIssue", "Provenance"],
            "unknown": ["<script>"],
        },
    )
    assert line["outcome"] == "partly-written" and line["status"] == 500
    assert line["found"] == ["ClinicalImpression/c1", "ServiceRequest/s1"] and line["matched"] == [
        "Device/d1"
    ]
    assert line["missing"] == ["DetectedIssue", "Provenance"] and line["unknown"] == [DROPPED]
    assert "dropped_fields" not in line
