"""The sandbox's per-app state (``app.extensions["sandbox"]``) and its public URLs."""

from __future__ import annotations

from dataclasses import dataclass

import requests
from flask import Flask, current_app
from joserfc.jwk import RSAKey

from .faults import Faults
from .oauth import AuthState, Client
from .paging import Snapshots
from .store import Store


@dataclass
class SandboxState:
    store: Store
    auth: AuthState
    clients: dict[str, Client]
    faults: Faults
    signing_key: RSAKey
    http: requests.Session
    snapshots: Snapshots


def init_state(app: Flask, state: SandboxState) -> None:
    app.extensions["sandbox"] = state


def get_state() -> SandboxState:
    state = current_app.extensions["sandbox"]
    assert isinstance(state, SandboxState)
    return state


def public_url() -> str:
    return str(current_app.config["PUBLIC_URL"]).rstrip("/")


def fhir_base() -> str:
    """The FHIR base URL, which is also the ``iss``/``aud`` of SMART App Launch."""
    return public_url() + "/fhir"


def token_endpoint() -> str:
    return public_url() + "/auth/token"


def authorize_endpoint() -> str:
    return public_url() + "/auth/authorize"
