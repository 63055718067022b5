"""Launches for view tests: put a completed launch in the app's launch store and name it in the test
client's session, as the callback does; read it back after a request."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from smart_app.smart.launch import Launch, new_launch_id
from smart_app.web.session import LAUNCH_KEY, launch_store

NULLABLE = ("encounter", "fhir_user", "refresh_token", "smart_style_url", "expires_at")


def start_launch(app: Flask, client: FlaskClient, **fields: Any) -> Launch:
    """A launch with ``fields`` (Launch field names; ``fhir_base`` is taken as ``iss``) kept in the store
    and made the client's current launch."""
    if "fhir_base" in fields:
        fields.setdefault("iss", fields.pop("fhir_base"))
    fields.pop("fhir_context", None)
    values: dict[str, Any] = {
        "id": new_launch_id(),
        "registration_id": "test",
        "ehr_name": "Test EHR",
        "iss": "https://ehr.test/fhir",
        "patient": "p1",
        "access_token": "test-access-token",
        "token_endpoint": "https://ehr.test/auth/token",
        **{k: v for k, v in fields.items() if v is not None or k in NULLABLE},
    }
    launch = Launch(**values)
    with app.app_context():
        launch_store(app).save(launch)
    with client.session_transaction() as sess:
        sess[LAUNCH_KEY] = launch.id
    return launch


def launch_of(app: Flask, client: FlaskClient) -> Launch | None:
    """The client's current launch as the store holds it now."""
    with client.session_transaction() as sess:
        launch_id = sess.get(LAUNCH_KEY)
    if not isinstance(launch_id, str):
        return None
    with app.app_context():
        return launch_store(app).load(launch_id)
