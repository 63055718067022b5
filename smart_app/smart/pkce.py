"""PKCE with the S256 method (RFC 7636; SMART App Launch 2.x requires S256 for every client)."""

from __future__ import annotations

import secrets

from authlib.oauth2.rfc7636 import create_s256_code_challenge

METHOD = "S256"


def create_code_verifier() -> str:
    """A high-entropy verifier: 64 URL-safe characters from 48 random bytes (RFC 7636 section 4.1)."""
    return secrets.token_urlsafe(48)


def code_challenge(code_verifier: str) -> str:
    """``BASE64URL(SHA256(verifier))`` without padding (RFC 7636 section 4.2)."""
    return str(create_s256_code_challenge(code_verifier))
