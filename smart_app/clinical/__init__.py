"""Clinical core: read a patient's FHIR record, evaluate the versioned back-mice criteria, explain.

Pure domain code (docs/clinical-criteria.md; docs/architecture.md#clinical-core): no Flask, no HTTP, no
imports from ``smart_app.web`` or ``smart_app.fhir``.
"""

from __future__ import annotations

from smart_app.clinical.assessment import Assessment
from smart_app.clinical.criteria import CriteriaError, CriteriaRegistry, default_registry, load_registry
from smart_app.clinical.engine import assess, assess_bundle, criteria_for
from smart_app.clinical.record import PatientRecord, UnusableInput, load_bundle

__all__ = [
    "Assessment",
    "CriteriaError",
    "CriteriaRegistry",
    "PatientRecord",
    "UnusableInput",
    "assess",
    "assess_bundle",
    "criteria_for",
    "default_registry",
    "load_bundle",
    "load_registry",
]
