"""Local append-only audit log of the app's own actions, as JSON lines (docs/auditors.md).

One line per event: ``{"ts": ..., "kind": ..., ...fields}``. Kinds used by the app: ``launch``, ``read``
(resource type and count), ``write`` (its ``outcome``: written, partly-written, refused, not-written or
unknown; the ``created``, ``matched`` and ``found`` references, the ``missing`` and ``unknown`` resource
types, the HTTP ``status`` of a refusal), ``error``, ``audit``. The ``user`` is the ``fhirUser``
reference, relative or absolute. Only allow-listed fields are
written, and each is checked for shape, so the log holds resource ids but no names, values, narratives,
tokens, codes or secrets: a value that does not fit its field's shape is replaced by ``"[dropped]"``.
Rotated by size (``logging.handlers.RotatingFileHandler``).

Settings: ``AUDIT_LOG_PATH`` (``None``/unset: ``<instance>/audit.jsonl``), ``AUDIT_LOG_MAX_BYTES`` (default
5 MB), ``AUDIT_LOG_BACKUPS`` (default 10 rotated files). Set ``AUDIT_LOG_PATH`` to ``""`` to turn it off.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import re
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

EXTENSION_KEY = "smart_app.auditlog"
DEFAULT_MAX_BYTES = 5 * 1024 * 1024
DEFAULT_BACKUPS = 10
DROPPED = "[dropped]"

_REF = re.compile(r"^[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}(/_history/[A-Za-z0-9\-.]{1,64})?$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_CODE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
_URL = re.compile(r"^https?://[A-Za-z0-9\-.]+(:\d{1,5})?(/[A-Za-z0-9\-._~/]*)?$")
_SCOPE = re.compile(r"^[A-Za-z0-9_.:/*?=&\- ]{0,2000}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_CANONICAL = re.compile(r"^https?://[A-Za-z0-9\-.]+(/[A-Za-z0-9\-._~/]*)?(\|[A-Za-z0-9.\-]{1,32})?$")


def _ref(value: Any) -> Any:
    return value if isinstance(value, str) and _REF.match(value) else DROPPED


def _user(value: Any) -> Any:
    """A ``fhirUser`` (SMART App Launch 2.x "fhirUser"): a relative reference or the absolute URL of one
    (``https://ehr.example/fhir/Practitioner/123``), never a name, query or token."""
    if not isinstance(value, str):
        return DROPPED
    if _REF.match(value):
        return value
    base, _, tail = value.rpartition("/")
    head, _, kind = base.rpartition("/")
    if _URL.match(value) and _REF.match(f"{kind}/{tail}") and head and len(value) <= 300:
        return value
    return DROPPED


def _rtypes(value: Any) -> Any:
    if not isinstance(value, list | tuple):
        return DROPPED
    return [_rtype(v) for v in value][:100]


def _refs(value: Any) -> Any:
    if not isinstance(value, list | tuple):
        return DROPPED
    return [_ref(v) for v in value][:500]


def _id_or_ref(value: Any) -> Any:
    return value if isinstance(value, str) and (_ID.match(value) or _REF.match(value)) else DROPPED


def _rtype(value: Any) -> Any:
    return value if isinstance(value, str) and _TYPE.match(value) else DROPPED


def _count(value: Any) -> Any:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else DROPPED


def _counts(value: Any) -> Any:
    if not isinstance(value, Mapping):
        return DROPPED
    return {str(k): _count(v) for k, v in value.items() if isinstance(k, str) and _TYPE.match(k)}


def _code(value: Any) -> Any:
    return value if isinstance(value, str) and _CODE.match(value) else DROPPED


def _status(value: Any) -> Any:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1000 else DROPPED


def _url(value: Any) -> Any:
    return value if isinstance(value, str) and _URL.match(value) else DROPPED


def _scope(value: Any) -> Any:
    return value if isinstance(value, str) and _SCOPE.match(value) else DROPPED


def _canonical(value: Any) -> Any:
    return value if isinstance(value, str) and _CANONICAL.match(value) else DROPPED


def _uuid(value: Any) -> Any:
    return value if isinstance(value, str) and _UUID.match(value) else DROPPED


def _uuids(value: Any) -> Any:
    return [_uuid(v) for v in value][:100] if isinstance(value, list | tuple) else DROPPED


def _flag(value: Any) -> Any:
    return value if isinstance(value, bool) else DROPPED


#: The only fields an event may carry, each with the shape it must have. Free text (OperationOutcome
#: diagnostics, exception messages) is deliberately absent: it can quote patient data.
FIELDS: dict[str, Callable[[Any], Any]] = {
    "patient": _id_or_ref,
    "user": _user,
    "encounter": _id_or_ref,
    "iss": _url,
    "fhir_base": _url,
    "registration": _code,
    "client_id": _code,
    "scope": _scope,
    "resource_type": _rtype,
    "count": _count,
    "counts": _counts,
    "reference": _ref,
    "references": _refs,
    "ids": _refs,
    "created": _refs,
    "matched": _refs,
    "found": _refs,
    "missing": _rtypes,
    "unknown": _rtypes,
    "mode": _code,
    "status": _status,
    "outcome": _code,
    "error": _code,
    "where": _code,
    "criteria": _canonical,
    "classification": _code,
    "findings": _count,
    "reproduced": _flag,
    "round_trips": _count,
    "duration_ms": _count,
    "command": _code,
    # CDS Hooks (docs/cds-hooks.md#audit): the service, the hook call, its cards, feedback on them
    "service": _code,
    "hook_instance": _uuid,
    "cards": _uuids,
    "card": _uuid,
    "suggestions": _uuids,
    "override_reason": _code,
}


def sanitise(kind: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The line written for an event: timestamp, kind, and the allow-listed fields in their shapes.

    Unknown field names are not written; their names (code identifiers, never values) are listed under
    ``dropped_fields`` so a caller's mistake is visible.
    """
    line: dict[str, Any] = {
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "kind": _code(kind),
    }
    dropped: list[str] = []
    for name, value in fields.items():
        check = FIELDS.get(name)
        if check is None:
            dropped.append(name if _CODE.match(name) else DROPPED)
            continue
        if value is not None:
            line[name] = check(value)
    if dropped:
        line["dropped_fields"] = sorted(set(dropped))
    return line


class AuditLog:
    """A JSON-lines writer over a size-rotated file; safe across threads of one process (several
    processes sharing one file should each get their own ``AUDIT_LOG_PATH``, since size rotation is not
    coordinated between processes)."""

    def __init__(
        self, path: str, *, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS
    ) -> None:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True
        )
        self._handler.setFormatter(logging.Formatter("%(message)s"))

    def write(self, kind: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        line = sanitise(kind, fields)
        record = logging.LogRecord(
            "smart_app.auditlog",
            logging.INFO,
            __file__,
            0,
            json.dumps(line, sort_keys=True, separators=(",", ":")),
            None,
            None,
        )
        with self._lock:
            self._handler.handle(record)
            # Closed after every line: no descriptor outlives the event, and an external logrotate
            # (or another process's rotation) is picked up on the next write.
            self._handler.close()
        return line

    def close(self) -> None:
        with self._lock:
            self._handler.close()


_default: AuditLog | None = None


def configure(
    path: str | None, *, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS
) -> None:
    """Set the log used outside a Flask app context (the CLI); ``None`` or ``""`` turns it off."""
    global _default
    if _default is not None:
        _default.close()
    _default = AuditLog(path, max_bytes=max_bytes, backups=backups) if path else None


def init_app(app: Flask) -> None:
    """Open the app's audit log from its config (``AUDIT_LOG_PATH``, ``AUDIT_LOG_MAX_BYTES``,
    ``AUDIT_LOG_BACKUPS``) and keep it in ``app.extensions`` (the web layer resolves it per request)."""
    path = app.config.get("AUDIT_LOG_PATH")
    if path is None:
        path = os.path.join(app.instance_path, "audit.jsonl")
    if not path:
        app.extensions[EXTENSION_KEY] = None
        return
    app.extensions[EXTENSION_KEY] = AuditLog(
        str(path),
        max_bytes=int(app.config.get("AUDIT_LOG_MAX_BYTES", DEFAULT_MAX_BYTES)),
        backups=int(app.config.get("AUDIT_LOG_BACKUPS", DEFAULT_BACKUPS)),
    )


#: How the running web app names its own log (set by ``smart_app.web``); returns ``False`` outside an app.
_app_log: Callable[[], AuditLog | None | bool] = lambda: False  # noqa: E731


def use_app_log(resolver: Callable[[], AuditLog | None | bool]) -> None:
    """Let the web layer say which log the current request writes to (``None``: logging off; ``False``:
    no app is handling a request, so the command line's log is used)."""
    global _app_log
    _app_log = resolver


def _current() -> AuditLog | None:
    log = _app_log()
    return _default if log is False else log  # type: ignore[return-value]


def audit_event(kind: str, **fields: Any) -> dict[str, Any] | None:
    """Append one event, e.g. ``audit_event("read", resource_type="Observation", count=12, patient="p1")``.

    Returns the line written (``None`` when no log is configured). Never raises on an I/O failure:
    the failure goes to the ``smart_app.auditlog`` logger instead, so an audit problem cannot break a
    clinical workflow.
    """
    log = _current()
    if log is None:
        return None
    try:
        return log.write(kind, fields)
    except OSError as exc:
        logging.getLogger("smart_app.auditlog").error("audit log write failed: %s", exc.strerror)
        return None
