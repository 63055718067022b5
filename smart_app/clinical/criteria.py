"""Versioned criteria definitions (JSON data) and their registry.

A released criteria file is never edited: a new version is added beside it, and every registered version
stays evaluable (CLINICAL.md "Canonical URLs"; DESIGN.md "Criteria are data").
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from smart_app.clinical import terminology

ROOT = Path(__file__).resolve().parents[2]
CRITERIA_DIR = ROOT / "fhir_profiles" / "criteria"
TERMINOLOGY_DIR = ROOT / "fhir_profiles" / "package"
SUPPORTED_FORMATS = frozenset({1})


class CriteriaError(ValueError):
    """A criteria file or version the engine cannot use."""


@dataclass(frozen=True)
class Criteria:
    """One criteria version: the raw definition plus the terminology it is evaluated with."""

    data: Mapping[str, Any]
    terminology: terminology.Terminology
    path: Path

    @property
    def url(self) -> str:
        return str(self.data["url"])

    @property
    def version(self) -> str:
        return str(self.data["version"])

    @property
    def title(self) -> str:
        return str(self.data["title"])

    def threshold(self, value: object) -> float:
        """A number, or the name of an entry of ``thresholds``."""
        if isinstance(value, str):
            return float(self.data["thresholds"][value])
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise CriteriaError(f"not a threshold: {value!r}")

    def window(self, name: str) -> int:
        return int(self.data["windows_days"][name])


def valueset_urls(node: object) -> Iterator[str]:
    """Every ValueSet url referenced in a criteria definition (keys ``valueset`` / ``*_valueset``)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if (key == "valueset" or key.endswith("_valueset")) and isinstance(value, str):
                yield value
            else:
                yield from valueset_urls(value)
    elif isinstance(node, list):
        for item in node:
            yield from valueset_urls(item)


def coded_references(node: object) -> Iterator[tuple[str, str]]:
    """Every ``{"system", "code"}`` pair written in a criteria definition."""
    if isinstance(node, dict):
        if isinstance(node.get("system"), str) and isinstance(node.get("code"), str):
            yield node["system"], node["code"]
        for value in node.values():
            yield from coded_references(value)
    elif isinstance(node, list):
        for item in node:
            yield from coded_references(item)


class CriteriaRegistry:
    """Criteria versions found in some directories (``*.json``), keyed by version."""

    def __init__(self, criteria: Iterable[Criteria]) -> None:
        self._by_version: dict[str, Criteria] = {}
        for c in criteria:
            if c.version in self._by_version:
                raise CriteriaError(f"criteria version {c.version} defined twice")
            self._by_version[c.version] = c

    def get(self, version: str) -> Criteria:
        try:
            return self._by_version[version]
        except KeyError:
            known = ", ".join(sorted(self._by_version)) or "none"
            raise CriteriaError(f"unknown criteria version {version!r} (known: {known})") from None

    def versions(self) -> list[str]:
        return sorted(self._by_version)

    def __contains__(self, version: object) -> bool:
        return version in self._by_version


def load_criteria(path: Path, terminology_dirs: Sequence[Path]) -> Criteria:
    data = orjson.loads(path.read_bytes())
    if not isinstance(data, dict) or data.get("format") not in SUPPORTED_FORMATS:
        raise CriteriaError(f"{path.name}: not a criteria definition of a supported format")
    # A criteria directory may carry its own terminology (new ValueSets for a new version).
    dirs = tuple(dict.fromkeys([*terminology_dirs, path.parent]))
    term = terminology.load(dirs)
    term.require(valueset_urls(data))
    return Criteria(data=data, terminology=term, path=path)


def load_registry(
    dirs: Sequence[Path] | None = None, terminology_dirs: Sequence[Path] | None = None
) -> CriteriaRegistry:
    """Registry of the criteria in ``dirs`` (default: ``fhir_profiles/criteria``) plus any extra dirs."""
    crit_dirs = tuple(dirs) if dirs is not None else (CRITERIA_DIR,)
    term_dirs = tuple(terminology_dirs) if terminology_dirs is not None else (TERMINOLOGY_DIR,)
    found: list[Criteria] = []
    for d in crit_dirs:
        for path in sorted(d.glob("*.json")):
            if path.name.startswith(("ValueSet-", "CodeSystem-")):
                continue
            found.append(load_criteria(path, term_dirs))
    return CriteriaRegistry(found)


@functools.lru_cache(maxsize=1)
def default_registry() -> CriteriaRegistry:
    """The shipped criteria, loaded once per process."""
    return load_registry()
