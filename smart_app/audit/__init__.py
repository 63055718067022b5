"""Auditor tools (docs/auditors.md): find what the app wrote (``list_writes``), trace it to its evidence,
and reproduce each conclusion (``verify_assessment``). No Flask: the audit page is in ``smart_app.web``."""

from __future__ import annotations

from smart_app.audit.listing import list_writes
from smart_app.audit.model import AuditInputError, AuditReport, Difference, Finding, VerifyReport, Write
from smart_app.audit.source import BundleSource, FhirSource, NotFound, Source
from smart_app.audit.verify import verify_assessment, verify_bundle

__all__ = [
    "AuditInputError",
    "AuditReport",
    "BundleSource",
    "Difference",
    "FhirSource",
    "Finding",
    "NotFound",
    "Source",
    "VerifyReport",
    "Write",
    "list_writes",
    "verify_assessment",
    "verify_bundle",
]
