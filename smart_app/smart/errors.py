"""Errors raised by the SMART App Launch layer.

Each class carries a short wire-style ``error`` code, the HTTP ``status`` the web layer answers with,
and a ``description`` that is safe to show to a clinician and to log: it never contains the
``state`` value, an authorization code, a token or a client secret (SMART App Launch 2.x,
"Security considerations"; RFC 6749 section 10).
"""

from __future__ import annotations


class SmartError(Exception):
    """Base of every SMART launch error."""

    #: short error code, in the style of RFC 6749 section 5.2
    error: str = "smart_error"
    #: HTTP status the web layer answers with
    status: int = 500
    #: default text that is safe to show and log
    description: str = "The SMART launch could not be completed."
    #: the EHR's own words (an OAuth ``error_description``), cleaned by ``smart_app.smart.wire.ehr_text``
    ehr_description: str | None = None

    def __init__(self, description: str | None = None, *, ehr_name: str | None = None) -> None:
        if description is not None:
            self.description = description
        self.ehr_name = ehr_name
        super().__init__(self.description)

    def __str__(self) -> str:
        return f"{self.error}: {self.description}"


class RegistrationError(SmartError):
    """An EHR registration file is missing a field or has an invalid value."""

    error = "invalid_registration"
    status = 500
    description = "An EHR registration is invalid."


class UnknownIssuer(SmartError):
    """The ``iss`` of a launch is not a registered EHR; nothing is requested from it."""

    error = "unknown_iss"
    status = 400
    description = "This EHR is not registered with the app, so the launch was refused."


class DiscoveryError(SmartError):
    """The EHR's SMART configuration could not be discovered (SMART App Launch 2.x, "Conformance")."""

    error = "discovery_failed"
    status = 502
    description = "The EHR's SMART configuration could not be read."


class UntrustedEndpoint(DiscoveryError):
    """Discovery names an authorization or token endpoint the registration does not trust."""

    error = "untrusted_endpoint"
    description = "The EHR's SMART configuration names an endpoint the app's registration does not trust."


class StateError(SmartError):
    """The ``state`` of a callback is missing, unknown, expired or already used (RFC 6749 section 10.12)."""

    error = "invalid_state"
    status = 400
    description = (
        "This sign-in response does not match a launch started in this browser, or it has expired "
        "or was already used. Launch the app again from your EHR."
    )


class AuthorizationError(SmartError):
    """The EHR answered the authorization request with an OAuth error (RFC 6749 section 4.1.2.1)."""

    error = "authorization_failed"
    status = 400
    description = "The EHR did not authorize the app."

    def __init__(
        self,
        description: str | None = None,
        *,
        ehr_name: str | None = None,
        oauth_error: str = "server_error",
        ehr_description: str | None = None,
    ) -> None:
        super().__init__(description, ehr_name=ehr_name)
        self.oauth_error = oauth_error
        self.ehr_description = ehr_description
        if oauth_error == "access_denied":
            self.status = 403


class TokenError(SmartError):
    """The token endpoint failed or answered with something unusable (RFC 6749 sections 5.1, 5.2)."""

    error = "token_failed"
    status = 502
    description = "The EHR's token endpoint did not issue a usable access token."

    def __init__(
        self,
        description: str | None = None,
        *,
        ehr_name: str | None = None,
        oauth_error: str | None = None,
        http_status: int | None = None,
        ehr_description: str | None = None,
    ) -> None:
        super().__init__(description, ehr_name=ehr_name)
        self.oauth_error = oauth_error
        self.http_status = http_status
        self.ehr_description = ehr_description


class LaunchContextError(TokenError):
    """The token response lacks launch context the app needs (SMART App Launch 2.x, "Launch context")."""

    error = "missing_launch_context"
    description = "The EHR did not say which patient the app was launched for."


class IdTokenError(SmartError):
    """The id_token failed validation (OpenID Connect Core 1.0 section 3.1.3.7)."""

    error = "invalid_id_token"
    status = 502
    description = "The EHR's identity token could not be verified."


class KeyConfigurationError(SmartError):
    """The app's signing key for private_key_jwt cannot be loaded."""

    error = "signing_key_unavailable"
    status = 500
    description = "The app's signing key is not available."


class RelaunchRequired(SmartError):
    """The access token expired and could not be refreshed: the clinician must launch again."""

    error = "relaunch_required"
    status = 401
    description = "Your session with the EHR has ended. Launch the app again from your EHR."
