"""``audit list``: every resource the app wrote, grouped per write, with its status and the findings an
auditor should look at (docs/auditors.md#list). Two kinds of write: the app's drafts of an assessment, and
the focused exam a clinician entered through the app (docs/auditors.md#exam), told apart by their tags."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from smart_app.audit.model import (
    ASSESSMENT,
    EXAM,
    AuditReport,
    Finding,
    Write,
    WrittenResource,
    app_identifiers,
    has_app_tag,
    has_entered_tag,
    split_canonical,
)
from smart_app.audit.source import NotAccessible, NotFound, Source, UnsupportedSearch
from smart_app.drafts.written import ASSESSMENT_TYPES, DRAFT_TYPES, EXAM_TYPES, resource_state
from smart_app.fhirjson import Ref, version_id
from smart_app.fhirjson import reference as _reference
from smart_app.vocabulary import (
    APP_DEVICE,
    CRITERIA_URL,
    DEVICE_IDENTIFIER_SYSTEM,
    DEVICE_IDENTIFIER_VALUE,
    DRAFT_IDENTIFIER_SYSTEM,
    ENTERED_CODE,
    EXAM_IDENTIFIER_SYSTEM,
    WORKFLOW_CODE,
    WORKFLOW_SYSTEM,
)

TAG_PARAM = f"{WORKFLOW_SYSTEM}|{WORKFLOW_CODE}"
ENTERED_TAG_PARAM = f"{WORKFLOW_SYSTEM}|{ENTERED_CODE}"
IDENTIFIER_PARAM = f"{DRAFT_IDENTIFIER_SYSTEM}|"
EXAM_IDENTIFIER_PARAM = f"{EXAM_IDENTIFIER_SYSTEM}|"
DEVICE_IDENTIFIER_PARAM = f"{DEVICE_IDENTIFIER_SYSTEM}|{DEVICE_IDENTIFIER_VALUE}"

#: Elements that a sign-off or a server may legitimately change; anything else differing from the
#: written version (the narrative included: it states the conclusion, as the codings do) is
#: ``changed-since-written``.
WORKFLOW_ELEMENTS = frozenset({"meta", "status", "docStatus", "id", "statusReason"})


def patient_of(resource: dict[str, Any]) -> str | None:
    """The Patient a written resource is about (``subject`` or, for DetectedIssue, ``patient``)."""
    for key in ("subject", "patient"):
        value = resource.get(key)
        if isinstance(value, dict):
            ref = Ref.parse(value.get("reference"))
            if ref and ref.type == "Patient":
                return ref.plain
    return None


def app_device_refs(source: Source) -> frozenset[str]:
    """References that mean the app: ``Device/smart-app-back-mice`` and every Device carrying the app's
    device identifier (the write-back creates it conditionally, so the server picks its id)."""
    refs = {APP_DEVICE}
    try:
        devices = source.search("Device", {"identifier": DEVICE_IDENTIFIER_PARAM})
    except UnsupportedSearch:
        devices = source.search("Device", {})
    for device in devices:
        if any(
            i.get("system") == DEVICE_IDENTIFIER_SYSTEM and i.get("value") == DEVICE_IDENTIFIER_VALUE
            for i in device.get("identifier") or []
            if isinstance(i, dict)
        ):
            refs.add(reference_of_resource(device))
    return frozenset(refs)


def is_app_device(who: Any, devices: frozenset[str] = frozenset({APP_DEVICE})) -> bool:
    """``agent.who`` names the app Device, by literal reference or by its device identifier."""
    if not isinstance(who, dict):
        return False
    ref = Ref.parse(who.get("reference"))
    if ref is not None and ref.plain in devices:
        return True
    ident = who.get("identifier") or {}
    return bool(
        ident.get("system") == DEVICE_IDENTIFIER_SYSTEM and ident.get("value") == DEVICE_IDENTIFIER_VALUE
    )


def is_app_provenance(prov: dict[str, Any], devices: frozenset[str] = frozenset({APP_DEVICE})) -> bool:
    return any(is_app_device(a.get("who"), devices) for a in prov.get("agent") or [] if isinstance(a, dict))


def provenance_author(prov: dict[str, Any], devices: frozenset[str] = frozenset({APP_DEVICE})) -> str | None:
    """The agent typed ``author`` (the clinician from fhirUser; the app Device when no user was known),
    else the first agent that is not the app."""
    fallback: str | None = None
    for agent in prov.get("agent") or []:
        if not isinstance(agent, dict):
            continue
        who = (agent.get("who") or {}).get("reference")
        codes = {c.get("code") for c in (agent.get("type") or {}).get("coding") or [] if isinstance(c, dict)}
        if "author" in codes and who:
            return str(who)
        if who and not is_app_device(agent.get("who"), devices):
            fallback = fallback or str(who)
    return fallback


def provenance_criteria(prov: dict[str, Any]) -> dict[str, str | None]:
    """``Provenance.policy`` = criteria canonical ``url|version``
    (docs/clinical-criteria.md#canonical-urls-and-code-systems)."""
    policies = [p for p in prov.get("policy") or [] if isinstance(p, str)]
    chosen = next((p for p in policies if p.startswith(CRITERIA_URL)), policies[0] if policies else None)
    if chosen is None:
        return {"url": None, "version": None}
    url, version = split_canonical(chosen)
    return {"url": url, "version": version}


def _day(value: str | None) -> date | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).date()
    except ValueError:
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            return None


