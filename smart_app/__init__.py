"""SMART on FHIR decision support for painful episacral lipoma ("back mice").

Importing the package loads no web framework: the command line and the clinical core stay fast. The Flask
app is built by :func:`create_app` (defined in :mod:`smart_app.web`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"
APP_NAME = "Back-mice decision support"

if TYPE_CHECKING:
    from flask import Flask


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """The Flask app (see :func:`smart_app.web.create_app`)."""
    from smart_app.web import create_app as build

    return build(test_config)
