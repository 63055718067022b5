"""Launch stores: Redis when several processes or hosts serve the app, files on local disk otherwise
(:class:`smart_app.smart.launch.LaunchStore`; docs/architecture.md#launch-and-tokens).

Both keep a launch for ``ttl`` seconds after its last save and give a lock per launch that every sharer
of the store honours: a Redis lock (``SET NX`` with expiry) or an exclusive ``flock`` on a file.
Writes replace the whole record at once, so a reader never sees half a launch.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from smart_app import fhirjson as fj
from smart_app.smart.errors import SmartError
from smart_app.smart.launch import Launch

_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
#: How long one refresh may hold the lock before another sharer may take it over.
LOCK_SECONDS = 30.0
#: How long a sharer waits for the lock before giving up (the refresh it waits for has a 15 s budget).
WAIT_SECONDS = 20.0


class StoreError(SmartError):
    """The launch is busy: another request's token refresh did not finish in time."""

    error = "launch_busy"
    status = 503
    description = "The app is renewing its access to the EHR. Try again in a moment."


def _valid(launch_id: str) -> bool:
    return bool(_ID.match(launch_id))


def _decode(raw: bytes | None) -> Launch | None:
    if not raw:
        return None
    try:
        data = fj.decode_json(raw)
    except fj.JsonInputError:
        return None
    return Launch.from_dict(data) if isinstance(data, dict) else None


def _encode(launch: Launch) -> bytes:
    import orjson

    return orjson.dumps(launch.to_dict())


class FileLaunchStore:
    """One JSON file per launch in ``directory`` (mode 0600), expired ``ttl`` seconds after its last save."""

    def __init__(self, directory: str | Path, ttl: float) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.ttl = ttl

    def _path(self, launch_id: str, suffix: str = ".json") -> Path:
        return self.directory / f"{launch_id}{suffix}"

    def load(self, launch_id: str) -> Launch | None:
        if not _valid(launch_id):
            return None
        path = self._path(launch_id)
        try:
            if time.time() - path.stat().st_mtime > self.ttl:
                self.forget(launch_id)
                return None
            return _decode(path.read_bytes())
        except OSError:
            return None

    def save(self, launch: Launch) -> None:
        if not _valid(launch.id):
            raise ValueError("not a launch id")
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".launch-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(_encode(launch))
            os.chmod(tmp, 0o600)
            os.replace(tmp, self._path(launch.id))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def forget(self, launch_id: str) -> None:
        if _valid(launch_id):
            for suffix in (".json", ".lock"):
                with contextlib.suppress(OSError):
                    self._path(launch_id, suffix).unlink()

    @contextlib.contextmanager
    def lock(self, launch_id: str) -> Iterator[None]:
        if not _valid(launch_id):
            raise ValueError("not a launch id")
        fd = os.open(self._path(launch_id, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + WAIT_SECONDS
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StoreError() from None
                    time.sleep(0.02)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


class RedisLaunchStore:
    """One Redis key per launch (``<prefix>launch:<id>``) expiring ``ttl`` seconds after its last save."""

    def __init__(self, client: Any, ttl: float, prefix: str = "back-mice:") -> None:
        self.redis = client
        self.ttl = max(1, int(ttl))
        self.prefix = prefix

    def _key(self, launch_id: str) -> str:
        return f"{self.prefix}launch:{launch_id}"

    def load(self, launch_id: str) -> Launch | None:
        if not _valid(launch_id):
            return None
        return _decode(self.redis.get(self._key(launch_id)))

    def save(self, launch: Launch) -> None:
        if not _valid(launch.id):
            raise ValueError("not a launch id")
        self.redis.set(self._key(launch.id), _encode(launch), ex=self.ttl)

    def forget(self, launch_id: str) -> None:
        if _valid(launch_id):
            self.redis.delete(self._key(launch_id))

    @contextlib.contextmanager
    def lock(self, launch_id: str) -> Iterator[None]:
        if not _valid(launch_id):
            raise ValueError("not a launch id")
        lock = self.redis.lock(
            f"{self._key(launch_id)}:lock", timeout=LOCK_SECONDS, blocking_timeout=WAIT_SECONDS
        )
        if not lock.acquire():
            raise StoreError()
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                lock.release()
