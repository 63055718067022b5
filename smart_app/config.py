"""Settings and their documented defaults.

Load order (see ``create_app``): these defaults, then ``instance/config.py``, then environment
variables prefixed ``SMART_APP_`` (``SMART_APP_SECRET_KEY=...``; JSON values are decoded), then the
``test_config`` passed to the factory.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

DEV_SECRET_KEY = "dev-only-not-secret"

DEFAULTS: dict[str, Any] = {
    # Signs the session id cookie and CSRF tokens. The development value is refused outside
    # debug/testing (``check_config``).
    "SECRET_KEY": DEV_SECRET_KEY,
    # The app's own public origin; the redirect_uri is ``{PUBLIC_URL}/callback``.
    "PUBLIC_URL": "http://localhost:8000",
    # Extra directories of EHR registrations, besides launch/registrations/ (a list, or one path
    # in the SMART_APP_REGISTRATIONS_DIR environment variable).
    "REGISTRATIONS_DIRS": [],
    # Server-side sessions: on local disk (under the instance folder) unless a Redis URL is given.
    "SESSION_REDIS_URL": None,
    # The longest a session and its launch are kept after their last use (a launch that cannot renew its
    # token ends with the token); Redis keys expire then, files are swept every SESSION_SWEEP_SECONDS
    # (0: no sweeping thread, e.g. when a timer calls smart_app.web.storage.sweep).
    "SESSION_LIFETIME_SECONDS": 8 * 3600,
    "SESSION_SWEEP_SECONDS": 600,
    # A link that opens the audit page in a new tab works once, within this many seconds.
    "AUDIT_HANDOFF_SECONDS": 120,
    # Cookies for the EHR iframe: SameSite=None + Secure. Plain-http development outside an iframe on a
    # host other than localhost needs "Lax" and SESSION_COOKIE_SECURE false (browsers drop Secure
    # cookies over http except on localhost); ``check_config`` refuses the combination that cannot work.
    "SESSION_COOKIE_SAMESITE": "None",
    "SESSION_COOKIE_SECURE": True,
    # SMART discovery cache lifetime per issuer.
    "DISCOVERY_TTL_SECONDS": 3600,
    # Refresh the access token this many seconds before it expires, or halfway through its lifetime when
    # that is shorter than twice this (a 20 s token is refreshed after 10 s, once).
    "TOKEN_REFRESH_LEEWAY_SECONDS": 60,
    # FHIR client: (connect, read) timeouts in seconds, retries for idempotent GETs.
    "FHIR_TIMEOUT": [3.05, 30.0],
    "FHIR_MAX_RETRIES": 3,
    "FHIR_PAGE_SIZE": 1000,
    # "auto": a review's reads go as one batch Bundle where the server's CapabilityStatement offers
    # batch (what the batch does not answer whole is read on its own); "never": always one by one.
    "FHIR_BATCH_READS": "auto",
    # Budgets of one launch's reads of the record: every request, page, retry and Retry-After wait
    # within this many seconds in all, and each answer at most this many bytes once decompressed. What
    # is cut short is shown as not read and the criteria treat it as unknown.
    "FHIR_READ_BUDGET_SECONDS": 20.0,
    "FHIR_MAX_RESPONSE_BYTES": 64 * 1024 * 1024,
    # The EHR's smart_style_url: at most this many bytes (decompressed) within this many seconds.
    "STYLE_MAX_BYTES": 64 * 1024,
    "STYLE_BUDGET_SECONDS": 3.0,
    # A style whose answer carries no freshness information (Cache-Control, Expires) is reused this long.
    "STYLE_CACHE_SECONDS": 300,
    # PEM private keys for private_key_jwt client assertions; empty = an RS384 and an ES384 key are
    # generated once into instance/keys/. Their public halves are served at /.well-known/jwks.json.
    "SMART_SIGNING_KEY_FILES": [],
    # An authorization request not completed within this many seconds is forgotten.
    "LAUNCH_PENDING_TTL_SECONDS": 600,
    # Launches one browser session may have in flight at once (several EHR tabs).
    "LAUNCH_MAX_PENDING": 5,
    # Browser cache lifetime of the page's CSS/JS (seconds); patient pages themselves are never cached.
    "SEND_FILE_MAX_AGE_DEFAULT": 3600,
    # Outbound timeouts for SMART discovery and the token endpoint.
    "HTTP_TIMEOUT": [3.05, 15.0],
    # SMART discovery naming an authorization or token endpoint (or jwks_uri) on another origin than the
    # iss, not trusted by the registration (auth_origins or pinned endpoints): "warn" (log and launch)
    # or "refuse" (no request is sent there).
    "FOREIGN_AUTH_ENDPOINTS": "warn",
}

#: Hosts a browser treats as a secure context over plain http (Secure cookies are kept there).
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")


class ConfigError(RuntimeError):
    """The configuration cannot be used; the message says which setting and why."""


def check_config(config: dict[str, Any], *, debug: bool, testing: bool) -> None:
    """Refuse settings that would be unsafe in production or that cannot work."""
    if config.get("SECRET_KEY") == DEV_SECRET_KEY and not (debug or testing):
        raise ConfigError(
            "SMART_APP_SECRET_KEY is the development value; set a long random secret "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))')."
        )
    if str(config.get("FOREIGN_AUTH_ENDPOINTS", "warn")).lower() not in ("warn", "refuse"):
        raise ConfigError("SMART_APP_FOREIGN_AUTH_ENDPOINTS must be warn or refuse.")
    if config.get("FHIR_BATCH_READS", "auto") not in ("auto", "never"):
        raise ConfigError("SMART_APP_FHIR_BATCH_READS must be auto or never.")
    public = urlsplit(str(config.get("PUBLIC_URL", "")))
    host = (public.hostname or "").lower()
    local = host in LOCAL_HOSTS or host.endswith(".localhost") or host.startswith("127.")
    samesite = str(config.get("SESSION_COOKIE_SAMESITE", "None")).capitalize()
    secure = bool(config.get("SESSION_COOKIE_SECURE", True)) or samesite == "None"
    if public.scheme == "http" and not local and secure and not testing:
        raise ConfigError(
            f"SMART_APP_PUBLIC_URL is plain http on {host}, where browsers drop the app's Secure session "
            "cookie, so no launch could complete. Serve the app over https, or for development without an "
            "EHR iframe set SMART_APP_SESSION_COOKIE_SAMESITE=Lax and SMART_APP_SESSION_COOKIE_SECURE=false."
        )
