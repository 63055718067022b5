"""SMART App Launch 2.x "Scopes and Launch Context": parsing v1 and v2 clinical scopes, deciding what a
client is granted, and what a granted scope permits.

v2: ``patient/Observation.rs`` (letters c r u d s, in that order); v1: ``patient/Observation.read``,
``.write``, ``.*``. v1 ``read`` = ``rs``, ``write`` = ``cud``, ``*`` = ``cruds``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

CLINICAL_RE = re.compile(r"^(patient|user|system)/([A-Za-z]+|\*)\.([a-z*]+)$")
V2_ORDER = "cruds"
V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}
#: Scopes without a resource part that the sandbox understands.
NON_CLINICAL = frozenset(
    {
        "openid",
        "fhirUser",
        "profile",
        "launch",
        "launch/patient",
        "launch/encounter",
        "offline_access",
        "online_access",
    }
)

#: FHIR interaction → v2 permission letter.
INTERACTION_LETTER = {
    "create": "c",
    "read": "r",
    "vread": "r",
    "history": "r",
    "update": "u",
    "delete": "d",
    "search": "s",
}


@dataclass(frozen=True)
class ClinicalScope:
    context: str  # patient | user | system
    resource_type: str  # a type or "*"
    permissions: frozenset[str]

    def covers(self, other: ClinicalScope) -> bool:
        return (
            self.context == other.context
            and self.resource_type in ("*", other.resource_type)
            and other.permissions <= self.permissions
        )


def parse_clinical(scope: str) -> ClinicalScope | None:
    """Parse one clinical scope; ``None`` if it is not one (or uses v2 query parameters)."""
    match = CLINICAL_RE.match(scope)
    if not match:
        return None
    context, rtype, perms = match.groups()
    if perms in V1_PERMISSIONS:
        letters = V1_PERMISSIONS[perms]
    else:
        if any(ch not in V2_ORDER for ch in perms) or "".join(sorted(perms, key=V2_ORDER.index)) != perms:
            return None
        if len(set(perms)) != len(perms):
            return None
        letters = perms
    return ClinicalScope(context, rtype, frozenset(letters))


def grant(requested: Iterable[str], allowed: Iterable[str]) -> list[str]:
    """Granted scopes = requested ∩ allowed, where an allowed clinical scope covers any narrower one
    (same context, same or wildcard type, subset of permissions). Order of the request is kept."""
    allowed_list = list(allowed)
    allowed_clinical = [c for c in (parse_clinical(a) for a in allowed_list) if c is not None]
    allowed_plain = {a for a in allowed_list if parse_clinical(a) is None}
    granted: list[str] = []
    for scope in requested:
        if scope in granted:
            continue
        clinical = parse_clinical(scope)
        if clinical is None:
            if scope in allowed_plain and scope in NON_CLINICAL:
                granted.append(scope)
        elif any(a.covers(clinical) for a in allowed_clinical):
            granted.append(scope)
    return granted


class Permissions:
    """What an access token's granted scopes allow for a FHIR interaction."""

    def __init__(self, scopes: Iterable[str]) -> None:
        self.clinical = [c for c in (parse_clinical(s) for s in scopes) if c is not None]

    def contexts_for(self, resource_type: str, interaction: str) -> set[str]:
        letter = INTERACTION_LETTER[interaction]
        return {
            c.context
            for c in self.clinical
            if c.resource_type in ("*", resource_type) and letter in c.permissions
        }
