"""The sandbox's id_token signing key (OpenID Connect Core §10.1), generated once into the instance
folder and published at ``/auth/jwks.json``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from joserfc.jwk import RSAKey


def load_or_create_signing_key(path: Path) -> RSAKey:
    """Read the PEM private key at ``path``, creating a 2048-bit RSA key there (mode 0600) if absent."""
    if path.exists():
        key = RSAKey.import_key(path.read_bytes())
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = RSAKey.generate_key(2048, private=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.as_pem(private=True))
    return key


def public_jwks(key: RSAKey) -> dict[str, Any]:
    """JWK Set (RFC 7517 §5) with the public half of ``key``."""
    jwk = key.as_dict(private=False)
    jwk.update({"kid": key.thumbprint(), "alg": "RS256", "use": "sig"})
    return {"keys": [jwk]}
