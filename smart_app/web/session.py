"""The launch of this browser session, and the per-app SMART helpers (registrations, discovery, keys,
the launch store and its token keeper), bound to Flask.

The browser's server-side session holds only the id of its launch (``session["launch_id"]``); the
:class:`~smart_app.smart.launch.Launch` itself, with its tokens, is in the launch store, shared by every
process and host (docs/architecture.md#launch-and-tokens). :func:`get_fhir` gives each request one FHIR
client for the launch, closed when the request ends.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import requests
from flask import Flask, current_app, g, render_template, session
from flask.typing import ResponseReturnValue

from smart_app.fhir.client import FhirClient
from smart_app.smart.bearer import LaunchBearer, RetryOn401Session
from smart_app.smart.discovery import Discovery
from smart_app.smart.errors import RelaunchRequired
from smart_app.smart.keys import AppKeys, load_app_keys
from smart_app.smart.launch import Launch, LaunchStore, TokenKeeper
from smart_app.smart.registrations import RegistrationRegistry, load_registrations
from smart_app.smart.store import FileLaunchStore, RedisLaunchStore
from smart_app.smart.token import TokenSet, refresh

LAUNCH_KEY = "launch_id"
PENDING_KEY = "pending"
EXTENSION = "smart_app.smart"

P = ParamSpec("P")
R = TypeVar("R")

_init_lock = threading.RLock()


def _extension(app: Flask) -> dict[str, Any]:
    return app.extensions.setdefault(EXTENSION, {})  # type: ignore[no-any-return]


def _once(app: Flask, name: str, build: Callable[[], R]) -> R:
    ext = _extension(app)
    if name not in ext:
        with _init_lock:
            if name not in ext:
                ext[name] = build()
    return ext[name]  # type: ignore[no-any-return]


def _app(app: Flask | None) -> Flask:
    return app or current_app._get_current_object()  # type: ignore[attr-defined, no-any-return]


def _paths(value: Any) -> list[Path]:
    if not value:
        return []
    if isinstance(value, str | Path):
        return [Path(value)]
    return [Path(v) for v in value]


def registration_dirs(app: Flask) -> list[Path]:
    """Every directory in ``REGISTRATIONS_DIRS`` (a deployment's own registrations)."""
    return _paths(app.config.get("REGISTRATIONS_DIRS"))


def launch_registry(app: Flask | None = None) -> RegistrationRegistry:
    """The EHR registrations, loaded once per app."""
    target = _app(app)
    return _once(target, "registry", lambda: load_registrations(registration_dirs(target)))


def http_session(app: Flask | None = None) -> requests.Session:
    """The ``requests.Session`` for discovery and token requests (one per app, pooled connections)."""
    return _once(_app(app), "http", requests.Session)


def http_timeout(app: Flask | None = None) -> tuple[float, float]:
    connect, read = _app(app).config.get("HTTP_TIMEOUT", (3.05, 15.0))
    return float(connect), float(read)


def discovery(app: Flask | None = None) -> Discovery:
    """The per-app discovery cache (``DISCOVERY_TTL_SECONDS``)."""
    target = _app(app)
    return _once(
        target,
        "discovery",
        lambda: Discovery(
            http_session(target),
            float(target.config.get("DISCOVERY_TTL_SECONDS", 3600)),
            timeout=http_timeout(target),
        ),
    )


def app_keys(app: Flask | None = None) -> AppKeys:
    """The app's signing keys: ``SMART_SIGNING_KEY_FILES`` or keys generated in ``instance/keys``."""
    target = _app(app)
    return _once(
        target,
        "keys",
        lambda: load_app_keys(
            _paths(target.config.get("SMART_SIGNING_KEY_FILES")), Path(target.instance_path) / "keys"
        ),
    )


def launch_store(app: Flask | None = None) -> LaunchStore:
    """Redis when ``SESSION_REDIS_URL`` is set (shared by every process and host), else files under the
    instance folder (shared by the processes of one host)."""
    target = _app(app)

    def build() -> LaunchStore:
        ttl = float(target.config.get("SESSION_LIFETIME_SECONDS", 8 * 3600))
        client = target.config.get("SESSION_REDIS")
        if client is not None:
            return RedisLaunchStore(client, ttl)
        return FileLaunchStore(os.path.join(target.instance_path, "launches"), ttl)

    return _once(target, "launch_store", build)


def token_keeper(app: Flask | None = None) -> TokenKeeper:
    """The refresh policy over the launch store (``TOKEN_REFRESH_LEEWAY_SECONDS``)."""
    target = _app(app)

    def refresher(launch: Launch) -> TokenSet:
        reg = launch_registry(target).by_id(launch.registration_id)
        if reg is None:
            raise RelaunchRequired(ehr_name=launch.ehr_name)
        assert launch.refresh_token is not None
        return refresh(
            reg,
            launch.token_endpoint,
            refresh_token=launch.refresh_token,
            http=http_session(target),
            keys=app_keys(target) if reg.client_type == "confidential-asymmetric" else None,
            timeout=http_timeout(target),
        )

    return _once(
        target,
        "token_keeper",
        lambda: TokenKeeper(
            launch_store(target),
            refresher,
            leeway=float(target.config.get("TOKEN_REFRESH_LEEWAY_SECONDS", 60)),
        ),
    )


def current_launch() -> Launch | None:
    """The completed launch of this browser session, or ``None``."""
    if "launch" not in g:
        launch_id = session.get(LAUNCH_KEY)
        g.launch = launch_store().load(launch_id) if isinstance(launch_id, str) else None
    launch: Launch | None = g.launch
    return launch


def require_launch() -> Launch:
    """The launch of this session; ``RelaunchRequired`` when there is none (any more)."""
    launch = current_launch()
    if launch is None:
        raise RelaunchRequired()
    return launch


def begin_launch(launch: Launch) -> None:
    """Keep ``launch`` in the store and make it this session's launch (a fresh session id, so a session
    id seen before the launch is worth nothing after it)."""
    previous = session.pop(LAUNCH_KEY, None)
    if isinstance(previous, str):
        launch_store().forget(previous)
    regenerate = getattr(current_app.session_interface, "regenerate", None)
    if callable(regenerate):
        regenerate(session)
    launch_store().save(launch)
    session[LAUNCH_KEY] = launch.id
    g.launch = launch


def launch_required(view: Callable[P, R]) -> Callable[P, R | ResponseReturnValue]:
    """Views behind this need a launch; without one they answer "Launch this app from your EHR"."""

    @functools.wraps(view)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R | ResponseReturnValue:
        if current_launch() is None:
            return render_template("launch_required.html"), 401
        return view(*args, **kwargs)

    return wrapped


def get_access_token() -> str:
    """The access token of this session's launch, refreshed first when it is due."""
    return token_keeper().access_token(require_launch().id)


def access_token_provider(launch: Launch) -> LaunchBearer:
    """The launch's current access token, refreshed when due (and replaced after a 401); callable from
    worker threads."""
    return LaunchBearer(token_keeper(), launch.id)


def get_fhir() -> FhirClient:
    """The FHIR client of this request's launch (one per request, on ``g``; closed at teardown). Its
    session refreshes the token once and retries a read the EHR answered with 401."""
    if "fhir" not in g:
        launch = require_launch()
        cfg = current_app.config
        connect, read = cfg.get("FHIR_TIMEOUT", (3.05, 30.0))
        bearer = access_token_provider(launch)
        g.fhir_session = RetryOn401Session(bearer)
        g.fhir = FhirClient(
            launch.fhir_base,
            token=bearer,
            session=g.fhir_session,
            timeout=(float(connect), float(read)),
            max_retries=int(cfg.get("FHIR_MAX_RETRIES", 3)),
        )
    client: FhirClient = g.fhir
    return client


def close_fhir(_exc: BaseException | None = None) -> None:
    client = g.pop("fhir", None)
    if client is not None:
        client.close()
    http = g.pop("fhir_session", None)
    if http is not None:
        http.close()


def init_app(app: Flask) -> None:
    app.teardown_appcontext(close_fhir)
