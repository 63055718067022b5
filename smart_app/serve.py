"""Running the app: gunicorn for production, and the local demo beside the sandbox EHR."""

from __future__ import annotations

import os
import secrets
import threading
from typing import Any

from flask import Flask
from werkzeug.serving import WSGIRequestHandler, make_server


class PathOnlyRequestHandler(WSGIRequestHandler):
    """Access log lines without query strings: OAuth codes and state travel in them."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = self.path.split("?", 1)[0]
        self.log("info", '"%s %s" %s %s', self.command, path, code, size)


def serve(host: str, port: int, workers: int) -> None:
    """Run the app under gunicorn with ``workers`` processes; settings come from SMART_APP_* variables.

    With several workers (or several hosts) set SMART_APP_SESSION_REDIS_URL so they share sessions.
    """
    from gunicorn.app.base import BaseApplication

    from smart_app import create_app

    class GunicornApp(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("threads", 4)
            self.cfg.set("timeout", 60)
            self.cfg.set("accesslog", "-")
            # Query strings carry OAuth codes and state: log the path only.
            self.cfg.set("access_log_format", '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms')

        def load(self) -> Flask:
            return create_app()

    GunicornApp().run()


class ServerThread(threading.Thread):
    """A WSGI app on a real loopback socket in a background thread (demo and end-to-end tests)."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        super().__init__(daemon=True)
        self.server = make_server(host, port, app, threaded=True, request_handler=PathOnlyRequestHandler)
        self.port = self.server.server_port
        self.host = host

    def run(self) -> None:
        self.server.serve_forever()

    def stop(self) -> None:
        self.server.shutdown()


def demo(app_port: int = 8000, sandbox_port: int = 8001) -> None:
    """Start the sandbox EHR on 127.0.0.1 and the app on localhost (two sites, as with a real EHR)."""
    from launch.sandbox import create_app as create_sandbox
    from smart_app import create_app

    app_url = f"http://localhost:{app_port}"
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    sandbox = ServerThread(
        create_sandbox({"PUBLIC_URL": sandbox_url, "APP_LAUNCH_URL": f"{app_url}/launch"}),
        "127.0.0.1",
        sandbox_port,
    )
    app = create_app(
        {
            "SECRET_KEY": os.environ.get("SMART_APP_SECRET_KEY") or secrets.token_urlsafe(48),
            "PUBLIC_URL": app_url,
        }
    )
    app_server = ServerThread(app, "localhost", app_port)
    sandbox.start()
    app_server.start()
    print(f"Sandbox EHR: {sandbox_url}/ehr   (open this: pick a patient to launch the app in the EHR)")
    print(f"App:         {app_url}/launch  (standalone launch)")
    print("Press Ctrl+C to stop.", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        sandbox.stop()
        app_server.stop()
