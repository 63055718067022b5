"""The focused exam a clinician records through the app, written as one FHIR R4 transaction
(docs/auditors.md#exam).

The clinician answers the questions of :func:`smart_app.clinical.recording.exam_terms` and confirms what
will be written. Each answer becomes one Observation coded from the criteria release's terminology
(:func:`smart_app.clinical.recording.exam_observation`), with ``meta.profile`` back-mice-exam-observation,
``meta.tag`` entered-through-app, a generated narrative, the clinician as ``performer``, the launch's
encounter, and an identifier in :data:`EXAM_IDENTIFIER_SYSTEM` whose value is the sha256 of what it records
(:func:`exam_key`: patient, performer, time, code, value, body site), used by ``request.ifNoneExist``
(R4 http.html#ccreate) so a retry or a second tab never records the exam twice. The Bundle also holds the
app's Device (conditional create) and a Provenance (:func:`smart_app.drafts.provenance.entered_provenance`:
author the clinician, assembler the app) whose ``meta.tag`` carries the hash of the Observations' keys.

These are not drafts of the app: the clinician examined, chose every answer and confirmed it, so the
Observations are written with the status the criteria use (final) and no AI label. The write goes through
:func:`smart_app.writeback.write_drafts` like every other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from smart_app.clinical.recording import (
    ABSENT,
    PRESENT,
    ExamQuestion,
    ExamTerms,
    exam_observation,
    relief_value,
)
from smart_app.drafts.build import (
    app_version,
    canonical_json,
    device_entry,
    full_url,
    iso_instant,
    narrative,
)
from smart_app.drafts.provenance import entered_provenance
from smart_app.drafts.written import finding_text
from smart_app.vocabulary import (
    DEVICE_IDENTIFIER_SYSTEM,
    DEVICE_IDENTIFIER_VALUE,
    ENTERED_CODE,
    EXAM_IDENTIFIER_SYSTEM,
    EXAM_OBSERVATION_PROFILE,
    EXAM_PROVENANCE_PROFILE,
    workflow,
)

#: The sides a site may be on, as the form offers them and the body site's text says them.
SIDES = ("left", "right", "both sides", "midline")
#: What a signs question is answered with when the clinician found none of them.
NONE_FOUND = "none"
#: The longest site description kept (characters).
MAX_SITE_TEXT = 80


class ExamError(ValueError):
    """The answers do not fit the exam's questions; the message says which answer, in words."""


@dataclass(frozen=True)
class ExamSite:
    """Where the nodule is: one of the release's typical sites (``code``), the clinician's words
    (``text``), or both, and a side."""

    code: str | None = None
    side: str = ""
    text: str = ""


@dataclass(frozen=True)
class ExamAnswers:
    """What the clinician answered, by finding id: ``present``/``absent`` (presence), ``none`` or the ids
    of the signs found (signs), a percentage (relief). A finding not examined has no answer."""

    answers: Mapping[str, str | int | tuple[str, ...]] = field(default_factory=dict)
    site: ExamSite | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "answers": {k: list(v) if isinstance(v, tuple) else v for k, v in self.answers.items()}
        }
        if self.site is not None:
            data["site"] = {"code": self.site.code, "side": self.site.side, "text": self.site.text}
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExamAnswers:
        raw = data.get("answers") if isinstance(data.get("answers"), Mapping) else {}
        answers: dict[str, str | int | tuple[str, ...]] = {}
        for key, value in (raw or {}).items():
            if isinstance(value, list):
                answers[str(key)] = tuple(str(v) for v in value)
            elif isinstance(value, str | int) and not isinstance(value, bool):
                answers[str(key)] = value
        site = data.get("site")
        return cls(
            answers,
            ExamSite(
                code=str(site["code"]) if site.get("code") else None,
                side=str(site.get("side") or ""),
                text=str(site.get("text") or ""),
            )
            if isinstance(site, Mapping)
            else None,
        )


