"""End-to-end harness: the sandbox EHR and the app as real HTTP servers on loopback.

The sandbox listens on 127.0.0.1 and the app on localhost, so in a browser they are two sites and the
app really runs in a cross-site iframe. Ports are free ones chosen by the OS. These servers need no
readiness wait: the socket is bound and listening before the serving thread starts, so an early request
waits in the listen queue. Servers started as separate processes (gunicorn, the test FHIR server) are
waited for with ``wait_until_answering``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server


class PathOnlyRequestHandler(WSGIRequestHandler):
    """Access log lines without query strings: OAuth codes and state travel in them."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = self.path.split("?", 1)[0]
        self.log("info", '"%s %s" %s %s', self.command, path, code, size)


#: What a server that is still starting answers with: refused or reset connections, connect and read
#: timeouts (a process that has bound its socket but whose workers are not accepting yet), a body cut off.
NOT_READY_YET = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)

SANDBOX_SECRET = "sandbox-only-client-secret-for-tests"
SECRET_ENV = "BACK_MICE_TEST_CLIENT_SECRET"

SCOPES = [
    "launch",
    "launch/patient",
    "openid",
    "fhirUser",
    "offline_access",
    "patient/Patient.r",
    "patient/Observation.rs",
    "patient/Condition.rs",
    "patient/Procedure.rs",
    "patient/MedicationStatement.rs",
    "patient/MedicationRequest.rs",
    "patient/Observation.c",
    # Conditional create (If-None-Exist) is a search, and a repeat answers with what exists: c, r and s.
    "patient/ClinicalImpression.crs",
    "patient/ServiceRequest.crs",
    "patient/DetectedIssue.crs",
    "patient/Provenance.crs",
    "patient/DocumentReference.crs",
    "patient/Device.crs",
]
CLIENT_IDS = {
    "public": "back-mice-test-public",
    "confidential-symmetric": "back-mice-test-symmetric",
    "confidential-asymmetric": "back-mice-test-asymmetric",
}


class ServerNotReady(AssertionError):
    """A test server that exited, or did not answer before its deadline."""


def wait_until_answering(
    url: str,
    *,
    seconds: float = 60.0,
    attempt_timeout: float = 5.0,
    process: subprocess.Popen[bytes] | None = None,
    output: Callable[[], str] | None = None,
) -> requests.Response:
    """GET ``url`` until the server answers (any HTTP status) and return that answer.

    Retries everything in ``NOT_READY_YET`` until ``seconds`` have passed in all; each attempt waits at
    most ``attempt_timeout``. Raises ServerNotReady when ``process`` exits first (with ``output()``,
    what it printed) or at the deadline (with the last error)."""
    deadline = time.monotonic() + seconds
    last_error: Exception | None = None
    while True:
        if process is not None and process.poll() is not None:
            printed = output() if output is not None else ""
            raise ServerNotReady(f"{url}: the server exited with status {process.returncode}\n{printed}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ServerNotReady(f"{url} did not answer within {seconds:.0f} s (last error: {last_error!r})")
        try:
            return requests.get(url, timeout=min(attempt_timeout, max(remaining, 0.1)))
        except NOT_READY_YET as exc:
            last_error = exc
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))


class LazyApp:
    """A WSGI callable whose app is set after the socket is bound (the app must know its own port)."""

    def __init__(self) -> None:
        self.app: Callable[..., Any] | None = None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        assert self.app is not None
        return self.app(environ, start_response)


