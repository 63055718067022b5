"""The table of resource types the app writes: for each, its role, how it reads to a clinician, and what
its status means to an auditor (docs/auditors.md#what-a-write-looks-like; the exam a clinician enters,
docs/auditors.md#exam).

A new written type is one row here, one builder in :mod:`smart_app.drafts.build` and one profile in the
app's FHIR package; the write scope it needs is its resource type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from smart_app import fhirjson as fj
from smart_app.vocabulary import profile_url

Resource = Mapping[str, Any]


@dataclass(frozen=True)
class WrittenType:
    resource_type: str
    #: what it is in a write: the assessment, the suggestion, a red flag, the provenance, the app itself
    role: str
    #: readable lines for the page that shows the draft before it is written
    summary: Callable[[Resource], list[str]]
    #: draft | signed | recorded | withdrawn | entered-in-error, from the resource's status as it is now
    #: (``recorded``: a finding as the clinician entered it)
    state: Callable[[Resource], str]

    @property
    def profile(self) -> str:
        return profile_url(self.resource_type)


def _notes(res: Resource) -> list[str]:
    return [str(n["text"]) for n in fj.as_list(res.get("note")) if isinstance(n, dict) and n.get("text")]


def _by_status(states: Mapping[str, str]) -> Callable[[Resource], str]:
    return lambda res: states.get(str(res.get("status")), "draft")


def _document_state(res: Resource) -> str:
    if res.get("status") == "entered-in-error" or res.get("docStatus") == "entered-in-error":
        return "entered-in-error"
    if res.get("status") == "superseded":
        return "withdrawn"
    return "signed" if res.get("docStatus") in ("final", "amended") else "draft"


def _service_request_lines(res: Resource) -> list[str]:
    return [
        fj.concept_label(res.get("code")),
        *(f"Body site: {fj.concept_label(s)}" for s in fj.as_list(res.get("bodySite"))),
        f"Status {res.get('status')}, intent {res.get('intent')}",
        *_notes(res),
    ]


def finding_text(res: Resource) -> str:
    """An exam Observation in words: "Subcutaneous nodule: Present, left lumbar region of back"."""
    what = fj.concept_label(res.get("code")) or "Finding"
    quantity = fj.as_dict(res.get("valueQuantity"))
    if quantity is not None:
        value = f"{quantity.get('value')} {quantity.get('unit') or ''}".strip()
    else:
        value = fj.concept_label(res.get("valueCodeableConcept"))
    site = ", ".join(label for label in (fj.concept_label(s) for s in fj.body_sites(res)) if label)
    return f"{what}: {value}" + (f", {site}" if site else "")


def _provenance_lines(res: Resource) -> list[str]:
    targets, entities = fj.as_list(res.get("target")), fj.as_list(res.get("entity"))
    return [f"Who and what produced {len(targets)} draft(s), citing {len(entities)} source(s)"]


WRITTEN: Mapping[str, WrittenType] = {
    t.resource_type: t
    for t in (
        WrittenType(
            "ClinicalImpression",
            "assessment",
            lambda res: [str(res.get("summary") or res.get("description") or ""), *_notes(res)],
            _by_status(
                {"in-progress": "draft", "completed": "signed", "entered-in-error": "entered-in-error"}
            ),
        ),
        WrittenType(
            "DocumentReference",
            "assessment",
            lambda res: [str(res.get("description") or "Assessment note")],
            _document_state,
        ),
        WrittenType(
            "ServiceRequest",
            "suggestion",
            _service_request_lines,
            _by_status(
                {
                    "draft": "draft",
                    "active": "signed",
                    "on-hold": "signed",
                    "completed": "signed",
                    "revoked": "withdrawn",
                    "entered-in-error": "entered-in-error",
                }
            ),
        ),
        WrittenType(
            "DetectedIssue",
            "red-flag",
            lambda res: [
                f"Severity {res.get('severity')}: {res.get('detail') or fj.concept_label(res.get('code'))}"
            ],
            _by_status(
                {
                    "registered": "draft",
                    "preliminary": "draft",
                    "final": "signed",
                    "amended": "signed",
                    "corrected": "signed",
                    "cancelled": "withdrawn",
                    "entered-in-error": "entered-in-error",
                }
            ),
        ),
        WrittenType(
            "Observation",
            "exam",
            lambda res: [finding_text(res)],
            _by_status(
                {
                    "final": "recorded",
                    "amended": "recorded",
                    "corrected": "recorded",
                    "cancelled": "withdrawn",
                    "entered-in-error": "entered-in-error",
                }
            ),
        ),
        WrittenType("Provenance", "provenance", _provenance_lines, lambda res: "draft"),
        WrittenType(
            "Device",
            "app",
            lambda res: ["The app itself, created once if the EHR does not know it yet"],
            lambda res: "draft",
        ),
    )
}
ASSESSMENT_TYPES = tuple(t for t, w in WRITTEN.items() if w.role == "assessment")
#: The clinical drafts of a write (not its Provenance, not the app's Device).
DRAFT_TYPES = tuple(t for t, w in WRITTEN.items() if w.role in ("assessment", "suggestion", "red-flag"))
#: What a clinician enters through the app (the focused exam).
EXAM_TYPES = tuple(t for t, w in WRITTEN.items() if w.role == "exam")


def summary_lines(resource: Resource) -> list[str]:
    """Readable lines for one drafted resource (empty lines dropped)."""
    written = WRITTEN.get(str(resource.get("resourceType")))
    return [line for line in (written.summary(resource) if written else []) if line]


def resource_state(resource: Resource) -> str:
    """draft | signed | withdrawn | entered-in-error for one written resource (R4 status value sets)."""
    written = WRITTEN.get(str(resource.get("resourceType")))
    return written.state(resource) if written else "draft"


def types_in(bundle: Mapping[str, Any]) -> list[str]:
    """The resource types a drafted transaction creates (the write scopes it needs), in Bundle order."""
    found: dict[str, None] = {}
    for entry in fj.as_list(bundle.get("entry")):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and isinstance(resource.get("resourceType"), str):
            found.setdefault(resource["resourceType"], None)
    return list(found)
