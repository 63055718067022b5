"""The CDS services and the discovery document (CDS Hooks 2.0 "Discovery": ``GET {baseUrl}/cds-services``).

Two services share the criteria and the prefetch: ``back-mice-patient-view`` (hook ``patient-view``,
when a chart opens) and ``back-mice-order-sign`` (hook ``order-sign``, when orders are about to be
signed). Card rules: docs/cds-hooks.md#cards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smart_app.cds.prefetch import templates


@dataclass(frozen=True)
class Service:
    """One CDS service: ``{baseUrl}/cds-services/{id}`` answers the hook ``hook``."""

    id: str
    hook: str
    title: str
    description: str


PATIENT_VIEW = Service(
    id="back-mice-patient-view",
    hook="patient-view",
    title="Back mice (episacral lipoma) decision support",
    description=(
        "When a chart opens, evaluates the back-mice criteria on the patient's record and shows a card only "
        "when there is something to act on: a red flag beside a recorded nodule (no back-mouse procedure), "
        "a probable or confirmed back mouse with its next step and a draft procedure suggestion, or a "
        "possible one with what to examine. Each card links to the SMART app for the full review."
    ),
)
ORDER_SIGN = Service(
    id="back-mice-order-sign",
    hook="order-sign",
    title="Back-mouse procedure safety check",
    description=(
        "When orders are signed, warns (critical) if an injection or excision of a back-mouse nodule is "
        "ordered while a red flag that blocks it or an objective neurological deficit is recorded."
    ),
)
SERVICES: dict[str, Service] = {s.id: s for s in (PATIENT_VIEW, ORDER_SIGN)}

USAGE_REQUIREMENTS = (
    "Calls must carry a JWT signed by a registered CDS client. The Patient, Observations and Conditions are "
    "required, prefetched or readable with fhirAuthorization (patient/*.rs or user/*.rs scopes) on a "
    "registered fhirServer; Procedures, MedicationStatements and MedicationRequests are optional (without "
    "them the criteria that need them stay unknown)."
)


def discovery_document() -> dict[str, Any]:
    """``{"services": [...]}`` with ``hook``, ``id``, ``title``, ``description``, ``prefetch`` and
    ``usageRequirements`` for each service."""
    prefetch = templates()
    return {
        "services": [
            {
                "hook": service.hook,
                "id": service.id,
                "title": service.title,
                "description": service.description,
                "prefetch": dict(prefetch),
                "usageRequirements": USAGE_REQUIREMENTS,
            }
            for service in SERVICES.values()
        ]
    }
