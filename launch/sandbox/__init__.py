"""Local sandbox EHR: SMART App Launch 2.x authorization server and FHIR R4 server over synthetic
patients, with an "EHR" page that launches the app in an iframe. A test and demo fixture only."""

from __future__ import annotations

import gzip
import logging
from collections.abc import Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import requests
from flask import Flask, Response, current_app, request

from .config import DEFAULTS, check_settings
from .dates import parse_dates_setting, shift_dates
from .faults import Faults
from .keys import load_or_create_signing_key
from .oauth import AuthState, load_clients, load_clients_file
from .paging import Snapshots
from .state import SandboxState, init_state
from .store import Store

__all__ = ["create_app", "date_shift"]

log = logging.getLogger(__name__)


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the sandbox app: defaults → ``instance/sandbox.py`` → ``SANDBOX_*`` env → ``test_config``."""
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(DEFAULTS)
    app.config.from_pyfile("sandbox.py", silent=True)
    app.config.from_prefixed_env("SANDBOX")
    if test_config:
        app.config.update(test_config)
    check_settings(app.config)

    raw_clients = app.config["CLIENTS"]
    if raw_clients is None:
        raw_clients = load_clients_file(Path(app.config["CLIENTS_FILE"]))
    key_path = app.config["SIGNING_KEY_PATH"] or str(Path(app.instance_path) / "sandbox-signing-key.pem")
    state = SandboxState(
        store=Store(version_ids=str(app.config["VERSION_IDS"])),
        auth=AuthState(),
        clients=load_clients(raw_clients),
        faults=Faults(app.config["FAULTS"]),
        signing_key=load_or_create_signing_key(Path(key_path)),
        http=requests.Session(),
        snapshots=Snapshots(
            ttl=float(app.config["SEARCH_SNAPSHOT_TTL"]), max_entries=int(app.config["SEARCH_SNAPSHOTS_MAX"])
        ),
    )
    _load_data(app, state.store)
    init_state(app, state)

    from .routes import auth, ehr, fhir, wellknown

    app.register_blueprint(wellknown.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(fhir.bp)
    app.register_blueprint(ehr.bp)
    app.after_request(_gzip)
    return app


def _load_data(app: Flask, store: Store) -> None:
    practitioners = Path(app.config["PRACTITIONERS_FILE"])
    if practitioners.is_file():
        store.load_file(practitioners)
    data_dir = Path(app.config["DATA_DIR"])
    files = sorted(data_dir.rglob("*.json")) if data_dir.is_dir() else []
    if not files:
        log.warning("sandbox: no patient Bundles found in %s", data_dir)
    days = date_shift(app.config)
    loaded = sum(store.load_bundle(shift_dates(read_json(path), days), str(path)) for path in files)
    log.info("sandbox: loaded %d resources from %d files, dates moved by %d days", loaded, len(files), days)


def date_shift(config: Mapping[str, Any], today: date | None = None) -> int:
    """Whole days the data's dates move by: from ``DATA_ANCHOR`` to the day ``DATES`` names."""
    setting = config["DATES"]
    target = (
        setting
        if isinstance(setting, date)
        else parse_dates_setting(str(setting), today or datetime.now(UTC).date())
    )
    if target is None:
        return 0
    return (target - date.fromisoformat(str(config["DATA_ANCHOR"]))).days


def read_json(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from exc


def _gzip(response: Response) -> Response:
    """Compress larger bodies when the client sends ``Accept-Encoding: gzip`` (RFC 9110 §8.4)."""
    if (
        response.direct_passthrough
        or response.status_code < 200
        or response.status_code in (204, 304)
        or "Content-Encoding" in response.headers
        or "gzip" not in request.headers.get("Accept-Encoding", "").lower()
    ):
        return response
    body = response.get_data()
    if len(body) < int(current_app.config["GZIP_MIN_BYTES"]):
        return response
    response.set_data(gzip.compress(body, compresslevel=int(current_app.config["GZIP_LEVEL"])))
    response.headers["Content-Encoding"] = "gzip"
    response.vary.add("Accept-Encoding")
    return response
