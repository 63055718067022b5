"""SMART on FHIR decision support for painful episacral lipoma ("back mice").

Importing the package loads no web framework: the command line and the clinical core stay fast. The Flask
app is built by :func:`create_app` (defined in :mod:`smart_app.web`).

The modules a command-line assessment loads import ``typing`` only for type checkers: they set
``TYPE_CHECKING = False`` and import ``Any`` and the like under ``if TYPE_CHECKING:``, a name mypy reads as
true. ``typing`` itself would add about 5 ms to every command's start (``python -X importtime``).
"""

from __future__ import annotations

__version__ = "0.2.0"
APP_NAME = "Back-mice decision support"

TYPE_CHECKING = False  # true for type checkers only (see above)
if TYPE_CHECKING:
    from typing import Any

    from flask import Flask


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """The Flask app (see :func:`smart_app.web.create_app`)."""
    from smart_app.web import create_app as build

    return build(test_config)
