"""Start the independent FHIR R4 server of ``../shared/fhir-server`` (Medplum's FHIR router, in memory)
for integration tests.

The server folder is copied, ``npm ci`` is run once per ``package-lock.json`` (cached under
``~/.cache/smart-app/fhir-server-<hash>``, or ``$SMART_APP_CACHE``), and ``server.mjs`` is started on a
free loopback port with the Node that the package installs (``node_modules/.bin/node``), else ``node``.
Tests that use the ``medplum`` fixture are skipped only when npm is missing and nothing is cached.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
SERVER_SOURCE = Path(os.environ.get("FHIR_SERVER_DIR", ROOT.parent / "shared" / "fhir-server"))
CACHE = Path(os.environ.get("SMART_APP_CACHE", Path.home() / ".cache" / "smart-app"))
#: Medplum refuses a transaction that uses ifNoneExist with more entries than this.
MEDPLUM_TRANSACTION_LIMIT = 8


class ServerUnavailable(RuntimeError):
    """npm or the server source is missing."""


def installed_dir() -> Path:
    """The cached install for the current package-lock, installing it when missing."""
    lock = SERVER_SOURCE / "package-lock.json"
    if not lock.is_file():
        raise ServerUnavailable(f"no FHIR server source at {SERVER_SOURCE}")
    key = hashlib.sha256(lock.read_bytes()).hexdigest()[:16]
    target = CACHE / f"fhir-server-{key}"
    if (target / "node_modules" / "@medplum" / "fhir-router").is_dir():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise ServerUnavailable("npm is not installed, so the Medplum FHIR server cannot be installed")
    CACHE.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="fhir-server-", dir=CACHE))
    shutil.copytree(SERVER_SOURCE, scratch, dirs_exist_ok=True, ignore=shutil.ignore_patterns("node_modules"))
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"], cwd=scratch, check=True, capture_output=True, timeout=600
    )
    try:
        scratch.rename(target)
    except OSError:  # another run installed it meanwhile
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class MedplumServer:
    """One running server; ``base_url`` is its FHIR base."""

    def __init__(self, directory: Path) -> None:
        node = directory / "node_modules" / ".bin" / "node"
        executable = str(node) if node.exists() else shutil.which("node")
        if executable is None:
            raise ServerUnavailable("node is not installed")
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [executable, "server.mjs", "--port", str(self.port), "--quiet"],
            cwd=directory,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait()

    def _wait(self, seconds: float = 60.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"FHIR server exited: {self.log()}")
            try:
                if requests.get(f"{self.base_url}/metadata", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("FHIR server did not start within 60 s")

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


class MedplumPool:
    """Hands out a running server, replacing it after ``uses`` tests: Medplum's in-memory repository
    searches (``ifNoneExist``) slow down as it fills, so a long corpus run restarts it now and then."""

    def __init__(self, directory: Path, uses: int = 40) -> None:
        self.directory = directory
        self.uses = uses
        self._count = 0
        self._server: MedplumServer | None = None

    def get(self) -> MedplumServer:
        if self._server is not None and self._count >= self.uses:
            self._server.stop()
            self._server = None
        if self._server is None:
            self._server = MedplumServer(self.directory)
            self._count = 0
        self._count += 1
        return self._server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@pytest.fixture(scope="session")
def medplum_pool() -> Iterator[MedplumPool]:
    """Servers for the session (skipped only when npm/node are missing)."""
    try:
        pool = MedplumPool(installed_dir())
        pool.get()
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield pool
    finally:
        pool.stop()


@pytest.fixture
def medplum(medplum_pool: MedplumPool) -> MedplumServer:
    """A running Medplum FHIR server (shared by up to ``MedplumPool.uses`` tests)."""
    return medplum_pool.get()
