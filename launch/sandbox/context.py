"""Launch context in the token response, in the forms EHRs send it (SMART App Launch 2.x "App Launch:
Launch context arrives with your access_token": ``patient``, ``encounter``, ``fhirContext``).

SMART launchers send ``encounter`` as a bare id; some EHRs send ``Encounter/<id>`` or an absolute URL.
``fhirContext`` items are objects with a ``reference`` (relative per the specification, absolute from
some EHRs) or a ``type`` and an ``identifier``; SMART 2.2 reserves Patient and Encounter in the
"launch" role for the top-level parameters, and the encounter items the sandbox can add are the
variants EHRs send regardless (settings ``EHR_LAUNCH_ENCOUNTER_FORMAT`` and ``EHR_LAUNCH_FHIR_CONTEXT``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .outcome import JsonDict
from .resource_types import RESOURCE_TYPES
from .store import ID_RE

ENCOUNTER_FORMATS = ("id", "reference", "absolute")
FHIR_CONTEXT_FORMS = ("reference", "absolute", "identifier")
#: Longest list of ``fhirContext`` items a launch request may carry.
MAX_FHIR_CONTEXT_ITEMS = 10


class ContextError(ValueError):
    """A launch context item that cannot be sent; the message says why."""


def encounter_parameter(encounter_id: str, form: str, fhir_base: str) -> str:
    """The token response's ``encounter`` value in ``form`` ("id", "reference" or "absolute")."""
    if form == "id":
        return encounter_id
    if form == "reference":
        return f"Encounter/{encounter_id}"
    if form == "absolute":
        return f"{fhir_base}/Encounter/{encounter_id}"
    raise ValueError(f"encounter format must be one of {ENCOUNTER_FORMATS}, not {form!r}")


def encounter_items(encounter: JsonDict, forms: Iterable[str], fhir_base: str) -> list[JsonDict]:
    """``fhirContext`` items naming ``encounter``, one per form; "identifier" needs an identifier on
    the Encounter (its first one with a system and a value) and is left out otherwise."""
    items: list[JsonDict] = []
    for form in forms:
        if form == "reference":
            items.append({"reference": f"Encounter/{encounter['id']}"})
        elif form == "absolute":
            items.append({"reference": f"{fhir_base}/Encounter/{encounter['id']}"})
        elif form == "identifier":
            identifier = next(
                (
                    {"system": i["system"], "value": i["value"]}
                    for i in encounter.get("identifier", [])
                    if isinstance(i, dict) and i.get("system") and i.get("value")
                ),
                None,
            )
            if identifier is not None:
                items.append({"type": "Encounter", "identifier": identifier})
        else:
            raise ValueError(f"fhirContext form must be one of {FHIR_CONTEXT_FORMS}, not {form!r}")
    return items


def checked_items(raw: Any) -> list[JsonDict]:
    """``fhirContext`` items given in a launch request: a list of objects, each with a ``reference``
    (``Type/id`` or an absolute URL ending so), a ``canonical``, or a ``type`` and an ``identifier``
    with ``value``; an optional ``role`` (an absolute URI or a registered code) is kept."""
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_FHIR_CONTEXT_ITEMS:
        raise ContextError(f"fhirContext must be a list of at most {MAX_FHIR_CONTEXT_ITEMS} objects")
    items: list[JsonDict] = []
    for index, item in enumerate(raw):
        where = f"fhirContext[{index}]"
        if not isinstance(item, dict):
            raise ContextError(f"{where} must be an object")
        kept: JsonDict = {}
        if isinstance(item.get("reference"), str):
            parts = item["reference"].split("/")
            if len(parts) < 2 or parts[-2] not in RESOURCE_TYPES or not ID_RE.match(parts[-1]):
                raise ContextError(f"{where}.reference must end in Type/id")
            kept["reference"] = item["reference"]
        elif isinstance(item.get("canonical"), str) and item["canonical"]:
            kept["canonical"] = item["canonical"]
        elif isinstance(item.get("identifier"), dict) and isinstance(item["identifier"].get("value"), str):
            if item.get("type") not in RESOURCE_TYPES:
                raise ContextError(f"{where} with an identifier needs a resource type in type")
            kept["identifier"] = {k: v for k, v in item["identifier"].items() if k in ("system", "value")}
        else:
            raise ContextError(f"{where} needs reference, canonical, or type and identifier")
        if item.get("type") is not None:
            if item["type"] not in RESOURCE_TYPES:
                raise ContextError(f"{where}.type is not a FHIR resource type")
            kept["type"] = item["type"]
        if isinstance(item.get("role"), str) and item["role"]:
            kept["role"] = item["role"]
        items.append(kept)
    return items


def token_context(
    patient: str | None,
    encounter: str | None,
    fhir_context: Sequence[JsonDict],
    *,
    encounter_format: str,
    fhir_base: str,
) -> JsonDict:
    """The context parameters of a token response for a launch."""
    body: JsonDict = {}
    if patient:
        body["patient"] = patient
    if encounter:
        body["encounter"] = encounter_parameter(encounter, encounter_format, fhir_base)
    if fhir_context:
        body["fhirContext"] = [dict(item) for item in fhir_context]
    return body
