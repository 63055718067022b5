"""The rules of the criteria engine: pure functions with one signature, in one table.

Every rule is ``rule(ctx, spec) -> Result``: it reads the :class:`Context` (the criteria, the facts, the
record and what earlier stages concluded) and returns a result that carries its verdict, the references
that decided it, the reason in words, and the records it looked at and set aside (``rejected``, for the
assessment's ``ignored`` list). A rule never changes the context or the facts: the engine records what
rules return (docs/architecture.md#clinical-core). The table :data:`OPERATORS` maps every name a
criteria document uses (``rule`` of a finding or red flag, ``op`` of a condition) to its rule; the engine
is handed the table. The reading rules are in docs/clinical-criteria.md#findings,
docs/clinical-criteria.md#red-flags and docs/clinical-criteria.md#classification.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from smart_app import fhirjson as fj
from smart_app.clinical.criteria import Criteria, CriteriaError
from smart_app.clinical.facts import Fact, Facts
from smart_app.clinical.record import PatientRecord

TYPE_CHECKING = False  # true for type checkers only: see smart_app/__init__.py
if TYPE_CHECKING:
    from typing import Any

PRESENT, ABSENT, UNKNOWN = "present", "absent", "unknown"
Rejection = tuple[str, str]  # (reference, why it was set aside)


class Rejections:
    """The records one rule call set aside, in the order it met them (a rule's own output channel)."""

    def __init__(self) -> None:
        self.items: list[Rejection] = []

    def add(self, fact: Fact, reason: str) -> None:
        self.items.append((fact.ref, reason))

    def extend(self, items: Iterable[Rejection]) -> None:
        self.items.extend(items)

    def __call__(self) -> tuple[Rejection, ...]:
        return tuple(self.items)


@dataclass(frozen=True, kw_only=True)
class Result:
    """What every rule returns besides its verdict."""

    rejected: tuple[Rejection, ...] = ()
    #: References read to decide, whether or not they became evidence (e.g. the Patient's birth date).
    consulted: tuple[str, ...] = ()
    #: Evidence that is a preliminary Observation (counted for danger only: 1.1.0 ``preliminary_danger``).
    preliminary: tuple[str, ...] = ()


@dataclass(frozen=True)
class FindingResult(Result):
    status: str
    evidence: tuple[str, ...]
    reason: str
    deciding: tuple[Fact, ...] = ()  # facts that made it present/absent (newest first)
    support: tuple[Fact, ...] = ()  # every fact that says "present", newest first
    conflict: bool = False
    unread: tuple[str, ...] = ()  # source types that could not be read and made it unknown


@dataclass(frozen=True)
class FlagResult(Result):
    """A red flag: raised when it has evidence."""

    id: str
    level: str
    title: str
    evidence: tuple[str, ...]
    reason: str
    source: str

    @property
    def raised(self) -> bool:
        return bool(self.evidence)


@dataclass(frozen=True)
class Pain:
    score: float
    fact: Fact


@dataclass(frozen=True)
class PainResult(Result):
    pain: Pain | None


@dataclass(frozen=True)
class Outcome(Result):
    value: bool
    detail: str
    evidence: tuple[str, ...] = ()


Operator = Callable[["Context", Mapping[str, "Any"]], Result]


@dataclass
class Context:
    """What a rule may read. The engine fills ``findings``, ``flags`` and ``pain`` stage by stage and
    records what each rule returns (``rejected``, ``consulted``); rules only read."""

    criteria: Criteria
    facts: Facts
    record: PatientRecord
    as_of: datetime
    operators: Mapping[str, Operator]
    findings: dict[str, FindingResult] = field(default_factory=dict)
    flags: list[FlagResult] = field(default_factory=list)
    pain: Pain | None = None
    rejected: dict[str, str] = field(default_factory=dict)
    consulted: set[str] = field(default_factory=set)
    _unknown_inputs: dict[str, str | None] = field(default_factory=dict)  # memo: ladder input -> unread

    @property
    def data(self) -> Mapping[str, Any]:
        return self.criteria.data

    def run(self, name: str, spec: Mapping[str, Any]) -> Result:
        """Run the rule ``name`` of the operator table and record what it set aside and consulted."""
        rule = self.operators.get(name)
        if rule is None:
            raise CriteriaError(f"unknown rule or operator {name!r}")
        result = rule(self, spec)
        for ref, reason in result.rejected:
            self.rejected.setdefault(ref, reason)
        self.consulted.update(result.consulted)
        return result

    def within(self, fact: Fact, window: str) -> bool:
        days = self.criteria.window(window)
        return fact.when is not None and fact.when.last >= self.as_of - timedelta(days=days)

    def window_reason(self, window: str, what: str = "") -> str:
        return f"older than the {self.criteria.window(window)}-day {what or window} window"

    def outside(self, fact: Fact, window: str, what: str = "") -> str | None:
        """Why ``fact`` is outside ``window`` (undated, or too old), or ``None`` when inside."""
        if fact.when is None:
            return "no effective time or issued date"
        return None if self.within(fact, window) else self.window_reason(window, what)

    def evaluate(self, cond: Mapping[str, Any]) -> Outcome:
        """Evaluate a condition. A false condition marked ``input`` whose sources could not be read is
        unknown; it stays false (the ladder never escalates on an unknown history) and says why."""
        op = cond.get("op")
        if not isinstance(op, str):
            raise CriteriaError(f"unknown operator {op!r}")
        outcome = self.run(op, cond)
        if not isinstance(outcome, Outcome):
            raise CriteriaError(f"{op!r} is not a condition operator")
        name = cond.get("input")
        if isinstance(name, str) and not outcome.value:
            why = self.input_unknown(name)
            if why:
                return dataclasses.replace(outcome, detail=f"{outcome.detail}, unknown: {why} not read")
        return outcome

    # -- resource types that could not be read (PatientRecord.unavailable) ------------------------
    @property
    def dependencies(self) -> Mapping[str, Any]:
        deps = self.criteria.data.get("data_dependencies")
        return deps if isinstance(deps, dict) else {}

    def unread(self, types: Iterable[str]) -> tuple[str, ...]:
        """Those of ``types`` that could not be read, sorted."""
        unavailable = self.record.unavailable
        return tuple(sorted({t for t in types if t in unavailable}))

    def unread_text(self, types: Iterable[str]) -> str:
        """``Condition (scope not granted), Observation (read failed: 503)``."""
        return ", ".join(f"{t} ({self.record.unavailable[t]})" for t in self.unread(types))

    def input_unknown(self, name: str) -> str | None:
        """The unread sources of a ladder input (as text) when it is unknown, else ``None``.

        Unknown: one of its source types could not be read and no record that was read shows it.
        """
        if name not in self._unknown_inputs:
            spec = self.dependencies.get("ladder", {}).get(name)
            if spec is None:
                raise CriteriaError(f"ladder input {name!r} has no data_dependencies entry")
            unread = self.unread(spec["types"])
            positive = spec.get("positive")
            known = not unread or (positive is not None and self.evaluate(positive).value)
            self._unknown_inputs[name] = None if known else self.unread_text(unread)
        return self._unknown_inputs[name]


# -- shared reading helpers ------------------------------------------------------------------------
def site_is_typical(ctx: Context, sites: Sequence[Mapping[str, Any]]) -> tuple[bool | None, str]:
    """Typical-site rule (docs/clinical-criteria.md#typical_site): coded in the ValueSet, or a whole-word
    text match."""
    if not sites:
        return None, "no bodySite"
    spec = ctx.data["typical_site"]
    url = spec["valueset"]
    pattern = _site_pattern(tuple(spec["text_patterns"]))
    labels = []
    for site in sites:
        for system, code in fj.codings(site):
            if ctx.criteria.terminology.contains(url, system, code):
                return True, f"bodySite {fj.concept_label(site) or code} is a typical site (coded {code})"
        text = fj.concept_text(site)
        if text:
            m = pattern.search(text)
            if m:
                return True, f"bodySite '{text}' names a typical site ('{m.group(0)}')"
        labels.append(fj.concept_label(site) or "(uncoded)")
    return False, f"bodySite '{'; '.join(labels)}' is not a typical site"


_PATTERNS: dict[tuple[str, ...], re.Pattern[str]] = {}


def _site_pattern(words: tuple[str, ...]) -> re.Pattern[str]:
    pat = _PATTERNS.get(words)
    if pat is None:
        alternatives = "|".join(
            re.escape(w).replace(r"\ ", r"\s+") for w in sorted(words, key=len, reverse=True)
        )
        pat = _PATTERNS[words] = re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)
    return pat


