"""The local demo: the sandbox EHR on 127.0.0.1 and the app on localhost, two sites as with a real EHR,
each a threaded werkzeug server in this process. The sandbox imports the app here; the app never
imports the sandbox."""

from __future__ import annotations

import gc
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from launch.sandbox import create_app as create_sandbox
from launch.sandbox.server import ServerThread, wait_until_ready

REGISTRATIONS_DIR = Path(__file__).resolve().parent / "registrations"


@dataclass
class Demo:
    sandbox: ServerThread
    app: ServerThread
    sandbox_url: str
    app_url: str

    def stop(self) -> None:
        self.app.stop()
        self.sandbox.stop()


def start_demo(app_port: int = 8000, sandbox_port: int = 8001, *, ready_timeout: float = 30.0) -> Demo:
    """Start both servers and wait until each answers. The registration and the sandbox's clients name
    ports 8000 and 8001: other ports serve, but launches need matching registrations."""
    try:
        from smart_app import create_app
    except ImportError as exc:
        raise SystemExit(
            "back-mice-sandbox demo needs the app installed beside it (pip install -e . in the project)"
        ) from exc
    app_url = f"http://localhost:{app_port}"
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    sandbox = ServerThread(
        create_sandbox({"PUBLIC_URL": sandbox_url, "APP_LAUNCH_URL": f"{app_url}/launch/sandbox"}),
        "127.0.0.1",
        sandbox_port,
    )
    app = create_app(
        {
            "SECRET_KEY": os.environ.get("SMART_APP_SECRET_KEY") or secrets.token_urlsafe(48),
            "PUBLIC_URL": app_url,
            "REGISTRATIONS_DIRS": [str(REGISTRATIONS_DIR)],
        }
    )
    app_server = ServerThread(app, "localhost", app_port)
    demo = Demo(
        sandbox, app_server, f"http://127.0.0.1:{sandbox.port}", f"http://localhost:{app_server.port}"
    )
    sandbox.start()
    app_server.start()
    try:
        wait_until_ready(f"{demo.sandbox_url}/fhir/metadata", timeout=ready_timeout)
        wait_until_ready(f"{demo.app_url}/.well-known/jwks.json", timeout=ready_timeout)
    except TimeoutError:
        demo.stop()
        raise
    return demo


def run_demo(app_port: int = 8000, sandbox_port: int = 8001) -> None:
    """``back-mice-sandbox demo``: serve until Ctrl+C."""
    demo = start_demo(app_port, sandbox_port)
    gc.collect()
    gc.freeze()  # the loaded records and both apps live as long as the process: out of collections
    print(f"Sandbox EHR: {demo.sandbox_url}/ehr   (open this: pick a patient to launch the app in the EHR)")
    print(f"App:         {demo.app_url}/launch  (standalone launch)")
    print("Press Ctrl+C to stop.", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        demo.stop()
