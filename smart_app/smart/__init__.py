"""SMART App Launch 2.x, app side, without Flask: registrations, discovery, PKCE, the authorization
request, token requests and launch context, id_token validation, scopes and the app's signing keys.

Only ``smart_app.web`` binds this package to HTTP requests and the session.
"""

from __future__ import annotations

from smart_app.smart.authorize import PendingAuthorization, scopes_for_launch, start_authorization
from smart_app.smart.discovery import Discovery, SmartConfiguration
from smart_app.smart.errors import (
    AuthorizationError,
    DiscoveryError,
    IdTokenError,
    KeyConfigurationError,
    LaunchContextError,
    RegistrationError,
    RelaunchRequired,
    SmartError,
    StateError,
    TokenError,
    UnknownIssuer,
)
from smart_app.smart.idtoken import validate_id_token, verify_id_token
from smart_app.smart.keys import AppKeys, load_app_keys
from smart_app.smart.logredact import install_log_redaction, redact
from smart_app.smart.registrations import (
    Registration,
    RegistrationRegistry,
    WritebackOptions,
    load_registrations,
)
from smart_app.smart.scopes import ScopeSet
from smart_app.smart.token import LaunchContext, TokenSet, exchange_code, refresh

__all__ = [
    "AppKeys",
    "AuthorizationError",
    "Discovery",
    "DiscoveryError",
    "IdTokenError",
    "KeyConfigurationError",
    "LaunchContext",
    "LaunchContextError",
    "PendingAuthorization",
    "Registration",
    "RegistrationError",
    "RegistrationRegistry",
    "RelaunchRequired",
    "ScopeSet",
    "SmartConfiguration",
    "SmartError",
    "StateError",
    "TokenError",
    "TokenSet",
    "UnknownIssuer",
    "WritebackOptions",
    "exchange_code",
    "install_log_redaction",
    "load_app_keys",
    "load_registrations",
    "redact",
    "refresh",
    "scopes_for_launch",
    "start_authorization",
    "validate_id_token",
    "verify_id_token",
]