def _sorted_refs(facts: Iterable[Fact]) -> tuple[str, ...]:
    return tuple(sorted({f.ref for f in facts}))


def _newest(facts: Sequence[Fact]) -> tuple[str, list[Fact]]:
    """Newest-wins with the equal-time conflict rule: ``(present|absent|conflict, deciding facts)``."""
    top_time = max(f.sort_time for f in facts)
    top = sorted((f for f in facts if f.sort_time == top_time), key=lambda f: f.ref)
    polarities = {f.polarity for f in top}
    if len(polarities) > 1:
        return "conflict", top
    return str(polarities.pop()), top


def _describe(fact: Fact) -> str:
    parts = [fact.rtype, fact.label]
    if fact.rtype == "Condition":
        parts.append(fact.clinical or ("no clinicalStatus, abated" if fact.abated else "no clinicalStatus"))
        parts.append(fact.verification or "verification not stated")
    else:
        if fact.polarity:
            parts.append(fact.polarity)
        parts.append(fact.when.text if fact.when else "undated")
        if fact.preliminary:
            parts.append("preliminary")
    return ", ".join(p for p in parts if p)


def _preliminary(facts: Iterable[Fact]) -> tuple[str, ...]:
    return _sorted_refs(f for f in facts if f.preliminary)


def counts_preliminary(ctx: Context, danger: bool, fact: Fact) -> bool:
    """Whether a preliminary Observation counts: only when it records danger as present and the criteria
    say preliminary evidence of danger counts (``preliminary_danger``; docs/clinical-criteria.md
    #observation-status)."""
    return danger and fact.polarity == PRESENT and bool(ctx.criteria.setting("preliminary_danger"))


