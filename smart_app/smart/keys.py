"""The app's signing keys for ``private_key_jwt`` (SMART App Launch 2.x, "Client Authentication:
Asymmetric (public key)").

Keys come from PEM files named in the configuration or, when none are named, are generated once into
the instance folder (file mode 0600) — one RSA key for RS384 and one P-384 key for ES384. The public
halves are published as a JWK set at ``/.well-known/jwks.json``; each ``kid`` is the RFC 7638
thumbprint of the key.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from smart_app.smart.errors import KeyConfigurationError

log = logging.getLogger("smart_app.smart")

SigningKey = RSAKey | ECKey
GENERATED = {"RS384": "app-signing-rs384.pem", "ES384": "app-signing-es384.pem"}


class AppKeys:
    """The app's private signing keys, by algorithm."""

    def __init__(self, keys: dict[str, SigningKey]) -> None:
        self._keys = dict(keys)

    @property
    def algorithms(self) -> list[str]:
        return sorted(self._keys)

    def for_alg(self, alg: str) -> SigningKey:
        try:
            return self._keys[alg]
        except KeyError:
            raise KeyConfigurationError(
                f"The app has no signing key for {alg}; configure a PEM key of that type."
            ) from None

    def kid(self, alg: str) -> str:
        return str(self.for_alg(alg).thumbprint())

    def sign(self, claims: dict[str, Any], alg: str) -> str:
        """A compact JWS over ``claims`` with ``alg``, ``kid`` and ``typ: JWT`` in the header."""
        key = self.for_alg(alg)
        header = {"alg": alg, "kid": key.thumbprint(), "typ": "JWT"}
        return jwt.encode(header, claims, key, algorithms=[alg])

    def public_jwks(self) -> dict[str, Any]:
        """The public JWK set to publish (RFC 7517 section 5)."""
        keys = []
        for alg, key in sorted(self._keys.items()):
            public = dict(key.as_dict(private=False))
            public.update({"alg": alg, "use": "sig", "kid": key.thumbprint()})
            keys.append(public)
        return {"keys": keys}


def load_app_keys(paths: Sequence[Path | str], generate_dir: Path | str) -> AppKeys:
    """Load the PEM files in ``paths``; with none, load or create the default keys in ``generate_dir``."""
    keys: dict[str, SigningKey] = {}
    if paths:
        for path in paths:
            alg, key = _load_pem(Path(path))
            if alg in keys:
                raise KeyConfigurationError(f"Two signing keys for {alg} are configured; keep one.")
            keys[alg] = key
        return AppKeys(keys)
    directory = Path(generate_dir)
    for alg, name in GENERATED.items():
        path = directory / name
        if not path.exists():
            _generate(path, alg)
        keys[alg] = _load_pem(path)[1]
    return AppKeys(keys)


def _load_pem(path: Path) -> tuple[str, SigningKey]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyConfigurationError(f"Signing key {path} cannot be read ({exc.__class__.__name__}).") from exc
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyConfigurationError(f"Signing key {path} is not an unencrypted PEM private key.") from exc
    if isinstance(private, rsa.RSAPrivateKey):
        if private.key_size < 2048:
            raise KeyConfigurationError(
                f"Signing key {path} is RSA {private.key_size}; use 2048 bits or more."
            )
        return "RS384", RSAKey.import_key(private)
    if isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP384R1):
        return "ES384", ECKey.import_key(private)
    raise KeyConfigurationError(f"Signing key {path} must be RSA (RS384) or EC P-384 (ES384).")


def _generate(path: Path, alg: str) -> None:
    """Create a key file atomically with mode 0600; a concurrent creator's file wins."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key: SigningKey = RSAKey.generate_key(2048) if alg == "RS384" else ECKey.generate_key("P-384")
    pem = key.as_pem(private=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        try:
            os.link(tmp, path)
            log.info("Generated the app's %s signing key in %s", alg, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