def changed_elements(written: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Top-level elements whose content differs, ignoring the workflow elements (status, meta, narrative)."""
    keys = (set(written) | set(current)) - WORKFLOW_ELEMENTS
    return sorted(k for k in keys if written.get(k) != current.get(k))


@dataclass
class _Collector:
    source: Source
    patient: str | None
    devices: frozenset[str] = frozenset({APP_DEVICE})
    cache: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)
    forbidden: set[str] = field(default_factory=set)
    first_versions: dict[str, str | None] = field(default_factory=dict)

    def search_any(
        self, resource_type: str, searches: Iterable[Sequence[dict[str, str]]]
    ) -> list[dict[str, Any]]:
        """Union of several searches; each is a list of alternatives, narrowest first, and the first the
        server accepts is used (a refused parameter is dropped, never fatal). When the server accepts
        none at all, every resource of the type is read and the caller's filters decide."""
        found: dict[str, dict[str, Any]] = {}
        accepted = False
        for alternatives in searches:
            for params in alternatives:
                try:
                    results = self.source.search(resource_type, params)
                except UnsupportedSearch:
                    continue
                accepted = True
                for res in results:
                    found[reference_of_resource(res)] = res
                break
        if not accepted:
            for res in self.source.search(resource_type, {}):
                found[reference_of_resource(res)] = res
        for ref, res in found.items():
            self.cache[ref] = res
        return list(found.values())

    def written_version(self, ref: Ref) -> str | None:
        """The version the app wrote: the one a versioned reference names, else the oldest version in
        the resource's history (the app created it; later versions are edits), whatever the server's
        version ids look like. ``None`` when the server keeps no history of it."""
        if ref.version is not None:
            return ref.version
        if ref.plain not in self.first_versions:
            try:
                versions = self.source.history(ref.type, ref.id)
            except (NotFound, NotAccessible):
                versions = []
            self.first_versions[ref.plain] = version_id(versions[-1]) if versions else None
        return self.first_versions[ref.plain]

    def get(self, ref: Ref) -> dict[str, Any] | None:
        key = ref.plain
        if key in self.cache:
            return self.cache[key]
        if key in self.missing or key in self.forbidden:
            return None
        try:
            res = self.source.read(ref.type, ref.id)
        except NotAccessible:
            self.forbidden.add(key)
            return None
        except NotFound:
            self.missing.add(key)
            return None
        self.cache[key] = res
        return res


def _patient_params(resource_type: str, patient: str | None) -> dict[str, str]:
    if patient is None:
        return {}
    return {"patient": patient.split("/")[-1]} if resource_type != "Provenance" else {}


def _with_fallback(base: dict[str, str], extra: dict[str, str]) -> list[dict[str, str]]:
    return [{**base, **extra}, base] if extra else [base]


def list_writes(source: Source, patient: str | None = None, since: date | None = None) -> AuditReport:
    """Find every write-back of the app on ``source`` and check each against what is there now.

    Found by ``Provenance`` naming ``Device/smart-app-back-mice`` as agent, and by ``meta.tag``
    draft-requires-review / entered-through-app and the draft / exam identifier systems on the written
    resource types. A write is the set of targets of one app Provenance (an exam write when the Provenance
    says the data was entered through the app); written resources no Provenance covers are grouped around
    their assessment (exam Observations, per Observation) and reported.
    """
    patient_ref = (
        None if patient is None else (patient if patient.startswith("Patient/") else f"Patient/{patient}")
    )
    col = _Collector(source, patient_ref)
    findings: list[Finding] = []

    devices = app_device_refs(source)
    col.devices = devices
    provenances = col.search_any(
        "Provenance", [[{"_tag": TAG_PARAM}], [{"_tag": ENTERED_TAG_PARAM}], [{"agent": APP_DEVICE}]]
    )
    candidates: dict[str, dict[str, Any]] = {}
    for rtype in (*DRAFT_TYPES, *EXAM_TYPES):
        extra = _patient_params(rtype, patient_ref)
        tag, identifier = (
            (ENTERED_TAG_PARAM, EXAM_IDENTIFIER_PARAM)
            if rtype in EXAM_TYPES
            else (TAG_PARAM, IDENTIFIER_PARAM)
        )
        variants = [
            _with_fallback({"_tag": tag}, extra),
            _with_fallback({"identifier": identifier}, extra),
        ]
        for res in col.search_any(rtype, variants):
            if has_app_tag(res) or app_identifiers(res):
                candidates[reference_of_resource(res)] = res

    writes: list[Write] = []
    covered: set[str] = set()
    for prov in sorted(provenances, key=lambda p: (str(p.get("recorded")), reference_of_resource(p))):
        if not is_app_provenance(prov, devices):
            if has_app_tag(prov):
                findings.append(
                    Finding(
                        "tag-without-provenance",
                        reference_of_resource(prov),
                        "Provenance carries the app's draft tag "
                        "but does not name Device/smart-app-back-mice as an agent",
                    )
                )
            continue
        write, write_findings = _write_from_provenance(col, prov)
        covered.update(r.reference for r in write.resources)
        if _in_scope(write, patient_ref, since):
            writes.append(write)
            findings.extend(write_findings)

    orphans = {ref: res for ref, res in candidates.items() if ref not in covered}
    for write, write_findings in _orphan_writes(col, orphans):
        if _in_scope(write, patient_ref, since):
            writes.append(write)
            findings.extend(write_findings)
    for ref, res in sorted(orphans.items()):
        if app_identifiers(res):
            continue
        if patient_ref is not None and patient_of(res) != patient_ref:
            continue
        findings.append(
            Finding(
                "tag-without-provenance",
                ref,
                "carries the app's draft tag but no app identifier and no app Provenance: written by "
                "something else",
            )
        )
    writes.sort(key=lambda w: (w.written_at or "", w.assessment or "", w.provenance or ""))
    findings.sort(key=lambda f: (f.reference, f.kind, f.detail))
    return AuditReport(writes=writes, findings=findings)


def _in_scope(write: Write, patient_ref: str | None, since: date | None) -> bool:
    if patient_ref is not None and write.patient != patient_ref:
        return False
    if since is not None:
        day = _day(write.written_at)
        if day is None or day < since:
            return False
    return True


def _check_resource(col: _Collector, ref: Ref, findings: list[Finding]) -> WrittenResource:
    current = col.get(ref)
    if current is None:
        state = "not-accessible" if ref.plain in col.forbidden else "missing"
        return WrittenResource(ref.plain, ref.type, ref.version, None, state)
    written_version = col.written_version(ref)
    now_version = version_id(current)
    item = WrittenResource(
        ref.plain, ref.type, written_version, now_version, resource_state(current), resource=current
    )
    if written_version is not None and now_version is not None and now_version != written_version:
        try:
            written = col.source.vread(ref.type, ref.id, written_version)
        except NotFound:
            item.changed = ["(the written version cannot be read back)"]
        else:
            item.changed = changed_elements(written, current)
        if item.changed:
            findings.append(
                Finding(
                    "changed-since-written",
                    f"{ref.plain}/_history/{now_version}",
                    f"written as version {written_version}, now version {now_version}; changed: "
                    + ", ".join(item.changed),
                )
            )
    return item


def _write_status(resources: list[WrittenResource], assessment: str | None, kind: str = ASSESSMENT) -> str:
    main = next((r for r in resources if r.reference == assessment), None)
    if main is not None and main.state == "entered-in-error":
        return "entered-in-error"
    if resources and all(r.state == "entered-in-error" for r in resources):
        return "entered-in-error"
    if any(r.changed or r.state == "missing" for r in resources):
        return "changed-since-written"
    if kind == EXAM:
        return "recorded"
    if main is not None and main.state == "signed":
        return "signed"
    return "draft"


def _write_from_provenance(col: _Collector, prov: dict[str, Any]) -> tuple[Write, list[Finding]]:
    findings: list[Finding] = []
    prov_ref = reference_of_resource(prov)
    resources: list[WrittenResource] = []
    for target in prov.get("target") or []:
        ref = Ref.parse((target or {}).get("reference") if isinstance(target, dict) else None)
        if ref is None:
            findings.append(
                Finding(
                    "provenance-target-missing", prov_ref, f"target {target!r} is not a literal reference"
                )
            )
            continue
        item = _check_resource(col, ref, findings)
        if item.state == "missing":
            findings.append(
                Finding(
                    "provenance-target-missing", ref.plain, f"{prov_ref} targets it; not found on the server"
                )
            )
        resources.append(item)
    sources: list[str] = []
    for entity in prov.get("entity") or []:
        what = (entity or {}).get("what") if isinstance(entity, dict) else None
        ref = Ref.parse((what or {}).get("reference") if isinstance(what, dict) else None)
        if ref is None:
            continue
        sources.append(str(ref))
        if ref.type == "Patient":
            continue
        current = col.get(ref)
        if current is None and ref.plain in col.forbidden:
            continue
        if current is None:
            findings.append(
                Finding("source-missing", str(ref), f"used by {prov_ref}; no longer on the server")
            )
        elif ref.version is not None and version_id(current) not in (None, ref.version):
            findings.append(
                Finding(
                    "source-amended",
                    str(ref),
                    f"used by {prov_ref} at version {ref.version}; now version {version_id(current)}",
                )
            )
    assessment = next((r.reference for r in resources if r.resource_type in ASSESSMENT_TYPES), None)
    patient = next(
        (p for r in resources if r.resource is not None and (p := patient_of(r.resource)) is not None), None
    )
    kind = EXAM if has_entered_tag(prov) else ASSESSMENT
    write = Write(
        assessment=assessment,
        patient=patient,
        written_at=str(prov["recorded"]) if prov.get("recorded") else None,
        author=provenance_author(prov, col.devices),
        criteria=provenance_criteria(prov),
        resources=resources,
        provenance=prov_ref,
        status=_write_status(resources, assessment, kind),
        provenance_resource=prov,
        sources=sources,
        kind=kind,
    )
    return write, findings


def _referenced(resource: dict[str, Any]) -> set[str]:
    """Plain references a ServiceRequest/DetectedIssue makes to an assessment."""
    out: set[str] = set()
    for key in ("supportingInfo", "implicated", "reasonReference"):
        for item in resource.get(key) or []:
            ref = Ref.parse(item.get("reference")) if isinstance(item, dict) else None
            if ref is not None:
                out.add(ref.plain)
    return out


def _orphan_writes(col: _Collector, orphans: dict[str, dict[str, Any]]) -> list[tuple[Write, list[Finding]]]:
    """App-identified resources no app Provenance covers: one write per assessment, plus what points to it;
    an exam Observation is a write of its own."""
    ours = {ref: res for ref, res in orphans.items() if app_identifiers(res)}
    groups: dict[str, list[str]] = {}
    for ref, res in sorted(ours.items()):
        if res.get("resourceType") in (*ASSESSMENT_TYPES, *EXAM_TYPES):
            groups.setdefault(ref, []).append(ref)
    for ref, res in sorted(ours.items()):
        if res.get("resourceType") in (*ASSESSMENT_TYPES, *EXAM_TYPES):
            continue
        owner = next((a for a in sorted(_referenced(res)) if a in groups), ref)
        groups.setdefault(owner, []).append(ref)
    out: list[tuple[Write, list[Finding]]] = []
    for owner, members in groups.items():
        findings: list[Finding] = []
        resources = [_check_resource(col, Ref.parse(m) or Ref("?", m), findings) for m in members]
        for m in members:
            findings.append(
                Finding(
                    "missing-provenance",
                    m,
                    "written with the app's identifier but no app Provenance targets it",
                )
            )
        assessment = owner if ours[owner].get("resourceType") in ASSESSMENT_TYPES else None
        main = ours[owner]
        kind = EXAM if main.get("resourceType") in EXAM_TYPES else ASSESSMENT
        out.append(
            (
                Write(
                    assessment=assessment,
                    patient=patient_of(main),
                    written_at=str((main.get("meta") or {}).get("lastUpdated") or "") or None,
                    author=None,
                    criteria=_criteria_from_resource(main),
                    resources=resources,
                    provenance=None,
                    status=_write_status(resources, assessment, kind),
                    kind=kind,
                ),
                findings,
            )
        )
    return out


def _criteria_from_resource(resource: dict[str, Any]) -> dict[str, str | None]:
    """Criteria from ClinicalImpression.protocol / ServiceRequest.instantiatesUri when no Provenance says."""
    for key in ("protocol", "instantiatesUri"):
        for value in resource.get(key) or []:
            if isinstance(value, str) and value.startswith(CRITERIA_URL):
                url, version = split_canonical(value)
                return {"url": url, "version": version}
    return {"url": None, "version": None}


def reference_of_resource(resource: dict[str, Any]) -> str:
    """``Type/id`` of a resource as read from the server."""
    return _reference(resource) or f"{resource.get('resourceType')}/(no id)"