def _usable_observations(ctx: Context, spec: Mapping[str, Any], window: str, rej: Rejections) -> list[Fact]:
    """The Observations of a finding that may decide it. For a ``danger`` finding, a present record
    without a usable time counts (its currency cannot be decided: safety first)."""
    danger = bool(spec.get("danger"))
    out: list[Fact] = []
    for src in spec.get("observations", []):
        for fact in ctx.facts.of(src["valueset"], "Observation"):
            if (
                src.get("site") == "typical"
                and site_is_typical(ctx, fj.body_sites(fact.resource))[0] is not True
            ):
                continue  # e.g. Tenderness elsewhere: not about the nodule
            if fact.preliminary and not counts_preliminary(ctx, danger, fact):
                rej.add(fact, "status preliminary: listed, never decides")
            elif danger and fact.when is None and fact.polarity == PRESENT:
                out.append(fact)
            elif ctx.outside(fact, window):
                rej.add(fact, ctx.outside(fact, window) or "")
            elif fact.polarity is None:
                rej.add(fact, f"says nothing: {fact.note}")
            else:
                out.append(fact)
    return out


def _conditions(
    ctx: Context, spec: Mapping[str, Any] | None, danger: bool = False
) -> tuple[list[Fact], list[Fact], list[Fact]]:
    """(counting as present, unconfirmed but active, resolved) Conditions of a finding. A supporting
    finding reads an abated Condition without clinicalStatus as inactive; a ``danger`` finding reads
    clinicalStatus alone (docs/clinical-criteria.md#abatement)."""
    if not spec:
        return [], [], []
    reading = ctx.data["reading"]
    active = set(reading["condition_clinical_active"])
    supporting = set(reading["condition_verification_supporting"])
    present: list[Fact] = []
    unconfirmed: list[Fact] = []
    resolved: list[Fact] = []
    for fact in ctx.facts.of(spec["valueset"], "Condition"):
        clinical = fact.clinical if danger else fact.supporting_status
        if clinical is not None and clinical not in active:
            resolved.append(fact)
        elif (
            spec.get("verification") == "any" or fact.verification is None or fact.verification in supporting
        ):
            present.append(fact)
        else:
            unconfirmed.append(fact)
    return present, unconfirmed, resolved


# -- finding rules ---------------------------------------------------------------------------------
def setting_aside(
    rule: Callable[[Context, Mapping[str, Any], Rejections], Result],
) -> Operator:
    """The table form of a rule that sets records aside: it gets its own :class:`Rejections` to fill, and
    what it set aside travels back in its result."""

    def run(ctx: Context, spec: Mapping[str, Any]) -> Result:
        rej = Rejections()
        result = rule(ctx, spec, rej)
        return dataclasses.replace(result, rejected=(*rej(), *result.rejected)) if rej.items else result

    run.__name__ = rule.__name__
    run.__doc__ = rule.__doc__
    return run


@setting_aside
def rule_exam(ctx: Context, spec: Mapping[str, Any], rej: Rejections) -> FindingResult:
    """Examination finding from Observations in the window and (optionally) Conditions.

    ``combine: newest`` — the newest deciding resource wins; ``any_present`` — newest per code, and the
    finding is present if any code is present (used for NEURO_DEFICIT, where any deficit matters).
    """
    window = spec.get("window", "exam")
    observations = _usable_observations(ctx, spec, window, rej)
    cond_present, cond_unconfirmed, cond_resolved = _conditions(
        ctx, spec.get("conditions"), bool(spec.get("danger"))
    )
    for fact in cond_unconfirmed:
        rej.add(fact, f"verificationStatus {fact.verification}: supporting findings need confirmed")
    for fact in cond_resolved:
        rej.add(fact, f"clinicalStatus {fact.supporting_status}")
    support = sorted(
        [f for f in observations if f.polarity == PRESENT] + cond_present,
        key=lambda f: (-f.sort_time.timestamp(), f.ref),
    )

    if spec.get("combine") == "any_present":
        return _any_sign_present(ctx, spec, observations, cond_present, support)

    candidates = observations + cond_present
    if not candidates:
        return FindingResult(UNKNOWN, (), _unknown_reason(ctx, spec))
    verdict, top = _newest(candidates)
    if verdict == "conflict":
        return _conflict(top, "records")
    reason = "; ".join(_describe(f) for f in top)
    if len(candidates) > len(top):
        reason += " (newest record)"
    return FindingResult(verdict, _sorted_refs(top), reason, tuple(top), tuple(support))


