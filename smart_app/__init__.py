"""SMART on FHIR decision support for painful episacral lipoma ("back mice")."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

from smart_app.config import DEFAULTS, check_config

__version__ = "0.1.0"
APP_NAME = "Back-mice decision support"


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Application factory: defaults → instance/config.py → SMART_APP_* env → ``test_config``.

    The instance folder (generated keys, file sessions, audit log) is ``instance/`` beside the package
    unless ``SMART_APP_INSTANCE_PATH`` or ``test_config["INSTANCE_PATH"]`` names another absolute path.
    """
    instance_path = (test_config or {}).get("INSTANCE_PATH") or os.environ.get("SMART_APP_INSTANCE_PATH")
    app = Flask(__name__, instance_relative_config=True, instance_path=instance_path)
    app.config.from_mapping(DEFAULTS)
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_prefixed_env("SMART_APP")
    extra_dir = os.environ.get("SMART_APP_REGISTRATIONS_DIR")
    if extra_dir:
        app.config["REGISTRATIONS_DIRS"] = [*app.config["REGISTRATIONS_DIRS"], extra_dir]
    if test_config:
        app.config.update(test_config)
    check_config(app.config, debug=app.debug, testing=app.testing)
    os.makedirs(app.instance_path, exist_ok=True)

    from smart_app import auditlog, web

    auditlog.init_app(app)
    web.init_app(app)
    return app
