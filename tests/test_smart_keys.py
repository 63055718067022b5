"""The app's signing keys and published JWK set (smart_app.smart.keys)."""

from __future__ import annotations

import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.jwk import ECKey, RSAKey
from smart_support import write_pem

from smart_app.smart.errors import KeyConfigurationError
from smart_app.smart.keys import GENERATED, load_app_keys


def test_generated_once_with_private_permissions(tmp_path):
    keys = load_app_keys([], tmp_path / "keys")
    for name in GENERATED.values():
        mode = stat.S_IMODE((tmp_path / "keys" / name).stat().st_mode)
        assert mode == 0o600
    again = load_app_keys([], tmp_path / "keys")
    assert keys.kid("RS384") == again.kid("RS384") and keys.kid("ES384") == again.kid("ES384")
    jwks = keys.public_jwks()
    assert {k["alg"] for k in jwks["keys"]} == {"RS384", "ES384"}
    for key in jwks["keys"]:
        assert key["use"] == "sig" and "d" not in key and "p" not in key
    assert len(list((tmp_path / "keys").iterdir())) == 2  # no temporary files left
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700


def test_configured_pem_files(tmp_path):
    rsa_path = write_pem(tmp_path / "rsa.pem", RSAKey.generate_key(2048))
    keys = load_app_keys([rsa_path], tmp_path / "unused")
    assert keys.algorithms == ["RS384"]
    assert not (tmp_path / "unused").exists()
    with pytest.raises(KeyConfigurationError, match="no signing key for ES384"):
        keys.for_alg("ES384")
    ec_path = write_pem(tmp_path / "ec.pem", ECKey.generate_key("P-384"))
    assert load_app_keys([str(rsa_path), str(ec_path)], tmp_path).algorithms == ["ES384", "RS384"]


def test_bad_keys_are_refused(tmp_path):
    with pytest.raises(KeyConfigurationError, match="cannot be read"):
        load_app_keys([tmp_path / "missing.pem"], tmp_path)
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(KeyConfigurationError, match="not an unencrypted PEM"):
        load_app_keys([tmp_path / "junk.pem"], tmp_path)
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    (tmp_path / "small.pem").write_bytes(
        small.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(KeyConfigurationError, match="2048"):
        load_app_keys([tmp_path / "small.pem"], tmp_path)
    p256 = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "p256.pem").write_bytes(
        p256.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(KeyConfigurationError, match="P-384"):
        load_app_keys([tmp_path / "p256.pem"], tmp_path)