def _conflict(facts: Sequence[Fact], which: str) -> FindingResult:
    """A same-time conflict among ``which`` (the records' own words): unknown, citing every record."""
    return FindingResult(
        UNKNOWN,
        _sorted_refs(facts),
        f"conflict: {which} at the same time say present and absent ("
        + "; ".join(_describe(f) for f in facts)
        + ")",
        tuple(facts),
        conflict=True,
    )


def _sign_of(fact: Fact, signs: Sequence[Mapping[str, Any]]) -> str:
    """The sign a record belongs to (the first sign ValueSet holding its code), else its own code."""
    for sign in signs:
        if sign["valueset"] in fact.valuesets:
            return str(sign["id"])
    return fact.code_key


def _any_sign_present(
    ctx: Context,
    spec: Mapping[str, Any],
    observations: Sequence[Fact],
    cond_present: Sequence[Fact],
    support: Sequence[Fact],
) -> FindingResult:
    """``combine: any_present`` (NEURO_DEFICIT, docs/clinical-criteria.md#neuro_deficit): each sign is
    decided on its own by its newest record (a present record without a usable time counts); the finding
    is present when a counting Condition or any sign is present, absent only when every recorded sign
    is absent, unknown otherwise (a same-time conflict within a sign)."""
    groups: dict[str, list[Fact]] = {}
    for fact in observations:
        groups.setdefault(_sign_of(fact, spec.get("signs", ())), []).append(fact)
    present: list[Fact] = list(cond_present)
    absent: list[Fact] = []
    conflicts: list[Fact] = []
    for _, group in sorted(groups.items()):
        undated = [f for f in group if f.when is None]  # only present ones reach here undated
        if undated:
            present.extend(undated)
            continue
        verdict, top = _newest(group)
        {"present": present, "absent": absent}.get(verdict, conflicts).extend(top)
    if present:
        return FindingResult(
            PRESENT,
            _sorted_refs(present),
            "; ".join(sorted({_describe(f) for f in present})),
            tuple(present),
            tuple(support),
            preliminary=_preliminary(present),
        )
    if conflicts:
        return _conflict(conflicts, "records of one sign")
    if absent:
        return FindingResult(
            ABSENT,
            _sorted_refs(absent),
            "recorded absent: " + "; ".join(sorted({_describe(f) for f in absent})),
            tuple(absent),
        )
    return FindingResult(UNKNOWN, (), _unknown_reason(ctx, spec))


def _unknown_reason(ctx: Context, spec: Mapping[str, Any]) -> str:
    days = ctx.criteria.window(spec.get("window", "exam"))
    return f"no usable record within {days} days"


def rule_site_of(ctx: Context, spec: Mapping[str, Any]) -> FindingResult:
    """TYPICAL_SITE: bodySite of the resource that made the finding present (else the newest other one)."""
    base = ctx.findings.get(spec["finding"])
    if base is None or base.status != PRESENT:
        return FindingResult(UNKNOWN, (), f"{spec['finding']} is not present: no site to judge")
    ordered = list(base.deciding) + [f for f in base.support if f not in base.deciding]
    for fact in ordered:
        sites = fj.body_sites(fact.resource)
        if not sites:
            continue
        typical, why = site_is_typical(ctx, sites)
        return FindingResult(PRESENT if typical else ABSENT, (fact.ref,), f"{why} ({fact.ref})", (fact,))
    return FindingResult(UNKNOWN, (), "the nodule's bodySite is not recorded")


