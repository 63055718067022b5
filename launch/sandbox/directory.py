"""Who and what the EHR pages list: patients and practitioners from the store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .store import Store


@dataclass(frozen=True)
class Person:
    id: str
    ref: str
    name: str
    birth_date: str
    gender: str


def display_name(resource: dict[str, Any]) -> str:
    """``HumanName.text``, else given + family (+ suffix), else the id."""
    names = resource.get("name")
    if isinstance(names, list) and names and isinstance(names[0], dict):
        name = names[0]
        if isinstance(name.get("text"), str):
            return str(name["text"])
        parts = [*name.get("prefix", []), *name.get("given", []), name.get("family", "")]
        text = " ".join(str(p) for p in parts if p)
        suffix = ", ".join(str(s) for s in name.get("suffix", []))
        if text:
            return f"{text}, {suffix}" if suffix else text
    return str(resource.get("id", ""))


def _person(resource: dict[str, Any]) -> Person:
    rid = str(resource["id"])
    return Person(
        id=rid,
        ref=f"{resource['resourceType']}/{rid}",
        name=display_name(resource),
        birth_date=str(resource.get("birthDate", "")),
        gender=str(resource.get("gender", "")),
    )


def patients(store: Store) -> list[Person]:
    return sorted((_person(r) for r in store.all_of_type("Patient")), key=lambda p: (p.name, p.id))


def practitioners(store: Store) -> list[Person]:
    return sorted((_person(r) for r in store.all_of_type("Practitioner")), key=lambda p: p.id)


def latest_encounter(store: Store, patient_id: str) -> dict[str, Any] | None:
    """The patient's most recent Encounter (by period.start)."""
    encounters = store.search("Encounter", [("patient", patient_id)])
    if not encounters:
        return None
    return max(encounters, key=lambda e: str((e.get("period") or {}).get("start", "")))
