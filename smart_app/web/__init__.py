"""The only Flask layer: the app factory, server-side sessions, security headers, CSRF, error pages and
the blueprints (docs/architecture.md#web)."""

from __future__ import annotations

import os
from typing import Any

from cachelib.file import FileSystemCache
from flask import Flask, request
from flask.wrappers import Response
from flask_session import Session
from flask_wtf.csrf import CSRFProtect

from smart_app import auditlog
from smart_app.clinical.criteria import default_registry
from smart_app.config import DEFAULTS, check_config

csrf = CSRFProtect()


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Application factory: defaults → instance/config.py → SMART_APP_* env → ``test_config``.

    The instance folder (generated keys, file sessions, audit log) is Flask's default (``instance/`` beside
    a source checkout, ``<prefix>/var/smart_app-instance`` for an installed package) unless
    ``SMART_APP_INSTANCE_PATH`` or ``test_config["INSTANCE_PATH"]`` names another absolute path.
    """
    instance_path = (test_config or {}).get("INSTANCE_PATH") or os.environ.get("SMART_APP_INSTANCE_PATH")
    app = Flask("smart_app", instance_relative_config=True, instance_path=instance_path)
    app.config.from_mapping(DEFAULTS)
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_prefixed_env("SMART_APP")
    extra_dir = os.environ.get("SMART_APP_REGISTRATIONS_DIR")
    if extra_dir:
        app.config["REGISTRATIONS_DIRS"] = [*app.config["REGISTRATIONS_DIRS"], extra_dir]
    if test_config:
        app.config.update(test_config)
    check_config(app.config, debug=app.debug, testing=app.testing)
    default_registry().load_all()  # a release whose files changed stops the app at start, not mid-review
    os.makedirs(app.instance_path, exist_ok=True)
    init_audit_log(app)
    init_app(app)
    return app


def init_audit_log(app: Flask) -> None:
    """Open the app's audit log (``smart_app.auditlog.init_app``) and make requests write to it."""
    auditlog.init_app(app)
    auditlog.use_app_log(_request_audit_log)


def _request_audit_log() -> auditlog.AuditLog | None | bool:
    """The audit log of the app handling the current request; ``False`` outside one."""
    from flask import current_app, has_app_context

    if not has_app_context() or auditlog.EXTENSION_KEY not in current_app.extensions:
        return False
    log = current_app.extensions[auditlog.EXTENSION_KEY]
    return log if isinstance(log, auditlog.AuditLog) else None


def init_app(app: Flask) -> None:
    """Bind sessions, security headers, CSRF and the blueprints to ``app``."""
    init_sessions(app)
    csrf.init_app(app)
    from smart_app.web.ehrtext import ehr_json, ehr_text

    app.jinja_env.filters["ehr"] = ehr_text
    app.jinja_env.filters["ehr_json"] = ehr_json
    app.after_request(security_headers)

    from smart_app.web import audit, cds, errors, launch, session, views

    session.init_app(app)
    errors.register_error_handlers(app)
    app.register_blueprint(launch.bp)
    app.register_blueprint(views.bp)
    app.register_blueprint(audit.bp)
    app.register_blueprint(cds.bp)


def init_sessions(app: Flask) -> None:
    """Server-side sessions (DESIGN.md "Sessions"): Redis when configured, else files on local disk.

    The cookie holds only a random session id; tokens and patient data stay on the server.
    """
    config = app.config
    config.setdefault("SESSION_PERMANENT", True)
    config["PERMANENT_SESSION_LIFETIME"] = int(config["SESSION_LIFETIME_SECONDS"])
    config["SESSION_COOKIE_HTTPONLY"] = True
    config["SESSION_COOKIE_NAME"] = config.get("SESSION_COOKIE_NAME_OVERRIDE") or "back_mice_session"
    samesite = str(config["SESSION_COOKIE_SAMESITE"]).capitalize()
    config["SESSION_COOKIE_SAMESITE"] = samesite
    if samesite == "None":
        # A cross-site iframe cookie must be Secure; Partitioned (CHIPS) keeps it working where the
        # browser blocks third-party cookies, scoped to the embedding EHR's site.
        config["SESSION_COOKIE_SECURE"] = True
        config["SESSION_COOKIE_PARTITIONED"] = True
    config["SESSION_KEY_PREFIX"] = "back-mice:"
    redis_url = config.get("SESSION_REDIS_URL")
    if redis_url and config.get("SESSION_TYPE") is None:
        import redis

        config["SESSION_TYPE"] = "redis"
        config["SESSION_REDIS"] = redis.Redis.from_url(redis_url)
    elif config.get("SESSION_TYPE") is None:
        session_dir = os.path.join(app.instance_path, "sessions")
        os.makedirs(session_dir, mode=0o700, exist_ok=True)
        config["SESSION_TYPE"] = "cachelib"
        config["SESSION_CACHELIB"] = FileSystemCache(session_dir, threshold=20000, mode=0o600)
    Session(app)
    if config.get("SESSION_COOKIE_PARTITIONED"):
        partition_session_cookie(app)


def partition_session_cookie(app: Flask) -> None:
    """Add the ``Partitioned`` attribute (CHIPS), which Flask-Session does not pass to ``set_cookie``."""
    interface = app.session_interface
    save_session = interface.save_session
    name = app.config["SESSION_COOKIE_NAME"]

    def save_partitioned(app: Flask, session: Any, response: Response) -> None:
        save_session(app, session, response)
        cookies = response.headers.getlist("Set-Cookie")
        if not any(cookie.startswith(f"{name}=") and "Partitioned" not in cookie for cookie in cookies):
            return
        response.headers.remove("Set-Cookie")
        for cookie in cookies:
            partitioned = cookie.startswith(f"{name}=") and "Partitioned" not in cookie
            response.headers.add("Set-Cookie", f"{cookie}; Partitioned" if partitioned else cookie)

    interface.save_session = save_partitioned  # type: ignore[method-assign]


def frame_ancestors(app: Flask) -> list[str]:
    """Origins allowed to frame the app: every registered EHR's ``frame_ancestors``."""
    from smart_app.web.session import launch_registry

    return launch_registry(app).frame_ancestors()


def security_headers(response: Response) -> Response:
    """CSP without inline script, framing only by registered EHRs; no caching of patient pages."""
    from flask import current_app

    ancestors = " ".join(frame_ancestors(current_app)) or "'none'"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; "
        f"frame-ancestors {ancestors}"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if request.endpoint not in ("static", "main.static"):
        response.headers["Cache-Control"] = "no-store"
    return response