@setting_aside
def rule_diagnosis(ctx: Context, spec: Mapping[str, Any], rej: Rejections) -> FindingResult:
    """LBP: a counting Condition, or another finding present; else absent/unknown by Condition statuses."""
    present, unconfirmed, resolved = _conditions(ctx, spec["conditions"])
    if present:
        present.sort(key=lambda f: (-f.sort_time.timestamp(), f.ref))
        return FindingResult(
            PRESENT,
            _sorted_refs(present),
            "; ".join(_describe(f) for f in present),
            tuple(present),
            tuple(present),
        )
    other = spec.get("or_finding")
    if other and ctx.findings.get(other, FindingResult(UNKNOWN, (), "")).status == PRESENT:
        via = ctx.findings[other]
        for fact in unconfirmed + resolved:
            rej.add(fact, "not counted: " + _describe(fact))
        return FindingResult(PRESENT, via.evidence, f"{other} present: {via.reason}", via.deciding)
    if unconfirmed:
        for fact in resolved:
            rej.add(fact, f"clinicalStatus {fact.supporting_status}")
        return FindingResult(
            UNKNOWN,
            _sorted_refs(unconfirmed),
            "only unconfirmed/provisional/differential: " + "; ".join(_describe(f) for f in unconfirmed),
            tuple(unconfirmed),
        )
    if resolved:
        return FindingResult(
            ABSENT,
            _sorted_refs(resolved),
            "only resolved/inactive/remission: " + "; ".join(_describe(f) for f in resolved),
            tuple(resolved),
        )
    return FindingResult(ABSENT, (), "no low back pain Condition recorded")


@setting_aside
def rule_relief(ctx: Context, spec: Mapping[str, Any], rej: Rejections) -> FindingResult:
    """INJECTION_RELIEF: newest relief Observation, ≥ threshold % or a 'relief' answer code."""
    threshold = ctx.criteria.threshold(spec["threshold"])
    yes = {(a["system"], a["code"]) for a in spec["present_answers"]}
    no = {(a["system"], a["code"]) for a in spec["absent_answers"]}
    window = spec.get("window", "exam")
    usable: list[Fact] = []
    for src in spec["observations"]:
        for fact in ctx.facts.of(src["valueset"], "Observation"):
            if fact.preliminary:
                rej.add(fact, "status preliminary: listed, never decides")
                continue
            if ctx.outside(fact, window):
                rej.add(fact, ctx.outside(fact, window) or "")
                continue
            verdict, detail = _relief_value(fact.element, threshold, yes, no)
            if verdict is None:
                rej.add(fact, detail)
                continue
            usable.append(dataclasses.replace(fact, polarity=verdict, note=detail))
    if not usable:
        return FindingResult(UNKNOWN, (), _unknown_reason(ctx, spec))
    verdict, top = _newest(usable)
    desc = "; ".join(f"{f.ref} {f.note}, {f.when.text if f.when else ''}" for f in top)
    if verdict == "conflict":
        return FindingResult(
            UNKNOWN, _sorted_refs(top), f"conflict at the same time: {desc}", tuple(top), conflict=True
        )
    return FindingResult(
        verdict, _sorted_refs(top), desc, tuple(top), tuple(top) if verdict == PRESENT else ()
    )


def _relief_value(
    element: Mapping[str, Any], threshold: float, yes: set[tuple[str, str]], no: set[tuple[str, str]]
) -> tuple[str | None, str]:
    if "dataAbsentReason" in element:
        return (
            None,
            f"says nothing: dataAbsentReason {fj.status_code(element['dataAbsentReason']) or 'given'}",
        )
    qty = fj.as_dict(element.get("valueQuantity"))
    if qty is not None:
        value = qty.get("value")
        unit = {qty.get("code"), qty.get("unit")} - {None}
        if not isinstance(value, int | float) or isinstance(value, bool):
            return None, "malformed: relief quantity without a number"
        if unit != {"%"}:
            return (
                None,
                f"malformed: relief unit {'/'.join(sorted(map(str, unit))) or 'missing'} (expected %)",
            )
        if not 0 <= value <= 100:
            return None, f"malformed: relief {value} % outside 0-100"
        return (PRESENT if value >= threshold else ABSENT), f"relief {value:g} %"
    if "valueCodeableConcept" in element:
        codes = set(fj.codings(element["valueCodeableConcept"]))
        if codes & yes:
            return PRESENT, f"relief {sorted(codes & yes)[0][1]}"
        if codes & no:
            return ABSENT, f"relief {sorted(codes & no)[0][1]}"
        return None, "relief answer not recognised"
    return None, "no relief value"


# -- red flags -------------------------------------------------------------------------------------
def not_raised(spec: Mapping[str, Any], **result: Any) -> FlagResult:
    """The result of a flag rule whose flag is not raised."""
    return FlagResult(spec["id"], spec["level"], spec["title"], (), "", spec.get("source", ""), **result)


