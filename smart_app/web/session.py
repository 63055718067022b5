"""The launch kept in the server-side session, and per-app SMART helpers.

``session["smart"]`` holds one completed launch (SMART App Launch 2.x, "Launch context arrives with
your access token"): ``iss``, ``registration_id``, ``fhir_base``, ``patient``, ``encounter``,
``fhir_user``, ``need_patient_banner``, ``smart_style_url``, ``fhir_context``, ``scope`` (granted),
``access_token``, ``refresh_token``, ``expires_at`` (epoch seconds), ``token_endpoint``, ``ehr_name``.
Tokens never leave the server: the session cookie carries only the session id.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import requests
from flask import Flask, current_app, render_template, session
from flask.typing import ResponseReturnValue

import smart_app
from smart_app.smart.discovery import Discovery
from smart_app.smart.errors import RelaunchRequired, SmartError
from smart_app.smart.keys import AppKeys, load_app_keys
from smart_app.smart.registrations import RegistrationRegistry, load_registrations
from smart_app.smart.token import refresh

log = logging.getLogger("smart_app.smart")

SMART_KEY = "smart"
PENDING_KEY = "pending"
EXTENSION = "smart_app.smart"
BUILTIN_REGISTRATIONS = Path(smart_app.__file__).resolve().parents[1] / "launch" / "registrations"

P = ParamSpec("P")
R = TypeVar("R")

_init_lock = threading.RLock()
_refresh_locks = [threading.Lock() for _ in range(64)]
#: Results of recent refreshes in this process, keyed by a hash of the access token they replaced,
#: so a request holding the old token adopts the new one instead of refreshing again.
_recent_refreshes: dict[str, tuple[float, dict[str, Any]]] = {}
_recent_lock = threading.Lock()
_RECENT_SECONDS = 300.0


def _extension(app: Flask) -> dict[str, Any]:
    return app.extensions.setdefault(EXTENSION, {})  # type: ignore[no-any-return]


def _once(app: Flask, name: str, build: Callable[[], R]) -> R:
    ext = _extension(app)
    if name not in ext:
        with _init_lock:
            if name not in ext:
                ext[name] = build()
    return ext[name]  # type: ignore[no-any-return]


def _paths(value: Any) -> list[Path]:
    if not value:
        return []
    if isinstance(value, str | Path):
        return [Path(value)]
    return [Path(v) for v in value]


def registration_dirs(app: Flask) -> list[Path]:
    """``launch/registrations`` of the project, then every directory in ``REGISTRATIONS_DIRS``."""
    return [BUILTIN_REGISTRATIONS, *_paths(app.config.get("REGISTRATIONS_DIRS"))]


def launch_registry(app: Flask | None = None) -> RegistrationRegistry:
    """The EHR registrations, loaded once per app."""
    target = app or current_app._get_current_object()  # type: ignore[attr-defined]
    return _once(target, "registry", lambda: load_registrations(registration_dirs(target)))


def http_session(app: Flask | None = None) -> requests.Session:
    """The ``requests.Session`` for discovery and token requests (one per app, pooled connections)."""
    target = app or current_app._get_current_object()  # type: ignore[attr-defined]
    return _once(target, "http", requests.Session)


def http_timeout(app: Flask | None = None) -> tuple[float, float]:
    target = app or current_app
    connect, read = target.config.get("HTTP_TIMEOUT", (3.05, 15.0))
    return float(connect), float(read)


def discovery(app: Flask | None = None) -> Discovery:
    """The per-app discovery cache (``DISCOVERY_TTL_SECONDS``)."""
    target = app or current_app._get_current_object()  # type: ignore[attr-defined]
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
    target = app or current_app._get_current_object()  # type: ignore[attr-defined]
    return _once(
        target,
        "keys",
        lambda: load_app_keys(
            _paths(target.config.get("SMART_SIGNING_KEY_FILES")), Path(target.instance_path) / "keys"
        ),
    )


def current_launch() -> dict[str, Any] | None:
    """The completed launch in this browser session, or ``None``."""
    smart = session.get(SMART_KEY)
    if isinstance(smart, dict) and smart.get("access_token") and smart.get("iss"):
        return smart
    return None


def launch_required(view: Callable[P, R]) -> Callable[P, R | ResponseReturnValue]:
    """Views behind this need a launch; without one they answer "Launch this app from your EHR"."""

    @functools.wraps(view)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R | ResponseReturnValue:
        if current_launch() is None:
            return render_template("launch_required.html"), 401
        return view(*args, **kwargs)

    return wrapped


def get_access_token() -> str:
    """The access token of this session's launch, refreshed first when it is about to expire.

    Raises ``RelaunchRequired`` when there is no usable token and it cannot be refreshed.
    """
    return _access_token(current_app._get_current_object(), session)  # type: ignore[attr-defined]


def access_token_provider() -> Callable[[], str]:
    """A ``get_access_token`` bound to this request's app and session, callable from worker threads."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    sess = session._get_current_object()  # type: ignore[attr-defined]
    return functools.partial(_access_token, app, sess)


