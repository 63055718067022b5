"""The only Flask layer: blueprints, sessions, security headers and error pages."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Bind sessions, security headers, CSRF and the blueprints to ``app``."""