@setting_aside
def flag_coded(ctx: Context, spec: Mapping[str, Any], rej: Rejections) -> FlagResult:
    """History-type flags count at any age and any clinical status; state-type ones only when current.

    Conditions: any verification except the dropped ones (safety first). State-type: clinicalStatus
    active/recurrence/relapse, or absent with onset (else recordedDate) within the state window.
    Observations: value Present/true/none; state-type within the window, newest per code deciding.
    """
    history = spec["type"] == "history"
    block = spec["level"] == "block"
    window = "state_flag"
    days = ctx.criteria.window(window)
    active = set(ctx.data["reading"]["condition_clinical_active"])
    counted: list[Fact] = []
    for fact in ctx.facts.of(spec["valueset"], "Condition"):
        if history or fact.clinical in active:
            counted.append(fact)
        elif fact.clinical is None:  # abatement never removes a flag: only the dates decide
            recent = fact.when or _recorded(fact)
            if recent is None or recent.last >= ctx.as_of - timedelta(days=days):
                counted.append(fact)  # undated: its currency cannot be decided, so it counts
            else:
                rej.add(
                    fact, f"no clinicalStatus and onset/recordedDate not within {days} days (state-type flag)"
                )
        else:
            rej.add(fact, f"clinicalStatus {fact.clinical} (state-type flag counts only when current)")
    groups: dict[str, list[Fact]] = {}
    for fact in ctx.facts.of(spec["valueset"], "Observation"):
        if fact.preliminary and not counts_preliminary(ctx, block, fact):
            rej.add(fact, "status preliminary: listed, never decides")
        elif fact.polarity is None:
            rej.add(fact, f"says nothing: {fact.note}")
        elif not history and fact.when is None:
            if fact.polarity == PRESENT:
                counted.append(fact)  # its currency cannot be decided: safety first
            else:
                rej.add(fact, "no effective time or issued date")
        elif not history and ctx.outside(fact, window):
            rej.add(fact, ctx.outside(fact, window, "state-type red-flag") or "")
        else:
            groups.setdefault(fact.code_key, []).append(fact)
    for _, group in sorted(groups.items()):
        if history:
            counted.extend(f for f in group if f.polarity == PRESENT)
            continue
        verdict, top = _newest(group)
        if verdict in (PRESENT, "conflict"):  # a same-time conflict counts: safety first
            counted.extend(f for f in top if f.polarity == PRESENT)
    if not counted:
        return not_raised(spec)
    counted.sort(key=lambda f: (-f.sort_time.timestamp(), f.ref))
    reason = _describe(counted[0])
    if len(counted) > 1:
        reason += f" (+{len(counted) - 1} more)"
    return FlagResult(
        spec["id"],
        spec["level"],
        spec["title"],
        _sorted_refs(counted),
        reason,
        spec.get("source", ""),
        preliminary=_preliminary(counted),
    )


def _recorded(fact: Fact) -> fj.When | None:
    try:
        return fj.parse_time(fact.resource.get("recordedDate"))
    except fj.BadTime:
        return None


def flag_age_new_onset(ctx: Context, spec: Mapping[str, Any]) -> FlagResult:
    """Age < 20 or > 50 at the evaluation time with a counting LBP Condition whose onset is recent."""
    born = fj.parse_date(ctx.record.patient.get("birthDate"))
    if born is None:
        return not_raised(spec)
    consulted = (ctx.record.patient_reference,)  # the birth date decides, flag or no flag
    age = _age(born, ctx.as_of.date())
    limits = ctx.data["age_years"]
    if not (age < limits["below"] or age > limits["above"]):
        return not_raised(spec, consulted=consulted)
    lbp = ctx.findings.get(spec["finding"])
    days = ctx.criteria.window("onset")
    for fact in sorted(lbp.support if lbp else (), key=lambda f: f.ref):
        if fact.rtype != "Condition":
            continue
        onset = fact.when  # onsetDateTime, onsetPeriod.start, else recordedDate
        if onset is not None and onset.last >= ctx.as_of - timedelta(days=days):
            reason = f"age {age} with low back pain of onset {onset.text} ({fact.ref})"
            return FlagResult(
                spec["id"],
                spec["level"],
                spec["title"],
                tuple(sorted((ctx.record.patient_reference, fact.ref))),
                reason,
                spec.get("source", ""),
                consulted=consulted,
            )
    return not_raised(spec, consulted=consulted)


def _age(born: date, on: date) -> int:
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


# -- classification / ladder operators -------------------------------------------------------------


def op_all(ctx: Context, p: Mapping[str, Any]) -> Outcome:
    parts = [ctx.evaluate(c) for c in p["of"]]
    ok = all(o.value for o in parts)
    return Outcome(ok, " and ".join(o.detail for o in parts), _ev(parts) if ok else ())


def op_any(ctx: Context, p: Mapping[str, Any]) -> Outcome:
    parts = [ctx.evaluate(c) for c in p["of"]]
    hits = [o for o in parts if o.value]
    return Outcome(bool(hits), " or ".join(o.detail for o in (hits or parts)), _ev(hits))