def check_answers(terms: ExamTerms, answers: ExamAnswers) -> None:
    """Raise :class:`ExamError` when an answer does not fit its question."""
    for finding, answer in answers.answers.items():
        question = terms.question(finding)
        if question is None:
            raise ExamError(f"There is no exam question for {finding}.")
        if question.kind == "presence" and answer not in (PRESENT, ABSENT):
            raise ExamError(f"{question.title}: answer present or absent.")
        if question.kind == "relief" and not (
            isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer <= 100
        ):
            raise ExamError(f"{question.title}: give a whole number from 0 to 100 (percent).")
        if question.kind == "signs":
            known = {s.id for s in question.signs}
            if answer != NONE_FOUND and not (isinstance(answer, tuple) and answer and set(answer) <= known):
                raise ExamError(f"{question.title}: say which signs were found, or that none was.")
        if question.site_finding and answer == PRESENT and not _has_site(answers.site):
            raise ExamError(f"{question.title}: say where it is (a site, or the site in words).")
    site = answers.site
    if site is not None:
        if site.code is not None and site.code not in {c["code"] for c in terms.sites}:
            raise ExamError("The site is not one of the sites offered.")
        if site.side and site.side not in SIDES:
            raise ExamError("The side is not one of the sides offered.")
        if len(site.text) > MAX_SITE_TEXT:
            raise ExamError(f"Describe the site in at most {MAX_SITE_TEXT} characters.")


def _has_site(site: ExamSite | None) -> bool:
    return site is not None and bool(site.code or site.text.strip())


def site_label(display: str) -> str:
    """A SNOMED body structure's display as people say it: "Structure of left lumbar region of back" →
    "left lumbar region of back", "Sacroiliac joint structure" → "sacroiliac joint"."""
    label = display.removeprefix("Structure of ").removesuffix(" structure")
    return label[:1].lower() + label[1:] if label[1:2].islower() else label


def body_site(terms: ExamTerms, site: ExamSite | None) -> dict[str, Any] | None:
    """``bodySite``: the coded typical site, and the text the clinician would write (words and side)."""
    if site is None or not _has_site(site):
        return None
    coding = next((c for c in terms.sites if c["code"] == site.code), None)
    words = site.text.strip() or (site_label(coding.get("display", "")) if coding else "")
    if site.side in ("left", "right"):
        words = f"{site.side} {words}"
    elif site.side:
        words = f"{words}, {site.side}"
    out: dict[str, Any] = {"text": words}
    if coding is not None:
        out["coding"] = [dict(coding)]
    return out


def observations(
    terms: ExamTerms, answers: ExamAnswers, *, patient: str, when: str
) -> list[tuple[ExamQuestion, dict[str, Any]]]:
    """The Observations that record ``answers`` (plain: no meta, identifier or performer), each with
    its question, in the order of the questions."""
    check_answers(terms, answers)
    out: list[tuple[ExamQuestion, dict[str, Any]]] = []
    for question in terms.questions:
        answer = answers.answers.get(question.finding)
        if answer is None:
            continue
        if question.kind == "relief":
            assert question.coding is not None and isinstance(answer, int)
            made = exam_observation(terms, question.coding, relief_value(answer), subject=patient, when=when)
            out.append((question, made))
        elif question.kind == "signs":
            found = () if answer == NONE_FOUND else tuple(answer) if isinstance(answer, tuple) else ()
            for sign in question.signs:
                if answer == NONE_FOUND or sign.id in found:
                    outcome = PRESENT if sign.id in found else ABSENT
                    made = exam_observation(
                        terms, sign.coding, terms.value(outcome), subject=patient, when=when
                    )
                    out.append((question, made))
        else:
            assert question.coding is not None and isinstance(answer, str)
            site = body_site(terms, answers.site) if question.site_finding and answer == PRESENT else None
            made = exam_observation(
                terms, question.coding, terms.value(answer), subject=patient, when=when, body_site=site
            )
            out.append((question, made))
    return out


