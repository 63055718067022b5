"""The Assessment: what the criteria concluded, why, and from which resources
(docs/clinical-criteria.md#assessment-output)."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

TYPE_CHECKING = False  # true for type checkers only: see smart_app/__init__.py
if TYPE_CHECKING:
    from typing import Any


@dataclass(frozen=True)
class Assessment:
    """Result of ``assess``. ``to_json()`` is the contract the CLI, the review page and the drafts use."""

    classification: str
    next_step: str
    headline: str
    patient: str
    as_of: str
    criteria: dict[str, str]
    findings: dict[str, dict[str, Any]]
    checklist: list[dict[str, Any]]
    red_flags: list[dict[str, Any]]
    differentials: list[dict[str, Any]]
    missing: list[dict[str, str]]
    procedure_suggestion: dict[str, Any] | None
    latest_pain: dict[str, Any] | None
    rationale: list[str]
    #: the written assessment's opening sentence (docs/clinical-criteria.md#what-the-app-writes); the
    #: summary begins with it
    opening: str
    summary: str
    ignored: list[dict[str, str]]
    sources: list[dict[str, str | None]]
    counts: dict[str, int]
    unavailable: list[dict[str, str]] = field(default_factory=list)
    #: evidence that is a preliminary Observation (counted as danger under 1.1.0; the page marks it)
    preliminary_evidence: list[str] = field(default_factory=list)
    trace: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A fresh JSON-ready dict (callers may mutate it); key order and list order are deterministic."""
        fresh: dict[str, Any] = orjson.loads(
            orjson.dumps(
                {
                    "classification": self.classification,
                    "next_step": self.next_step,
                    "headline": self.headline,
                    "patient": self.patient,
                    "as_of": self.as_of,
                    "criteria": self.criteria,
                    "findings": self.findings,
                    "checklist": self.checklist,
                    "red_flags": self.red_flags,
                    "differentials": self.differentials,
                    "missing": self.missing,
                    "procedure_suggestion": self.procedure_suggestion,
                    "latest_pain": self.latest_pain,
                    "rationale": self.rationale,
                    "opening": self.opening,
                    "summary": self.summary,
                    "ignored": self.ignored,
                    "sources": self.sources,
                    "counts": self.counts,
                    "unavailable": self.unavailable,
                    "preliminary_evidence": self.preliminary_evidence,
                }
            )
        )
        return fresh

    @property
    def blocked(self) -> bool:
        return any(f["level"] == "block" for f in self.red_flags)
