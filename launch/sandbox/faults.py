"""Fault injection for tests (config ``FAULTS``, empty by default).

``FAULTS`` maps a target to a fault: a FHIR resource type (``"Observation"``), ``"transaction"``,
``"batch"``, ``"metadata"``, ``"fhir"`` (every FHIR request), ``"token"``, ``"authorize"`` or
``"smart-configuration"``. A fault is ``{"status": 500, "delay": 2.0, "times": 1, "retry_after": 3,
"body": "<html>oops</html>", "after_commit": true}``: ``times`` limits how many requests it hits,
``body`` replaces the OperationOutcome with a non-JSON body, ``after_commit`` (transaction/batch/create)
fails only after the write was stored. A top-level ``"delay": seconds`` slows every FHIR request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Response


@dataclass(frozen=True)
class Fault:
    status: int | None
    delay: float
    retry_after: int | None
    body: str | None
    after_commit: bool


class Faults:
    def __init__(self, config: Mapping[str, Any] | None) -> None:
        self._config: dict[str, Any] = dict(config or {})
        self._hits: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def global_delay(self) -> float:
        value = self._config.get("delay")
        return float(value) if isinstance(value, int | float) else 0.0

    def take(self, targets: Iterable[str], *, after_commit: bool = False) -> Fault | None:
        """The first configured fault among ``targets`` (counting it against ``times``)."""
        for target in targets:
            spec = self._config.get(target)
            if not isinstance(spec, Mapping) or bool(spec.get("after_commit")) != after_commit:
                continue
            with self._lock:
                times = spec.get("times")
                hits = self._hits.get(target, 0)
                if isinstance(times, int) and hits >= times:
                    continue
                self._hits[target] = hits + 1
            status = spec.get("status")
            retry_after = spec.get("retry_after")
            return Fault(
                status=int(status) if status is not None else None,
                delay=float(spec.get("delay", 0.0)),
                retry_after=int(retry_after) if retry_after is not None else None,
                body=str(spec["body"]) if spec.get("body") is not None else None,
                after_commit=after_commit,
            )
        return None

    @staticmethod
    def sleep(seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


def fault_response(fault: Fault) -> Response | None:
    """Sleep for the fault's delay; the error response for the auth endpoints when it has a status."""
    Faults.sleep(fault.delay)
    if fault.status is None:
        return None
    body = fault.body or '{"error": "temporarily_unavailable"}'
    response = Response(body, status=fault.status, mimetype="text/html" if fault.body else "application/json")
    if fault.retry_after is not None:
        response.headers["Retry-After"] = str(fault.retry_after)
    return response
