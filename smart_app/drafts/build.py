"""The drafts written back to the EHR, as one FHIR R4 transaction Bundle
(docs/auditors.md#what-a-write-looks-like).

From an assessment (``Assessment.to_json()``, docs/clinical-criteria.md#assessment-output) this builds: the
app Device (conditional create on its identifier), the assessment as a ClinicalImpression (status
``in-progress``) or, per EHR registration, a DocumentReference (docStatus ``preliminary``), a ServiceRequest
(status ``draft``, intent ``proposal``) only when there is a procedure suggestion, one DetectedIssue per red
flag, and a Provenance targeting all drafts (:mod:`smart_app.drafts.provenance`).

The conclusion is machine-readable: the ClinicalImpression's ``finding[0].itemCodeableConcept`` has a coding
of the classification CodeSystem (its text stays the headline) and the next-step extension a
``valueCoding`` of the next-step CodeSystem; a DocumentReference carries both as extensions
(fhir_profiles/README.md). The narrative sentence "Classification: …; next step: …." stays for readers.
Resource types the app could not read (the assessment's ``unavailable``) are on the assessment as
unavailable-data complex extensions (``resourceType`` valueCode, ``reason`` valueString) and named in its
narrative, so an auditor re-runs the criteria with the same unknowns. :mod:`smart_app.drafts.readback`
reads all of this back.

Every draft carries ``meta.profile`` (the app's FHIR package), ``meta.security`` AIAST, the workflow tag
``draft-requires-review``, a generated narrative that begins with :data:`DRAFT_BANNER`, and an identifier
derived from patient, criteria URL|version, the draft's role, the versioned sources and (only when there
are some) the unread resource types with their reasons, used in ``request.ifNoneExist`` (R4
http.html#ccreate) so a retry never duplicates. R4 Provenance has no identifier, so its key goes in a
``meta.tag`` of the identifier system and ``ifNoneExist`` searches ``_tag``. fullUrls are ``urn:uuid``
values derived from the identifier, so the Bundle is reproducible apart from ``Provenance.recorded``.

The Bundle is plain JSON, built the same for the review page that shows it and the write that sends it;
base R4 validity is checked before anything leaves the app (:mod:`smart_app.drafts.r4`).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from smart_app import __version__
from smart_app.drafts.provenance import provenance_resource
from smart_app.vocabulary import (
    AIAST,
    CLASSIFICATION_EXTENSION,
    DEVICE_IDENTIFIER_SYSTEM,
    DEVICE_IDENTIFIER_VALUE,
    DRAFT_IDENTIFIER_SYSTEM,
    NEXT_STEP_EXTENSION,
    RED_FLAG_SYSTEM,
    SEVERITY_OF_LEVEL,
    UNAVAILABLE_EXTENSION,
    WORKFLOW_CODE,
    WORKFLOW_DISPLAY,
    WORKFLOW_SYSTEM,
    classifications,
    next_steps,
    profile_url,
)

DRAFT_BANNER = "DRAFT — decision support, requires clinician review"
XHTML_NS = "http://www.w3.org/1999/xhtml"

AssessmentAs = Literal["ClinicalImpression", "DocumentReference"]


class DraftingError(ValueError):
    """The assessment lacks what a draft needs (patient, criteria, as_of)."""


def app_version() -> str:
    """The version of the software that drafts: the Provenance's back-mice-software-version extension
    (per write) and the ``version`` of the Device when this write creates it."""
    return __version__


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def draft_key(
    patient: str,
    criteria: str,
    role: str,
    sources: Iterable[Mapping[str, Any]],
    unavailable: Iterable[Mapping[str, Any]] = (),
) -> str:
    """sha256 (hex) of the canonical JSON of patient, criteria URL|version, draft role and the sorted
    ``[reference, version]`` sources: the same evidence gives the same identifier. Resource types that
    could not be read (``[resource_type, reason]``, sorted) are part of the evidence and enter the
    payload only when there are some, so the key of a complete read is unchanged."""
    pairs = sorted(
        {
            (str(s.get("reference")), None if s.get("version_id") is None else str(s["version_id"]))
            for s in sources
        },
        key=lambda p: (p[0], p[1] or ""),
    )
    payload: dict[str, Any] = {
        "patient": patient,
        "criteria": criteria,
        "role": role,
        "sources": [list(p) for p in pairs],
    }
    unread = unavailable_pairs(unavailable)
    if unread:
        payload["unavailable"] = [list(p) for p in unread]
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def unavailable_pairs(unavailable: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """Distinct ``(resource_type, reason)`` pairs of an assessment's ``unavailable`` list, sorted."""
    return sorted(
        {
            (str(u.get("resource_type")), str(u.get("reason") or ""))
            for u in unavailable
            if isinstance(u, Mapping) and u.get("resource_type")
        }
    )


