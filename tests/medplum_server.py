"""Start the repository's independent FHIR R4 server (``tests/fhir-server``: Medplum's FhirRouter and
MemoryRepository behind a small HTTP front end) for integration tests.

Its npm packages are installed once per ``package-lock.json`` by ``tests/setup_test_deps.py``
(``npm ci`` into ``~/.cache/smart-app/fhir-server-<hash>``, or under ``$SMART_APP_CACHE``); each server
runs the repository's own ``*.mjs`` files from a scratch directory whose ``node_modules`` points into
that install, with the Node 22 that the npm ``node`` package brings. It listens on a port it picks
itself (``--port 0``) and names it on its first line, so no port is chosen and then lost to another
program. Tests that use the ``medplum`` fixture fail, with the reason, when npm or node is missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from tests.servers import ServerNotReady, wait_until_answering
from tests.setup_test_deps import FHIR_SERVER_SOURCE

#: Medplum refuses a transaction that uses ifNoneExist with more entries than this.
MEDPLUM_TRANSACTION_LIMIT = 8
STARTUP_SECONDS = 60.0
_LISTENING = re.compile(rb"listening on (http://[^\s,]+), FHIR base (\S+)")


def run_directory(install: Path, parent: Path) -> Path:
    """A directory to run the server from: the repository's ``*.mjs`` and the cached ``node_modules``."""
    directory = Path(tempfile.mkdtemp(prefix="fhir-server-run-", dir=parent))
    for source in FHIR_SERVER_SOURCE.glob("*.mjs"):
        shutil.copy2(source, directory / source.name)
    (directory / "node_modules").symlink_to(install / "node_modules", target_is_directory=True)
    return directory


class MedplumServer:
    """One running server: ``address`` is where it listens, ``base_url`` its FHIR base (the same unless
    ``--base-url`` was given in ``options``)."""

    def __init__(self, directory: Path, node: str, options: Sequence[str] = ("--quiet",)) -> None:
        self._log: IO[bytes] = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [node, "server.mjs", "--port", "0", "--host", "127.0.0.1", *options],
            cwd=directory,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self.address, self.base_url = self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self) -> tuple[str, str]:
        """Where the server listens and its FHIR base, once it has said so and answers ``/metadata``."""
        deadline = time.monotonic() + STARTUP_SECONDS
        while (match := _LISTENING.search(self._output())) is None:
            if self.process.poll() is not None:
                raise ServerNotReady(
                    f"the test FHIR server exited with {self.process.returncode}: {self.log()}"
                )
            if time.monotonic() >= deadline:
                raise ServerNotReady(
                    f"the test FHIR server did not start within {STARTUP_SECONDS:.0f} s: {self.log()}"
                )
            time.sleep(0.1)
        address, base_url = match.group(1).decode(), match.group(2).decode()
        wait_until_answering(
            f"{address}/metadata",
            seconds=max(1.0, deadline - time.monotonic()),
            process=self.process,
            output=self.log,
        )
        return address, base_url

    def _output(self) -> bytes:
        self._log.seek(0)
        return self._log.read()

    def log(self) -> str:
        """The end of what the server printed."""
        return self._output().decode("utf-8", "replace")[-4000:]

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

    def __init__(self, directory: Path, node: str, uses: int = 40) -> None:
        self.directory = directory
        self.node = node
        self.uses = uses
        self._count = 0
        self._server: MedplumServer | None = None

    def get(self) -> MedplumServer:
        if self._server is not None and self._count >= self.uses:
            self._server.stop()
            self._server = None
        if self._server is None:
            self._server = MedplumServer(self.directory, self.node)
            self._count = 0
        self._count += 1
        return self._server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
