"""One hook call, from the checked request to the response (CDS Hooks 2.0 "CDS Service Response";
docs/cds-hooks.md).

The record is the prefetch, completed over FHIR with the ``fhirAuthorization`` given when a type is
missing (:func:`smart_app.pipeline.assess_prefetched`, which reads as a launch does, on ``fhirServer``
only and only when that server is registered for the client). When a type the criteria cannot do
without is neither prefetched nor readable the answer is 412. The access token lives in the FHIR client
of this call and goes with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from smart_app import pipeline
from smart_app.cds.actions import suggestion_actions
from smart_app.cds.cards import (
    CardContext,
    back_mouse_orders,
    order_sign_cards,
    patient_view_cards,
    suggested_codes,
)
from smart_app.cds.clients import CdsClient
from smart_app.cds.discovery import Service
from smart_app.cds.errors import precondition_failed
from smart_app.cds.prefetch import REQUIRED_TYPES, read_prefetch
from smart_app.cds.request import CLINICIAN_TYPES, FhirAuthorization, HookRequest
from smart_app.clinical.engine import criteria_for
from smart_app.drafts.build import DraftingError, build_transaction
from smart_app.fhir.client import FhirClient
from smart_app.fhir.errors import FhirUnauthorized
from smart_app.fhir.record import DEFAULT_PAGE_SIZE, FetchResult
from smart_app.smart.scopes import ScopeSet

log = logging.getLogger("smart_app.cds")


@dataclass(frozen=True)
class Settings:
    """The app's settings a hook call uses: its public URL (the SMART link) and the FHIR read budgets
    of a launch (``FHIR_TIMEOUT``, ``FHIR_MAX_RETRIES``, ``FHIR_PAGE_SIZE``)."""

    public_url: str
    fhir_timeout: tuple[float, float] = (3.05, 30.0)
    fhir_max_retries: int = 3
    page_size: int = DEFAULT_PAGE_SIZE
    criteria_version: str | None = None

    @property
    def launch_url(self) -> str:
        """The app's SMART launch URL, the ``url`` of the cards' ``smart`` links."""
        return f"{self.public_url.rstrip('/')}/launch"


@dataclass
class Answer:
    """The response body and the fields of its audit event."""

    body: dict[str, Any]
    audit: dict[str, Any]


def answer_hook(
    service: Service,
    request: HookRequest,
    client: CdsClient,
    settings: Settings,
    *,
    as_of: datetime | None = None,
) -> Answer:
    """Evaluate the criteria for ``request`` and answer with the cards of ``service``'s rules. Raises
    ``CdsError`` 412 when the record cannot be had."""
    as_of = as_of or pipeline.now()
    ctx = CardContext(service.id, request.hook_instance, settings.launch_url)
    audit: dict[str, Any] = {
        "service": service.id,
        "hook_instance": request.hook_instance,
        "registration": client.id,
        "patient": request.patient_id,
    }
    if request.user_type not in CLINICIAN_TYPES:
        return Answer({"cards": []}, {**audit, "outcome": "not-a-clinician"})
    criteria = criteria_for(settings.criteria_version)
    orders = []
    if service.hook == "order-sign":
        orders = back_mouse_orders(request.draft_orders, suggested_codes(criteria), request.patient_id)
        if not orders:
            return Answer({"cards": []}, {**audit, "outcome": "no-back-mouse-order"})

    assessment, fetched = _assess(request, client, settings, as_of)
    if assessment is None:
        raise precondition_failed("The Patient of context.patientId could not be read.")
    if service.hook == "order-sign":
        cards = order_sign_cards(assessment, orders, ctx)
    else:
        cards = patient_view_cards(
            assessment, ctx, lambda: _draft_actions(assessment, request, client, as_of)
        )
    audit.update(
        outcome="answered",
        classification=assessment["classification"],
        criteria=f"{assessment['criteria']['url']}|{assessment['criteria']['version']}",
        cards=[card["uuid"] for card in cards],
        counts=fetched.counts,
        round_trips=fetched.round_trips,
    )
    return Answer({"cards": cards}, audit)


def _assess(
    request: HookRequest, client: CdsClient, settings: Settings, as_of: datetime
) -> tuple[dict[str, Any] | None, FetchResult]:
    prefetched = read_prefetch(request.prefetch, request.patient_id)
    missing = prefetched.unsupplied
    auth = request.fhir_authorization
    if missing and auth is not None and request.fhir_server and client.may_read(request.fhir_server):
        readable = _readable(auth.scope)
        needed = [t for t in REQUIRED_TYPES if t in missing and not readable(t)]
        if not needed:
            return _read_missing(request, auth, prefetched.fetch, list(missing), settings, as_of)
        why = "and the fhirAuthorization scope does not allow reading them"
    else:
        needed = [t for t in REQUIRED_TYPES if t in missing]
        if auth is None:
            why = "and no fhirAuthorization was given to read them"
        else:
            why = "and fhirServer is not a FHIR server registered for this CDS client"
    if needed:
        raise precondition_failed(f"{', '.join(needed)} not prefetched ({missing[needed[0]]}) {why}.")
    return pipeline.assess_prefetched(
        request.patient_id,
        prefetched.unavailable_without_access(),
        as_of=as_of,
        criteria_version=settings.criteria_version,
    )


def _read_missing(
    request: HookRequest,
    auth: FhirAuthorization,
    prefetched: FetchResult,
    missing: list[str],
    settings: Settings,
    as_of: datetime,
) -> tuple[dict[str, Any] | None, FetchResult]:
    assert request.fhir_server is not None
    with FhirClient(
        request.fhir_server,
        token=auth.access_token,
        timeout=settings.fhir_timeout,
        max_retries=settings.fhir_max_retries,
    ) as fhir:
        try:
            return pipeline.assess_prefetched(
                request.patient_id,
                prefetched,
                as_of=as_of,
                read=missing,
                client=fhir,
                readable=_readable(auth.scope),
                criteria_version=settings.criteria_version,
                page_size=settings.page_size,
            )
        except FhirUnauthorized:
            raise precondition_failed("The FHIR server refused the fhirAuthorization access token.") from None


def _readable(scope: ScopeSet) -> Callable[[str], bool]:
    """What the token may read, as a launch reads: the Patient by id, the other types by search."""

    def readable(resource_type: str) -> bool:
        return (
            scope.can_read(resource_type) if resource_type == "Patient" else scope.can_search(resource_type)
        )

    return readable


def _draft_actions(
    assessment: dict[str, Any], request: HookRequest, client: CdsClient, as_of: datetime
) -> list[dict[str, Any]] | None:
    """The write-back drafts as suggestion actions, with the user in context as author."""
    try:
        drafts = build_transaction(
            assessment,
            author=request.user_id,
            encounter=f"Encounter/{request.encounter_id}" if request.encounter_id else None,
            recorded=as_of,
            assessment_as=client.assessment_as,
        )
        return suggestion_actions(drafts)
    except DraftingError as exc:
        log.error("CDS suggestion not offered: %s", exc)
        return None