def exam_key(observation: Mapping[str, Any]) -> str:
    """sha256 (hex) of what an exam Observation records: patient, performer, time, code, value and body
    site, read from the Observation itself (so an auditor recomputes it from what is in the chart). The
    time is compared as an instant and numbers as numbers, so a server that writes ``Z`` as ``+00:00`` or
    ``85`` as ``85.0`` keeps the key."""
    value = {k: _numbers(v) for k, v in observation.items() if k.startswith("value")}
    payload = {
        "patient": (observation.get("subject") or {}).get("reference"),
        "performer": sorted(
            str(p.get("reference")) for p in observation.get("performer") or [] if isinstance(p, Mapping)
        ),
        "effective": _instant(observation.get("effectiveDateTime")),
        "code": sorted(
            f"{c.get('system')}|{c.get('code')}"
            for c in (observation.get("code") or {}).get("coding") or []
            if isinstance(c, Mapping)
        ),
        "value": value,
        "bodySite": observation.get("bodySite"),
    }
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def _instant(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return iso_instant(moment) if moment.tzinfo is not None else value


def _numbers(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def provenance_key(observation_keys: list[str]) -> str:
    """The key of the Provenance of one exam: sha256 of its Observations' keys, sorted."""
    return hashlib.sha256(canonical_json({"exam": sorted(observation_keys)}).encode("utf-8")).hexdigest()


def _tags() -> list[dict[str, str]]:
    return [workflow().coding(ENTERED_CODE)]


def build_exam_transaction(
    terms: ExamTerms,
    answers: ExamAnswers,
    *,
    patient: str,
    performer: str,
    encounter: str | None,
    recorded: datetime,
) -> dict[str, Any]:
    """The transaction Bundle recording ``answers`` for ``patient`` (``Patient/<id>``), examined by
    ``performer`` (the launch's ``fhirUser``) at ``recorded`` (R4 validity is checked before it is sent,
    :func:`smart_app.writeback.validate_drafts`). Raises :class:`ExamError` when the answers do not fit,
    or record nothing."""
    when = iso_instant(recorded)
    made = observations(terms, answers, patient=patient, when=when)
    if not made:
        raise ExamError("Nothing to record: every question was left as not examined.")
    device = full_url(DEVICE_IDENTIFIER_SYSTEM, DEVICE_IDENTIFIER_VALUE)
    entries: list[dict[str, Any]] = [device_entry()]
    keys: list[str] = []
    for _question, observation in made:
        observation["performer"] = [{"reference": performer}]
        if encounter:
            observation["encounter"] = {"reference": encounter}
        key = exam_key(observation)
        keys.append(key)
        observation = {
            "resourceType": "Observation",
            "meta": {"profile": [EXAM_OBSERVATION_PROFILE], "tag": _tags()},
            "text": narrative(
                [
                    f"{finding_text(observation)}.",
                    f"Examined and entered by {performer} through the back mice decision-support app, "
                    f"{when}.",
                ],
                banner=None,
            ),
            "identifier": [{"system": EXAM_IDENTIFIER_SYSTEM, "value": key}],
            **{k: v for k, v in observation.items() if k != "resourceType"},
        }
        entries.append(
            {
                "fullUrl": full_url(EXAM_IDENTIFIER_SYSTEM, key),
                "resource": observation,
                "request": {
                    "method": "POST",
                    "url": "Observation",
                    "ifNoneExist": f"identifier={EXAM_IDENTIFIER_SYSTEM}|{key}",
                },
            }
        )
    prov_key = provenance_key(keys)
    provenance = entered_provenance(
        targets=[e["fullUrl"] for e in entries[1:]],
        recorded=when,
        policy=terms.canonical,
        device=device,
        author=performer,
        software_version=app_version(),
    )
    provenance["meta"] = {
        "profile": [EXAM_PROVENANCE_PROFILE],
        "tag": [*_tags(), {"system": EXAM_IDENTIFIER_SYSTEM, "code": prov_key, "display": "exam key"}],
    }
    provenance["text"] = narrative(
        [
            f"Focused exam of {patient}: {len(keys)} finding(s) examined and entered by {performer} "
            f"through the back mice decision-support app, version {app_version()}, and confirmed by them "
            "before it was written.",
            f"Coded with the terminology of criteria {terms.canonical}.",
        ],
        banner=None,
    )
    entries.append(
        {
            "fullUrl": full_url(EXAM_IDENTIFIER_SYSTEM, prov_key),
            "resource": provenance,
            "request": {
                "method": "POST",
                "url": "Provenance",
                "ifNoneExist": f"_tag={EXAM_IDENTIFIER_SYSTEM}|{prov_key}",
            },
        }
    )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}
