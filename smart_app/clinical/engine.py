"""Evaluate a criteria version over one patient's record (docs/clinical-criteria.md#classification and
docs/clinical-criteria.md#assessment-output).

The engine is handed the operator table (:data:`smart_app.clinical.rules.OPERATORS` by default) and runs
the criteria document stage by stage: findings, the pain score, red flags, classification, next step. It
records what each rule returns; the rules themselves only read.

``assess`` is deterministic: the same record (in any entry order) and the same ``as_of`` give the same
Assessment, byte for byte in ``json.dumps(..., sort_keys=True)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from smart_app import fhirjson as fj
from smart_app.clinical.assessment import Assessment
from smart_app.clinical.criteria import Criteria, CriteriaError, CriteriaRegistry, default_registry
from smart_app.clinical.facts import READ_TYPES, Extractor, Facts
from smart_app.clinical.record import NotStreamable, PatientRecord, load_bundle, stream_bundle
from smart_app.clinical.rules import (
    ABSENT,
    OPERATORS,
    PRESENT,
    UNKNOWN,
    Context,
    FindingResult,
    FlagResult,
    Operator,
    Outcome,
    PainResult,
)

TYPE_CHECKING = False  # true for type checkers only: see smart_app/__init__.py
if TYPE_CHECKING:
    from typing import Any

UnknownInput = tuple[str, Mapping[str, "Any"], str]  # ladder input name, its data_dependencies entry, unread


def criteria_for(version: str | None = None, registry: CriteriaRegistry | None = None) -> Criteria:
    """The criteria release ``version`` (default: the newest release)."""
    return (registry or default_registry()).get(version)


@dataclass(frozen=True)
class ReadPlan:
    """The resource types to read, in two steps, from the criteria's ``data_dependencies``
    (docs/clinical-criteria.md#data-that-could-not-be-read): ``first`` are the sources of the findings,
    the red-flag screen and the pain score, so they decide the classification; ``ladder`` are the other
    sources of the treatment ladder's inputs, needed only when the classification leads to the ladder
    (:func:`leads_to_ladder`). A document without ``data_dependencies`` reads every type first."""

    first: tuple[str, ...]
    ladder: tuple[str, ...]


def read_plan(criteria: Criteria) -> ReadPlan:
    """The :class:`ReadPlan` of ``criteria``, each step in :data:`~smart_app.clinical.facts.READ_TYPES`
    order."""
    deps = criteria.data.get("data_dependencies")
    if not isinstance(deps, Mapping):
        return ReadPlan(first=READ_TYPES, ladder=())
    first: set[str] = set()
    for spec in deps.get("findings", {}).values():
        first.update(spec.get("types", ()))
    for stage in ("red_flags", "pain"):
        first.update(deps.get(stage, {}).get("types", ()))
    ladder: set[str] = set()
    for spec in deps.get("ladder", {}).values():
        ladder.update(spec.get("types", ()))
    return ReadPlan(
        first=tuple(t for t in READ_TYPES if t in first),
        ladder=tuple(t for t in READ_TYPES if t in ladder and t not in first),
    )


def leads_to_ladder(criteria: Criteria, classification: str) -> bool:
    """Whether the classification rule ``classification`` takes its next step from the treatment ladder
    (``"next_step": {"use": "treatment_ladder"}``, docs/clinical-criteria.md#treatment-ladder)."""
    for rule in criteria.data["classification"]:
        if rule["id"] == classification:
            step = rule["next_step"]
            return isinstance(step, Mapping) and step.get("use") == "treatment_ladder"
    return False


def assess(
    record: PatientRecord,
    as_of: datetime,
    criteria_version: str | None = None,
    *,
    registry: CriteriaRegistry | None = None,
    operators: Mapping[str, Operator] = OPERATORS,
) -> Assessment:
    """Assess ``record`` at evaluation time ``as_of`` (naive datetimes are taken as UTC) under the criteria
    release ``criteria_version`` (default: the newest)."""
    as_of = _utc(as_of)
    criteria = criteria_for(criteria_version, registry)
    with fj.gc_paused():
        facts, count = _extract(record, as_of, criteria)
        return evaluate(criteria, facts, record, as_of, count, operators)


def conclude(
    record: PatientRecord,
    as_of: datetime,
    criteria_version: str | None = None,
    *,
    registry: CriteriaRegistry | None = None,
    operators: Mapping[str, Operator] = OPERATORS,
) -> tuple[str, str]:
    """The classification and next step :func:`assess` gives ``record``, without its explanation: the
    decision stages alone, for re-evaluating a record many times (:mod:`smart_app.clinical.whatif`)."""
    conclude_with = concluder(record, as_of, criteria_version, registry=registry, operators=operators)
    return conclude_with((), record.unavailable)


def concluder(
    record: PatientRecord,
    as_of: datetime,
    criteria_version: str | None = None,
    *,
    registry: CriteriaRegistry | None = None,
    operators: Mapping[str, Operator] = OPERATORS,
) -> Callable[[Sequence[dict[str, Any]], Mapping[str, str]], tuple[str, str]]:
    """:func:`conclude` for ``record`` with resources added, many times over: ``record``'s own resources
    are extracted once, and each call ``(added, unavailable)`` gives the conclusion for ``record`` with
    ``added`` after its resources and ``unavailable`` as the types that could not be read."""
    as_of = _utc(as_of)
    criteria = criteria_for(criteria_version, registry)
    with fj.gc_paused():
        extractor = _fed(record, as_of, criteria)

    def conclude_with(added: Sequence[dict[str, Any]], unavailable: Mapping[str, str]) -> tuple[str, str]:
        trial = replace(record, resources=[*record.resources, *added], unavailable=dict(unavailable))
        with fj.gc_paused():
            twin = extractor.fork()
            for res in added:
                twin.feed(res)
            ctx = Context(
                criteria=criteria, facts=twin.finish(trial), record=trial, as_of=as_of, operators=operators
            )
            decision = _decide(ctx)
            return decision.classification, decision.next_step

    return conclude_with


def _extract(record: PatientRecord, as_of: datetime, criteria: Criteria) -> tuple[Facts, int]:
    """The facts of ``record`` and the number of resources it holds."""
    extractor = _fed(record, as_of, criteria)
    return extractor.finish(record), extractor.count + record.unmatched


def _fed(record: PatientRecord, as_of: datetime, criteria: Criteria) -> Extractor:
    """An extractor fed every resource of ``record``, not yet finished."""
    extractor = Extractor(as_of, criteria)
    for res in record.resources:
        extractor.feed(res)
    return extractor


def assess_bundle(
    data: bytes,
    as_of: datetime,
    criteria_version: str | None = None,
    *,
    registry: CriteriaRegistry | None = None,
    operators: Mapping[str, Operator] = OPERATORS,
) -> Assessment:
    """Bytes of a Bundle → Assessment without holding the whole Bundle as Python objects.

    Same result as ``assess(load_bundle(data), ...)``; raises ``UnusableInput`` likewise.
    """
    as_of = _utc(as_of)
    criteria = criteria_for(criteria_version, registry)
    extractor = Extractor(as_of, criteria)
    try:
        record = stream_bundle(data, extractor.feed)
    except NotStreamable:
        return assess(load_bundle(data), as_of, criteria.version, registry=registry, operators=operators)
    with fj.gc_paused():
        return evaluate(criteria, extractor.finish(record), record, as_of, extractor.count, operators)


def _utc(as_of: datetime) -> datetime:
    return as_of.replace(tzinfo=UTC) if as_of.tzinfo is None else as_of.astimezone(UTC)


def evaluate(
    criteria: Criteria,
    facts: Facts,
    record: PatientRecord,
    as_of: datetime,
    count: int,
    operators: Mapping[str, Operator] = OPERATORS,
) -> Assessment:
    """Run the criteria over extracted facts, stage by stage, and explain the conclusion."""
    ctx = Context(criteria=criteria, facts=facts, record=record, as_of=as_of, operators=operators)
    data = criteria.data
    decision = _decide(ctx)
    classification, next_step = decision.classification, decision.next_step
    rule_spec, outcome = decision.rule, decision.outcome
    ladder_spec, ladder_outcome = decision.ladder_step, decision.ladder_outcome
    screen, withheld, trace = decision.screen, decision.withheld, decision.trace
    differentials = _differentials(ctx)
    inputs = _unread_inputs(ctx) if isinstance(rule_spec["next_step"], dict) else []

    used: set[str] = set()
    for result in ctx.findings.values():
        used.update(result.evidence)
    for flag in ctx.flags:
        used.update(flag.evidence)
    for dx in differentials:
        used.update(dx["evidence"])
    if ctx.pain is not None:
        used.add(ctx.pain.fact.ref)
    used.update(outcome.evidence)
    if ladder_outcome is not None:
        used.update(ladder_outcome.evidence)
    used.update(ctx.consulted)  # e.g. the Patient whose birthDate age-new-onset evaluated

    site_concept = _nodule_site(ctx)
    site_text = fj.concept_label(site_concept) if site_concept else data["site_unknown_text"]
    suggestion = None if screen else _suggestion(ctx, next_step, site_concept, site_text, ladder_outcome)
    if suggestion is not None:
        used.update(suggestion["reason_references"])

    resources = {**facts.resources, record.patient_reference: record.patient}
    sources = [
        {"reference": ref, "version_id": fj.version_id(resources[ref]) if ref in resources else None}
        for ref in sorted(used)
    ]
    reasons = {**ctx.rejected, **facts.ignored}  # resource-level reasons take precedence
    ignored: list[dict[str, str]] = [
        {"reference": ref, "reason": reason} for ref, reason in sorted(reasons.items()) if ref not in used
    ]
    # a malformed element is reported with its path whether or not its resource was used
    ignored += [
        {"reference": ref, "path": path, "reason": reason} for (ref, path), reason in facts.problems.items()
    ]
    ignored.sort(key=lambda i: (i["reference"], i.get("path", "")))
    preliminary = sorted(
        {r for result in [*ctx.findings.values(), *ctx.flags] for r in result.preliminary} & used
    )

    findings_json = {
        spec["id"]: {
            "status": ctx.findings[spec["id"]].status,
            "evidence": list(ctx.findings[spec["id"]].evidence),
            "reason": ctx.findings[spec["id"]].reason,
            "title": spec["title"],
        }
        for spec in criteria.findings
    }
    checklist = _checklist(ctx)
    latest = None
    if ctx.pain is not None:
        when = ctx.pain.fact.when
        latest = {
            "score": _num(ctx.pain.score),
            "reference": ctx.pain.fact.ref,
            "time": when.text if when else None,
        }

    words = _words(ctx, rule_spec, next_step, site_text)
    return Assessment(
        classification=classification,
        next_step=next_step,
        headline=_headline(ctx, classification, words, withheld),
        patient=record.patient_reference,
        as_of=as_of.isoformat().replace("+00:00", "Z"),
        criteria={"url": criteria.url, "version": criteria.version, "title": criteria.title},
        findings=findings_json,
        checklist=checklist,
        red_flags=[
            {"id": f.id, "level": f.level, "title": f.title, "evidence": list(f.evidence), "reason": f.reason}
            for f in ctx.flags
        ],
        differentials=differentials,
        missing=_missing(ctx, next_step, ladder_spec, inputs),
        procedure_suggestion=suggestion,
        latest_pain=latest,
        rationale=_rationale(
            ctx, rule_spec, outcome, ladder_spec, ladder_outcome, differentials, withheld, inputs, preliminary
        ),
        opening=opening(ctx.data["summary"], classification, words),
        summary=_summary(ctx, checklist, classification, words),
        ignored=ignored,
        sources=sources,
        counts={"resources": count, "used": len(sources), "ignored": len(ignored)},
        unavailable=[
            {"resource_type": rtype, "reason": reason} for rtype, reason in sorted(record.unavailable.items())
        ],
        preliminary_evidence=preliminary,
        trace=tuple(trace),
    )


@dataclass(frozen=True)
class _Decision:
    """What the decision stages concluded, with the rules and outcomes that decided it."""

    classification: str
    next_step: str
    rule: Mapping[str, Any]
    outcome: Outcome
    ladder_step: Mapping[str, Any] | None
    ladder_outcome: Outcome | None
    screen: tuple[str, ...]  # the red-flag screen's unread types
    withheld: str | None  # a suggestion withheld because the screen is incomplete
    trace: list[dict[str, Any]]


def _decide(ctx: Context) -> _Decision:
    """Run the decision stages (docs/clinical-criteria.md#classification): findings, the pain score and
    red flags into ``ctx``, then the classification and the next step, a suggestion withheld when the
    red-flag screen could not be read."""
    data = ctx.criteria.data
    for spec in ctx.criteria.findings:
        result = ctx.run(spec["rule"], spec)
        if not isinstance(result, FindingResult):
            raise CriteriaError(f"finding {spec['id']}: {spec['rule']!r} is not a finding rule")
        ctx.findings[spec["id"]] = _honour_unavailable(ctx, spec, result)
    pain = ctx.run("pain_score", data["pain"])
    ctx.pain = pain.pain if isinstance(pain, PainResult) else None
    for spec in data["red_flags"]:
        flag = ctx.run(spec.get("rule", "coded"), spec)
        if not isinstance(flag, FlagResult):
            raise CriteriaError(f"red flag {spec['id']}: {spec.get('rule', 'coded')!r} is not a flag rule")
        if flag.raised:
            ctx.flags.append(flag)
    ctx.flags.sort(key=lambda f: (f.level != "block", f.id))

    trace: list[dict[str, Any]] = []
    classification, rule_spec, outcome = _classify(ctx, trace)
    next_step, ladder_spec, ladder_outcome = _next_step(ctx, rule_spec, trace)
    screen = _screen_unread(ctx)
    withheld: str | None = None
    if screen and next_step in data["suggestions"] and not any(f.level == "block" for f in ctx.flags):
        withheld, next_step = next_step, str(ctx.dependencies["red_flags"]["step_instead"])
        trace.append(
            {
                "stage": "next_step",
                "rule": "red-flag-screen-incomplete",
                "op": "unavailable",
                "value": True,
                "detail": f"{withheld} withheld, not read: {ctx.unread_text(screen)}",
                "evidence": [],
                "criteria": ctx.criteria.version,
            }
        )
    return _Decision(
        classification, next_step, rule_spec, outcome, ladder_spec, ladder_outcome, screen, withheld, trace
    )


def _honour_unavailable(ctx: Context, spec: Mapping[str, Any], result: FindingResult) -> FindingResult:
    """A finding whose source types could not be read may be present, never absent (criteria
    ``data_dependencies``, decision 'unavailable-findings')."""
    deps = ctx.dependencies.get("findings", {}).get(spec["id"], {})
    unread = ctx.unread(deps.get("types", ()))
    if not unread or result.status == PRESENT:
        return result
    text = ctx.unread_text(unread)
    if result.status == ABSENT:
        if result.evidence:
            reason = f"{result.reason}; but {text} could not be read and may record it present"
        else:
            reason = f"{text} could not be read: absence cannot be established"
    else:
        reason = f"{result.reason}; {text} could not be read"
    return FindingResult(
        UNKNOWN, result.evidence, reason, result.deciding, result.support, result.conflict, unread
    )


def _screen_unread(ctx: Context) -> tuple[str, ...]:
    """Source types of the red-flag screen that could not be read (empty: the screen is complete)."""
    return ctx.unread(ctx.dependencies.get("red_flags", {}).get("types", ()))


def _unread_inputs(ctx: Context) -> list[UnknownInput]:
    """Treatment-ladder inputs that are unknown: (name, spec, unread text)."""
    out = []
    for name, spec in sorted(ctx.dependencies.get("ladder", {}).items()):
        why = ctx.input_unknown(name)
        if why:
            out.append((name, spec, why))
    return out


def _num(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _classify(ctx: Context, trace: list[dict[str, Any]]) -> tuple[str, Mapping[str, Any], Outcome]:
    for position, rule in enumerate(ctx.data["classification"], start=1):
        outcome = ctx.evaluate(rule["when"])
        trace.append(
            {
                "stage": "classification",
                "rule": rule["id"],
                "position": position,
                "op": rule["when"]["op"],
                "value": outcome.value,
                "detail": outcome.detail,
                "evidence": list(outcome.evidence),
                "criteria": ctx.criteria.version,
            }
        )
        if outcome.value:
            return str(rule["id"]), rule, outcome
    raise CriteriaError("no classification rule applied (the last rule must be 'always')")


def _next_step(
    ctx: Context, rule: Mapping[str, Any], trace: list[dict[str, Any]]
) -> tuple[str, Mapping[str, Any] | None, Outcome | None]:
    spec = rule["next_step"]
    if isinstance(spec, str):
        return spec, None, None
    if isinstance(spec, dict) and spec.get("use") == "treatment_ladder":
        steps = ctx.data["treatment_ladder"]
    else:
        steps = spec
    for step in steps:
        cond = step.get("when", {"op": "always"})
        outcome = ctx.evaluate(cond)
        trace.append(
            {
                "stage": "next_step",
                "rule": step.get("id", step["step"]),
                "op": cond["op"],
                "value": outcome.value,
                "detail": outcome.detail,
                "evidence": list(outcome.evidence),
                "criteria": ctx.criteria.version,
            }
        )
        if outcome.value:
            return str(step["step"]), (step if "id" in step else None), (outcome if "id" in step else None)
    raise CriteriaError(f"no next step applied for {rule['id']}")


def _differentials(ctx: Context) -> list[dict[str, Any]]:
    """Differentials: current Conditions (any verification) or present Observations in the exam window."""
    active = set(ctx.data["reading"]["condition_clinical_active"])
    out = []
    for spec in ctx.data["differentials"]:
        refs = set()
        for fact in ctx.facts.of(spec["valueset"]):
            status = fact.supporting_status  # an abated Condition is not current (con-4)
            if fact.rtype == "Condition" and (status is None or status in active):
                refs.add(fact.ref)
            elif (
                fact.rtype == "Observation"
                and fact.polarity == PRESENT
                and not fact.preliminary
                and ctx.within(fact, "exam")
            ):
                refs.add(fact.ref)
        if refs:
            out.append({"id": spec["id"], "title": spec["title"], "evidence": sorted(refs)})
    return sorted(out, key=lambda d: d["id"])


def _nodule_site(ctx: Context) -> dict[str, Any] | None:
    """The bodySite of the resource that decided the site finding (the nodule's site), if any."""
    result = ctx.findings.get(ctx.criteria.setting("site_finding"))
    for fact in result.deciding if result else ():
        sites = fj.body_sites(fact.resource)
        if sites:
            return sites[0]
    return None


def _suggestion(
    ctx: Context, step: str, site: dict[str, Any] | None, site_text: str, ladder: Outcome | None
) -> dict[str, Any] | None:
    spec = ctx.data["suggestions"].get(step)
    if spec is None or any(f.level == "block" for f in ctx.flags):
        return None
    term = ctx.criteria.terminology
    codes = [
        {"system": c["system"], "code": c["code"], "display": term.display(c["system"], c["code"]) or ""}
        for c in spec["codes"]
    ]
    body_site: dict[str, Any] = {"text": site_text}
    if site is not None:
        coding = [
            {k: c[k] for k in ("system", "code", "display") if isinstance(c.get(k), str)}
            for c in fj.as_list(site.get("coding"))
            if isinstance(c, dict)
        ]
        if coding:
            body_site = {"coding": coding, "text": site_text}
    refs: set[str] = set()
    for finding in ctx.criteria.findings:  # the findings that support the suggestion (met when present)
        result = ctx.findings[finding["id"]]
        if result.status == PRESENT and finding["met_when"] == PRESENT:
            refs.update(result.evidence)
    if ladder is not None:
        refs.update(ladder.evidence)
    return {
        "kind": step,
        "codes": codes,
        "text": spec["text"].format(site=site_text),
        "body_site": body_site,
        "caveat": spec["caveat"],
        "reason_references": sorted(refs),
    }


def _words(ctx: Context, rule: Mapping[str, Any], step: str, site: str) -> dict[str, str]:
    """What the headline and the opening sentence templates may name: ``flags`` (the BLOCK flags),
    ``why`` (the recorded negative criteria of the rule that applied), ``site``, ``step`` and
    ``unknown`` (the supporting criteria not established)."""
    findings = ctx.criteria.findings
    return {
        "flags": "; ".join(f.title for f in ctx.flags if f.level == "block"),
        "why": "; ".join(
            spec.get("absent_text", spec["id"])
            for spec in findings
            if ctx.findings[spec["id"]].status == "absent" and spec["id"] in _finding_ids(rule["when"])
        ),
        "site": site,
        "step": str(ctx.data["steps"][step]),
        "unknown": ", ".join(
            f"{spec['title'][:1].lower()}{spec['title'][1:]}"
            for spec in findings
            if spec["met_when"] == PRESENT and ctx.findings[spec["id"]].status == UNKNOWN
        ),
    }


def _headline(ctx: Context, classification: str, words: Mapping[str, str], withheld: str | None) -> str:
    headline = str(ctx.data["headlines"][classification].format(**words))
    screen = _screen_unread(ctx)
    if screen and not any(f.level == "block" for f in ctx.flags):
        spec = ctx.dependencies["red_flags"]
        template = spec["headline_withheld"] if withheld else spec["headline"]
        headline = template.format(headline=headline, types=", ".join(screen))
    return headline


def _finding_ids(cond: Mapping[str, Any]) -> set[str]:
    ids = {cond["id"]} if cond.get("op") == "finding" else set()
    for sub in cond.get("of", []) if isinstance(cond.get("of"), list) else []:
        ids |= _finding_ids(sub)
    return ids


def _checklist(ctx: Context) -> list[dict[str, Any]]:
    """Each finding as a criterion: met, not met or unknown, with the words that say so.

    A criterion is met when its finding has the status ``met_when`` says (``present`` for most; ``absent``
    for NEURO_DEFICIT, since back mice cause no deficit). ``label`` names the criterion as met: the title,
    or "no <title>" for a criterion met by absence. The one place this rule lives.
    """
    rows = []
    specs = {spec["id"]: spec for spec in ctx.criteria.findings}
    for finding_id in ctx.criteria.setting("checklist_order"):
        spec = specs[finding_id]
        result = ctx.findings[spec["id"]]
        if result.status == UNKNOWN:
            verdict = "unknown"
        elif result.status == spec["met_when"]:
            verdict = "met"
        else:
            verdict = "not-met"
        title = str(spec["title"])
        label = title if spec["met_when"] == PRESENT else f"no {title[:1].lower()}{title[1:]}"
        rows.append(
            {
                "finding": spec["id"],
                "title": title,
                "label": label,
                "criterion": spec["criterion"],
                "met_when": spec["met_when"],
                "verdict": verdict,
                "status": result.status,
                "reason": result.reason,
                "evidence": list(result.evidence),
            }
        )
    return rows


def opening(summary: Mapping[str, Any], classification: str, words: Mapping[str, str]) -> str:
    """The written assessment's opening sentence (docs/clinical-criteria.md#what-the-app-writes): one
    fixed sentence (1.0.0), or the one of the classification (1.1.0: it states what was concluded)."""
    template = summary["opening"]
    if isinstance(template, Mapping):
        return str(template[classification]).format(**words)
    return str(template)


def _summary(
    ctx: Context, checklist: list[dict[str, Any]], classification: str, words: Mapping[str, str]
) -> str:
    text = ctx.data["summary"]
    verdicts = {row["finding"]: row["verdict"] for row in checklist}
    met, not_met, unknown = (
        [spec["criterion"] for spec in ctx.criteria.findings if verdicts[spec["id"]] == verdict]
        for verdict in ("met", "not-met", "unknown")
    )
    parts = [
        opening(text, classification, words),
        text["criteria"].format(
            met=", ".join(met) or "none",
            not_met=", ".join(not_met) or "none",
            unknown=", ".join(unknown) or "none",
        ),
        text["caveat"],
        text["confirm"],
    ]
    block = [f"{f.title} ({f.source})" for f in ctx.flags if f.level == "block"]
    warn = [f"{f.title} ({f.source})" for f in ctx.flags if f.level == "warn"]
    if ctx.record.unavailable:
        parts.append(text["unavailable"].format(unread=ctx.unread_text(ctx.record.unavailable)))
    if _screen_unread(ctx) and not block:
        parts.append(text["screen"])
    if block:
        parts.append(text["withheld"].format(flags="; ".join(block)))
    if warn:
        parts.append(text["warn"].format(flags="; ".join(warn)))
    return " ".join(parts)


def _rationale(
    ctx: Context,
    rule: Mapping[str, Any],
    outcome: Outcome,
    ladder: Mapping[str, Any] | None,
    ladder_outcome: Outcome | None,
    differentials: list[dict[str, Any]],
    withheld: str | None,
    inputs: list[UnknownInput],
    preliminary: list[str],
) -> list[str]:
    position = [r["id"] for r in ctx.data["classification"]].index(rule["id"]) + 1
    lines = [
        f"{rule['rationale']} (rule {position} '{rule['id']}': {outcome.detail}; "
        f"criteria {ctx.criteria.version})"
    ]
    if ladder is not None and ladder_outcome is not None:
        text = ladder["rationale"]
        for name, _, _ in inputs:
            text = ladder.get("rationale_if_unknown", {}).get(name, text)
        lines.append(f"{text} (treatment ladder '{ladder['id']}': {ladder_outcome.detail})")
    for _, spec, why in inputs:
        lines.append(spec["rationale"].format(unread=why))
    screen = _screen_unread(ctx)
    if screen:
        deps = ctx.dependencies["red_flags"]
        unread = ctx.unread_text(screen)
        if withheld:
            lines.append(deps["rationale_withheld"].format(unread=unread, step=ctx.data["steps"][withheld]))
        else:
            lines.append(deps["rationale"].format(unread=unread))
    for flag in ctx.flags:
        if flag.level == "block":
            lines.append(f"Red flag {flag.id} ({flag.title}): {flag.reason}. Procedure suggestion withheld.")
        else:
            lines.append(
                f"Warning {flag.id} ({flag.title}): {flag.reason}. Shown for review; the suggestion stays."
            )
    for fid, result in sorted(ctx.findings.items()):
        if result.conflict or result.unread:
            lines.append(f"{fid} is unknown: {result.reason}.")
    if preliminary:
        lines.append(
            f"Preliminary evidence of danger counted ({', '.join(preliminary)}): it withholds a procedure "
            f"until it is confirmed or corrected (criteria {ctx.criteria.version})."
        )
    if differentials:
        titles = ", ".join(d["title"] for d in differentials)
        lines.append(f"Differentials recorded: {titles}. {ctx.data['differentials_note']}")
    return lines


def _missing(
    ctx: Context, step: str, ladder: Mapping[str, Any] | None, inputs: list[UnknownInput]
) -> list[dict[str, str]]:
    guide = ctx.data["missing"]
    out = []
    for spec in ctx.criteria.findings:
        result: FindingResult = ctx.findings[spec["id"]]
        if result.status == UNKNOWN and spec["id"] in guide:
            what = guide[spec["id"]]["what"]
            if result.conflict:
                what = f"{what} (records conflict: re-examine and record once)"
            if result.unread:
                what = f"{what}: {ctx.unread_text(result.unread)} could not be read"
            out.append({"finding": spec["id"], "what": what, "how": guide[spec["id"]]["how"]})
    pain_missing = ctx.criteria.setting("pain_missing")
    if ladder is not None and ladder.get("when", {}).get("op") == "no_latest_pain" and pain_missing in guide:
        out.append({"finding": pain_missing, **guide[pain_missing]})
    for _, spec, why in inputs:
        types = ", ".join(ctx.unread(spec["types"]))
        out.append(
            {
                "finding": str(spec["missing"]["id"]),
                "what": spec["missing"]["what"].format(unread=why),
                "how": spec["missing"]["how"].format(types=types),
            }
        )
    screen = _screen_unread(ctx)
    if screen:
        text = ctx.dependencies["red_flags"]["missing"]
        out.append(
            {
                "finding": str(text["id"]),
                "what": text["what"].format(unread=ctx.unread_text(screen)),
                "how": text["how"].format(types=", ".join(screen)),
            }
        )
    return out
