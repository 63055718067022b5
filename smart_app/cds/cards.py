"""The card rules, read off the Assessment JSON (docs/cds-hooks.md#cards; CDS Hooks 2.0 "Card Attributes").

A card only when there is something to act on (alert fatigue is a patient-safety problem):

``patient-view``
  1. a BLOCK red flag while a nodule is recorded → ``critical``: the flags, their evidence and "no
     back-mouse procedure" (docs/clinical-criteria.md#red-flags);
  2. ``probable`` or ``confirmed`` → ``info`` (``warning`` with a WARN flag): the conclusion, the next
     step, the draft suggestion when the criteria make one (:mod:`smart_app.cds.actions`), and a SMART
     link to the app's full review;
  3. ``possible`` or ``insufficient-data`` while a nodule is recorded → ``info``: what to examine, with
     the SMART link.
  Nothing for ``unlikely`` or ``not-consistent``, nor for a red flag without a nodule.

``order-sign``
  4. a draft order for a procedure the app suggests for a back-mouse nodule (its injection or excision
     codes, the criteria's ``suggestions``) while a BLOCK red flag or an objective neurological deficit
     is recorded → ``critical``: why, with the evidence, and a suggestion to remove the order.

Every card has a ``uuid`` (derived from the hook instance, so a repeated call gives the same one), a
``source`` naming the criteria version, a markdown ``detail`` that names its evidence, and
``overrideReasons``. Text from the record is escaped before it enters markdown.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from smart_app.clinical.criteria import Criteria
from smart_app.drafts.build import criteria_lines
from smart_app.vocabulary import CANONICAL, classifications, next_steps, system_label

#: The findings the rules name (docs/clinical-criteria.md#nodule, #neuro_deficit).
NODULE = "NODULE"
NEURO_DEFICIT = "NEURO_DEFICIT"
#: Classifications of rules 2 and 3 (the app's classification CodeSystem).
SUSPECTED = ("probable", "confirmed")
TO_EXAMINE = ("possible", "insufficient-data")

SUMMARY_LIMIT = 140
OVERRIDE_SYSTEM = f"{CANONICAL}/CodeSystem/cds-override-reason"
OVERRIDE_REASONS: tuple[tuple[str, str], ...] = (
    ("already-addressed", "Already addressed"),
    ("not-applicable", "Does not apply to this patient"),
    ("clinical-judgement", "Clinical judgement differs"),
    ("patient-declined", "Patient declined"),
)
NO_PROCEDURE = "No back-mouse procedure (injection or excision)"

Actions = Callable[[], list[dict[str, Any]] | None]


@dataclass(frozen=True)
class CardContext:
    """What a card needs beyond the assessment: the call it answers and the SMART app's launch URL."""

    service_id: str
    hook_instance: str
    launch_url: str

    def uuid(self, *parts: str) -> str:
        """A uuid for a card or suggestion of this call (uuid5: the same call gives the same uuid)."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, "|".join([self.service_id, self.hook_instance, *parts])))


# -- patient-view -------------------------------------------------------------------------------------------
def patient_view_cards(
    assessment: Mapping[str, Any], ctx: CardContext, draft_actions: Actions
) -> list[dict[str, Any]]:
    """The cards for a chart being opened; ``draft_actions`` builds the suggestion's actions (called only
    when a card offers the suggestion; ``None``: it could not be built, the card goes without it)."""
    for rule in (red_flag_card, suspicion_card, examine_card):
        card = rule(assessment, ctx, draft_actions)
        if card is not None:
            return [card]
    return []


def red_flag_card(
    assessment: Mapping[str, Any], ctx: CardContext, _actions: Actions
) -> dict[str, Any] | None:
    """Rule 1: a BLOCK red flag while a nodule is recorded."""
    blocks = [f for f in assessment.get("red_flags") or [] if f.get("level") == "block"]
    if not blocks or not nodule_recorded(assessment):
        return None
    titles = "; ".join(str(f.get("title")) for f in blocks)
    lines = [
        _bold(assessment.get("headline")),
        f"{NO_PROCEDURE} while this is unexplained: {_step(assessment)}.",
        "Red flags that block a back-mouse procedure:",
        *(_flag_line(f) for f in blocks),
        "",
        _finding_line(assessment, NODULE, "Nodule recorded"),
        *_unread_lines(assessment),
        _criteria_line(assessment),
    ]
    return _card(
        ctx, "red-flag", f"Red flag ({titles}): no back-mouse procedure", "critical", lines, assessment
    )


def suspicion_card(
    assessment: Mapping[str, Any], ctx: CardContext, actions: Actions
) -> dict[str, Any] | None:
    """Rule 2: probable or confirmed, with the next step, the draft suggestion and the SMART link."""
    if assessment.get("classification") not in SUSPECTED:
        return None
    warns = [f for f in assessment.get("red_flags") or [] if f.get("level") == "warn"]
    suggestion = assessment.get("procedure_suggestion")
    lines = [
        _bold(assessment.get("headline")),
        f"Next step: {_step(assessment)}.",
        _criteria_met(assessment),
        "Evidence:",
        *_evidence_lines(assessment),
    ]
    if warns:
        lines += [
            "",
            "Warnings (the suggestion stands; review these first):",
            *(_flag_line(f) for f in warns),
        ]
    lines += _unread_lines(assessment)
    suggestions: list[dict[str, Any]] = []
    if isinstance(suggestion, dict):
        built = actions()
        codes = ", ".join(f"{system_label(c['system'])} {c['code']}" for c in suggestion.get("codes") or [])
        lines += [
            "",
            f"Suggested: {md(suggestion.get('text'))} ({md(codes)}). {md(suggestion.get('caveat'))}",
        ]
        if built:
            lines.append(
                "Accepting the suggestion creates drafts in the chart for review (status draft, intent "
                "proposal, with their Provenance): nothing is ordered or signed."
            )
            suggestions.append(
                {
                    "label": "Create draft procedure request for review",
                    "uuid": ctx.uuid("suggestion", "draft"),
                    "isRecommended": True,
                    "actions": built,
                }
            )
    lines.append(_criteria_line(assessment))
    indicator = "warning" if warns else "info"
    summary = f"{_classification(assessment)}: {_step_display(assessment)}"
    return _card(ctx, "suspicion", summary, indicator, lines, assessment, suggestions)


def examine_card(assessment: Mapping[str, Any], ctx: CardContext, _actions: Actions) -> dict[str, Any] | None:
    """Rule 3: possible or insufficient data while a nodule is recorded: what to examine."""
    if assessment.get("classification") not in TO_EXAMINE or not nodule_recorded(assessment):
        return None
    missing = [m for m in assessment.get("missing") or [] if isinstance(m, dict)]
    lines = [
        _bold(assessment.get("headline")),
        "To examine and record:",
        *(f"- {md(m.get('what'))}: {md(m.get('how'))}" for m in missing),
        "",
        _criteria_met(assessment),
        "Evidence so far:",
        *_evidence_lines(assessment),
        *_unread_lines(assessment),
        _criteria_line(assessment),
    ]
    summary = f"{_classification(assessment)}: {_step_display(assessment)}"
    return _card(ctx, "examine", summary, "info", lines, assessment)


def nodule_recorded(assessment: Mapping[str, Any]) -> bool:
    """A nodule is in the record: the finding is present, or records of it conflict (unknown with
    evidence). A nodule recorded absent does not count."""
    finding = (assessment.get("findings") or {}).get(NODULE) or {}
    status = finding.get("status")
    return status == "present" or (status == "unknown" and bool(finding.get("evidence")))


# -- order-sign ---------------------------------------------------------------------------------------------
def suggested_codes(criteria: Criteria) -> frozenset[tuple[str, str]]:
    """The procedure codes the criteria suggest (injection, excision): ``(system, code)``."""
    return frozenset(
        (str(c["system"]), str(c["code"]))
        for spec in criteria.data["suggestions"].values()
        for c in spec["codes"]
    )


def back_mouse_orders(
    orders: Iterable[Mapping[str, Any]], codes: frozenset[tuple[str, str]], patient_id: str
) -> list[Mapping[str, Any]]:
    """The draft ServiceRequests for ``patient_id`` coded with one of ``codes``."""
    found = []
    for order in orders:
        if order.get("resourceType") != "ServiceRequest":
            continue
        subject = (
            (order.get("subject") or {}).get("reference") if isinstance(order.get("subject"), dict) else None
        )
        if subject not in (None, f"Patient/{patient_id}"):
            continue
        codings = _dict(order.get("code")).get("coding")
        if not isinstance(codings, list):
            continue
        if any(isinstance(c, dict) and (c.get("system"), c.get("code")) in codes for c in codings):
            found.append(order)
    return found


def order_sign_cards(
    assessment: Mapping[str, Any], orders: Sequence[Mapping[str, Any]], ctx: CardContext
) -> list[dict[str, Any]]:
    """Rule 4: back-mouse procedure orders while a BLOCK red flag or a neurological deficit is recorded."""
    blocks = [f for f in assessment.get("red_flags") or [] if f.get("level") == "block"]
    deficit = (assessment.get("findings") or {}).get(NEURO_DEFICIT) or {}
    has_deficit = deficit.get("status") == "present"
    if not orders or not (blocks or has_deficit):
        return []
    reasons = [str(f.get("title")) for f in blocks] + (
        ["an objective neurological deficit"] if has_deficit else []
    )
    lines = [
        _bold(f"A procedure on a back-mouse nodule is ordered, but {'; '.join(reasons)} is recorded."),
        "Back mice cause no neurological deficit, and a red flag needs work-up first: "
        f"{NO_PROCEDURE.lower()} until this is explained.",
        "Orders:",
        *(f"- {md(_order_text(o))}{_ref_suffix(o)}" for o in orders),
        "",
    ]
    if blocks:
        lines += ["Red flags:", *(_flag_line(f) for f in blocks)]
    if has_deficit:
        lines.append(_finding_line(assessment, NEURO_DEFICIT, "Objective neurological deficit"))
    lines += [*_unread_lines(assessment), _criteria_line(assessment)]
    suggestions = [
        {
            "label": f"Remove the draft order: {_order_text(o)}"[:120],
            "uuid": ctx.uuid("remove", str(o.get("id"))),
            "actions": [
                {
                    "type": "delete",
                    "description": f"Remove the unsigned order {_order_text(o)}",
                    "resourceId": f"ServiceRequest/{o['id']}",
                }
            ],
        }
        for o in orders
        if isinstance(o.get("id"), str)
    ]
    summary = f"Back-mouse procedure ordered despite {'; '.join(reasons)}"
    return [_card(ctx, "order-sign", summary, "critical", lines, assessment, suggestions, link=False)]


# -- card parts ---------------------------------------------------------------------------------------------
def _card(
    ctx: CardContext,
    rule: str,
    summary: str,
    indicator: str,
    lines: Sequence[str],
    assessment: Mapping[str, Any],
    suggestions: Sequence[dict[str, Any]] = (),
    *,
    link: bool = True,
) -> dict[str, Any]:
    card: dict[str, Any] = {
        "uuid": ctx.uuid("card", rule),
        "summary": summary_text(summary),
        "indicator": indicator,
        "detail": "\n".join(_paragraphs(lines)),
        "source": source(assessment),
        "overrideReasons": override_reasons(),
    }
    if suggestions:
        card["suggestions"] = list(suggestions)
        card["selectionBehavior"] = "at-most-one" if len(suggestions) == 1 else "any"
    if link:
        card["links"] = [
            {"label": "Open the back-mice review (SMART app)", "url": ctx.launch_url, "type": "smart"}
        ]
    return card


def source(assessment: Mapping[str, Any]) -> dict[str, Any]:
    """``source``: the criteria version, and the classification as ``topic``."""
    criteria = assessment.get("criteria") or {}
    out: dict[str, Any] = {"label": f"Back-mice decision support, criteria {criteria.get('version')}"}
    classification = assessment.get("classification")
    if classification in classifications():
        out["topic"] = classifications().coding(str(classification))
    return out


def override_reasons() -> list[dict[str, str]]:
    return [
        {"system": OVERRIDE_SYSTEM, "code": code, "display": display} for code, display in OVERRIDE_REASONS
    ]


def summary_text(text: str) -> str:
    """``summary``: one line of fewer than 140 characters (cut at a word, with an ellipsis)."""
    line = " ".join(text.split())
    if len(line) < SUMMARY_LIMIT:
        return line
    cut = line[: SUMMARY_LIMIT - 2].rsplit(" ", 1)[0].rstrip(" ,;:—-")
    return f"{cut}…"


_MARKDOWN = re.compile(r"([\\`*_\[\]<>|~#&])")
_REFERENCE = re.compile(r"[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}")


def md(value: Any) -> str:
    """Text from the record or the criteria, escaped so GitHub Flavored Markdown shows it literally: no
    emphasis, code, HTML, tables, links or autolinks of its own (a card must not carry links it did not
    mean to, CDS Hooks 2.0 "Security and Safety")."""
    escaped = _MARKDOWN.sub(r"\\\1", " ".join(str(value or "").split()))
    return escaped.replace("://", ":\\/\\/").replace("www.", "www\\.")  # no GFM autolinks


def _refs(references: Iterable[Any]) -> str:
    return ", ".join(f"`{r}`" if _REFERENCE.fullmatch(str(r)) else md(r) for r in references)


def _bold(text: Any) -> str:
    return f"**{md(text)}**"


def _paragraphs(lines: Sequence[str]) -> list[str]:
    """Markdown lines: a blank line between paragraphs, list items kept together."""
    out: list[str] = []
    for line in lines:
        if not line:
            continue
        if out and not (line.startswith("- ") and (out[-1].startswith("- ") or out[-1].endswith(":"))):
            out.append("")
        out.append(line)
    return out


def _classification(assessment: Mapping[str, Any]) -> str:
    code = str(assessment.get("classification"))
    return classifications().display(code) if code in classifications() else code


def _step_display(assessment: Mapping[str, Any]) -> str:
    code = str(assessment.get("next_step"))
    return next_steps().display(code) if code in next_steps() else code


def _step(assessment: Mapping[str, Any]) -> str:
    return md(_step_display(assessment).lower())


def _flag_line(flag: Mapping[str, Any]) -> str:
    evidence = _refs(flag.get("evidence") or [])
    return f"- **{md(flag.get('title'))}**: {md(flag.get('reason'))}" + (
        f"; evidence {evidence}" if evidence else ""
    )


def _finding_line(assessment: Mapping[str, Any], finding_id: str, label: str) -> str:
    finding = (assessment.get("findings") or {}).get(finding_id) or {}
    evidence = _refs(finding.get("evidence") or [])
    return f"{md(label)}: {md(finding.get('reason'))}" + (f"; evidence {evidence}." if evidence else ".")


def _criteria_met(assessment: Mapping[str, Any]) -> str:
    met, not_met, unknown = criteria_lines(assessment.get("checklist") or [])
    return (
        f"Criteria met: {md(', '.join(met) or 'none')}. Not met: {md(', '.join(not_met) or 'none')}. "
        f"Unknown: {md(', '.join(unknown) or 'none')}."
    )


def _evidence_lines(assessment: Mapping[str, Any]) -> list[str]:
    lines = []
    for row in assessment.get("checklist") or []:
        if row.get("evidence"):
            lines.append(f"- {md(row.get('title'))} ({md(row.get('status'))}): {_refs(row['evidence'])}")
    return lines or ["- none recorded"]


def _unread_lines(assessment: Mapping[str, Any]) -> list[str]:
    unread = [u for u in assessment.get("unavailable") or [] if isinstance(u, dict)]
    if not unread:
        return []
    named = "; ".join(f"{u.get('resource_type')} ({u.get('reason')})" for u in unread)
    return [f"Not read: {md(named)}. What these would decide is unknown, not absent."]


def _criteria_line(assessment: Mapping[str, Any]) -> str:
    criteria = assessment.get("criteria") or {}
    return (
        f"Criteria {md(criteria.get('title'))}, version {md(criteria.get('version'))}; "
        f"evaluated at {md(assessment.get('as_of'))}."
    )


def _order_text(order: Mapping[str, Any]) -> str:
    code = _dict(order.get("code"))
    if code.get("text"):
        return str(code["text"])
    for coding in code.get("coding") or []:
        if isinstance(coding, dict) and coding.get("code"):
            label = system_label(str(coding.get("system")))
            return f"{label} {coding['code']} {coding.get('display') or ''}".strip()
    return "procedure order"


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _ref_suffix(order: Mapping[str, Any]) -> str:
    rid = order.get("id")
    return (
        f" (`ServiceRequest/{rid}`)"
        if isinstance(rid, str) and _REFERENCE.fullmatch(f"ServiceRequest/{rid}")
        else ""
    )
