"""How long the server keeps a browser session, and how this host's files are cleaned
(docs/architecture.md#sessions).

A session holds ids and small state only: the id of its launch, authorization requests in flight, a few
digests and answers, never the record, the assessment or the drafts (``smart_app.web.common``). It is kept
as long as its launch (:func:`smart_app.smart.store.launch_lifetime`), an authorization request in flight
for ``LAUNCH_PENDING_TTL_SECONDS``, at most ``SESSION_LIFETIME_SECONDS``: in Redis as the key's expiry,
in files as cachelib's expiry header.

Without Redis, the session files, the launch files and the hand-off tickets are removed once past their
expiry by :func:`sweep`, which a background thread runs every ``SESSION_SWEEP_SECONDS`` (default 600; 0
turns it off, e.g. when a timer runs ``sweep`` instead) in each process, one process of the host at a time
(an exclusive ``flock``). The request path never scans a directory: the session files are written
with no size threshold, so cachelib never counts or prunes them while a request waits.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import threading
import time
import weakref
from datetime import timedelta
from pathlib import Path
from typing import Any

from cachelib.file import FileSystemCache
from flask import Flask, g, has_request_context

from smart_app.smart.store import FileLaunchStore, launch_lifetime

log = logging.getLogger("smart_app.web")

DEFAULT_SWEEP_SECONDS = 600.0
_LOCK_NAME = ".sweep.lock"


def session_files(directory: str) -> FileSystemCache:
    """Session files in ``directory`` (mode 0600) with no size threshold: cachelib neither counts nor
    prunes them on a write, and :func:`sweep` removes the expired ones off the request path."""
    return FileSystemCache(directory, threshold=0, mode=0o600)


def remove_expired_sessions(directory: Path, now: float) -> int:
    """Remove the session files whose expiry (cachelib's header: 4 bytes, the expiry in Unix seconds, 0
    for never) has passed; how many."""
    removed = 0
    for entry in os.scandir(directory):
        if not entry.is_file() or entry.name.startswith("."):
            continue
        with contextlib.suppress(OSError, struct.error):
            with open(entry.path, "rb") as handle:
                expires = struct.unpack("I", handle.read(4))[0]
            if expires != 0 and expires < now:
                os.unlink(entry.path)
                removed += 1
    return removed


def sweep(app: Flask, now: float | None = None) -> dict[str, int]:
    """Remove this host's expired session files, launches and hand-off tickets (one process at a time;
    another process already sweeping makes this a no-op). How many of each."""
    from smart_app.web.handoff import ticket_store
    from smart_app.web.session import launch_store

    moment = time.time() if now is None else now
    instance = Path(app.instance_path)
    lock = os.open(instance / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return {}
        counts: dict[str, int] = {}
        sessions = app.config.get("SESSION_CACHELIB")
        if isinstance(sessions, FileSystemCache):
            counts["sessions"] = remove_expired_sessions(Path(sessions._path), moment)
        launches = launch_store(app)
        if isinstance(launches, FileLaunchStore):
            counts["launches"] = launches.sweep(moment)
        counts["tickets"] = ticket_store(app).sweep(moment)
        return counts
    finally:
        os.close(lock)


class _Sweeps:
    """One daemon thread per process that runs :func:`sweep` for every app that asked for it, each at
    its own interval (apps are held weakly: an app that is gone is no longer swept)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.due: weakref.WeakKeyDictionary[Flask, tuple[float, float]] = weakref.WeakKeyDictionary()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None

    def add(self, app: Flask, seconds: float) -> None:
        with self.lock:
            self.due[app] = (seconds, time.monotonic() + seconds)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self.run, name="smart-app-sweeper", daemon=True)
                self.thread.start()
        self.wake.set()

    def run(self) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                ready = [app for app, (_, at) in self.due.items() if at <= now]
                for app in ready:
                    self.due[app] = (self.due[app][0], now + self.due[app][0])
                nearest = min((at for _, at in self.due.values()), default=now + DEFAULT_SWEEP_SECONDS)
            for app in ready:
                try:
                    counts = sweep(app)
                except OSError as exc:
                    log.warning("Cleaning expired sessions failed: %s", exc.strerror)
                    continue
                if any(counts.values()):
                    log.info("Removed expired files: %s", counts)
            del ready
            self.wake.wait(max(0.05, nearest - time.monotonic()))
            self.wake.clear()


_SWEEPS = _Sweeps()


def start_sweeper(app: Flask) -> bool:
    """Have ``app``'s expired files swept every ``SESSION_SWEEP_SECONDS`` when it keeps files (no Redis)
    and the setting is above 0; whether it will be."""
    seconds = float(app.config.get("SESSION_SWEEP_SECONDS", DEFAULT_SWEEP_SECONDS))
    if seconds <= 0 or app.config.get("SESSION_REDIS") is not None:
        return False
    _SWEEPS.add(app, seconds)
    return True


def bound_session_lifetime(app: Flask) -> None:
    """Keep each session as long as it is of use: its launch's lifetime, an authorization request's
    (``LAUNCH_PENDING_TTL_SECONDS``) when it has no launch yet, at most ``SESSION_LIFETIME_SECONDS``."""
    interface: Any = app.session_interface
    upsert = getattr(interface, "_upsert_session", None)
    if upsert is None:  # another session backend: it keeps PERMANENT_SESSION_LIFETIME
        return
    maximum = float(app.config["SESSION_LIFETIME_SECONDS"])
    pending = float(app.config.get("LAUNCH_PENDING_TTL_SECONDS", 600))

    def upsert_bounded(session_lifetime: timedelta, session: Any, store_id: str) -> None:
        upsert(timedelta(seconds=session_seconds(session, maximum, pending)), session, store_id)

    interface._upsert_session = upsert_bounded


def session_seconds(session: Any, maximum: float, pending: float) -> float:
    """How long to keep ``session`` from now (see :func:`bound_session_lifetime`)."""
    from smart_app.web.session import LAUNCH_KEY, PENDING_KEY

    launch = g.get("launch") if has_request_context() else None
    if launch is not None:
        return launch_lifetime(launch, maximum)
    if session.get(PENDING_KEY) and not session.get(LAUNCH_KEY):
        return min(maximum, pending)
    return maximum
