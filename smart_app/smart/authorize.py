"""The authorization request (SMART App Launch 2.x, "Obtain authorization code").

Parameters: ``response_type=code``, ``client_id``, ``redirect_uri``, ``launch`` (EHR launch),
``scope``, ``state`` (256 random bits, single use), ``aud`` (the FHIR base URL), and PKCE
``code_challenge`` with ``code_challenge_method=S256``; ``nonce`` when ``openid`` is requested
(OpenID Connect Core 1.0 section 3.1.2.1).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from smart_app.smart import pkce
from smart_app.smart.discovery import SmartConfiguration
from smart_app.smart.registrations import Registration


@dataclass(frozen=True)
class PendingAuthorization:
    """A started authorization, kept in the browser's session until its callback arrives."""

    state: str
    code_verifier: str
    nonce: str | None
    url: str
    iss: str
    registration_id: str
    created_at: float
    redirect_uri: str = ""
    scope: str = ""
    token_endpoint: str = ""
    ehr_launch: bool = False

    def __repr__(self) -> str:
        return (
            f"PendingAuthorization(iss={self.iss!r}, registration_id={self.registration_id!r}, "
            f"created_at={self.created_at!r}, ehr_launch={self.ehr_launch!r})"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict for the session."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PendingAuthorization:
        """Rebuild from ``to_dict()`` output; unknown keys are ignored."""
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in data.items() if k in names})

    def expired(self, max_age: float, now: float | None = None) -> bool:
        return (time.time() if now is None else now) - self.created_at > max_age


def scopes_for_launch(scopes: tuple[str, ...], *, ehr_launch: bool) -> tuple[str, ...]:
    """The scopes to request for this kind of launch.

    ``launch`` asks for the EHR's launch context and only makes sense with a ``launch`` parameter;
    ``launch/patient`` asks the EHR to pick a patient during a standalone launch ("Scopes for
    requesting context data").
    """
    drop = "launch/patient" if ehr_launch else "launch"
    kept = tuple(s for s in scopes if s != drop and not (ehr_launch and s.startswith("launch/")))
    return kept


def start_authorization(
    reg: Registration,
    smart_config: SmartConfiguration,
    redirect_uri: str,
    launch: str | None,
    *,
    now: float | None = None,
) -> PendingAuthorization:
    """Build the authorize URL and the secrets that the callback must match."""
    state = secrets.token_urlsafe(32)
    verifier = pkce.create_code_verifier()
    nonce = secrets.token_urlsafe(32) if reg.use_openid else None
    scope = " ".join(scopes_for_launch(reg.scopes, ehr_launch=launch is not None))
    params: dict[str, str] = {
        "response_type": "code",
        "client_id": reg.client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
        "aud": reg.iss,
        "code_challenge": pkce.code_challenge(verifier),
        "code_challenge_method": pkce.METHOD,
    }
    if launch is not None:
        params["launch"] = launch
    if nonce is not None:
        params["nonce"] = nonce
    parts = urlsplit(smart_config.authorization_endpoint)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    url = urlunsplit(parts._replace(query=urlencode([*query, *params.items()])))
    return PendingAuthorization(
        state=state,
        code_verifier=verifier,
        nonce=nonce,
        url=url,
        iss=reg.iss,
        registration_id=reg.id,
        created_at=time.time() if now is None else now,
        redirect_uri=redirect_uri,
        scope=scope,
        token_endpoint=smart_config.token_endpoint,
        ehr_launch=launch is not None,
    )
