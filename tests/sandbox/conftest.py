"""Fixtures of the sandbox EHR's own tests: the sandbox in process under the Flask test client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from joserfc.jwk import RSAKey

from tests.sandbox_fixtures import SandboxActions, fixture_bundles, make_sandbox


@pytest.fixture(scope="session")
def signing_key_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sandbox-key") / "signing-key.pem"


@pytest.fixture(scope="session")
def client_key() -> RSAKey:
    """The test app's private key for private_key_jwt."""
    return RSAKey.generate_key(2048, private=True, auto_kid=True)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "data"
    directory.mkdir()
    for name, bundle in fixture_bundles().items():
        (directory / name).write_text(json.dumps(bundle))
    return directory


@pytest.fixture
def sandbox_app(data_dir: Path, signing_key_path: Path, client_key: RSAKey) -> Flask:
    return make_sandbox(data_dir, signing_key_path, client_key)


@pytest.fixture
def client(sandbox_app: Flask) -> FlaskClient:
    return sandbox_app.test_client()


@pytest.fixture
def actions(client: FlaskClient, client_key: RSAKey) -> SandboxActions:
    return SandboxActions(client, client_key)

