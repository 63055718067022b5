"""``audit verify``: re-run the criteria version a write names, on the source versions it recorded, at the
evaluation time it recorded, and compare the conclusion field by field (docs/auditors.md#verify; the
evaluation time is an input, so a past assessment can be reproduced exactly: Provenance.entity holds
versioned references, Provenance.policy the criteria url|version). The written classification and next
step are read back by :mod:`smart_app.drafts.readback`.

Resource types the app could not read are on the assessment as back-mice-unavailable-data extensions; they
go back into ``PatientRecord.unavailable``, so what they would decide is unknown again, as it was. The
draft identifier hashes the evidence (Provenance entities and those unread types): when it no longer
matches, the extension, the Provenance or the identifier was changed after the write.

The software that concluded is named per write by the Provenance's back-mice-software-version extension;
the report says which version wrote, which reproduced and, when they differ, whether the conclusion still
matches (docs/clinical-criteria.md#what-the-app-writes).

An exam a clinician entered through the app concludes nothing to re-run: :func:`verify_exam` explains
what it records, finding by finding, in the terms of the criteria release that coded it, and checks that
it is still as entered: every Observation its Provenance names is there, unchanged since written, its
identifier the hash of what it records, performed by the Provenance's author (docs/auditors.md#exam).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from smart_app import __version__
from smart_app.audit.errors import AuditInputError
from smart_app.audit.listing import (
    ENTERED_TAG_PARAM,
    TAG_PARAM,
    app_device_refs,
    changed_elements,
    is_app_provenance,
    provenance_author,
    provenance_criteria,
)
from smart_app.audit.model import (
    EXAM,
    Difference,
    VerifyReport,
    draft_identifiers,
    exam_identifiers,
    has_entered_tag,
    split_canonical,
)
from smart_app.audit.source import NotAccessible, NotFound, Source, UnsupportedSearch
from smart_app.drafts.provenance import software_version_of
from smart_app.drafts.readback import recomputed_conclusion, written_conclusion
from smart_app.drafts.written import ASSESSMENT_TYPES, EXAM_TYPES, finding_text
from smart_app.fhirjson import Ref, concept_label, medication_concept, version_id
from smart_app.vocabulary import APP_DEVICE, CRITERIA_URL, EXAM_IDENTIFIER_SYSTEM, UNAVAILABLE_EXTENSION

_SHA256 = re.compile(r"[0-9a-f]{64}")

#: The compared fields, in report order (docs/auditors.md#verify).
COMPARED = ("criteria", "classification", "next_step", "red_flags", "procedure_suggestion")

#: ``(record, as_of, criteria_version, criteria_dirs) -> Assessment JSON``; replaceable in tests.
Evaluator = Callable[[Any, datetime, str, Sequence[Path]], dict[str, Any]]


def find_provenance(source: Source, target: Ref) -> list[dict[str, Any]]:
    """App Provenances whose ``target`` names ``target`` (any version), newest ``recorded`` first.

    Asks ``Provenance?target=`` first (R4 search parameter); servers that ignore or refuse it are
    covered by the app's agent/tag searches, filtered here.
    """
    found: dict[str, dict[str, Any]] = {}
    devices = app_device_refs(source)
    searches = (
        {"target": target.plain},
        {"_tag": TAG_PARAM},
        {"_tag": ENTERED_TAG_PARAM},
        {"agent": APP_DEVICE},
    )
    for params in searches:
        try:
            results = source.search("Provenance", params)
        except UnsupportedSearch:
            continue
        for prov in results:
            targets = {
                r.plain
                for t in prov.get("target") or []
                if isinstance(t, dict) and (r := Ref.parse(t.get("reference"))) is not None
            }
            if target.plain in targets and is_app_provenance(prov, devices):
                found[f"Provenance/{prov.get('id')}"] = prov
        if found:
            break
    return sorted(found.values(), key=lambda p: str(p.get("recorded") or ""), reverse=True)


def evaluation_time(resource: dict[str, Any], provenance: dict[str, Any] | None) -> tuple[datetime, str]:
    """The recorded evaluation time: ClinicalImpression.effectiveDateTime (DocumentReference: ``date``),
    else Provenance.recorded. Returns (time, where it came from)."""
    candidates: list[tuple[Any, str]] = []
    if resource.get("resourceType") == "ClinicalImpression":
        candidates.append((resource.get("effectiveDateTime"), "ClinicalImpression.effectiveDateTime"))
        candidates.append(
            ((resource.get("effectivePeriod") or {}).get("end"), "ClinicalImpression.effectivePeriod")
        )
        candidates.append((resource.get("date"), "ClinicalImpression.date"))
    else:
        candidates.append(
            (((resource.get("context") or {}).get("period") or {}).get("end"), "context.period.end")
        )
        candidates.append((resource.get("date"), "DocumentReference.date"))
    if provenance is not None:
        candidates.append((provenance.get("recorded"), "Provenance.recorded"))
    for value, where in candidates:
        if isinstance(value, str) and value:
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)), where
    raise AuditInputError(f"{resource.get('resourceType')}/{resource.get('id')} records no evaluation time")


def registry_with(criteria_dirs: Sequence[Path]) -> Any:
    """The shipped criteria versions plus those in ``criteria_dirs`` (a released version is never
    replaced: the same version twice is an error)."""
    from smart_app.clinical import criteria

    return criteria.load_registry(criteria_dirs)


def default_evaluator(
    record: Any, as_of: datetime, version: str, criteria_dirs: Sequence[Path]
) -> dict[str, Any]:
    """``smart_app.clinical.assess`` with the named criteria version (extra directories for locally
    published versions)."""
    from smart_app.clinical.engine import assess

    if criteria_dirs:
        result: dict[str, Any] = assess(
            record, as_of, version, registry=registry_with(criteria_dirs)
        ).to_json()
        return result
    return dict(assess(record, as_of, version).to_json())


def _read_written(source: Source, ref: Ref) -> dict[str, Any] | None:
    try:
        return source.read(ref.type, ref.id)
    except NotFound:
        return None


def _read_audited(source: Source, ref: Ref) -> dict[str, Any]:
    """The resource an auditor named; :class:`AuditInputError` when it cannot be read or is not there."""
    try:
        return source.read(ref.type, ref.id)
    except NotAccessible as exc:
        raise AuditInputError(f"{ref.plain} cannot be read with the granted scopes") from exc
    except NotFound as exc:
        raise AuditInputError(f"{ref.plain} was not found") from exc


def verify_assessment(
    source: Source,
    assessment: str,
    *,
    criteria_dirs: Sequence[Path] = (),
    evaluator: Evaluator | None = None,
) -> VerifyReport:
    """Reproduce the write whose assessment is ``assessment`` (``ClinicalImpression/ID`` or
    ``DocumentReference/ID``); an exam Observation, or the Provenance of an exam, is explained and checked
    by :func:`verify_exam`. Raises :class:`AuditInputError` when it cannot be attempted."""
    ref = Ref.parse(assessment)
    if ref is not None and (ref.type in EXAM_TYPES or ref.type == "Provenance"):
        return verify_exam(source, assessment, criteria_dirs=criteria_dirs)
    if ref is None or ref.type not in ASSESSMENT_TYPES:
        raise AuditInputError(
            f"{assessment!r} is not a ClinicalImpression/ID, DocumentReference/ID, or exam Observation/ID "
            "reference"
        )
    current = _read_audited(source, ref)
    report = VerifyReport(assessment=ref.plain, reproduced=False, differences=[])
    provenances = find_provenance(source, ref)
    if not provenances:
        report.differences.append(
            Difference("provenance", None, "an app Provenance naming the criteria version and the sources")
        )
        report.notes.append(
            f"No Provenance naming {APP_DEVICE} targets {ref.plain}: it cannot be traced to its sources, "
            "so it cannot be reproduced."
        )
        return report
    if len(provenances) > 1:
        report.notes.append(f"{len(provenances)} app Provenances target {ref.plain}; the newest is used.")
    prov = provenances[0]
    report.provenance = f"Provenance/{prov.get('id')}"
    criteria = provenance_criteria(prov)
    report.criteria = criteria
    if criteria["url"] != CRITERIA_URL or not criteria["version"]:
        raise AuditInputError(f"{report.provenance} names no back-mice criteria version in Provenance.policy")
    version = str(criteria["version"])
    as_of, where = evaluation_time(current, prov)
    report.evaluated_at = as_of.isoformat().replace("+00:00", "Z")
    if where != "ClinicalImpression.effectiveDateTime":
        report.notes.append(f"Evaluation time taken from {where}.")
    written_version = _target_version(source, prov, ref)
    if written_version is None:
        report.notes.append(
            f"The version of {ref.plain} the app wrote is not known (its Provenance target names none and "
            "the server keeps no history of it); the current content is compared."
        )
    elif version_id(current) not in (None, written_version):
        report.notes.append(
            f"{ref.plain} is now version {version_id(current)} (written as version {written_version}); "
            "the current content is compared."
        )

    written_resources = [current]
    for target in prov.get("target") or []:
        tref = Ref.parse(target.get("reference")) if isinstance(target, dict) else None
        if tref is None or tref.plain == ref.plain:
            continue
        res = _read_written(source, tref)
        if res is None:
            report.notes.append(f"{tref.plain} (a target of {report.provenance}) was not found.")
        else:
            written_resources.append(res)

    record, source_rows, source_notes = _rebuild_record(source, prov, current)
    report.sources = source_rows
    report.notes.extend(source_notes)
    unavailable = written_unavailable(current, report.notes)
    if unavailable:
        record = dataclasses.replace(record, unavailable=unavailable)
        named = "; ".join(f"{t} ({r})" if r else t for t, r in sorted(unavailable.items()))
        report.notes.append(
            f"The write records data that could not be read: {named}; the recomputation treats it as "
            "unknown, as the assessment did."
        )

    evaluate = evaluator or default_evaluator
    try:
        recomputed = evaluate(record, as_of, version, criteria_dirs)
    except (KeyError, ValueError) as exc:  # CriteriaError is a ValueError
        raise AuditInputError(f"criteria {CRITERIA_URL}|{version} cannot be evaluated here: {exc}") from exc
    written = written_conclusion(written_resources, report.notes)
    written["criteria"] = _written_criteria(current) or f"{criteria['url']}|{version}"
    again = recomputed_conclusion(recomputed)
    again["criteria"] = f"{criteria['url']}|{version}"
    report.written, report.recomputed = written, again
    for name in COMPARED:
        if written.get(name) != again.get(name):
            report.differences.append(Difference(name, written.get(name), again.get(name)))
    _check_identifier(current, ref, prov, f"{criteria['url']}|{version}", unavailable, report)
    report.reproduced = not report.differences
    report.notes.append(software_note(software_version_of(prov), __version__, report))
    return report


def software_note(written_by: str | None, reproducing: str, report: VerifyReport) -> str:
    """Which version of the app wrote and which reproduced; when they differ, whether the conclusion
    (the compared fields) still matches."""
    if written_by == reproducing:
        return f"Written and reproduced by app version {reproducing}."
    wrote = (
        f"Written by app version {written_by}"
        if written_by
        else "The write does not name the app version that concluded (written before app 0.2.0)"
    )
    conclusion = [d.field for d in report.differences if d.field in COMPARED]
    verdict = (
        "the conclusion still matches"
        if not conclusion
        else f"the conclusion does not match ({', '.join(conclusion)} differ)"
    )
    return f"{wrote}; reproduced by app version {reproducing}: {verdict}."


def written_unavailable(resource: dict[str, Any], notes: list[str] | None = None) -> dict[str, str]:
    """Resource types the assessment records as not read (back-mice-unavailable-data extensions):
    ``{resource_type: reason}``. An extension without a resource type is noted and skipped."""
    out: dict[str, str] = {}
    for ext in resource.get("extension") or []:
        if not isinstance(ext, dict) or ext.get("url") != UNAVAILABLE_EXTENSION:
            continue
        parts = {
            str(sub.get("url")): sub
            for sub in ext.get("extension") or []
            if isinstance(sub, dict) and isinstance(sub.get("url"), str)
        }
        rtype = (parts.get("resourceType") or {}).get("valueCode")
        reason = (parts.get("reason") or {}).get("valueString")
        if not isinstance(rtype, str) or not rtype:
            if notes is not None:
                notes.append("An unavailable-data extension without a resource type was skipped.")
            continue
        out[rtype] = reason if isinstance(reason, str) else ""
    return out


def _check_identifier(
    resource: dict[str, Any],
    ref: Ref,
    prov: dict[str, Any],
    criteria: str,
    unavailable: dict[str, str],
    report: VerifyReport,
) -> None:
    """The assessment's draft identifier is the hash of its evidence (smart_app.drafts.build
    ``draft_key``): recompute it from the Provenance entities and the unread types as written. Only
    identifiers of that form (sha256 hex) are checked."""
    from smart_app.drafts.build import draft_key

    written = [v for v in draft_identifiers(resource) if _SHA256.fullmatch(v)]
    subject = Ref.parse((resource.get("subject") or {}).get("reference"))
    if not written or subject is None:
        return
    sources = []
    for entity in prov.get("entity") or []:
        what = (entity or {}).get("what") if isinstance(entity, dict) else None
        eref = Ref.parse(what.get("reference")) if isinstance(what, dict) else None
        if eref is not None:
            sources.append({"reference": eref.plain, "version_id": eref.version})
    unread = [{"resource_type": t, "reason": r} for t, r in unavailable.items()]
    expected = draft_key(subject.plain, criteria, ref.type, sources, unread)
    if expected not in written:
        report.differences.append(Difference("evidence", written[0], expected))
        report.notes.append(
            f"The draft identifier of {ref.plain} does not match the evidence recorded now (the "
            f"Provenance entities and the data recorded as not read): the unavailable-data extension, "
            f"{report.provenance} or the identifier was changed after the write."
        )


def _target_version(source: Source, prov: dict[str, Any], ref: Ref) -> str | None:
    """The version of ``ref`` the app wrote: the Provenance target's version when it names one, else the
    oldest version in the resource's history (version ids are the server's, of any format)."""
    for target in prov.get("target") or []:
        tref = Ref.parse(target.get("reference")) if isinstance(target, dict) else None
        if tref is not None and tref.plain == ref.plain and tref.version:
            return tref.version
    try:
        versions = source.history(ref.type, ref.id)
    except NotFound:
        return None
    return version_id(versions[-1]) if versions else None


def _written_criteria(resource: dict[str, Any]) -> str | None:
    """The criteria the assessment itself names (ClinicalImpression.protocol); compared with the policy."""
    for value in resource.get("protocol") or []:
        if isinstance(value, str) and value.startswith(CRITERIA_URL):
            url, version = split_canonical(value)
            return f"{url}|{version}" if version else url
    return None


def _rebuild_record(
    source: Source, prov: dict[str, Any], assessment: dict[str, Any]
) -> tuple[Any, list[dict[str, Any]], list[str]]:
    """The PatientRecord the criteria saw: each Provenance entity at its recorded version, and the Patient."""
    from smart_app.clinical.record import PatientRecord

    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    resources: list[dict[str, Any]] = []
    patient: dict[str, Any] | None = None
    subject = Ref.parse((assessment.get("subject") or {}).get("reference"))
    for entity in prov.get("entity") or []:
        what = (entity or {}).get("what") if isinstance(entity, dict) else None
        eref = Ref.parse(what.get("reference")) if isinstance(what, dict) else None
        if eref is None:
            notes.append("A Provenance entity without a literal reference was skipped.")
            continue
        row: dict[str, Any] = {"reference": eref.plain, "version": eref.version, "status": "read"}
        try:
            if eref.version:
                res = source.vread(eref.type, eref.id, eref.version)
            else:
                res = source.read(eref.type, eref.id)
                row["status"] = "read (current version; none recorded)"
                notes.append(f"{eref.plain} was recorded without a version; its current version was used.")
        except NotFound:
            row["status"] = "missing"
            notes.append(f"{eref} could not be read: the recomputation runs without it.")
            rows.append(row)
            continue
        if eref.version:
            try:
                now = source.read(eref.type, eref.id)
            except NotFound:
                notes.append(f"{eref.plain} has been deleted since the write.")
            else:
                if version_id(now) not in (None, eref.version):
                    row["current_version"] = version_id(now)
                    notes.append(
                        f"{eref.plain} has changed since the write (version {eref.version} used, now "
                        f"version {version_id(now)}); a new assessment today may conclude differently."
                    )
        label = concept_label(res.get("code")) or concept_label(medication_concept(res))
        if label:
            row["label"] = label  # what the record records, for people reading the report
        rows.append(row)
        if res.get("resourceType") == "Patient":
            patient = res
        else:
            resources.append(res)
    if patient is None and subject is not None and subject.type == "Patient":
        try:
            patient = source.read("Patient", subject.id)
            notes.append(f"{subject.plain} is not a Provenance entity; its current version was used.")
        except NotFound:
            patient = None
    if patient is None:
        raise AuditInputError("the assessment's Patient cannot be read")
    return PatientRecord(patient=patient, resources=resources), rows, notes


def verify_bundle(data: bytes, assessment: str | None = None, **kwargs: Any) -> list[VerifyReport]:
    """Offline review of an export: verify ``assessment``, or every assessment the export holds."""
    from smart_app.audit.source import BundleSource

    source = BundleSource.from_bytes(data)
    if assessment:
        return [verify_assessment(source, assessment, **kwargs)]
    refs: list[str] = []
    for rtype in ASSESSMENT_TYPES:
        refs.extend(f"{rtype}/{r.get('id')}" for r in source.search(rtype, {}))
    if not refs:
        raise AuditInputError("the export holds no ClinicalImpression or DocumentReference")
    return [verify_assessment(source, r, **kwargs) for r in refs]


def verify_exam(source: Source, reference: str, *, criteria_dirs: Sequence[Path] = ()) -> VerifyReport:
    """Explain and check the exam write that ``reference`` (an exam ``Observation/ID`` or its
    ``Provenance/ID``) belongs to: what each Observation records, in the words of the criteria release
    its Provenance names (which finding it informs), and whether it is still as entered. Raises
    :class:`AuditInputError` when it cannot be attempted."""
    from smart_app.drafts.exam import exam_key, provenance_key

    ref = Ref.parse(reference)
    if ref is None:
        raise AuditInputError(f"{reference!r} is not a reference")
    current = _read_audited(source, ref)
    if ref.type != "Provenance" and not (exam_identifiers(current) or has_entered_tag(current)):
        raise AuditInputError(f"{ref.plain} is not an exam Observation entered through the app")
    report = VerifyReport(assessment=ref.plain, reproduced=False, differences=[], kind=EXAM)
    if ref.type == "Provenance":
        if not (has_entered_tag(current) and is_app_provenance(current, app_device_refs(source))):
            raise AuditInputError(f"{ref.plain} is not the Provenance of an exam entered through the app")
        prov = current
    else:
        found = [p for p in find_provenance(source, ref) if has_entered_tag(p)]
        if not found:
            report.differences.append(
                Difference("provenance", None, "an app Provenance naming the clinician who entered it")
            )
            report.notes.append(
                f"No Provenance of an exam entered through the app targets {ref.plain}: who entered it, and "
                "through what, cannot be traced."
            )
            return report
        prov = found[0]
    report.provenance = f"Provenance/{prov.get('id')}"
    criteria = provenance_criteria(prov)
    report.criteria = criteria
    author = provenance_author(prov)
    report.evaluated_at = str(prov.get("recorded") or "") or None
    questions = _exam_questions(str(criteria.get("version") or ""), criteria_dirs, report.notes)
    recorded = prov.get("recorded") or "at an unrecorded time"
    report.notes.append(
        f"Exam entered by {author or 'an unnamed user'} through the back mice app "
        f"(version {software_version_of(prov) or 'not named'}), recorded {recorded}, coded with criteria "
        f"{criteria.get('version') or 'not named'}."
    )
    keys: list[str] = []
    lines: list[str] = []
    for target in prov.get("target") or []:
        tref = Ref.parse(target.get("reference")) if isinstance(target, dict) else None
        if tref is None or tref.type not in EXAM_TYPES:
            report.differences.append(
                Difference("provenance", target, "a target that is an exam Observation")
            )
            continue
        written, now = _written_and_current(source, tref, report)
        if written is None:
            continue
        values = exam_identifiers(written)
        key = exam_key(written)
        keys.append(values[0] if values else key)
        if key not in values:
            report.differences.append(Difference("evidence", values[0] if values else None, key))
            report.notes.append(
                f"The identifier of {tref.plain} is not the hash of what it records: it was changed after it "
                "was entered."
            )
        performers = {str((p or {}).get("reference")) for p in written.get("performer") or []}
        if author and author not in performers:
            report.differences.append(Difference("performer", sorted(performers), author))
        informs = _informs(written, questions)
        line = f"{tref.plain}: {finding_text(written)}" + (f" ({informs})" if informs else "")
        if now is not None and now is not written:
            changed = changed_elements(written, now)
            state = now.get("status")
            if changed:
                report.differences.append(Difference("content", tref.plain, "changed: " + ", ".join(changed)))
                line += f"; changed since entered ({', '.join(changed)})"
            elif state != written.get("status"):
                line += f"; now status {state}"
        lines.append(line)
    tags = [
        str(t.get("code"))
        for t in (prov.get("meta") or {}).get("tag") or []
        if isinstance(t, dict) and t.get("system") == EXAM_IDENTIFIER_SYSTEM
    ]
    if keys and tags and provenance_key(keys) not in tags:
        report.differences.append(Difference("evidence", tags[0], provenance_key(keys)))
        report.notes.append(
            f"The key of {report.provenance} does not match the Observations it names: they, or it, were "
            "changed after the exam was entered."
        )
    report.notes.extend(f"Records {line}" for line in lines)
    report.written = {"findings": lines}
    report.recomputed = {"findings": lines}
    report.reproduced = not report.differences
    return report


def _written_and_current(
    source: Source, ref: Ref, report: VerifyReport
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The version of an exam Observation as entered (the oldest the server keeps, or the one the
    Provenance names) and as it is now; ``(None, None)`` when it is gone."""
    try:
        now = source.read(ref.type, ref.id)
    except NotFound:
        report.differences.append(Difference("provenance", ref.plain, "not found"))
        report.notes.append(f"{ref.plain} was entered but is no longer in the chart.")
        return None, None
    version = ref.version
    if version is None:
        try:
            versions = source.history(ref.type, ref.id)
        except NotFound:
            versions = []
        version = version_id(versions[-1]) if versions else None
    if version is None or version == version_id(now):
        return now, now
    try:
        return source.vread(ref.type, ref.id, version), now
    except NotFound:
        report.notes.append(f"The version of {ref.plain} as entered ({version}) cannot be read back.")
        return now, now


def _exam_questions(version: str, criteria_dirs: Sequence[Path], notes: list[str]) -> list[tuple[str, Any]]:
    """``(title, coding)`` of each exam question (and sign) of the criteria release ``version``."""
    from smart_app.clinical.recording import exam_terms

    try:
        registry = registry_with(criteria_dirs)
        terms = exam_terms(registry.get(version))
    except (KeyError, ValueError):
        notes.append(f"Criteria {version or '(not named)'} are not known here: the findings are not named.")
        return []
    out: list[tuple[str, Any]] = []
    for question in terms.questions:
        if question.coding is not None:
            out.append((question.title, question.coding))
        out.extend((f"{question.title}: {sign.title}", sign.coding) for sign in question.signs)
    return out


def _informs(observation: dict[str, Any], questions: list[tuple[str, Any]]) -> str:
    codes = {
        (c.get("system"), c.get("code"))
        for c in (observation.get("code") or {}).get("coding") or []
        if isinstance(c, dict)
    }
    for title, coding in questions:
        if (coding.get("system"), coding.get("code")) in codes:
            return f"the criterion '{title}'"
    return ""