def op_not(ctx: Context, p: Mapping[str, Any]) -> Outcome:
    inner = ctx.evaluate(p["of"])
    return Outcome(not inner.value, f"not ({inner.detail})")


def op_always(ctx: Context, p: Mapping[str, Any]) -> Outcome:
    return Outcome(True, "otherwise")


def op_ref(ctx: Context, p: Mapping[str, Any]) -> Outcome:
    inner = ctx.evaluate(ctx.data["definitions"][p["name"]])
    return Outcome(inner.value, f"{p['name'].replace('_', ' ')}: {inner.detail}", inner.evidence)


def op_finding(ctx: Context, p: Mapping[str, Any]) -> Outcome:
    result = ctx.findings[p["id"]]
    return Outcome(result.status == p["is"], f"{p['id']} is {result.status}", result.evidence)


def op_any_flag(ctx: Context, p: Mapping[str, Any]) -> Outcome:
    hits = [f for f in ctx.flags if f.level == p["level"]]
    detail = ", ".join(f.id for f in hits) if hits else f"no {p['level']} red flag"
    return Outcome(bool(hits), detail, tuple(r for f in hits for r in f.evidence))


def op_no_latest_pain(ctx: Context, p: Mapping[str, Any]) -> Outcome:
    if ctx.pain is None:
        detail = f"no valid pain score within {ctx.criteria.window('pain')} days"
        unread = ctx.unread(ctx.dependencies.get("pain", {}).get("types", ()))
        if unread:
            detail += f" (not read: {ctx.unread_text(unread)})"
        return Outcome(True, detail)
    return Outcome(False, f"latest pain {ctx.pain.score:g}/10", (ctx.pain.fact.ref,))


def op_latest_pain(ctx: Context, p: Mapping[str, Any]) -> Outcome:
    limit = ctx.criteria.threshold(p["at_least"])
    if ctx.pain is None:
        return Outcome(False, "no latest pain")
    ok = ctx.pain.score >= limit
    return Outcome(
        ok, f"latest pain {ctx.pain.score:g}/10 {'≥' if ok else '<'} {limit:g}", (ctx.pain.fact.ref,)
    )


def _completed(ctx: Context, p: Mapping[str, Any], rej: Rejections) -> list[Fact]:
    done = set(ctx.data["reading"]["procedure_status_done"])
    out = []
    for fact in ctx.facts.of(p["valueset"], "Procedure"):
        if fact.status not in done:
            rej.add(fact, f"status {fact.status or 'missing'}")
        elif p.get("dated") and fact.when is None:
            rej.add(fact, "no performed time: cannot be ordered against the pain score")
        else:
            out.append(fact)
    return out


@setting_aside
def op_procedures_completed(ctx: Context, p: Mapping[str, Any], rej: Rejections) -> Outcome:
    need = ctx.criteria.threshold(p["at_least"])
    done = _completed(ctx, p, rej)
    name = done[0].label if done else p["valueset"].rsplit("/", 1)[-1]
    ok = len(done) >= need
    return Outcome(ok, f"{len(done)} completed {name} (need {need:g})", _sorted_refs(done) if ok else ())


@setting_aside
def op_pain_after_last_procedure(ctx: Context, p: Mapping[str, Any], rej: Rejections) -> Outcome:
    limit = ctx.criteria.threshold(p["at_least"])
    done = [f for f in _completed(ctx, {**p, "dated": True}, rej) if f.when is not None]
    if not done or ctx.pain is None or ctx.pain.fact.when is None:
        return Outcome(False, "no pain score after the last procedure")
    last = max(done, key=lambda f: (f.when.end if f.when else f.sort_time, f.ref))
    assert last.when is not None
    # strictly after: the pain score's interval starts once the procedure's has ended (a date-only
    # procedure on the day of the score is not known to precede it)
    after = ctx.pain.fact.when.start >= last.when.end
    ok = after and ctx.pain.score >= limit
    where = "after" if after else "not after"
    return Outcome(
        ok,
        f"latest pain {ctx.pain.score:g}/10 recorded {where} the last procedure ({last.when.text})",
        (last.ref, ctx.pain.fact.ref) if ok else (),
    )


@setting_aside
def op_medication_taken(ctx: Context, p: Mapping[str, Any], rej: Rejections) -> Outcome:
    statuses: Mapping[str, Sequence[str]] = p["statuses"]
    intents: Mapping[str, Sequence[str]] = p.get("intents", {})  # 1.1.0: a request must be an order
    hits: list[Fact] = []
    for rtype, allowed in sorted(statuses.items()):
        for fact in ctx.facts.of(p["valueset"], rtype):
            intent = fj.as_str(fact.resource.get("intent"))
            if fact.status not in allowed:
                rej.add(fact, f"status {fact.status or 'missing'}")
            elif rtype in intents and intent not in intents[rtype]:
                rej.add(fact, f"intent {intent or 'missing'} (not an order)")
            else:
                hits.append(fact)
    return Outcome(
        bool(hits), f"{len(hits)} NSAID record(s)" if hits else "no NSAID record", _sorted_refs(hits)
    )


