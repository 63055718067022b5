"""SMART App Launch 2.x, app side, without Flask: registrations, discovery (bounded reads, trusted
endpoints), PKCE, the authorization request, token requests, the launch context checked against the
launched FHIR base, id_token validation, scopes, the app's signing keys, and the token of a launch kept
fresh (refresh when due, once after a 401).

Only ``smart_app.web`` binds this package to HTTP requests and the session.
"""

from __future__ import annotations

from smart_app.smart.authorize import PendingAuthorization, scopes_for_launch, start_authorization
from smart_app.smart.bearer import LaunchBearer, RetryOn401Session
from smart_app.smart.context import CheckedContext, InvalidLaunchContext, check_context
from smart_app.smart.discovery import Discovery, SmartConfiguration, check_endpoints
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
    UntrustedEndpoint,
)
from smart_app.smart.idtoken import validate_id_token, verify_id_token
from smart_app.smart.keys import AppKeys, load_app_keys
from smart_app.smart.logredact import install_log_redaction, redact
from smart_app.smart.registrations import (
    AmbiguousRegistration,
    Registration,
    RegistrationRegistry,
    WritebackOptions,
    load_registrations,
)
from smart_app.smart.scopes import ScopeSet
from smart_app.smart.token import LaunchContext, TokenSet, exchange_code, refresh

__all__ = [
    "AmbiguousRegistration",
    "AppKeys",
    "AuthorizationError",
    "CheckedContext",
    "Discovery",
    "DiscoveryError",
    "IdTokenError",
    "InvalidLaunchContext",
    "KeyConfigurationError",
    "LaunchBearer",
    "LaunchContext",
    "LaunchContextError",
    "PendingAuthorization",
    "Registration",
    "RegistrationError",
    "RegistrationRegistry",
    "RelaunchRequired",
    "RetryOn401Session",
    "ScopeSet",
    "SmartConfiguration",
    "SmartError",
    "StateError",
    "TokenError",
    "TokenSet",
    "UnknownIssuer",
    "UntrustedEndpoint",
    "WritebackOptions",
    "check_context",
    "check_endpoints",
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
