"""``back-mice-sandbox``: ``token`` (client_credentials against a running sandbox), ``serve`` (as
``python -m launch.sandbox``), ``demo`` (the sandbox and the app on loopback), and the readiness wait
that retries refused connections and read timeouts alike."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from launch.cli import main
from launch.sandbox.server import BackgroundServer, wait_until_ready

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BackgroundServer]:
    monkeypatch.delenv("SANDBOX_AUDITOR_CLIENT_SECRET", raising=False)
    with BackgroundServer({"TESTING": True, "SIGNING_KEY_PATH": str(tmp_path / "key.pem")}) as server:
        yield server


def test_token_prints_a_read_token_for_the_running_sandbox(sandbox, capsys):
    assert main(["token", "--url", sandbox.url]) == 0
    token = capsys.readouterr().out.strip()
    headers = {"Authorization": f"Bearer {token}"}
    assert requests.get(f"{sandbox.fhir_base}/Patient/lchen", headers=headers, timeout=5).status_code == 200
    body = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    written = requests.post(
        f"{sandbox.fhir_base}/Observation",
        json=body,
        headers={**headers, "Content-Type": "application/fhir+json"},
        timeout=5,
    )
    assert written.status_code == 403  # a read token
    assert main(["token", "--url", sandbox.fhir_base, "--json", "--scope", "system/*.rs"]) == 0
    assert '"scope": "system/*.rs"' in capsys.readouterr().out


def test_token_failures_say_why_without_secrets(sandbox, capsys, monkeypatch):
    assert main(["token", "--url", sandbox.url, "--scope", "user/*.cruds"]) == 1
    assert "HTTP 400 invalid_scope" in capsys.readouterr().err
    monkeypatch.setenv("SANDBOX_AUDITOR_CLIENT_SECRET", "not-the-secret")
    assert main(["token", "--url", sandbox.url]) == 1
    err = capsys.readouterr().err
    assert "HTTP 401 invalid_client" in err and "not-the-secret" not in err
    assert main(["token", "--url", f"http://127.0.0.1:{free_port()}"]) == 1
    assert "is the sandbox running?" in capsys.readouterr().err


def test_python_m_launch_sandbox_serves(tmp_path: Path):
    port = free_port()
    env = {**os.environ, "SANDBOX_SIGNING_KEY_PATH": str(tmp_path / "key.pem"), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "launch.sandbox", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until_ready(f"http://127.0.0.1:{port}/fhir/metadata", timeout=30) == 200
        conf = requests.get(f"http://127.0.0.1:{port}/fhir/.well-known/smart-configuration", timeout=5)
        assert conf.json()["issuer"] == f"http://127.0.0.1:{port}/fhir"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_demo_starts_the_sandbox_and_the_app():
    from launch.demo import start_demo

    demo = start_demo(app_port=free_port(), sandbox_port=free_port(), ready_timeout=30)
    try:
        ehr = requests.get(f"{demo.sandbox_url}/ehr", timeout=5)
        assert ehr.status_code == 200 and "Linda Chen" in ehr.text
        chooser = requests.get(f"{demo.app_url}/launch", timeout=5)
        assert chooser.status_code == 200
        # launch/registrations: the sandbox's public, symmetric and asymmetric clients, each its launch URL
        for registration in ("sandbox", "sandbox-symmetric", "sandbox-asymmetric"):
            assert chooser.text.count(f'href="/launch/{registration}"') == 1
    finally:
        demo.stop()


class SlowThenReady:
    """A listener that holds the first connections without answering (a server still starting), then
    answers 200."""

    def __init__(self, silent: int) -> None:
        self.silent = silent
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self, after: float) -> None:
        def later() -> None:
            time.sleep(after)  # connections are refused until then
            self.listener.listen(8)
            self.thread.start()

        threading.Thread(target=later, daemon=True).start()

    def run(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            if len(self.held) < self.silent:
                self.held.append(connection)
                continue
            connection.recv(4096)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            connection.close()

    def close(self) -> None:
        self.listener.close()
        for connection in self.held:
            connection.close()


def test_wait_until_ready_retries_refused_connections_and_read_timeouts():
    server = SlowThenReady(silent=2)
    server.start(after=0.3)
    try:
        started = time.monotonic()
        status = wait_until_ready(f"http://127.0.0.1:{server.port}/", timeout=20, attempt_timeout=0.3)
        assert status == 200 and len(server.held) == 2
        assert time.monotonic() - started >= 0.9  # refused for 0.3 s, then two read timeouts of 0.3 s
    finally:
        server.close()


def test_wait_until_ready_gives_up_naming_the_url():
    port = free_port()
    with pytest.raises(TimeoutError, match=f"127.0.0.1:{port}"):
        wait_until_ready(f"http://127.0.0.1:{port}/", timeout=0.5)