def _fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _due(smart: Mapping[str, Any], leeway: float, now: float) -> bool:
    expires_at = smart.get("expires_at")
    return isinstance(expires_at, int | float) and now >= float(expires_at) - leeway


def _expired(smart: Mapping[str, Any], now: float) -> bool:
    expires_at = smart.get("expires_at")
    return isinstance(expires_at, int | float) and now >= float(expires_at)


def _lock_for(sess: Any, token: str) -> threading.Lock:
    key = str(getattr(sess, "sid", None) or _fingerprint(token))
    return _refresh_locks[int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(_refresh_locks)]


def _remember(old_token: str, update: dict[str, Any], now: float) -> None:
    with _recent_lock:
        for key in [k for k, (at, _) in _recent_refreshes.items() if now - at > _RECENT_SECONDS]:
            del _recent_refreshes[key]
        _recent_refreshes[_fingerprint(old_token)] = (now, update)


def _recalled(token: str, now: float) -> dict[str, Any] | None:
    with _recent_lock:
        done = _recent_refreshes.get(_fingerprint(token))
    return dict(done[1]) if done is not None and now - done[0] <= _RECENT_SECONDS else None


def _relaunch(sess: MutableMapping[str, Any], smart: Mapping[str, Any], why: str) -> RelaunchRequired:
    log.warning("Relaunch required for %s: %s", smart.get("ehr_name") or smart.get("iss") or "the EHR", why)
    sess.pop(SMART_KEY, None)
    return RelaunchRequired(ehr_name=smart.get("ehr_name"))


def _access_token(app: Flask, sess: MutableMapping[str, Any]) -> str:
    smart = sess.get(SMART_KEY)
    if not isinstance(smart, dict) or not smart.get("access_token"):
        raise RelaunchRequired()
    leeway = float(app.config.get("TOKEN_REFRESH_LEEWAY_SECONDS", 60))
    if not _due(smart, leeway, time.time()):
        return str(smart["access_token"])
    with _lock_for(sess, str(smart["access_token"])):
        smart = dict(sess.get(SMART_KEY) or {})
        if not smart.get("access_token"):
            raise RelaunchRequired()
        now = time.time()
        old_token = str(smart["access_token"])
        done = _recalled(old_token, now)
        if done is not None:
            smart.update(done)
            sess[SMART_KEY] = smart
            return str(smart["access_token"])
        if not _due(smart, leeway, now):
            return old_token
        refresh_token = smart.get("refresh_token")
        if not refresh_token:
            if not _expired(smart, now):
                return old_token
            raise _relaunch(sess, smart, "the access token expired and there is no refresh token")
        registry = launch_registry(app)
        reg = registry.by_id(str(smart.get("registration_id")))
        if reg is None:
            raise _relaunch(sess, smart, "the EHR registration is gone")
        try:
            tokens = refresh(
                reg,
                str(smart["token_endpoint"]),
                refresh_token=str(refresh_token),
                http=http_session(app),
                keys=app_keys(app) if reg.client_type == "confidential-asymmetric" else None,
                timeout=http_timeout(app),
            )
        except SmartError as exc:
            if not _expired(smart, now):
                log.warning("Token refresh failed (%s); using the current token until it expires", exc.error)
                smart["refresh_token"] = None
                sess[SMART_KEY] = smart
                return old_token
            raise _relaunch(sess, smart, f"the token refresh failed ({exc.error})") from None
        update: dict[str, Any] = {
            "access_token": tokens.access_token,
            "expires_at": tokens.expires_at,
            # A server that rotates refresh tokens sends a new one; otherwise the old one stays valid.
            "refresh_token": tokens.refresh_token or refresh_token,
        }
        if tokens.scope.scopes:
            update["scope"] = str(tokens.scope)
        smart.update(update)
        sess[SMART_KEY] = smart
        _remember(old_token, update, now)
        return tokens.access_token
