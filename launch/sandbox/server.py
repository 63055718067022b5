"""Run the sandbox on a real loopback port in a background thread (end-to-end tests, demos), and wait
for a server to answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import requests
from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from . import create_app


class PathOnlyRequestHandler(WSGIRequestHandler):
    """Access log lines without query strings: OAuth codes and state travel in them."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = self.path.split("?", 1)[0]
        self.log("info", '"%s %s" %s %s', self.command, path, code, size)


class ServerThread(threading.Thread):
    """A WSGI app on a real loopback socket in a background thread, logging paths only."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        super().__init__(daemon=True, name=f"server-{host}-{port}")
        self.server: BaseWSGIServer = make_server(
            host, port, app, threaded=True, request_handler=PathOnlyRequestHandler
        )
        self.host = host
        self.port = self.server.server_port

    def run(self) -> None:
        self.server.serve_forever()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class BackgroundServer:
    """``with BackgroundServer(config) as s: s.fhir_base`` — port 0 picks a free port, and
    ``PUBLIC_URL`` is set to the bound address unless the config gives one."""

    def __init__(
        self, config: Mapping[str, Any] | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.app: Flask = create_app({**(config or {})})
        self._server: BaseWSGIServer = make_server(host, port, self.app, threaded=True)
        self.url = f"http://{host}:{self._server.server_port}"
        if not (config or {}).get("PUBLIC_URL"):
            self.app.config["PUBLIC_URL"] = self.url
        self._thread = threading.Thread(target=self._server.serve_forever, name="sandbox-ehr", daemon=True)

    @property
    def fhir_base(self) -> str:
        return str(self.app.config["PUBLIC_URL"]).rstrip("/") + "/fhir"

    def start(self) -> BackgroundServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


#: What a server that is not answering yet looks like: refused or reset connections, and connections
#: accepted (the socket listens) whose answer does not come in time (the app is still starting).
NOT_READY = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


def wait_until_ready(
    url: str, *, timeout: float = 30.0, interval: float = 0.1, attempt_timeout: float = 5.0
) -> int:
    """GET ``url`` until any HTTP answer below 500 comes, retrying refused connections and read timeouts
    (each attempt waits at most ``attempt_timeout`` for the answer) alike; its status, or
    ``TimeoutError`` naming the URL after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{url} did not answer within {timeout:g} s ({last})")
        try:
            wait = min(attempt_timeout, remaining)
            response = requests.get(url, timeout=(min(1.0, wait), wait))
            response.close()
            if response.status_code < 500:
                return response.status_code
            last = f"HTTP {response.status_code}"
        except NOT_READY as exc:
            last = exc.__class__.__name__
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
