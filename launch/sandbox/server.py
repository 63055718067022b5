"""Run the sandbox on a real loopback port in a background thread (end-to-end tests, demos)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from . import create_app


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
