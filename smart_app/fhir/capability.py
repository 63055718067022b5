"""Whether a FHIR server takes batch Bundles, from its CapabilityStatement (FHIR R4
capabilitystatement.html: ``rest.interaction.code`` ``batch``, the system interaction of
http.html#transaction), read once per FHIR base and process and kept :data:`KEEP_SECONDS`.

A statement that cannot be read says nothing: the reads are then sent one by one, and the statement is
asked for again after :data:`RETRY_SECONDS`. A batch the server then fails (an error status, an answer
that is not a batch-response, too slow or too large, no answer) counts as not offered for as long,
whatever the statement says (:func:`batch_failed`): reading one by one loses nothing but round trips,
and every launch would otherwise pay for the failed batch first. Only a refused access token says
nothing of batches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from smart_app.fhir.client import FhirClient
from smart_app.fhir.errors import FhirError, FhirUnauthorized

logger = logging.getLogger("smart_app.fhir")

#: How long what a CapabilityStatement says is kept.
KEEP_SECONDS = 3600.0
#: How long an unreadable statement, or a failed batch, keeps a server's reads one by one.
RETRY_SECONDS = 300.0

_known: dict[str, tuple[bool, float]] = {}  # FHIR base → (batch offered, until when, monotonic)
_lock = threading.Lock()


def offers_batch(statement: Mapping[str, Any]) -> bool:
    """Whether a CapabilityStatement lists the ``batch`` interaction of a server ``rest`` entry."""
    rests = statement.get("rest")
    for rest in rests if isinstance(rests, list) else []:
        if not isinstance(rest, Mapping) or rest.get("mode", "server") != "server":
            continue
        interactions = rest.get("interaction")
        for interaction in interactions if isinstance(interactions, list) else []:
            if isinstance(interaction, Mapping) and interaction.get("code") == "batch":
                return True
    return False


def batch_offered(client: FhirClient, clock: Callable[[], float] = time.monotonic) -> bool:
    """Whether ``client``'s server takes batch Bundles, asking for its CapabilityStatement (``GET
    [base]/metadata``, within the client's budget) when not known."""
    now = clock()
    with _lock:
        known = _known.get(client.base_url)
    if known is not None and now < known[1]:
        return known[0]
    try:
        offered = offers_batch(client.capabilities())
    except FhirError as exc:
        logger.info("FHIR metadata not read (%s); reads are sent one by one", exc.message)
        _remember(client.base_url, False, now + RETRY_SECONDS)
        return False
    _remember(client.base_url, offered, now + KEEP_SECONDS)
    return offered


def batch_failed(base_url: str, error: FhirError, clock: Callable[[], float] = time.monotonic) -> None:
    """Note that a batch sent to ``base_url`` failed with ``error``: unless the access token was refused,
    the server's reads go one by one for :data:`RETRY_SECONDS`."""
    if not isinstance(error, FhirUnauthorized):
        _remember(base_url, False, clock() + RETRY_SECONDS)


def forget() -> None:
    """Forget every server (for tests and settings reloads)."""
    with _lock:
        _known.clear()


def _remember(base_url: str, offered: bool, until: float) -> None:
    with _lock:
        _known[base_url] = (offered, until)