def op_condition_recorded(ctx: Context, p: Mapping[str, Any]) -> Outcome:
    hits = ctx.facts.of(p["valueset"], "Condition")
    return Outcome(
        bool(hits),
        f"{hits[0].label} recorded" if hits else "no long-term NSAID use recorded",
        _sorted_refs(hits),
    )


def _ev(parts: Iterable[Outcome]) -> tuple[str, ...]:
    return tuple(sorted({r for o in parts for r in o.evidence}))


# -- pain score (docs/clinical-criteria.md#treatment-ladder) ---------------------------------------
@setting_aside
def rule_pain_score(ctx: Context, spec: Mapping[str, Any], rej: Rejections) -> PainResult:
    """Newest valid 0–10 pain score within the pain window; equal-time different scores → none (conflict)."""
    window = spec["window"]
    valid: list[tuple[Fact, float]] = []
    for fact in ctx.facts.of(spec["valueset"], "Observation"):
        if fact.preliminary:
            rej.add(fact, "status preliminary: listed, never decides")
            continue
        score, problem = pain_score(ctx, fact.element, spec)
        if score is None:
            rej.add(fact, problem)
        elif ctx.outside(fact, window):
            rej.add(fact, ctx.outside(fact, window) or "")
        else:
            valid.append((fact, score))
    if not valid:
        return PainResult(None)
    top_time = max(f.sort_time for f, _ in valid)
    top = sorted(((f, s) for f, s in valid if f.sort_time == top_time), key=lambda fs: fs[0].ref)
    if len({s for _, s in top}) > 1:
        scores = ", ".join(f"{f.ref} {s:g}" for f, s in top)
        for f, _ in top:
            rej.add(f, f"conflicting pain scores at the same time ({scores})")
        return PainResult(None)
    return PainResult(Pain(score=top[0][1], fact=top[0][0]))


def pain_score(ctx: Context, element: Mapping[str, Any], spec: Mapping[str, Any]) -> tuple[float | None, str]:
    """A 0–10 score from valueQuantity (unit none/'1'/'{score}'), valueInteger, or a LOINC answer code."""
    if "dataAbsentReason" in element:
        return (
            None,
            f"says nothing: dataAbsentReason {fj.status_code(element['dataAbsentReason']) or 'given'}",
        )
    value: object = None
    if "valueQuantity" in element:
        qty = fj.as_dict(element["valueQuantity"]) or {}
        value = qty.get("value")
        # the UCUM code decides when it is given; unit is then display text (Quantity, R4 datatypes)
        unit = qty.get("code") if qty.get("code") is not None else qty.get("unit")
        if unit is not None and unit not in spec["units"]:
            return None, f"malformed: pain score unit {unit!r} (expected none, '1' or '{{score}}')"
    elif "valueInteger" in element:
        value = element["valueInteger"]
    elif "valueCodeableConcept" in element:
        for system, code in fj.codings(element["valueCodeableConcept"]):
            if ctx.criteria.terminology.contains(spec["answers_valueset"], system, code):
                value = ctx.criteria.terminology.ordinal(system, code)
                break
        else:
            return None, "malformed: pain answer code not in the 0-10 answer list"
    else:
        return None, "no pain score value"
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None, "malformed: pain score is not a number"
    if not spec["min"] <= value <= spec["max"]:
        return None, f"malformed: pain score {value:g} outside {spec['min']}-{spec['max']}"
    return float(value), ""


#: Every rule and operator a criteria document may name, by name: one signature, one table.
OPERATORS: Mapping[str, Operator] = {
    # findings
    "exam": rule_exam,
    "site_of": rule_site_of,
    "diagnosis": rule_diagnosis,
    "relief": rule_relief,
    # red flags
    "coded": flag_coded,
    "age_new_onset": flag_age_new_onset,
    # the pain score of the treatment ladder
    "pain_score": rule_pain_score,
    # conditions of the classification and the ladder
    "all": op_all,
    "any": op_any,
    "not": op_not,
    "always": op_always,
    "ref": op_ref,
    "finding": op_finding,
    "any_flag": op_any_flag,
    "no_latest_pain": op_no_latest_pain,
    "latest_pain": op_latest_pain,
    "procedures_completed": op_procedures_completed,
    "pain_after_last_procedure": op_pain_after_last_procedure,
    "medication_taken": op_medication_taken,
    "condition_recorded": op_condition_recorded,
}
