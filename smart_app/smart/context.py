"""The launch context as EHRs send it, checked and normalised at the callback, before any FHIR request
(SMART App Launch 2.x, "Launch context arrives with your access_token"; FHIR R4 references.html#literal).

EHRs send ``patient`` as a bare id (the specification) and sometimes as ``Patient/<id>`` or an absolute
URL; ``encounter`` as a bare id (SMART launchers), ``Encounter/<id>`` or an absolute URL; ``fhirContext``
items with a relative or absolute ``reference``, a ``canonical``, or a ``type`` and an ``identifier``.
Each id must be a FHIR id and each reference must name the launched FHIR base; anything else is the
EHR's mistake, refused with :class:`InvalidLaunchContext` naming it. The launch then keeps the patient
as an id, the encounter as ``Encounter/<id>`` (taken from ``fhirContext`` when the top-level parameter
is absent) and the ``fhirContext`` items with relative references and only the elements SMART defines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from smart_app import fhirjson as fj
from smart_app.smart import wire
from smart_app.smart.errors import LaunchContextError
from smart_app.smart.token import LaunchContext

#: Most ``fhirContext`` items a launch may carry.
MAX_FHIR_CONTEXT_ITEMS = 50
#: Longest ``canonical``, ``role``, identifier ``system`` or ``value`` kept, in characters.
MAX_TEXT = 1024


class InvalidLaunchContext(LaunchContextError):
    """The token response's launch context names something that is not a FHIR id or a reference on the
    launched FHIR base: the EHR's mistake; nothing is read."""

    error = "invalid_launch_context"
    description = "The EHR sent launch context the app cannot use."


@dataclass(frozen=True)
class CheckedContext:
    """``patient`` a FHIR id; ``encounter`` ``Encounter/<id>`` or ``None``; ``fhir_context`` the items
    with relative references."""

    patient: str
    encounter: str | None
    fhir_context: tuple[dict[str, Any], ...]


def usable_id(value: str) -> bool:
    """A FHIR id (R4 datatypes.html#id) that is also a plain path segment (not ``.`` or ``..``)."""
    return bool(fj.ID_RE.fullmatch(value)) and value.strip(".") != ""


def _shown(value: object) -> str:
    text = wire.ehr_text(value if isinstance(value, str) else repr(value), limit=80)
    return f"'{text}'"


def _on_base(value: str, resource_type: str | None, iss: str) -> fj.Ref | None:
    """``value`` as a reference to ``resource_type`` (any type when ``None``) on ``iss``, relative or
    absolute; ``None`` when it is not one."""
    ref = fj.Ref.parse(value)
    if ref is None or not usable_id(ref.id) or (resource_type is not None and ref.type != resource_type):
        return None
    if ref.base is not None and not fj.same_base(ref.base, iss):
        return None
    return ref


def check_context(context: LaunchContext, iss: str, *, ehr_name: str | None = None) -> CheckedContext:
    """The launch context of a token response, checked against the launched FHIR base ``iss``."""
    who = ehr_name or "The EHR"

    def mistake(what: str) -> InvalidLaunchContext:
        return InvalidLaunchContext(
            f"{who} launched the app with {what}, so the launch was stopped before anything was read. "
            f"Tell the EHR's administrator; this is a mistake in the EHR's launch, not in the chart.",
            ehr_name=ehr_name,
        )

    raw_patient = context.patient or ""
    if usable_id(raw_patient):
        patient = raw_patient
    else:
        patient_ref = _on_base(raw_patient, "Patient", iss)
        if patient_ref is None:
            raise mistake(
                f"a patient {_shown(raw_patient)} that is neither a FHIR id nor a Patient reference on its "
                "FHIR server"
            )
        patient = patient_ref.id

    encounter: str | None = None
    if context.encounter is not None:
        encounter = _encounter(context.encounter, iss)
        if encounter is None:
            raise mistake(
                f"an encounter {_shown(context.encounter)} that is neither a FHIR id nor an Encounter "
                "reference on its FHIR server"
            )

    if len(context.fhir_context) > MAX_FHIR_CONTEXT_ITEMS:
        raise mistake(f"{len(context.fhir_context)} fhirContext items (at most {MAX_FHIR_CONTEXT_ITEMS})")
    items: list[dict[str, Any]] = []
    for index, item in enumerate(context.fhir_context):
        checked = _context_item(item, iss)
        if isinstance(checked, str):
            raise mistake(f"fhirContext item {index + 1} {checked}")
        items.append(checked)
    if encounter is None:
        encounter = next(
            (str(i["reference"]) for i in items if str(i.get("reference", "")).startswith("Encounter/")), None
        )
    return CheckedContext(patient=patient, encounter=encounter, fhir_context=tuple(items))


def _encounter(value: str, iss: str) -> str | None:
    if usable_id(value):
        return f"Encounter/{value}"
    ref = _on_base(value, "Encounter", iss)
    return ref.plain if ref is not None else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value and len(value) <= MAX_TEXT else None


def _context_item(item: Mapping[str, Any], iss: str) -> dict[str, Any] | str:
    """One ``fhirContext`` item with only the elements SMART defines, or why it is unusable."""
    kept: dict[str, Any] = {}
    rtype = item.get("type")
    if rtype is not None:
        if not isinstance(rtype, str) or not fj.TYPE_RE.fullmatch(rtype):
            return f"has a type {_shown(rtype)} that is not a FHIR resource type"
        kept["type"] = rtype
    if "reference" in item:
        raw = item["reference"]
        ref = _on_base(raw, None, iss) if isinstance(raw, str) else None
        if ref is None:
            return f"has a reference {_shown(raw)} that is not a reference on the launched FHIR server"
        if rtype is not None and ref.type != rtype:
            return f"names type {rtype} but references a {ref.type}"
        kept["reference"] = ref.plain
    elif "canonical" in item:
        canonical = _text(item["canonical"])
        if canonical is None:
            return "has an unusable canonical"
        kept["canonical"] = canonical
    elif isinstance(item.get("identifier"), dict) and rtype is not None:
        identifier = item["identifier"]
        value = _text(identifier.get("value"))
        if value is None:
            return "has an identifier without a usable value"
        kept["identifier"] = {"value": value}
        system = _text(identifier.get("system"))
        if system is not None:
            kept["identifier"]["system"] = system
    else:
        return "has none of reference, canonical, or type and identifier"
    role = item.get("role")
    if role is not None:
        if _text(role) is None:
            return "has an unusable role"
        kept["role"] = role
    return kept