def unavailable_extensions(unavailable: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One :data:`UNAVAILABLE_EXTENSION` per unread resource type, in type order."""
    out = []
    for resource_type, reason in unavailable_pairs(unavailable):
        parts: list[dict[str, Any]] = [{"url": "resourceType", "valueCode": resource_type}]
        if reason:
            parts.append({"url": "reason", "valueString": reason})
        out.append({"url": UNAVAILABLE_EXTENSION, "extension": parts})
    return out


def unavailable_sentence(unavailable: Iterable[Mapping[str, Any]]) -> str:
    """Narrative sentence naming the data that could not be read (empty when everything was read)."""
    pairs = unavailable_pairs(unavailable)
    if not pairs:
        return ""
    named = "; ".join(f"{t} ({r})" if r else t for t, r in pairs)
    return (
        f"Data that could not be read: {named}. What these types would decide was treated as unknown, "
        "not as absent."
    )


def full_url(system: str, value: str) -> str:
    """``urn:uuid`` fullUrl derived from an identifier (uuid5), so rebuilding gives the same Bundle."""
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{system}|{value}')}"


def iso_instant(moment: datetime) -> str:
    """``moment`` as a FHIR instant in UTC (``...Z``); a naive time is refused."""
    if moment.tzinfo is None:
        raise DraftingError("recorded must be timezone-aware")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def narrative(
    paragraphs: Sequence[str], items: Sequence[str] = (), banner: str | None = DRAFT_BANNER
) -> dict[str, str]:
    """R4 narrative.html: ``generated`` XHTML; every EHR-derived string is escaped."""
    parts = [f'<div xmlns="{XHTML_NS}">']
    if banner:
        parts.append(f"<p><b>{html.escape(banner)}</b></p>")
    parts.extend(f"<p>{html.escape(p)}</p>" for p in paragraphs if p)
    if items:
        parts.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")
    parts.append("</div>")
    return {"status": "generated", "div": "".join(parts)}


def _draft_meta(resource_type: str, extra_tags: Sequence[dict[str, str]] = ()) -> dict[str, Any]:
    return {
        "profile": [profile_url(resource_type)],
        "security": [dict(AIAST)],
        "tag": [{"system": WORKFLOW_SYSTEM, "code": WORKFLOW_CODE, "display": WORKFLOW_DISPLAY}]
        + list(extra_tags),
    }


def _refs(references: Iterable[str]) -> list[dict[str, str]]:
    return [{"reference": r} for r in references]


def _type(reference: str) -> str:
    return reference.split("/", 1)[0]


def _unique(values: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for value in values:
        seen.setdefault(value, None)
    return list(seen)


def criteria_lines(checklist: Iterable[Mapping[str, Any]]) -> tuple[list[str], list[str], list[str]]:
    """Criterion labels met / not met / unknown, from the assessment's ``checklist``."""
    met: list[str] = []
    not_met: list[str] = []
    unknown: list[str] = []
    for row in checklist:
        {"met": met, "not-met": not_met}.get(str(row.get("verdict")), unknown).append(str(row.get("label")))
    return met, not_met, unknown


def basis_text(checklist: Iterable[Mapping[str, Any]], red_flags: Sequence[Mapping[str, Any]]) -> str:
    met, not_met, unknown = criteria_lines(checklist)
    flags = ", ".join(f"{f.get('title') or f.get('id')} ({f.get('level')})" for f in red_flags) or "none"
    return (
        f"Criteria met: {', '.join(met) or 'none'}. Not met: {', '.join(not_met) or 'none'}. "
        f"Unknown: {', '.join(unknown) or 'none'}. Red flags: {flags}."
    )


def device_entry() -> dict[str, Any]:
    """The Bundle entry of the app's Device: a conditional create on its identifier, so the EHR holds one
    Device for the app whatever the number of writes; every Provenance names it as assembler."""
    version = app_version()
    resource = {
        "resourceType": "Device",
        "meta": {"profile": [profile_url("Device")]},
        "text": narrative(
            [f"Back mice decision-support app (SMART on FHIR), version {version}."], banner=None
        ),
        "identifier": [{"system": DEVICE_IDENTIFIER_SYSTEM, "value": DEVICE_IDENTIFIER_VALUE}],
        "status": "active",
        "deviceName": [
            {"name": "Back mice decision support", "type": "user-friendly-name"},
            {"name": DEVICE_IDENTIFIER_VALUE, "type": "model-name"},
        ],
        "type": {"text": "Clinical decision support software"},
        "version": [{"value": version}],
    }
    return {
        "fullUrl": full_url(DEVICE_IDENTIFIER_SYSTEM, DEVICE_IDENTIFIER_VALUE),
        "resource": resource,
        "request": {
            "method": "POST",
            "url": "Device",
            "ifNoneExist": f"identifier={DEVICE_IDENTIFIER_SYSTEM}|{DEVICE_IDENTIFIER_VALUE}",
        },
    }


class _Builder:
    def __init__(
        self,
        assessment: Mapping[str, Any],
        *,
        author: str | None,
        encounter: str | None,
        recorded: datetime,
        assessment_as: AssessmentAs,
    ) -> None:
        patient = assessment.get("patient")
        criteria = assessment.get("criteria") or {}
        as_of = assessment.get("as_of")
        if not isinstance(patient, str) or not patient.startswith("Patient/"):
            raise DraftingError("assessment has no patient reference")
        if not criteria.get("url") or not criteria.get("version"):
            raise DraftingError("assessment has no criteria url and version")
        if not isinstance(as_of, str) or not as_of:
            raise DraftingError("assessment has no as_of")
        if assessment_as not in ("ClinicalImpression", "DocumentReference"):
            raise DraftingError(f"cannot write the assessment as {assessment_as}")
        classification, next_step = assessment.get("classification"), assessment.get("next_step")
        if classification not in classifications():
            raise DraftingError(
                f"assessment classification {classification!r} is not in {classifications().system}"
            )
        if next_step not in next_steps():
            raise DraftingError(f"assessment next_step {next_step!r} is not in {next_steps().system}")
        if not isinstance(assessment.get("checklist"), list):
            raise DraftingError("assessment has no checklist of criteria")
        self.classification = classifications().coding(str(classification))
        self.next_step = next_steps().coding(str(next_step))
        self.checklist: list[Mapping[str, Any]] = [
            r for r in assessment["checklist"] if isinstance(r, Mapping)
        ]
        self.a = assessment
        self.patient = patient
        self.criteria = f"{criteria['url']}|{criteria['version']}"
        self.as_of = as_of
        self.author = author
        self.encounter = encounter
        self.recorded = iso_instant(recorded)
        self.assessment_as = assessment_as
        self.sources: list[Mapping[str, Any]] = [
            s for s in assessment.get("sources") or [] if isinstance(s, Mapping) and s.get("reference")
        ]
        self.source_refs = _unique(str(s["reference"]).split("/_history/", 1)[0] for s in self.sources)
        self.unavailable = unavailable_pairs(assessment.get("unavailable") or [])
        self.device_url = full_url(DEVICE_IDENTIFIER_SYSTEM, DEVICE_IDENTIFIER_VALUE)
        self.entries: list[dict[str, Any]] = []

    # -- identity ---------------------------------------------------------------------------------

    def key(self, role: str) -> str:
        """The draft's key; roles are qualified by the assessment's form, so an EHR that takes a
        DocumentReference gets drafts that point at it rather than at a ClinicalImpression."""
        qualified = role if role == self.assessment_as else f"{self.assessment_as}:{role}"
        unread = [{"resource_type": t, "reason": r} for t, r in self.unavailable]
        return draft_key(self.patient, self.criteria, qualified, self.sources, unread)

    def add(self, resource: dict[str, Any], key: str, *, by_tag: bool = False) -> str:
        url = full_url(DRAFT_IDENTIFIER_SYSTEM, key)
        query = (
            f"_tag={DRAFT_IDENTIFIER_SYSTEM}|{key}"
            if by_tag
            else f"identifier={DRAFT_IDENTIFIER_SYSTEM}|{key}"
        )
        self.entries.append(
            {
                "fullUrl": url,
                "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"], "ifNoneExist": query},
            }
        )
        return url

    def identifier(self, key: str) -> list[dict[str, str]]:
        return [{"system": DRAFT_IDENTIFIER_SYSTEM, "value": key}]

    # -- resources --------------------------------------------------------------------------------

    def device(self) -> None:
        self.entries.append(device_entry())

    def assessment_text(self) -> tuple[list[str], list[str]]:
        """The narrative: the assessment's opening sentence first (from criteria 1.1.0 it states the
        classification; docs/clinical-criteria.md#what-the-app-writes), then the coded conclusion in
        words, the criteria, the basis, the unread types and the rest of the summary. An assessment
        without an opening (written by hand, or by an older app) opens with its headline."""
        a = self.a
        opening = str(a.get("opening") or "")
        summary = str(a.get("summary") or "")
        if opening and summary.startswith(opening):
            summary = summary[len(opening) :].lstrip()
        paragraphs = [
            opening or str(a.get("headline") or ""),
            f"Classification: {a.get('classification')}; next step: {a.get('next_step')}.",
            f"Criteria {self.criteria}, evaluated at {self.as_of}.",
            basis_text(self.checklist, a.get("red_flags") or []),
            unavailable_sentence({"resource_type": t, "reason": r} for t, r in self.unavailable),
            summary,
        ]
        items = [
            f"{row.get('title') or row.get('finding')}: {row.get('status')} — {row.get('reason') or ''}"
            for row in self.checklist
        ]
        items = [item.rstrip(" —") for item in items]
        items += [
            f"Red flag ({f.get('level')}): {f.get('title') or f.get('id')} — {f.get('reason') or ''}"
            for f in a.get("red_flags") or []
        ]
        items += [
            f"Missing: {m.get('what') or m.get('finding')} — {m.get('how') or ''}"
            for m in a.get("missing") or []
        ]
        return paragraphs, items

    def unavailable_extensions(self) -> list[dict[str, Any]]:
        return unavailable_extensions({"resource_type": t, "reason": r} for t, r in self.unavailable)

    def note_text(self) -> str:
        rationale = " ".join(str(r) for r in self.a.get("rationale") or [])
        return f"{DRAFT_BANNER}. Generated by decision support; not a diagnosis. {rationale}".strip()

    def clinical_impression(self) -> str:
        a = self.a
        findings = a.get("findings") or {}
        lbp = [r for r in (findings.get("LBP") or {}).get("evidence") or [] if _type(r) == "Condition"]
        observations = [r for r in self.source_refs if _type(r) == "Observation"]
        flag_refs = [r for f in a.get("red_flags") or [] for r in f.get("evidence") or []]
        supporting = [
            r
            for r in _unique([*self.source_refs, *flag_refs])
            if _type(r) != "Observation" and r not in lbp and r != self.patient
        ]
        paragraphs, items = self.assessment_text()
        key = self.key("ClinicalImpression")
        resource: dict[str, Any] = {
            "resourceType": "ClinicalImpression",
            "meta": _draft_meta("ClinicalImpression"),
            "text": narrative(paragraphs, items),
            "extension": [
                {"url": NEXT_STEP_EXTENSION, "valueCoding": dict(self.next_step)},
                *self.unavailable_extensions(),
            ],
            "identifier": self.identifier(key),
            "status": "in-progress",
            "statusReason": {"text": "Draft generated by decision support, awaiting clinician review"},
            "code": {"text": "Back mice (episacral lipoma) criteria assessment"},
            "description": str(a.get("headline") or "Back mice criteria assessment"),
            "subject": {"reference": self.patient},
            "effectiveDateTime": self.as_of,
            "protocol": [self.criteria],
            "summary": str(a.get("summary") or a.get("headline") or "No summary"),
            "finding": [
                {
                    "itemCodeableConcept": {
                        "coding": [dict(self.classification)],
                        "text": str(a.get("headline") or a.get("classification")),
                    },
                    "basis": basis_text(self.checklist, a.get("red_flags") or []),
                }
            ],
            "note": [{"text": self.note_text()}],
        }
        if self.encounter:
            resource["encounter"] = {"reference": self.encounter}
        if lbp:
            resource["problem"] = _refs(lbp)
        if observations:
            resource["investigation"] = [
                {"code": {"text": "Examination findings and scores"}, "item": _refs(observations)}
            ]
        if supporting:
            resource["supportingInfo"] = _refs(supporting)
        return self.add(resource, key)

    def document_reference(self) -> str:
        a = self.a
        paragraphs, items = self.assessment_text()
        note = narrative(paragraphs, items)
        key = self.key("DocumentReference")
        authors = ([self.author] if self.author else []) + [self.device_url]
        resource: dict[str, Any] = {
            "resourceType": "DocumentReference",
            "meta": _draft_meta("DocumentReference"),
            "text": note,
            "extension": [
                {"url": CLASSIFICATION_EXTENSION, "valueCoding": dict(self.classification)},
                {"url": NEXT_STEP_EXTENSION, "valueCoding": dict(self.next_step)},
                *self.unavailable_extensions(),
            ],
            "identifier": self.identifier(key),
            "status": "current",
            "docStatus": "preliminary",
            "type": {"text": "Back mice decision-support assessment (draft)"},
            "subject": {"reference": self.patient},
            "date": self.as_of,
            "author": _refs(authors),
            "description": str(a.get("headline") or "Back mice criteria assessment"),
            "content": [
                {
                    "attachment": {
                        "contentType": "text/html",
                        "language": "en",
                        "data": base64.b64encode(note["div"].encode("utf-8")).decode("ascii"),
                        "title": "Back mice criteria assessment (draft)",
                    }
                }
            ],
        }
        context: dict[str, Any] = {}
        if self.encounter:
            context["encounter"] = [{"reference": self.encounter}]
        related = [r for r in self.source_refs if r != self.patient]  # the Patient is the subject
        if related:
            context["related"] = _refs(related)
        if context:
            resource["context"] = context
        return self.add(resource, key)

    def service_request(self, assessment_url: str) -> str | None:
        suggestion = self.a.get("procedure_suggestion")
        if not suggestion:
            return None
        key = self.key("ServiceRequest")
        text = str(suggestion.get("text") or suggestion.get("kind"))
        caveat = str(suggestion.get("caveat") or "")
        code: dict[str, Any] = {"text": text}
        codings = [dict(c) for c in suggestion.get("codes") or []]
        if codings:
            code["coding"] = codings
        reasons = [
            r for r in suggestion.get("reason_references") or [] if _type(r) in ("Condition", "Observation")
        ]
        resource: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "meta": _draft_meta("ServiceRequest"),
            "text": narrative(
                [f"Suggested: {text}.", f"Kind: {suggestion.get('kind')}; criteria {self.criteria}.", caveat]
            ),
            "identifier": self.identifier(key),
            "instantiatesUri": [self.criteria],
            "status": "draft",
            "intent": "proposal",
            "priority": "routine",
            "code": code,
            "subject": {"reference": self.patient},
            "supportingInfo": [{"reference": assessment_url}],
            "note": [{"text": f"{DRAFT_BANNER}. {caveat}".strip()}],
        }
        site = suggestion.get("body_site")
        if isinstance(site, Mapping) and (site.get("coding") or site.get("text")):
            body: dict[str, Any] = {}
            if site.get("coding"):
                body["coding"] = [dict(c) for c in site["coding"]]
            if site.get("text"):
                body["text"] = str(site["text"])
            resource["bodySite"] = [body]
        if self.encounter:
            resource["encounter"] = {"reference": self.encounter}
        if reasons:
            resource["reasonReference"] = _refs(_unique(reasons))
        return self.add(resource, key)

    def detected_issue(self, flag: Mapping[str, Any], implicated: Sequence[str]) -> str:
        flag_id = str(flag.get("id"))
        level = str(flag.get("level"))
        title = str(flag.get("title") or flag_id)
        reason = str(flag.get("reason") or "")
        withheld = (
            f"Procedure suggestion withheld: {title}. Work-up recommended."
            if level == "block"
            else "Warning: the suggestion stands, but review this first."
        )
        key = self.key(f"DetectedIssue/{flag_id}")
        evidence = [str(r) for r in flag.get("evidence") or []]
        resource: dict[str, Any] = {
            "resourceType": "DetectedIssue",
            "meta": _draft_meta("DetectedIssue"),
            "text": narrative([f"Red flag ({level}): {title}.", reason, withheld]),
            "identifier": self.identifier(key),
            "status": "preliminary",
            "code": {
                "coding": [{"system": RED_FLAG_SYSTEM, "code": flag_id, "display": title}],
                "text": title,
            },
            "severity": SEVERITY_OF_LEVEL.get(level, "moderate"),
            "patient": {"reference": self.patient},
            "identifiedDateTime": self.as_of,
            "author": {"reference": self.device_url},
            "implicated": _refs(implicated),
            "detail": f"{reason.rstrip('. ')}. {withheld}" if reason else withheld,
        }
        if evidence:
            resource["evidence"] = [{"detail": _refs(evidence)}]
        return self.add(resource, key)

    def provenance(self, targets: Sequence[str]) -> None:
        key = self.key("Provenance")
        resource = provenance_resource(
            targets=targets,
            sources=self.sources,
            recorded=self.recorded,
            policy=self.criteria,
            device=self.device_url,
            author=self.author,
            software_version=app_version(),
        )
        who = self.author or "the app (no user in the launch context)"
        resource["meta"] = _draft_meta(
            "Provenance", [{"system": DRAFT_IDENTIFIER_SYSTEM, "code": key, "display": "draft key"}]
        )
        resource["text"] = narrative(
            [
                f"Drafts created by decision support for {self.patient}, criteria {self.criteria}.",
                f"Author: {who}; assembled by the back mice decision-support app, version {app_version()}.",
            ],
            [f"Source: {e['what']['reference']}" for e in resource.get("entity", [])],
        )
        self.add(resource, key, by_tag=True)

    def build(self) -> dict[str, Any]:
        self.device()
        if self.assessment_as == "ClinicalImpression":
            assessment_url = self.clinical_impression()
        else:
            assessment_url = self.document_reference()
        drafts = [assessment_url]
        request_url = None
        if not any(f.get("level") == "block" for f in self.a.get("red_flags") or []):
            request_url = self.service_request(assessment_url)
        if request_url:
            drafts.append(request_url)
        implicated = list(drafts)
        for flag in self.a.get("red_flags") or []:
            drafts.append(self.detected_issue(flag, implicated))
        self.provenance(drafts)
        return {"resourceType": "Bundle", "type": "transaction", "entry": self.entries}


def build_transaction(
    assessment: Mapping[str, Any],
    *,
    author: str | None,
    encounter: str | None,
    recorded: datetime,
    assessment_as: AssessmentAs = "ClinicalImpression",
) -> dict[str, Any]:
    """The transaction Bundle the write-back sends for ``assessment`` (plain JSON; R4 validity is checked
    before it is sent, :func:`smart_app.writeback.validate_drafts`). ``author`` is the launch's
    ``fhirUser`` (``Practitioner/…``) or None; ``recorded`` becomes ``Provenance.recorded``. A BLOCK red
    flag means no ServiceRequest, whatever the assessment says."""
    return _Builder(
        assessment, author=author, encounter=encounter, recorded=recorded, assessment_as=assessment_as
    ).build()


def narrative_text(div: str) -> str:
    """The text content of a narrative div (tags dropped, entities decoded), for checks and display."""
    out: list[str] = []
    inside = False
    for char in div:
        if char == "<":
            inside = True
        elif char == ">":
            inside = False
        elif not inside:
            out.append(char)
    return html.unescape("".join(out))


def now() -> datetime:
    return datetime.now(UTC)
