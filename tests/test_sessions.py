"""Server-side sessions (docs/architecture.md#launch-and-tokens) and the security headers every page
carries."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from flask import session

from smart_app import create_app
from tests.servers import bind, start_stack


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is missing: run tests/setup_test_deps.py as root", pytrace=False)
    port = free_port()
    process = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # refused until redis listens; OSError covers resets and connect timeouts too
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError as exc:
                if process.poll() is not None or time.monotonic() >= deadline:
                    pytest.fail(f"redis-server on port {port} did not start: {exc!r}", pytrace=False)
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.redis
@pytest.mark.e2e
def test_two_app_processes_share_sessions_through_redis(tmp_path: Path, redis_url: str) -> None:
    """A launch completed on one app instance is usable on another behind the same load balancer."""
    stack = start_stack(tmp_path, app_config={"SESSION_REDIS_URL": redis_url})
    second = bind("localhost")
    try:
        second.start(
            create_app(
                {
                    **{
                        key: stack.app.config[key]
                        for key in ("SECRET_KEY", "PUBLIC_URL", "REGISTRATIONS_DIRS")
                    },
                    "TESTING": True,
                    "SESSION_REDIS_URL": redis_url,
                    "SESSION_COOKIE_SAMESITE": "Lax",
                    "SESSION_COOKIE_SECURE": False,
                    "INSTANCE_PATH": str(tmp_path / "second-instance"),
                }
            )
        )
        with requests.Session() as browser:
            made = requests.get(
                f"{stack.sandbox.url}/ehr/launch-url", params={"patient": "apatel"}, timeout=10
            )
            assert browser.get(made.json()["url"], timeout=30).url.endswith("/review")
            cookie = browser.cookies.get("back_mice_session")
            assert cookie
            other = requests.get(f"{second.url}/review", cookies={"back_mice_session": cookie}, timeout=30)
        assert other.status_code == 200
        assert "badge-class" in other.text
    finally:
        second.stop()
        stack.stop()


def test_session_cookie_is_httponly_secure_and_partitioned_for_the_iframe(tmp_path: Path) -> None:
    app = create_app({"TESTING": True, "INSTANCE_PATH": str(tmp_path)})

    def touch() -> str:
        session["seen"] = True
        return "ok"

    app.add_url_rule("/_touch", view_func=touch)
    response = app.test_client().get("/_touch")
    session_cookie = next(
        value
        for key, value in response.headers.items()
        if key == "Set-Cookie" and "back_mice_session=" in value
    )
    for attribute in ("HttpOnly", "Secure", "SameSite=None", "Partitioned"):
        assert attribute in session_cookie
    session_id = session_cookie.split(";")[0].split("=", 1)[1]
    assert "seen" not in session_id and len(session_id) >= 32  # an opaque id; the data stays server-side


def test_every_page_has_csp_without_inline_script_and_frame_ancestors(tmp_path: Path) -> None:
    sandbox_registrations = Path(__file__).resolve().parent.parent / "launch" / "registrations"
    app = create_app(
        {"TESTING": True, "INSTANCE_PATH": str(tmp_path), "REGISTRATIONS_DIRS": [str(sandbox_registrations)]}
    )
    response = app.test_client().get("/launch")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors http://127.0.0.1:8001" in csp  # the sandbox registration's EHR origin
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_sessions_are_stored_on_disk_by_default_not_in_the_cookie(tmp_path: Path) -> None:
    app = create_app({"TESTING": True, "INSTANCE_PATH": str(tmp_path)})
    assert app.config["SESSION_TYPE"] == "cachelib"
    assert (tmp_path / "sessions").is_dir()
