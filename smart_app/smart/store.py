"""Launch stores: Redis when several processes or hosts serve the app, files on local disk otherwise
(:class:`smart_app.smart.launch.LaunchStore`; docs/architecture.md#launch-and-tokens).

Both keep a launch as long as it can still be used (:func:`launch_lifetime`: until its access token
expires when it has no refresh token, else at most ``ttl`` seconds after its last save) and give a lock
per launch that every sharer of the store honours: a Redis lock (``SET NX`` with expiry) or an exclusive
``flock`` on a file. Writes replace the whole record at once, so a reader never sees half a launch. Redis
expires its keys itself; the files carry their expiry as their modification time, and
:meth:`FileLaunchStore.sweep` (run on a schedule, never on a request) removes those past it.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
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


#: How long a launch that cannot be renewed is kept after its access token expired: long enough for the
#: page to say that the launch ended, and at which EHR, rather than that there never was one.
ENDED_GRACE_SECONDS = 300.0


def launch_lifetime(launch: Launch, maximum: float, now: float | None = None) -> float:
    """Seconds from ``now`` that ``launch`` is worth keeping: until its access token expires (and
    :data:`ENDED_GRACE_SECONDS`) when there is no refresh token to renew it, else ``maximum`` (SMART App
    Launch 2.x token responses do not say how long a refresh token lives, so a deployment bounds it:
    ``SESSION_LIFETIME_SECONDS``). Never more than ``maximum``; at least one second."""
    moment = time.time() if now is None else now
    life = maximum
    if not launch.refresh_token and launch.expires_at is not None:
        life = min(maximum, launch.expires_at + ENDED_GRACE_SECONDS - moment)
    return max(1.0, life)


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
    """One JSON file per launch in ``directory`` (mode 0600) whose modification time is its expiry
    (:func:`launch_lifetime` after its last save, at most ``ttl`` seconds)."""

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
            if path.stat().st_mtime <= time.time():
                self.forget(launch_id)
                return None
            return _decode(path.read_bytes())
        except OSError:
            return None

    def save(self, launch: Launch) -> None:
        if not _valid(launch.id):
            raise ValueError("not a launch id")
        expires = time.time() + launch_lifetime(launch, self.ttl)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".launch-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(_encode(launch))
            os.chmod(tmp, 0o600)
            os.utime(tmp, (expires, expires))
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

    def sweep(self, now: float | None = None) -> int:
        """Remove every launch past its expiry (with its lock file), and temporary files a crash left
        more than ``ttl`` ago; how many launches. One directory scan: for a schedule, not a request."""
        moment = time.time() if now is None else now
        removed = 0
        for entry in os.scandir(self.directory):
            with contextlib.suppress(OSError):
                name, mtime = entry.name, entry.stat().st_mtime
                if name.endswith(".json") and mtime <= moment:
                    self.forget(name.removesuffix(".json"))
                    removed += 1
                elif name.endswith(".lock") and not self._path(name.removesuffix(".lock")).exists():
                    if mtime <= moment - LOCK_SECONDS:
                        os.unlink(entry.path)
                elif name.startswith(".launch-") and mtime <= moment - self.ttl:
                    os.unlink(entry.path)
        return removed

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
    """One Redis key per launch (``<prefix>launch:<id>``) expiring :func:`launch_lifetime` after its
    last save (at most ``ttl`` seconds)."""

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
        life = math.ceil(launch_lifetime(launch, self.ttl))
        self.redis.set(self._key(launch.id), _encode(launch), ex=life)

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