class CountingMiddleware:
    """Counts requests by path prefix (``/fhir`` round trips, ``/auth`` calls)."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        key = "fhir" if path.startswith("/fhir") and ".well-known" not in path else path.split("/")[1]
        with self.lock:
            self.counts[key] += 1
        return self.app(environ, start_response)


@dataclass
class Server:
    host: str
    server: BaseWSGIServer
    lazy: LazyApp
    thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server.server_port}"

    def start(self, app: Callable[..., Any]) -> None:
        self.lazy.app = app
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def bind(host: str) -> Server:
    lazy = LazyApp()
    server = make_server(host, 0, lazy, threaded=True, request_handler=PathOnlyRequestHandler)
    return Server(host=host, server=server, lazy=lazy)


def localhost_resolves() -> bool:
    try:
        socket.getaddrinfo("localhost", 0)
        return True
    except OSError:
        return False


@dataclass
class Stack:
    """A running sandbox EHR and app, wired to each other for one client type."""

    sandbox: Server
    app_server: Server
    sandbox_app: Any
    app: Any
    counter: CountingMiddleware
    client_type: str
    registration_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fhir_base(self) -> str:
        return f"{self.sandbox.url}/fhir"

    @property
    def app_url(self) -> str:
        return self.app_server.url

    def stop(self) -> None:
        self.app_server.stop()
        self.sandbox.stop()


def start_stack(
    tmp_path: Path,
    *,
    client_type: str = "public",
    app_config: dict[str, Any] | None = None,
    sandbox_config: dict[str, Any] | None = None,
    scopes: list[str] | None = None,
    writeback: dict[str, str] | None = None,
) -> Stack:
    """Start the sandbox (127.0.0.1) and the app (localhost) on free ports, registered with each other."""
    from launch.sandbox import create_app as create_sandbox
    from smart_app import create_app

    sandbox = bind("127.0.0.1")
    app_server = bind("localhost")
    app_url = app_server.url
    client_id = CLIENT_IDS[client_type]
    client: dict[str, Any] = {
        "client_id": client_id,
        "client_type": client_type,
        "redirect_uris": [f"{app_url}/callback"],
    }
    if client_type == "confidential-symmetric":
        client["client_secret"] = SANDBOX_SECRET
    if client_type == "confidential-asymmetric":
        client["jwks_uri"] = f"{app_url}/.well-known/jwks.json"
    sandbox_app = create_sandbox(
        {
            "TESTING": True,
            "PUBLIC_URL": sandbox.url,
            "APP_LAUNCH_URL": f"{app_url}/launch",
            "CLIENTS": [client],
            "SIGNING_KEY_PATH": str(tmp_path / "sandbox-key.pem"),
            **(sandbox_config or {}),
        }
    )
    registration_dir = tmp_path / "registrations"
    registration_dir.mkdir(exist_ok=True)
    registration: dict[str, Any] = {
        "id": f"test-{client_type}",
        "name": "Sandbox EHR (test)",
        "iss": f"{sandbox.url}/fhir",
        "client_id": client_id,
        "client_type": client_type,
        "scopes": scopes or SCOPES,
        "frame_ancestors": [sandbox.url],
        "writeback": writeback or {"mode": "transaction", "assessment_as": "ClinicalImpression"},
    }
    if client_type == "confidential-symmetric":
        registration["client_secret_env"] = SECRET_ENV
    (registration_dir / "test.json").write_text(json.dumps(registration))
    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "test-secret-key-not-for-production",
            "PUBLIC_URL": app_url,
            "REGISTRATIONS_DIRS": [str(registration_dir)],
            # A plain HTTP client (requests) sends no Secure cookie over http; browsers treat
            # http://localhost as secure, and browser tests override these two.
            "SESSION_COOKIE_SAMESITE": "Lax",
            "SESSION_COOKIE_SECURE": False,
            "INSTANCE_PATH": str(tmp_path / "app-instance"),
            **(app_config or {}),
        }
    )
    counter = CountingMiddleware(sandbox_app)
    sandbox.start(counter)
    app_server.start(app)
    return Stack(sandbox, app_server, sandbox_app, app, counter, client_type, registration_dir)


def iter_client_types() -> Iterator[str]:
    yield from CLIENT_IDS


def free_port() -> int:
    """A loopback port nobody listens on right now (for servers started as separate processes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
