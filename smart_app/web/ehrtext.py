"""Strings from the EHR on the page: cleaned, isolated and bounded (Jinja filters ``ehr`` and
``ehr_json``, registered by ``create_app``).

A name, a code's display or a server message is the EHR's text, not the app's. Shown as it came, a
right-to-left override (U+202E) in a patient's name reorders the banner around it, and NUL or other
control characters can hide or fake text. So, as Unicode Technical Report #9 ("Unicode Bidirectional
Algorithm", section 6.3) recommends for text of unknown direction inserted into a page:

- explicit bidi formatting characters (embeddings, overrides, isolates, marks) and control characters
  (C0 but tab and line breaks, DEL, C1) are removed, line and paragraph separators become spaces;
- what remains is wrapped in ``<bdi>`` (HTML "The bdi element": its own direction, by default from its
  first strong character, without affecting the text around it);
- a string longer than the filter's limit is cut at it, with an ellipsis, and the whole of it (up to
  :data:`MAX_TITLE`) in the element's ``title``; evidence lines also show their source resource in full.

Autoescaping stays on: the filters return ``Markup`` built with escaped arguments only.
"""

from __future__ import annotations

import re
from typing import Any

from markupsafe import Markup, escape

#: ALM, LRM, RLM, LRE, RLE, PDF, LRO, RLO, LRI, RLI, FSI, PDI (UAX #9 "Explicit Directional Formatting
#: Characters" and the implicit marks).
BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_CONTROLS = re.compile("[" + BIDI_CONTROLS + "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff\ufff9-\ufffb]")
_SEPARATORS = re.compile("[\u2028\u2029]")
#: Characters the raw-JSON view shows as ``\\uXXXX`` escapes (valid in JSON strings, visible on screen).
_INVISIBLE_IN_JSON = re.compile("[" + BIDI_CONTROLS + "\x7f-\x9f\u2028\u2029\ufeff\ufff9-\ufffb\u200b]")
#: Default length of a string on the page, in characters.
DEFAULT_LIMIT = 200
#: Longest ``title`` carrying the whole of a cut string.
MAX_TITLE = 4000


def clean_text(value: Any) -> str:
    """``value`` as text without bidi formatting or control characters (tab, CR and LF kept)."""
    text = value if isinstance(value, str) else "" if value is None else str(value)
    return _SEPARATORS.sub(" ", _CONTROLS.sub("", text))


def ehr_text(value: Any, limit: int = DEFAULT_LIMIT) -> Markup:
    """The Jinja filter ``ehr``: cleaned text isolated in ``<bdi>``, cut at ``limit`` characters."""
    text = clean_text(value)
    if len(text) <= limit:
        return Markup(f'<bdi dir="auto">{escape(text)}</bdi>')
    whole = text if len(text) <= MAX_TITLE else text[:MAX_TITLE] + "…"
    return Markup(
        f'<bdi dir="auto" class="ehr-cut" title="{escape(whole)}">{escape(text[:limit].rstrip())}…</bdi>'
    )


def ehr_json(value: Any) -> str:
    """The Jinja filter ``ehr_json`` for pretty-printed JSON: bidi formatting and other invisible
    characters (which only occur inside JSON strings) shown as ``\\uXXXX`` escapes, so the JSON stays
    exact and reads in order. Autoescaped by the template as usual."""
    text = value if isinstance(value, str) else "" if value is None else str(value)
    return _INVISIBLE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
