"""Report types of the auditor tools, and the small readers of the app's labels on a written resource
(docs/auditors.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from smart_app.vocabulary import (
    DRAFT_IDENTIFIER_SYSTEM,
    ENTERED_CODE,
    EXAM_IDENTIFIER_SYSTEM,
    WORKFLOW_CODE,
    WORKFLOW_SYSTEM,
)

#: The kinds of write: the app's drafts of an assessment, or an exam a clinician entered through it.
ASSESSMENT, EXAM = "assessment", "exam"


def _tagged(resource: dict[str, Any], code: str) -> bool:
    return any(
        t.get("system") == WORKFLOW_SYSTEM and t.get("code") == code
        for t in (resource.get("meta") or {}).get("tag") or []
        if isinstance(t, dict)
    )


def has_workflow_tag(resource: dict[str, Any]) -> bool:
    """Whether ``meta.tag`` carries the app's draft workflow tag."""
    return _tagged(resource, WORKFLOW_CODE)


def has_entered_tag(resource: dict[str, Any]) -> bool:
    """Whether ``meta.tag`` says a clinician entered it through the app (the focused exam)."""
    return _tagged(resource, ENTERED_CODE)


def has_app_tag(resource: dict[str, Any]) -> bool:
    """Whether ``meta.tag`` carries either of the app's workflow tags."""
    return has_workflow_tag(resource) or has_entered_tag(resource)


def _identifiers(resource: dict[str, Any], system: str) -> list[str]:
    return [
        str(i.get("value"))
        for i in resource.get("identifier") or []
        if isinstance(i, dict) and i.get("system") == system and i.get("value")
    ]


def draft_identifiers(resource: dict[str, Any]) -> list[str]:
    """Values of the app's deterministic draft identifiers on ``resource``."""
    return _identifiers(resource, DRAFT_IDENTIFIER_SYSTEM)


def exam_identifiers(resource: dict[str, Any]) -> list[str]:
    """Values of the identifiers of an exam Observation entered through the app."""
    return _identifiers(resource, EXAM_IDENTIFIER_SYSTEM)


def app_identifiers(resource: dict[str, Any]) -> list[str]:
    """The app's identifiers on ``resource``, of either kind of write."""
    return draft_identifiers(resource) + exam_identifiers(resource)


def split_canonical(value: str) -> tuple[str, str | None]:
    """``url|version`` → (url, version) (FHIR R4 "canonical" datatype)."""
    url, sep, version = value.partition("|")
    return url, (version or None) if sep else None


@dataclass
class Finding:
    """Something an auditor should look at; ``kind`` values are listed in docs/auditors.md."""

    kind: str
    reference: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "reference": self.reference, "detail": self.detail}


@dataclass
class WrittenResource:
    """One resource of a write as it is now on the server."""

    reference: str
    resource_type: str
    written_version: str | None
    current_version: str | None
    state: str  # draft | signed | entered-in-error | missing
    changed: list[str] = field(default_factory=list)  # elements changed since written (besides status)
    resource: dict[str, Any] | None = None


@dataclass
class Write:
    """One write-back: the resources one Provenance covers (or that share an orphaned assessment)."""

    assessment: str | None
    patient: str | None
    written_at: str | None
    author: str | None
    criteria: dict[str, str | None]
    resources: list[WrittenResource]
    provenance: str | None
    status: str
    provenance_resource: dict[str, Any] | None = None
    sources: list[str] = field(default_factory=list)
    #: ``assessment`` (the app's drafts) or ``exam`` (findings a clinician entered through the app)
    kind: str = ASSESSMENT

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "assessment": self.assessment,
            "patient": self.patient,
            "written_at": self.written_at,
            "author": self.author,
            "criteria": dict(self.criteria),
            "resources": [r.reference for r in self.resources],
            "provenance": self.provenance,
            "status": self.status,
        }


@dataclass
class AuditReport:
    """The ``audit list`` result: ``{"writes": [...], "findings": [...]}``."""

    writes: list[Write]
    findings: list[Finding]

    def to_json(self) -> dict[str, Any]:
        return {
            "writes": [w.to_json() for w in self.writes],
            "findings": [f.to_json() for f in self.findings],
        }


@dataclass
class Difference:
    field: str
    written: Any
    recomputed: Any

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "written": self.written, "recomputed": self.recomputed}


@dataclass
class VerifyReport:
    """The ``audit verify`` result: whether the written conclusion is reproduced, field by field."""

    assessment: str
    reproduced: bool
    differences: list[Difference]
    provenance: str | None = None
    criteria: dict[str, str | None] = field(default_factory=dict)
    evaluated_at: str | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)  # reference, version, status (read/missing)
    notes: list[str] = field(default_factory=list)
    written: dict[str, Any] = field(default_factory=dict)
    recomputed: dict[str, Any] = field(default_factory=dict)
    #: ``assessment`` (re-run of the criteria) or ``exam`` (the findings checked as entered)
    kind: str = ASSESSMENT

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "assessment": self.assessment,
            "reproduced": self.reproduced,
            "differences": [d.to_json() for d in self.differences],
            "provenance": self.provenance,
            "criteria": dict(self.criteria),
            "evaluated_at": self.evaluated_at,
            "sources": list(self.sources),
            "notes": list(self.notes),
        }
