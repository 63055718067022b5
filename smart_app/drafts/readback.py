"""The written format read back: the conclusion of a write in comparable form, from the written resources,
or taken from a recomputed Assessment JSON (classification, next step, red flags, suggestion), for
``audit verify`` (docs/auditors.md#verify).

Written side: the classification is a coding of the back-mice-classification CodeSystem on
``ClinicalImpression.finding.itemCodeableConcept`` (a DocumentReference: the back-mice-classification
extension; codings in ``type``/``category``/``context.event`` are read too), the next step the
back-mice-next-step extension's ``valueCoding``. Writes made before the conclusion was coded are read
from the narrative sentence "Classification: …; next step: …." instead, field by field. Red flags are
the DetectedIssues' codes in the red-flag CodeSystem with their severity; the suggestion is the
ServiceRequest's codes and body site. :mod:`smart_app.drafts.build` writes what this module reads.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

from smart_app.fhirjson import coding_items as _codings
from smart_app.vocabulary import (
    CLASSIFICATION_EXTENSION,
    CLASSIFICATION_SYSTEM,
    LEVEL_OF_SEVERITY,
    NEXT_STEP_EXTENSION,
    NEXT_STEP_SYSTEM,
    RED_FLAG_SYSTEM,
    classifications,
    next_steps,
)

#: field -> (CodeSystem, extension url) that carry it (fhir_profiles/README.md, "The conclusion, coded").
_CODED = {
    "classification": (CLASSIFICATION_SYSTEM, CLASSIFICATION_EXTENSION),
    "next_step": (NEXT_STEP_SYSTEM, NEXT_STEP_EXTENSION),
}


def _token(coding: dict[str, Any]) -> str:
    return f"{coding.get('system') or ''}|{coding.get('code') or ''}"


def _strip(code: str, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes:
        if code.startswith(prefix):
            return code[len(prefix) :]
    return code


def _concepts(resource: dict[str, Any]) -> list[Any]:
    """The CodeableConcepts that may carry a conclusion coding: ClinicalImpression.finding.item
    (where the drafts put the classification); DocumentReference type, category and context.event."""
    if resource.get("resourceType") == "ClinicalImpression":
        return [f.get("itemCodeableConcept") for f in resource.get("finding") or [] if isinstance(f, dict)]
    return [resource.get("type"), resource.get("category"), (resource.get("context") or {}).get("event")]


def _extension_values(ext: dict[str, Any], system: str) -> Iterator[str]:
    """Codes an app extension holds. A coding of another system than the one the extension takes is
    given as ``system|code``, so an edited system never passes for the expected code."""
    if isinstance(ext.get("valueCode"), str):
        yield ext["valueCode"]
    codings = [ext["valueCoding"]] if isinstance(ext.get("valueCoding"), dict) else []
    codings.extend(_codings(ext.get("valueCodeableConcept")))
    for coding in codings:
        code = coding.get("code")
        if not isinstance(code, str):
            continue
        yield code if coding.get("system") in (None, system) else f"{coding.get('system')}|{code}"


def coded_values(resource: dict[str, Any], field: str) -> list[str]:
    """Distinct coded values of ``field`` (``classification`` or ``next_step``) on the assessment, in
    document order: codings of the field's CodeSystem, and the field's extension (a value outside the
    CodeSystem is kept as written, so an edit to an unknown code still shows as a difference)."""
    system, url = _CODED[field]
    values: list[str] = []
    for coding in _codings(_concepts(resource)):
        if coding.get("system") == system and isinstance(coding.get("code"), str):
            values.append(coding["code"])
    for ext in resource.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == url:
            values.extend(_extension_values(ext, system))
    return list(dict.fromkeys(values))


_NARRATIVE = re.compile(r"Classification:\s*([a-z\-]+);\s*next step:\s*([a-z\-]+)")
_TAG = re.compile(r"<[^>]*>")


def narrative_values(resource: dict[str, Any]) -> dict[str, str | None]:
    """The generated narrative's sentence "Classification: <code>; next step: <code>."
    (:mod:`smart_app.drafts.build`), for writes made before the conclusion was coded."""
    div = (resource.get("text") or {}).get("div")
    m = _NARRATIVE.search(html.unescape(_TAG.sub(" ", div))) if isinstance(div, str) else None
    if m is None:
        return {"classification": None, "next_step": None}
    return {
        "classification": m.group(1) if m.group(1) in classifications() else None,
        "next_step": m.group(2) if m.group(2) in next_steps() else None,
    }


def _classification_and_step(resource: dict[str, Any], notes: list[str] | None = None) -> tuple[Any, Any]:
    """Coded values first; the narrative only for a field no coded element carries. Several different
    coded values are returned as their list (never equal to one recomputed value). ``notes`` gets what an
    auditor should know: a field read from the narrative, or a narrative that disagrees with the codes."""
    told = narrative_values(resource)
    out: dict[str, Any] = {}
    for field, label in (("classification", "classification"), ("next_step", "next step")):
        coded = coded_values(resource, field)
        if not coded:
            out[field] = told[field]
            if notes is not None and told[field] is not None:
                notes.append(
                    f"The written {label} is read from the narrative (no coded value: an older write)."
                )
            continue
        out[field] = coded[0] if len(coded) == 1 else coded
        if notes is None:
            continue
        if len(coded) > 1:
            notes.append(f"Several coded {label} values are written: {', '.join(coded)}.")
        if told[field] is not None and told[field] not in coded:
            notes.append(
                f"The narrative states {label} {told[field]!r} but the coded value is "
                f"{', '.join(repr(c) for c in coded)}; the coded value is compared."
            )
    return out["classification"], out["next_step"]


def _suggestion(request: dict[str, Any]) -> dict[str, Any]:
    body = [b for b in request.get("bodySite") or [] if isinstance(b, dict)]
    return {
        "codes": sorted(_token(c) for c in _codings(request.get("code"))),
        "body_site": {
            "codes": sorted(_token(c) for c in _codings(body)),
            "text": next((str(b["text"]) for b in body if b.get("text")), None),
        },
    }


def written_conclusion(resources: list[dict[str, Any]], notes: list[str] | None = None) -> dict[str, Any]:
    """The conclusion as written: the first resource is the assessment, the rest the write's other
    targets. ``notes`` (when given) receives remarks on how the classification and next step were read."""
    assessment = resources[0]
    classification, next_step = _classification_and_step(assessment, notes)
    flags: list[str] = []
    suggestions: list[dict[str, Any]] = []
    for res in resources[1:]:
        rtype = res.get("resourceType")
        if rtype == "DetectedIssue":
            level = LEVEL_OF_SEVERITY.get(str(res.get("severity")), str(res.get("severity")))
            for coding in _codings(res.get("code")):
                if coding.get("system") == RED_FLAG_SYSTEM and coding.get("code"):
                    flags.append(f"{_strip(str(coding['code']), ('red-flag-',))}:{level}")
        elif rtype == "ServiceRequest":
            suggestions.append(_suggestion(res))
    return {
        "classification": classification,
        "next_step": next_step,
        "red_flags": sorted(set(flags)),
        "procedure_suggestion": suggestions[0] if len(suggestions) == 1 else (suggestions or None),
    }


def recomputed_conclusion(assessment: dict[str, Any]) -> dict[str, Any]:
    """The same fields from an Assessment JSON (:mod:`smart_app.clinical`). A BLOCK red flag withholds the
    suggestion (docs/clinical-criteria.md#red-flags), as the drafts do."""
    suggestion = assessment.get("procedure_suggestion")
    blocked = any(f.get("level") == "block" for f in assessment.get("red_flags") or [] if isinstance(f, dict))
    comparable: dict[str, Any] | None = None
    if isinstance(suggestion, dict) and not blocked:
        site = suggestion.get("body_site") or {}
        comparable = {
            "codes": sorted(_token(c) for c in suggestion.get("codes") or [] if isinstance(c, dict)),
            "body_site": {
                "codes": sorted(_token(c) for c in _codings(site)),
                "text": site.get("text") if isinstance(site, dict) else None,
            },
        }
    return {
        "classification": assessment.get("classification"),
        "next_step": assessment.get("next_step"),
        "red_flags": sorted({f"{f.get('id')}:{f.get('level')}" for f in assessment.get("red_flags") or []}),
        "procedure_suggestion": comparable,
    }
