"""Opening the app's audit page in a new tab, for the user of a launch (docs/auditors.md#the-audit-page).

Inside the EHR the app runs in a cross-site iframe, so its session cookie is partitioned (CHIPS) under the
EHR's site: a new tab, a top-level page of the app's own site, does not carry it. The audit page in the
frame therefore offers a link with a *ticket*, protected so:

- a ticket is 256 random bits (``secrets.token_urlsafe(32)``); the server stores only its SHA-256, with
  the launch id, the patient, what it opens (the audit page only) and its expiry, ``AUDIT_HANDOFF_SECONDS``
  after it was made (default 120 s): a stolen store holds no usable ticket;
- it is used once: the first request for it takes it out of the store atomically (Redis ``GETDEL``, or
  ``GET`` and ``DEL`` in one transaction before Redis 6.2; a file renamed away, which only one request can
  do), so a second use, or a use after expiry, finds nothing;
- the answer to that first request starts a fresh session of the app's own site (a new session id) that
  names the launch for the audit pages and the app's view of what it wrote only (no review, exam or
  write), and redirects (303) to the audit page without the ticket, so the URL left in the tab, its
  history and its bookmarks hold none; the app sends no ``Referer`` (``Referrer-Policy: no-referrer``) and
  its access log omits query strings (``smart_app.serve``);
- the ticket carries no token: the EHR's tokens stay in the launch store on the server, and the new
  session ends with the launch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import orjson
from flask import Flask, current_app, g, render_template, session
from flask.typing import ResponseReturnValue

from smart_app import fhirjson as fj
from smart_app.smart.launch import Launch
from smart_app.web.session import LAUNCH_KEY, current_launch, launch_store

P = ParamSpec("P")
R = TypeVar("R")

#: Session key of the launch a hand-off session may audit (never ``launch_id``: it opens nothing else).
AUDIT_LAUNCH_KEY = "audit_launch"
#: What a ticket opens.
AUDIT = "audit"
DEFAULT_SECONDS = 120.0
_EXTENSION = "smart_app.handoff"


def _digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode("utf-8")).hexdigest()


class TicketStore:
    """Single-use tickets: Redis keys with expiry, else files (mode 0600) in ``directory``."""

    def __init__(self, redis: Any = None, directory: Path | None = None, prefix: str = "back-mice:") -> None:
        self.redis = redis
        self.directory = directory
        self.prefix = prefix
        if directory is not None:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def put(self, ticket: str, data: dict[str, Any], seconds: float) -> None:
        expires = time.time() + seconds
        record = orjson.dumps({**data, "expires": expires})
        if self.redis is not None:
            self.redis.set(f"{self.prefix}handoff:{_digest(ticket)}", record, ex=max(1, int(seconds)))
            return
        assert self.directory is not None
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".ticket-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(record)
            os.chmod(tmp, 0o600)
            os.utime(tmp, (expires, expires))  # a file's expiry is its modification time
            os.replace(tmp, self.directory / _digest(ticket))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def take(self, ticket: str) -> dict[str, Any] | None:
        """The ticket's data, removed from the store; ``None`` when it was never made, already used, or
        has expired."""
        if not ticket or len(ticket) > 128:
            return None
        raw: bytes | None
        if self.redis is not None:
            from redis.exceptions import ResponseError

            key = f"{self.prefix}handoff:{_digest(ticket)}"
            try:
                raw = self.redis.getdel(key)
            except ResponseError:  # a Redis before 6.2 has no GETDEL: GET and DEL in one MULTI/EXEC
                with self.redis.pipeline(transaction=True) as both:
                    both.get(key)
                    both.delete(key)
                    raw = both.execute()[0]
        else:
            assert self.directory is not None
            taken = self.directory / f".taken-{secrets.token_hex(8)}"
            try:
                os.rename(self.directory / _digest(ticket), taken)
            except OSError:
                return None
            try:
                raw = taken.read_bytes()
            finally:
                with contextlib.suppress(OSError):
                    taken.unlink()
        if not raw:
            return None
        try:
            data = fj.decode_json(raw, max_bytes=4096)
        except fj.JsonInputError:
            return None
        if not isinstance(data, dict) or float(data.get("expires") or 0) < time.time():
            return None
        return data

    def sweep(self, now: float | None = None) -> int:
        """Remove the ticket files past their expiry (Redis expires its keys itself); how many."""
        if self.directory is None:
            return 0
        moment = time.time() if now is None else now
        removed = 0
        for entry in os.scandir(self.directory):
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime <= moment:
                    os.unlink(entry.path)
                    removed += 1
        return removed


def ticket_seconds(app: Flask | None = None) -> float:
    target = app or current_app
    return float(target.config.get("AUDIT_HANDOFF_SECONDS", DEFAULT_SECONDS))


def ticket_store(app: Flask | None = None) -> TicketStore:
    """The app's ticket store, beside its sessions: Redis when configured, else the instance folder."""
    target: Flask = app or current_app._get_current_object()  # type: ignore[attr-defined]
    store = target.extensions.get(_EXTENSION)
    if store is None:
        redis = target.config.get("SESSION_REDIS")
        directory = None if redis is not None else Path(target.instance_path) / "handoff"
        store = target.extensions.setdefault(_EXTENSION, TicketStore(redis, directory))
    assert isinstance(store, TicketStore)
    return store


def make_ticket(launch: Launch) -> str:
    """A new single-use ticket that opens the audit page of ``launch``'s patient in a new tab."""
    ticket = secrets.token_urlsafe(32)
    ticket_store().put(
        ticket, {"launch": launch.id, "patient": launch.patient, "opens": AUDIT}, ticket_seconds()
    )
    return ticket


def use_ticket(ticket: str) -> Launch | None:
    """Redeem ``ticket``: bind a fresh session of this browsing context to its launch, for the audit
    pages only; the launch, or ``None`` when the ticket is unknown, used or expired, or its launch ended."""
    data = ticket_store().take(ticket)
    if data is None or data.get("opens") != AUDIT or not isinstance(data.get("launch"), str):
        return None
    launch = launch_store().load(data["launch"])
    if launch is None:
        return None
    session.clear()
    regenerate = getattr(current_app.session_interface, "regenerate", None)
    if callable(regenerate):
        regenerate(session)
    session[AUDIT_LAUNCH_KEY] = launch.id
    g.launch = launch
    return launch


def audit_launch() -> Launch | None:
    """The launch whose writes this browser may audit: the launch of its session, or the one a
    hand-off session was bound to (made the request's launch, so ``get_fhir`` reads with its token)."""
    launch = current_launch()
    if launch is not None:
        return launch
    launch_id = session.get(AUDIT_LAUNCH_KEY)
    if not isinstance(launch_id, str):
        return None
    launch = launch_store().load(launch_id)
    g.launch = launch
    return launch


def in_hand_off() -> bool:
    """Whether this request comes from a hand-off session (a new tab), not from the launched frame."""
    return not isinstance(session.get(LAUNCH_KEY), str) and isinstance(session.get(AUDIT_LAUNCH_KEY), str)


def audit_launch_required(view: Callable[P, R]) -> Callable[P, R | ResponseReturnValue]:
    """Views behind this need a launch, or a hand-off session bound to one (the audit pages and the
    app's view of what it wrote); without either they answer "Launch this app from your EHR"."""

    @functools.wraps(view)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R | ResponseReturnValue:
        if audit_launch() is None:
            return render_template("launch_required.html"), 401
        return view(*args, **kwargs)

    return wrapped
