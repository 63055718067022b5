"""The write-back drafts as the actions of a card's suggestion (CDS Hooks 2.0 "Suggestion", "Action";
docs/cds-hooks.md#the-suggestion).

The drafts are the ones the app writes, built by :func:`smart_app.drafts.build.build_transaction` from the
same Assessment, with the user in context as author: the assessment, the ServiceRequest, one
DetectedIssue per WARN flag and the Provenance. Accepting the suggestion is the clinician's act, so the
Provenance keeps its meaning: author the user, assembler the app, derived from the same sources.
Each resource becomes one ``create`` action, unchanged but for what a suggestion cannot carry:

- a transaction's ``urn:uuid`` fullUrls. CDS Hooks processes a suggestion's actions as one transaction
  whose entries' full URLs are inferred from ``fhirServer`` and the resource ids, so each resource keeps
  the uuid of its fullUrl as ``id`` and the references between drafts become ``Type/<uuid>``;
- the app Device's conditional create (``ifNoneExist``): an action has no condition, and a second
  Device with the app's identifier would make every later conditional create of it ambiguous (412). The
  Device is not created; the drafts name it by its identifier (a logical reference, R4
  references.html#logical), which the audit tools recognise (:func:`smart_app.audit.listing.is_app_device`).

The actions are checked against the app's profiles before they are offered.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from smart_app.drafts import r4
from smart_app.drafts.build import DraftingError
from smart_app.drafts.profiles import load_checker
from smart_app.vocabulary import DEVICE_IDENTIFIER_SYSTEM, DEVICE_IDENTIFIER_VALUE

UUID_PREFIX = "urn:uuid:"


def suggestion_actions(drafts: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One ``create`` action per draft of the transaction Bundle ``drafts`` (the Device excepted).
    Raises ``DraftingError`` when a fullUrl is not a ``urn:uuid``, the drafts are not valid R4 or an
    action breaks a profile."""
    invalid = r4.problems(drafts)
    if invalid:
        raise DraftingError("suggestion drafts are not valid FHIR R4: " + "; ".join(invalid[:5]))
    entries = [
        e for e in drafts.get("entry") or [] if isinstance(e, dict) and isinstance(e.get("resource"), dict)
    ]
    device_urls = {str(e.get("fullUrl")) for e in entries if e["resource"].get("resourceType") == "Device"}
    references: dict[str, str] = {}
    for entry in entries:
        full_url = str(entry.get("fullUrl") or "")
        if full_url in device_urls:
            continue
        if not full_url.startswith(UUID_PREFIX):
            raise DraftingError(f"draft fullUrl {full_url!r} is not a urn:uuid")
        references[full_url] = f"{entry['resource']['resourceType']}/{full_url.removeprefix(UUID_PREFIX)}"

    actions = []
    for entry in entries:
        full_url = str(entry.get("fullUrl"))
        if full_url in device_urls:
            continue
        resource = _rewritten(entry["resource"], references, device_urls)
        resource["id"] = references[full_url].split("/", 1)[1]
        actions.append({"type": "create", "description": describe(resource), "resource": resource})
    _check_profiles(actions)
    return actions


def app_device_reference() -> dict[str, Any]:
    """The app Device named by its identifier."""
    return {
        "identifier": {"system": DEVICE_IDENTIFIER_SYSTEM, "value": DEVICE_IDENTIFIER_VALUE},
        "display": "Back mice decision support",
    }


def describe(resource: Mapping[str, Any]) -> str:
    """The action's ``description``: what accepting creates, in a clinician's words."""
    rtype = resource.get("resourceType")
    code = resource.get("code")
    text = str(code.get("text") or "") if isinstance(code, dict) else ""
    if rtype == "ServiceRequest":
        return f"Create a draft procedure request for clinician review (not an order): {text}"
    if rtype == "ClinicalImpression":
        return "Create the draft back-mice assessment (ClinicalImpression, in progress) that supports it"
    if rtype == "DocumentReference":
        return "Create the draft back-mice assessment note (DocumentReference, preliminary) that supports it"
    if rtype == "DetectedIssue":
        return f"Record the warning for review (draft DetectedIssue): {text}"
    if rtype == "Provenance":
        return "Record how these drafts were produced (Provenance: accepting clinician, the app, the sources)"
    return f"Create a draft {rtype}"


def _rewritten(
    resource: Mapping[str, Any], references: Mapping[str, str], devices: set[str]
) -> dict[str, Any]:
    copied = copy.deepcopy(dict(resource))
    _rewrite(copied, references, devices)
    return copied


def _rewrite(node: Any, references: Mapping[str, str], devices: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and ref in devices:
            del node["reference"]
            node.update(app_device_reference())
        elif isinstance(ref, str) and ref in references:
            node["reference"] = references[ref]
        for key, value in node.items():
            if key == "div" and isinstance(value, str) and UUID_PREFIX in value:
                for urn, target in references.items():
                    value = value.replace(urn, target)
                node[key] = value
            else:
                _rewrite(value, references, devices)
    elif isinstance(node, list):
        for item in node:
            _rewrite(item, references, devices)


def _check_profiles(actions: list[dict[str, Any]]) -> None:
    checker = load_checker()
    problems = [
        f"{action['resource']['resourceType']}: {issue}"
        for action in actions
        for issue in checker.check(action["resource"])
    ]
    if problems:
        raise DraftingError("suggestion drafts break the app's profiles: " + "; ".join(problems[:5]))
